"""Task images through the whole DAG, on this machine: a 3-class ImageFolder of 48x48 PNGs made
from CIFAR-10 test images, brought to 32x32; then one image added, which reruns prepare_data and
what depends on it. Runs in a copy of the repository so the test never touches a user's results/.
"""

import json
import os
import re
import shutil

import pandas as pd
import pytest
import yaml
from test_images import CLASSES, write_folder
from test_workflow import planned_jobs
from workflowtools import copy_repository, snakemake

pytestmark = pytest.mark.workflow
TRAIN, TEST = 60, 30  # images per class


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cifar_dir):
    workdir = tmp_path_factory.mktemp("workflow")
    copy_repository(workdir)
    root = write_folder(tmp_path_factory.mktemp("images"), cifar_dir, TRAIN, TEST, size=48)
    config = {
        "task": "images",
        "images": {"root": str(root), "image_size": 32, "val_fraction": 0.2},
        "num_classes": len(CLASSES),
        "models": ["resnet18_cifar"],
        "widths": [8],
        "seeds": [0],
        "calibration_sizes": [32],
        "methods": ["pt2e", "eager"],
        "train": {"epochs": 1, "batch_size": 32, "log_every": 5},
        "benchmark": {"gpu": False, "warmup": 1, "latency_iterations": 20},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:  # the decoded cache stays in the test's folder
        patch.setenv("QUANTPIPE_CACHE", str(workdir / "cache"))
        snakemake(workdir)
        yield workdir, root


def test_report_rows_measure_the_folders_test_images(finished_run):
    workdir, _ = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    assert (report["status"] == "ok").all(), report[["variant", "method", "reason"]]
    assert set(zip(report["variant"], report["method"], strict=True)) == {
        ("fp32-cpu", "eager"), ("fp32-cpu", "compiled"),
        ("int8-cpu", "pt2e"), ("int8-cpu", "eager"),
    }  # fmt: skip
    assert ((report["accuracy"] >= 0) & (report["accuracy"] <= 1)).all()
    # INT8 classifies the folder's 90 test images about as FP32 does (at most 9 apart), and the
    # delta column is the difference from FP32 eager.
    rows = report.set_index(["variant", "method"])
    fp32 = rows.loc[("fp32-cpu", "eager"), "accuracy"]
    for method in ("pt2e", "eager"):
        int8 = rows.loc[("int8-cpu", method)]
        assert int8["accuracy_delta"] == pytest.approx(int8["accuracy"] - fp32)
        assert abs(int8["accuracy"] - fp32) <= 0.1, method
    assert (report["images_per_s"] > 0).all()
    prepared = json.loads((workdir / "results/prepare_data/images.json").read_text())
    assert prepared["classes"] == list(CLASSES) and prepared["images"]["test"] == 3 * TEST
    assert prepared["images"]["train"] + prepared["images"]["val"] == 3 * TRAIN
    summary = (workdir / "results" / "summary.md").read_text()
    assert "## Table 1" not in summary and "does not apply to this data set" in summary


def test_an_added_image_reruns_prepare_data_and_what_follows(finished_run):
    workdir, root = finished_run
    assert planned_jobs(workdir) == {}
    shutil.copy(root / "train/cat/0003.png", root / "train/cat/added.png")
    jobs = planned_jobs(workdir)
    assert jobs == {"prepare_data": 1, "train": 1, "quantize": 2, "benchmark": 3, "report": 1,
                    "summary": 1, "all": 1}  # fmt: skip
    dry_run = snakemake(workdir, "--dry-run")
    text = dry_run.stdout + dry_run.stderr
    assert re.search(r"reason: [^\n]*input files", text), text[-3000:]
    os.remove(root / "train/cat/added.png")
