"""The submit layer: resource mapping (unit) and real submitit jobs on the local executor."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import yaml
from quantpipe.artifacts import write_json
from quantpipe.submit import executor, submit, watch
from quantpipe.submit.executor import StageCall, executor_parameters
from quantpipe.submit.signals import _descendants

REPOSITORY = Path(__file__).resolve().parents[1]


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


def test_exclusive_asks_slurm_for_the_whole_node_and_means_nothing_locally():
    cluster, parameters = executor_parameters({"slurm_partition": "cpu", "exclusive": 1}, "b")
    assert cluster == "slurm" and parameters["slurm_exclusive"] is True
    assert "slurm_exclusive" not in executor_parameters({"slurm_partition": "cpu"}, "b")[1]
    assert "slurm_exclusive" not in executor_parameters({"exclusive": 1}, "b")[1]


def test_the_slurm_profile_runs_cpu_benchmarks_alone_on_their_node():
    """CPU benchmarks get the whole node; GPU ones not (that would take every GPU of it)."""
    profile = yaml.safe_load((REPOSITORY / "profiles/slurm/config.yaml").read_text())
    exclusive = profile["set-resources"]["benchmark"]["exclusive"]
    _, parameters = executor_parameters({"slurm_partition": "p", "exclusive": exclusive}, "b")
    assert parameters["slurm_exclusive"] is True
    assert "exclusive" not in profile["set-resources"]["benchmark_gpu"]


@pytest.mark.parametrize("present, granted", [(0, 0), (1, 1), (4, 1)])
def test_no_partition_means_local_without_slurm_keys(present, granted, monkeypatch):
    # A local job gets the GPUs asked for, as far as the machine has them.
    monkeypatch.setattr(executor, "_local_gpu_count", lambda: present)
    cluster, parameters = executor_parameters({"gpus": 1, "slurm_account": "lab"}, "report")
    assert cluster == "local"
    assert "slurm_account" not in parameters
    assert parameters["gpus_per_node"] == granted


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


@pytest.mark.parametrize(
    "cpus,tasks,shares",
    [({0, 1}, 3, [1, 1, 1]), ({0, 1, 2, 3}, 2, [2, 2]), ({0, 1, 2, 3, 4}, 2, [3, 2]),
     ({4, 5}, 1, [2])],
)  # fmt: skip
def test_local_array_tasks_split_the_machines_cpus(monkeypatch, cpus, tasks, shares):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: cpus)
    assert executor.local_shares(tasks) == shares


def test_local_job_runs_a_stage_and_returns_its_dict(tmp_path):
    run = {"model": "m", "width": 1, "seed": 0}
    row = {**run, "node_class": "any", "variant": "fp32-cpu", "method": "eager", "status": "ok",
           "accuracy": 0.5, "images_per_s": 10.0, "size_bytes": 100}  # fmt: skip
    metrics, train, out = tmp_path / "m.json", tmp_path / "t.json", tmp_path / "report.csv"
    curves = tmp_path / "batch_sizes.csv"
    write_json(metrics, {"config": {}, "rows": [row], "provenance": {"versions": {}}})
    write_json(train, {"config": run, "val_accuracy": 0.5})
    files = {"benchmark_metrics": [str(metrics)], "train_metrics": [str(train)], "report": str(out),
             "batch_sizes": str(curves), "config": {"node_classes": ["any"]}}  # fmt: skip
    result = submit("report", files, {}, "report", str(tmp_path / "logs"))
    assert result == {"stage": "report", "rows": 1, "report": str(out), "batch_sizes": str(curves)}
    assert out.read_text().startswith("node_class,model,width,seed")


def test_failed_stage_exits_nonzero_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "m.json"
    write_json(empty, {"rows": [], "provenance": {"versions": {}}})
    out = tmp_path / "report.csv"
    files = {"benchmark_metrics": [str(empty)], "train_metrics": [], "report": str(out),
             "batch_sizes": str(tmp_path / "batch_sizes.csv"),
             "config": {"node_classes": ["any"]}}  # fmt: skip
    with pytest.raises(SystemExit) as failure:
        submit("report", files, {}, "report", str(tmp_path / "logs"))
    assert failure.value.code == 1
    assert not out.exists()
    # The rule's log says which job failed and the stage's own error.
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert re.search(r"report: job \S+ failed", printed)
    assert "ValueError: no benchmark rows in 1 metrics files: nothing to report" in printed


@pytest.mark.slow
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


class _RequeuedCluster:
    """Slurm's view of job 19 after a node failure, on a fake clock: Slurm requeued it, it pends
    until t=10 s, runs again, and its second attempt ends at t=30 s (`second`: COMPLETED, with a
    result, or FAILED, without). sacct goes on showing the first attempt's NODE_FAIL as the newest
    record until t=12 s, and learns of the second attempt's end only at t=33 s."""

    def __init__(self, folder, second: str) -> None:
        self.now, self.second = 0.0, second
        self.result = folder / "19_0_result.pkl"

    # watch's `time` module, on the fake clock
    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now >= 30 and self.second == "COMPLETED" and not self.result.exists():
            self.result.write_text("the second attempt's result")

    def strftime(self, _format: str) -> str:
        return f"t={self.now:.0f}s"

    def sacct(self) -> str:
        return "NODE_FAIL" if self.now < 12 else "RUNNING" if self.now < 33 else self.second

    def query(self, args: list[str]) -> tuple[bool, str]:
        """watch.slurm_query's answers at this moment."""
        if args[0] == "squeue":
            if self.now < 10:
                return True, "19|1|PENDING|BeginTime|cpu|"
            state = "RUNNING" if self.now < 30 else self.second
            return True, f"19|1|{state}|None|cpu|node1"
        if args[0] == "sinfo":
            return True, "node1|idle|none"
        assert args[0] == "sacct", args
        return True, self.sacct()


class _Watcher:
    """submitit's SlurmInfoWatcher as far as watch.wait sees it: a cached sacct state, which
    `update` refreshes only while it is not final."""

    FINAL = {"COMPLETED", "FAILED", "NODE_FAIL"}

    def __init__(self, cluster: _RequeuedCluster, state: str | None) -> None:
        self.cluster, self.state = cluster, state

    def clear(self) -> None:
        self.state = None

    def update(self) -> None:
        if self.state not in self.FINAL:
            self.state = self.cluster.sacct()

    def is_done(self, _job_id: str, mode: str) -> bool:
        if mode == "force":
            self.update()
        return self.state in self.FINAL


class _RequeuedJob:
    """A submitit SlurmJob that read sacct while the first attempt's NODE_FAIL was the newest
    record: as in submitit, a state once final is not asked again unless the cache is cleared."""

    job_id = "19"

    def __init__(self, cluster: _RequeuedCluster, folder) -> None:
        self.cluster = cluster
        self.paths = type("Paths", (), {"folder": folder, "result_pickle": cluster.result,
                                        "stdout": folder / "19_0_log.out"})  # fmt: skip
        self.watcher = _Watcher(cluster, "NODE_FAIL")

    def done(self, force_check: bool = False) -> bool:
        if self.paths.result_pickle.exists():
            return True
        if self.watcher.state is None:
            self.watcher.update()
        return self.watcher.is_done(self.job_id, mode="force" if force_check else "standard")

    @property
    def state(self) -> str:
        return self.watcher.state or "UNKNOWN"

    def result(self) -> str:
        while not self.done():
            self.cluster.sleep(1)
        if not self.paths.result_pickle.exists():
            raise submitit.core.utils.UncompletedJobError(
                f"Job 19 has not produced any output (state: {self.state})"
            )
        return self.paths.result_pickle.read_text()


@pytest.mark.parametrize("second", ["COMPLETED", "FAILED"])
def test_a_requeued_job_is_over_only_when_its_last_attempt_is(tmp_path, monkeypatch, second):
    """submitit says done (the first attempt's NODE_FAIL) while squeue shows the requeued job
    pending, then running: the wait goes on until squeue shows the job ended and sacct's newest
    record is final, and then returns the second attempt's result or its own failure."""
    cluster = _RequeuedCluster(tmp_path, second)
    monkeypatch.setattr(watch, "time", cluster)
    monkeypatch.setattr(watch, "slurm_query", cluster.query)
    job = _RequeuedJob(cluster, tmp_path)
    assert job.done() and job.state == "NODE_FAIL"  # what submitit says at the start
    if second == "COMPLETED":
        assert watch.wait(job, "train", "slurm", {}, "train-r") == "the second attempt's result"
        assert cluster.now >= 30
    else:
        with pytest.raises(submitit.core.utils.UncompletedJobError):
            watch.wait(job, "train", "slurm", {}, "train-r")
        assert job.state == "FAILED" and cluster.now >= 33


def test_the_plugins_first_status_check_may_come_before_its_setup():
    """Snakemake starts the executor's status loop before calling its __post_init__; a first check
    that wins that race finds no job and must not need the sweep yet (seen at 1,000 jobs: the run
    stopped after its first 100 submissions)."""
    import asyncio

    from snakemake_executor_plugin_quantpipe import Executor

    unset = Executor.__new__(Executor)  # as the loop sees it before __post_init__: no sweep

    async def still_active():
        return [info async for info in unset.check_active_jobs([])]

    assert asyncio.run(still_active()) == []
