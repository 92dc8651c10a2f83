"""The whole DAG on a tiny config, on this machine (submitit's local executor).

Runs in a copy of the repository so the test never touches a user's results/.
"""

import re
import time
from pathlib import Path

import pandas as pd
import pytest
from workflowtools import copy_repository, snakemake, tiny_config

pytestmark = pytest.mark.workflow


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule that Snakemake would run (dry run)."""
    output = snakemake(workdir, "--dry-run", *args)
    text = output.stdout + output.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    copy_repository(workdir)
    config = tiny_config(workdir)
    snakemake(workdir)
    return workdir, config


def test_report_compares_fp32_and_int8(finished_run):
    workdir, _ = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    ok = report[report["status"] == "ok"].set_index(["variant", "method"])
    assert set(ok.index) == {("fp32-cpu", "eager"), ("fp32-cpu", "compiled"),
                             ("int8-cpu", "pt2e"), ("int8-cpu", "eager")}  # fmt: skip
    numbers = ["accuracy", "images_per_s", "latency_ms_p50", "latency_ms_p99", "size_mb"]
    assert (ok[numbers] > 0).all().all()
    assert (ok["threads"] >= 1).all()
    fp32 = ok.loc[("fp32-cpu", "eager")]
    for method in ("pt2e", "eager"):
        int8 = ok.loc[("int8-cpu", method)]
        print(f"{method}: accuracy {int8['accuracy']:.4f} vs FP32 {fp32['accuracy']:.4f}, "
              f"{int8['images_per_s']:.0f} vs {fp32['images_per_s']:.0f} img/s")  # fmt: skip
        assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.01
        assert int8["images_per_s"] > fp32["images_per_s"]
        # At width 8 the weights are 0.7 MB, so the PT2E file's graph description (~0.3 MB)
        # weighs; tests/test_quantize.py checks the full-width ratio.
        assert int8["size_ratio"] > 1.3


def test_gpu_rows_say_skipped_with_no_numbers(finished_run):
    workdir, _ = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    gpu = report[report["device"] == "cuda"]
    assert sorted(gpu["variant"] + " " + gpu["method"]) == sorted(
        f"{precision}-gpu {method}"
        for precision in ("fp32", "bf16", "fp16")
        for method in ("eager", "compiled")
    )
    assert (gpu["precision"] == gpu["variant"].str.split("-").str[0]).all()
    assert (gpu["status"] == "skipped").all()
    assert gpu["reason"].str.contains("CUDA").all()
    assert gpu[["accuracy", "images_per_s", "latency_ms_p50", "size_mb"]].isna().all().all()
    # The summary lists each of them, not measured, with the reason.
    markdown = (workdir / "results" / "summary.md").read_text()
    for label in ("FP32 GPU eager", "BF16 GPU compiled", "FP16 GPU eager"):
        assert re.search(rf"{label} \|[^\n]*not measured: [^\n]*CUDA", markdown), label


def test_a_second_run_does_nothing(finished_run):
    workdir, _ = finished_run
    started = time.perf_counter()
    done = snakemake(workdir)
    print(f"no-op rerun took {time.perf_counter() - started:.2f} s")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_a_new_calibration_size_runs_only_its_jobs(finished_run):
    workdir, config = finished_run
    sizes = config["calibration_sizes"] + [128]
    jobs = planned_jobs(workdir, "--config", f"calibration_sizes={sizes}")
    assert jobs == {"quantize": 2, "benchmark": 2, "report": 1, "summary": 1, "all": 1}


def test_a_new_seed_runs_only_that_seeds_jobs(finished_run):
    workdir, _ = finished_run
    jobs = planned_jobs(workdir, "--config", "seeds=[0,1]")
    assert jobs == {"train": 1, "quantize": 2, "benchmark": 3, "benchmark_gpu": 3, "report": 1,
                    "summary": 1, "all": 1}  # fmt: skip


def test_a_changed_training_setting_reruns_train_and_downstream(finished_run):
    workdir, config = finished_run
    changed = {**config["train"], "epochs": config["train"]["epochs"] + 1}
    jobs = planned_jobs(workdir, "--config", f"train={changed}")
    assert jobs == {"train": 1, "quantize": 2, "benchmark": 3, "benchmark_gpu": 3, "report": 1,
                    "summary": 1, "all": 1}  # fmt: skip


def test_the_html_report_holds_the_summary(finished_run):
    workdir, _ = finished_run
    results = workdir / "results"
    summary = pd.read_csv(results / "summary.csv")
    gpu = summary[summary["variant"] == "fp32-gpu"]
    assert (gpu["verdict"].str.startswith("not measured: ")).all()
    assert summary.loc[summary["variant"] == "int8-cpu", "mcnemar_p"].between(0, 1).all()
    assert "## Table 1" in (results / "summary.md").read_text()
    figures = ["accuracy_vs_throughput", "accuracy_delta_vs_calibration", "speedup_and_size",
               "latency_batch1"]  # fmt: skip
    for name in figures:
        for kind in ("png", "svg"):
            assert (results / "summary" / f"{name}.{kind}").stat().st_size > 0
    snakemake(workdir, "--report", "report.html")
    page = (workdir / "report.html").read_text()
    for name in ["summary.csv", "tables.html", *(f"{name}.png" for name in figures)]:
        assert name in page


def test_a_new_calibration_method_runs_only_its_jobs(finished_run):
    workdir, _ = finished_run
    jobs = planned_jobs(workdir, "--config", "calibration_methods=[histogram,minmax_per_tensor]")
    assert jobs == {"quantize": 2, "benchmark": 2, "report": 1, "summary": 1, "all": 1}


def test_qat_runs_as_its_own_gpu_rule(finished_run):
    """Method qat (a fine-tune) goes to quantize_gpu, which the profiles send to a GPU; the
    other methods' quantize jobs stay where they are."""
    workdir, _ = finished_run
    jobs = planned_jobs(workdir, "--config", "methods=[pt2e,eager,qat]")
    assert jobs == {"quantize_gpu": 1, "benchmark": 1, "report": 1, "summary": 1, "all": 1}
    jobs = planned_jobs(workdir, "--config", "methods=[pt2e,eager,qat]", "qat={steps: 10}")
    assert jobs == {"quantize_gpu": 1, "benchmark": 1, "report": 1, "summary": 1, "all": 1}
