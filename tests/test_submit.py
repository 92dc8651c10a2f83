"""The submit layer: resource mapping (unit) and real submitit jobs on the local executor."""

import os
import subprocess
import sys
import time

import pytest
from quantpipe.artifacts import write_json
from quantpipe.submit import StageCall, _descendants, executor_parameters, submit


def test_slurm_resources_map_to_submitit_parameters():
    cluster, parameters = executor_parameters(
        {"slurm_partition": "gpu", "gpus": 1, "cpus_per_task": 4, "mem_mb": 16000, "runtime": 90.5,
         "slurm_account": "lab", "slurm_qos": "", "constraint": "vnni", "tmpdir": "/tmp"},
        "train-resnet18-16-0",
    )  # fmt: skip
    assert cluster == "slurm"
    assert parameters == {
        "name": "train-resnet18-16-0",
        "slurm_partition": "gpu",
        "slurm_account": "lab",
        "slurm_constraint": "vnni",
        "gpus_per_node": 1,
        "cpus_per_task": 4,
        "timeout_min": 91,
        "slurm_mem": "16000M",
        "slurm_signal_delay_s": 60,
    }


def test_no_partition_means_local_without_slurm_keys():
    cluster, parameters = executor_parameters({"gpus": 1, "slurm_account": "lab"}, "report")
    assert cluster == "local"
    assert "slurm_account" not in parameters
    assert parameters["gpus_per_node"] in (0, 1)


@pytest.mark.parametrize(
    "resources,name,bad",
    [
        ({}, "bad name; rm -rf /", "job name"),
        ({"slurm_partition": "cpu$(reboot)"}, "ok", "slurm_partition"),
    ],
)
def test_names_that_reach_slurm_are_validated(resources, name, bad):
    with pytest.raises(ValueError, match=f"{bad} .* is not a valid Slurm name"):
        executor_parameters(resources, name)


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'trian'"):
        StageCall("trian", {})


def test_local_job_runs_a_stage_and_returns_its_dict(tmp_path):
    run = {"model": "m", "width": 1, "seed": 0}
    row = {**run, "variant": "fp32-cpu", "method": "eager", "status": "ok", "accuracy": 0.5,
           "images_per_s": 10.0, "size_bytes": 100}  # fmt: skip
    metrics, train, out = tmp_path / "m.json", tmp_path / "t.json", tmp_path / "report.csv"
    write_json(metrics, {"rows": [row], "provenance": {"versions": {}}})
    write_json(train, {"config": run, "val_accuracy": 0.5})
    files = {"benchmark_metrics": [str(metrics)], "train_metrics": [str(train)], "report": str(out)}
    result = submit("report", files, {}, "report", str(tmp_path / "logs"))
    assert result == {"stage": "report", "rows": 1, "report": str(out)}
    assert out.read_text().startswith("model,width,seed")


def test_failed_stage_exits_nonzero_and_writes_nothing(tmp_path):
    empty = tmp_path / "m.json"
    write_json(empty, {"rows": [], "provenance": {"versions": {}}})
    out = tmp_path / "report.csv"
    files = {"benchmark_metrics": [str(empty)], "train_metrics": [], "report": str(out)}
    with pytest.raises(SystemExit) as failure:
        submit("report", files, {}, "report", str(tmp_path / "logs"))
    assert failure.value.code == 1
    assert not out.exists()


def test_failed_job_traceback_reaches_the_caller(tmp_path):
    script = (
        "from quantpipe.submit import submit\n"
        f"submit('train', {{'data': '/nonexistent', 'model': 'm.pt', 'metrics': 'm.json',"
        f" 'config': {{}}}}, {{}}, 'train', {str(tmp_path)!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "KeyError" in done.stderr


def test_descendants_are_found_through_the_process_tree():
    grandchild = "import time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(50):
            below = _descendants(os.getpid())
            if len(below) >= 2:
                break
            time.sleep(0.1)
        assert child.pid in below and len(below) >= 2
    finally:
        for pid in reversed(_descendants(os.getpid())):
            os.kill(pid, 9)
        child.wait()
