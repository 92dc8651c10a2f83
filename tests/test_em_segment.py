"""The segment stage: blocks written by separate runs equal one run; on the local Slurm, a 3-task
job array writes the same bits as a single process, a failed task is named by its array id, and
stopping the submitter cancels every task."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from quantpipe.models.build import build_model
from quantpipe.stages.segment import create_output, run, run_as_array, split_blocks
from quantpipe.submit import submit_array
from quantpipe.submit.executor import local_shares
from quantpipe.tasks.isbi2012_em.data import read_stack
from slurmtools import run as slurm
from slurmtools import wait_sacct

CONFIG = {"dims": 2, "tile": [64, 64], "overlap": [16, 16], "batch_size": 4, "block_sections": 1,
          "chunks": [1, 64, 64]}  # fmt: skip
ONE_CPU = {"slurm_partition": "cpu", "cpus_per_task": 1, "mem_mb": 2000, "runtime": 10}
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def volume(tmp_path_factory, isbi_dir) -> str:
    """Three 128x128 crops of test sections 25-27 as a uint8 Zarr array (12 blocks of 64x64)."""
    crops = [
        np.asarray(Image.open(isbi_dir / "image" / f"{n}.png"))[:128, :128] for n in (25, 26, 27)
    ]
    path = str(tmp_path_factory.mktemp("volume") / "image.zarr")
    array = zarr.create_array(store=path, shape=(3, 128, 128), chunks=(1, 128, 128), dtype="uint8")
    array[:] = np.stack(crops)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A small, randomly initialised 2D U-Net in the train stage's checkpoint format."""
    torch.manual_seed(0)
    architecture = {"name": "unet2d", "num_classes": 1, "width": 2}
    net = build_model(**architecture)
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    torch.save({"architecture": architecture, "state_dict": net.state_dict(), "record": {}}, path)
    return path


@pytest.fixture
def one_thread(monkeypatch):
    """In-process runs with the array tasks' thread count (results must match bit for bit)."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(ONE_CPU["cpus_per_task"]))


def test_blocks_split_into_contiguous_groups():
    assert split_blocks(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_blocks(2, 5) == [[0], [1]]
    with pytest.raises(ValueError, match="at least one block"):
        split_blocks(0, 3)


def test_blocks_run_separately_equal_one_run(volume, checkpoint, tmp_path, one_thread):
    whole = run(volume, str(tmp_path / "whole.zarr"), CONFIG, model=checkpoint, **QUIET)
    assert whole["blocks"] == 12 and whole["voxels"] == 3 * 128 * 128
    blocks = create_output(volume, str(tmp_path / "parts.zarr"), CONFIG)
    for group in reversed(split_blocks(blocks, 3)):
        run(volume, str(tmp_path / "parts.zarr"), {**CONFIG, "blocks": group}, model=checkpoint,
            **QUIET)  # fmt: skip
    single = zarr.open_array(str(tmp_path / "whole.zarr"))[:]
    parts = zarr.open_array(str(tmp_path / "parts.zarr"))[:]
    assert not np.isnan(single).any() and np.array_equal(single, parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.zarr", "whole.zarr"]


def test_a_task_without_its_output_says_what_makes_it(volume, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="create_output"):
        run(volume, str(tmp_path / "none.zarr"), {**CONFIG, "blocks": [0]}, model=checkpoint,
            **QUIET)  # fmt: skip


@pytest.mark.slurm
def test_a_job_array_on_slurm_matches_a_single_process_run(
    volume, checkpoint, tmp_path, cluster, one_thread, monkeypatch
):
    # Tasks of a few seconds: Slurm samples their memory every second (sbatch's and srun's own
    # variables; the local Slurm polls every 10 s), so that sacct has a figure for each.
    monkeypatch.setenv("SBATCH_ACCTG_FREQ", "task=1")
    monkeypatch.setenv("SLURM_ACCTG_FREQ", "task=1")
    arrayed = str(tmp_path / "array" / "segmentation.zarr")
    record = run_as_array(volume, arrayed, CONFIG, tasks=3, resources=ONE_CPU,
                          job_name="qp-test-segment-array", folder=str(tmp_path / "logs"),
                          model=checkpoint, metrics=str(tmp_path / "array" / "metrics.json"),
                          **QUIET)  # fmt: skip
    single = str(tmp_path / "single" / "segmentation.zarr")
    run(volume, single, CONFIG, model=checkpoint, **QUIET)
    probability = zarr.open_array(single)[:]
    assert probability.std() > 0 and np.array_equal(zarr.open_array(arrayed)[:], probability)
    tasks = [task["array_task"] for task in record["tasks"]]
    array_id = tasks[0].split("_")[0]
    assert tasks == [f"{array_id}_{i}" for i in range(3)]
    assert [task["blocks"] for task in record["tasks"]] == [4, 4, 4]
    assert all(task["threads"] == 1 for task in record["tasks"])
    for task in tasks:
        assert wait_sacct(task)["State"] == "COMPLETED"
    # Each task's peak memory, from the task itself and from Slurm's accounting.
    assert all(0 < task["peak_rss_mb"] < 4000 for task in record["tasks"])
    assert all(task["sacct_max_rss_mb"] > 0 for task in record["tasks"])
    assert record["job_hours_per_mm3"] > 0 and record["array_hours_per_mm3"] > 0
    installed = sorted(p.name for p in (tmp_path / "array").iterdir())
    assert installed == ["metrics.json", "segmentation.zarr"]  # no staging directory left


@pytest.mark.slurm
def test_a_failed_array_task_is_named_by_its_array_id(volume, checkpoint, tmp_path, cluster,
                                                      capsys):  # fmt: skip
    output = str(tmp_path / "out.zarr")
    create_output(volume, output, CONFIG)
    calls = [
        {"volume": path, "segmentation": output, "model": checkpoint,
         "config": {**CONFIG, "blocks": [block]}}
        for block, path in ((0, volume), (1, str(tmp_path / "missing.zarr")), (2, volume))
    ]  # fmt: skip
    with pytest.raises(SystemExit) as failure:
        submit_array("segment", calls, ONE_CPU, "qp-test-segment-fail", str(tmp_path / "logs"))
    assert failure.value.code == 1
    said = capsys.readouterr()
    array_id = said.out.split("submitted 3 array tasks ")[1].split("_")[0]
    assert f"array task {array_id}_1 failed" in said.out
    assert f"1 of 3 array tasks failed: {array_id}_1\n" in said.out
    assert "missing.zarr" in said.err
    assert os.path.isdir(output)


@pytest.mark.slurm
def test_stopping_the_array_submitter_cancels_every_task(tmp_path, cluster, isbi_dir):
    """SIGTERM to the waiting process cancels all array tasks and leaves no output behind."""
    architecture = {"name": "unet2d", "num_classes": 1, "width": 16}
    model = str(tmp_path / "model.pt")
    torch.save({"architecture": architecture, "record": {},
                "state_dict": build_model(**architecture).state_dict()}, model)  # fmt: skip
    volume = str(tmp_path / "image.zarr")
    sections = np.stack([np.asarray(Image.open(isbi_dir / "image" / f"{n}.png")) for n in range(6)])
    zarr.create_array(store=volume, data=sections, chunks=(1, 512, 512))
    config = {**CONFIG, "tile": [256, 256], "chunks": None}  # a few seconds per 512 x 512 block
    output = str(tmp_path / "out" / "segmentation.zarr")
    script = (
        "from quantpipe.stages.segment import run_as_array\n"
        f"run_as_array({volume!r}, {output!r}, {config!r}, tasks=3, resources={ONE_CPU!r}, "
        f"job_name='qp-test-segment-stop', folder={str(tmp_path / 'logs')!r}, model={model!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm(["squeue", "-h", "-n", "qp-test-segment-stop", "-o", "%T"]).stdout.split()
        if states.count("RUNNING") >= 2:
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"the array tasks did not start: {states}")
    process.send_signal(signal.SIGTERM)
    said, _ = process.communicate(timeout=60)
    assert process.returncode != 0, said
    cancelled = said.split("cancelling job ")[1].split("\n")[0].split(", ")
    assert len(cancelled) == 3 and len({task.split("_")[0] for task in cancelled}) == 1, said
    for task in cancelled:
        assert wait_sacct(task)["State"].startswith("CANCELLED")
    # Nothing was installed. (A task still dying may recreate a chunk in the staging directory
    # after it was removed: what can be left is only that, named as a temporary.)
    left = os.listdir(tmp_path / "out")
    assert all(name.startswith(".segmentation.zarr.") and name.endswith(".tmp") for name in left)


def test_a_generated_volume_repeats_the_sections_without_seams(tmp_path, isbi_dir):
    """workflow/scripts/make_em_volume.py: a volume larger than the stack, mirrored in depth and
    in-plane, chunked as asked."""
    script = Path(__file__).resolve().parent.parent / "workflow/scripts/make_em_volume.py"
    out = tmp_path / "big.zarr"
    done = subprocess.run(
        [sys.executable, str(script), str(out), "--shape", "33", "600", "1100", "--chunks", "4",
         "256", "512", "--stack", str(isbi_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    volume = zarr.open_array(str(out), mode="r")
    assert volume.shape == (33, 600, 1100) and volume.chunks == (4, 256, 512)
    stack = read_stack(str(isbi_dir))[0]
    np.testing.assert_array_equal(volume[0, :512, :512], stack[0])
    np.testing.assert_array_equal(volume[30, :512, :512], stack[29])  # depth mirrored: 29 again
    np.testing.assert_array_equal(volume[2, 512:600, :512], stack[2][::-1][:88])  # in-plane


def sweep_array(volume, checkpoint, output, tasks, resources, folder, volumes=None):
    """What the executor plugin quantpipe does for a segment job: prepare_array here, the calls as
    one array in a Sweep, checked until over, finish_array (or discard_array) here."""
    from quantpipe.stages.segment import discard_array, finish_array, prepare_array
    from quantpipe.submit.sweep import Sweep

    plan = prepare_array(volume, output, CONFIG, tasks, model=checkpoint, **QUIET)
    for call, other in zip(plan.calls, volumes or [], strict=False):
        call["volume"] = other
    sweep = Sweep(say=lambda _: None)
    flight = sweep.submit_array("segment", plan.calls, resources, "qp-test-sweep", folder,
                                Path(folder) / "segment.log")  # fmt: skip
    deadline = time.monotonic() + 600
    while (outcome := sweep.outcome(flight)) is None:
        assert time.monotonic() < deadline, "the array never ended"
        time.sleep(1)
        sweep.check()
    if not outcome[0]:
        discard_array(plan)
        return outcome, flight, None
    return outcome, flight, finish_array(plan, flight.results, str(Path(output).parent / "m.json"))


@pytest.mark.slow
def test_the_plugins_array_path_installs_what_one_run_writes(
    volume, checkpoint, tmp_path, monkeypatch
):
    """prepare_array, one array of 3 local tasks tracked by a Sweep as one unit, finish_array:
    each task runs on its share of the machine's CPUs, the installed output equals a single
    run's, nothing staged is left."""
    output = str(tmp_path / "out" / "membrane.zarr")
    outcome, flight, record = sweep_array(volume, checkpoint, output, 3, {}, str(tmp_path / "logs"))
    assert outcome == (True, ""), outcome
    assert len(flight.results) == 3 and [task["blocks"] for task in record["tasks"]] == [4, 4, 4]
    shares = local_shares(3)
    assert [task["threads"] for task in record["tasks"]] == shares
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(shares[0]))  # bit for bit: the same threads
    single = str(tmp_path / "single.zarr")
    run(volume, single, CONFIG, model=checkpoint, **QUIET)
    assert np.array_equal(zarr.open_array(output)[:], zarr.open_array(single)[:])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.json", "membrane.zarr"]


@pytest.mark.slurm
def test_a_failed_task_of_a_swept_array_cancels_the_rest_and_stages_nothing(
    volume, checkpoint, tmp_path, cluster
):
    output = str(tmp_path / "out" / "membrane.zarr")
    missing = str(tmp_path / "missing.zarr")
    slow = {**ONE_CPU, "array_parallelism": 1}  # task 0 fails while 1 and 2 wait
    outcome, flight, _ = sweep_array(volume, checkpoint, output, 3, slow, str(tmp_path / "logs"),
                                     volumes=[missing, volume, volume])  # fmt: skip
    failed, *rest = [task.job.job_id for task in flight.tasks]
    assert outcome[0] is False and f"array task {failed} failed" in outcome[1], outcome
    assert "missing.zarr" in (tmp_path / "logs" / "segment.log").read_text()
    # sacct: the failed task, and the others cancelled (a task cancelled before it started is
    # recorded within its array's pending record, e.g. `4_[2]`)
    assert wait_sacct(failed)["State"] == "FAILED"
    array = failed.split("_")[0]
    deadline, states = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        out = slurm(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"]).stdout
        states = dict(line.split("|", 1) for line in out.splitlines())
        others = {job: state for job, state in states.items() if job != failed}
        if others and all(state.startswith("CANCELLED") for state in others.values()):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the array's other tasks {rest} were not all cancelled: {states}")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_a_failed_local_task_of_a_swept_array_fails_it_and_stages_nothing(
    volume, checkpoint, tmp_path
):
    output = str(tmp_path / "out" / "membrane.zarr")
    missing = str(tmp_path / "missing.zarr")
    outcome, flight, _ = sweep_array(volume, checkpoint, output, 3, {}, str(tmp_path / "logs"),
                                     volumes=[volume, missing, volume])  # fmt: skip
    failed = flight.tasks[1].job.job_id
    assert outcome[0] is False and f"array task {failed} failed" in outcome[1], outcome
    assert "missing.zarr" in (tmp_path / "logs" / "segment.log").read_text()
    deadline = time.monotonic() + 30
    while not all(task.job.done() for task in flight.tasks):  # the others cancelled or ended
        assert time.monotonic() < deadline, [task.job.state for task in flight.tasks]
        time.sleep(0.5)
    assert not list((tmp_path / "out").iterdir())
