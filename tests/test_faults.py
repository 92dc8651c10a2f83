"""Faults on the local Slurm and bad input to the workflow: clear errors, nothing lost."""

import subprocess
import time

import pytest
import torch
import yaml
from quantpipe.submit import submit
from slurmtools import run
from test_slurm_submit import CPU, TRAIN, job_id_of, submitter, wait_for
from workflowtools import SNAKEMAKE, copy_repository, snakemake, tiny_config, user_env


@pytest.fixture(autouse=True)
def _data(cifar_dir):
    pytest.cifar_dir = cifar_dir


def training_files(tmp_path, epochs: int) -> dict:
    return {"data": str(pytest.cifar_dir), "model": str(tmp_path / "run" / "model.pt"),
            "metrics": str(tmp_path / "run" / "metrics.json"),
            "config": {**TRAIN, "epochs": epochs}}  # fmt: skip


@pytest.mark.slurm
def test_a_cancelled_training_keeps_its_checkpoint_and_a_rerun_resumes(cluster, tmp_path):
    files = training_files(tmp_path, epochs=3)
    process = submitter(tmp_path, "train", files, CPU, "qp-test-cancel-resume")
    job = job_id_of("qp-test-cancel-resume")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    wait_for(checkpoint.exists, 300, "the first epoch checkpoint")
    run(["scancel", job])
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1 and "failed" in output
    assert checkpoint.exists() and not (tmp_path / "run" / "model.pt").exists()
    result = submit("train", files, CPU, "qp-test-rerun", str(tmp_path / "logs"))
    assert result["resumed_from_epoch"] >= 1


@pytest.mark.slurm
def test_accounting_down_for_a_while_neither_hangs_nor_fails(cluster, tmp_path):
    files = training_files(tmp_path, epochs=1)
    process = submitter(tmp_path, "train", files, CPU, "qp-test-dbd")
    job_id_of("qp-test-dbd")
    script = "workflow/scripts/local_slurm.sh"
    subprocess.run(["bash", script, "stop-dbd"], check=True, capture_output=True)
    try:
        time.sleep(20)
    finally:
        subprocess.run(["bash", script, "start-dbd"], check=True, capture_output=True)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert torch.load(files["model"], weights_only=True)["record"]["epochs_run_here"] == 1


@pytest.mark.workflow
@pytest.mark.parametrize(
    "override,named",
    [("calibration_sizes=[0]", "0 is less than the minimum of 1"),
     ("methods=[int4]", "'int4' is not one of"),
     ("seeds=[]", "should be non-empty"),
     ("calibration_sizes=[40000]", "exceed the training split")],
)  # fmt: skip
def test_bad_config_is_refused_before_any_job(tmp_path, override, named):
    copy_repository(tmp_path)
    tiny_config(tmp_path)
    done = snakemake(tmp_path, "--config", override, check=False)
    assert done.returncode != 0
    assert named in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_a_second_snakemake_in_the_same_directory_is_refused(tmp_path):
    copy_repository(tmp_path)
    config = tiny_config(tmp_path)
    config["train"]["epochs"] = 50
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    command = [SNAKEMAKE, "--profile", "profiles/local"]
    first = subprocess.Popen(command, cwd=tmp_path, env=user_env(), **quiet)
    try:
        wait_for(lambda: (tmp_path / "logs" / "train").exists(), 120, "the first run's training")
        second = snakemake(tmp_path, check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
    finally:
        first.terminate()
        first.wait(timeout=120)
