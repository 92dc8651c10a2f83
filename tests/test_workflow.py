"""The whole DAG on a tiny config, on this machine (submitit's local executor).

Runs in a copy of the repository so the test never touches a user's results/.
"""

import importlib.util
import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from quantpipe.optional import PEER_METHODS, PEERS_INSTALL
from workflowtools import copy_repository, planned_jobs, snakemake, tiny_config

pytestmark = pytest.mark.workflow
# The peer runtimes join the run where their optional extra is installed (tests/run.sh installs it).
PEERS = [
    method
    for method, modules in PEER_METHODS.items()
    if all(importlib.util.find_spec(name) for name in modules)
]


def quantized(workdir: Path, config: dict, method: str) -> Path:
    """The quantize stage's folder of `method` for the tiny config's one run and calibration."""
    run = f"{config['models'][0]}-w{config['widths'][0]}-s{config['seeds'][0]}"
    size = config["calibration_sizes"][0]
    return workdir / "results" / "quantize" / run / f"{method}-histogram-c{size}"


def changed_jobs(config: dict) -> dict[str, int]:
    """The quantize and benchmark jobs a change of the calibration reruns: one per method
    (qat's in its own rule, quantize_gpu), and everything downstream."""
    methods = config["methods"]
    jobs = {"quantize": len([m for m in methods if m != "qat"]),
            "quantize_gpu": methods.count("qat"), "benchmark": len(methods),
            "report": 1, "summary": 1, "all": 1}  # fmt: skip
    return {rule: count for rule, count in jobs.items() if count}


def run_jobs(config: dict) -> dict[str, int]:
    """The jobs of one more (model, width, seed) run: training, every quantize job, the FP32
    benchmarks (torch's, each peer's, the three GPU precisions) and every INT8 one."""
    jobs = changed_jobs(config)
    return {"train": 1, **jobs, "benchmark": jobs["benchmark"] + 1 + len(PEERS), "benchmark_gpu": 3}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    copy_repository(workdir)
    config = tiny_config(workdir)
    # One run covers every method: the installed peers and a 3-step QAT fine-tune (its own rule,
    # quantize_gpu; on the CPU where CUDA is absent), and a batch-size curve, so the DAG is run
    # once for all the tests.
    config["methods"] = [*config["methods"], *PEERS, "qat"]
    config["qat"] = {"steps": 3, "batch_size": 32}
    config["benchmark"]["batch_sizes"] = [1, 4]  # the batch-size curve, at two sizes
    config["benchmark"]["ceilings"] = True  # measured here, once in the suite's DAGs
    config["benchmark"]["gpu"] = True  # the GPU rows: measured with CUDA, else skipped saying why
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir)
    return workdir, config


def test_report_compares_fp32_and_int8(finished_run):
    workdir, config = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    cpu = report[report["device"] == "cpu"]
    assert (cpu["status"] == "ok").all(), cpu[["variant", "method", "reason"]]
    ok = cpu.set_index(["variant", "method"])
    expected = {("fp32-cpu", "eager"), ("fp32-cpu", "compiled")}
    expected |= {("fp32-cpu", peer) for peer in PEERS}
    expected |= {("int8-cpu", method) for method in config["methods"]}
    assert set(ok.index) == expected and len(ok) == len(expected)
    # Figures that exist and are positive; which runtime is faster is a measurement, printed by
    # `quantpipe compare` and the benchmark stage, not a test (two jobs' timings on a shared
    # machine can come out either way).
    numbers = ["accuracy", "images_per_s", "latency_ms_p50", "latency_ms_p99", "size_mb"]
    assert (ok[numbers] > 0).all().all()
    assert (ok["threads"] >= 1).all()
    # Each CPU job measured its machine's ceilings: every row reaches a fraction of them.
    assert (ok["ceiling_gmac_per_s"] > 0).all() and (ok["fraction_of_ceiling"] > 0).all()
    fp32 = ok.loc[("fp32-cpu", "eager")]
    for method in config["methods"]:
        int8 = ok.loc[("int8-cpu", method)]
        print(f"{method}: accuracy {int8['accuracy']:.4f} vs FP32 {fp32['accuracy']:.4f}, "
              f"{int8['images_per_s']:.0f} vs {fp32['images_per_s']:.0f} img/s")  # fmt: skip
        assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.01
        # The report's speedup is the pair measured in the INT8 job itself, not the ratio of two
        # jobs' rates (kept apart as _unpaired).
        assert int8["speedup_vs_fp32_cpu_eager"] == pytest.approx(int8["paired_speedup"])
        assert int8["speedup_vs_fp32_cpu_eager_unpaired"] == pytest.approx(
            int8["images_per_s"] / fp32["images_per_s"]
        )
        # At width 8 the weights are 0.7 MB, so the PT2E file's graph description (~0.3 MB)
        # weighs; tests/test_quantize.py checks the full-width ratio.
        assert int8["size_ratio"] > 1.3


@pytest.mark.skipif(not PEERS, reason=f"the `peers` extra is not installed: {PEERS_INSTALL}")
def test_the_peers_run_inside_the_dag(finished_run):
    """Each installed peer quantizes in the quantize rule and adds its FP32 runtime's row."""
    workdir, config = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv").set_index(["variant", "method"])
    for peer in PEERS:
        folder = quantized(workdir, config, peer)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["method"] == peer
        assert metrics["calibration_size"] == config["calibration_sizes"][0]
        assert metrics["calibration_settings"]["per_channel"] is True
        assert metrics["size_bytes"] == (folder / "int8.pt").stat().st_size > 0
        fp32 = report.loc[("fp32-cpu", peer)]
        assert fp32["status"] == "ok" and fp32["images_per_s"] > 0
        # The peer runs the same FP32 weights: the same answers as torch, up to rounding.
        assert abs(fp32["accuracy"] - report.loc[("fp32-cpu", "eager"), "accuracy"]) <= 0.002


def test_qat_fine_tunes_inside_the_dag(finished_run):
    """Method qat ran its 3 steps in the DAG, through its own rule, where the GPU (or, without
    CUDA, the CPU) was; a change of its settings reruns only it and what follows."""
    workdir, config = finished_run
    metrics = json.loads((quantized(workdir, config, "qat") / "metrics.json").read_text())
    qat = metrics["qat"]
    assert qat["steps"] == 3 and qat["batch_size"] == 32 and qat["history"]
    assert qat["history"][-1]["step"] == 3 and qat["history"][-1]["loss"] > 0
    assert qat["training_images"] == 50_000 - config["val_size"]
    assert qat["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert qat["device_reason"]
    jobs = planned_jobs(workdir, "--config", "qat={steps: 4, batch_size: 32}")
    assert jobs == {"quantize_gpu": 1, "benchmark": 1, "report": 1, "summary": 1, "all": 1}


def test_gpu_rows_are_measured_or_say_skipped(finished_run):
    """With CUDA the GPU rows carry numbers; without, each says skipped, with the reason."""
    workdir, _ = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    gpu = report[report["device"] == "cuda"]
    assert sorted(gpu["variant"] + " " + gpu["method"]) == sorted(
        f"{precision}-gpu {method}"
        for precision in ("fp32", "bf16", "fp16")
        for method in ("eager", "compiled")
    )
    assert (gpu["precision"] == gpu["variant"].str.split("-").str[0]).all()
    numbers = gpu[["accuracy", "images_per_s", "latency_ms_p50", "size_mb"]]
    markdown = (workdir / "results" / "summary.md").read_text()
    labels = ("FP32 GPU eager", "BF16 GPU compiled", "FP16 GPU eager")
    if torch.cuda.is_available():
        assert (gpu["status"] == "ok").all(), gpu[["variant", "method", "reason"]]
        assert (numbers > 0).all().all()
        for label in labels:  # the summary's lines for it hold numbers, no reason
            lines = [line for line in markdown.splitlines() if f"{label} |" in line]
            assert lines and not any("not measured" in line for line in lines), label
        return
    assert (gpu["status"] == "skipped").all()
    assert gpu["reason"].str.contains("CUDA").all()
    assert numbers.isna().all().all()
    # The summary lists each of them, not measured, with the reason.
    for label in labels:
        assert re.search(rf"{label} \|[^\n]*not measured: [^\n]*CUDA", markdown), label


def test_the_batch_size_curve_has_a_row_per_measurement_and_batch_size(finished_run):
    """benchmark.batch_sizes [1, 4]: batch_sizes.csv holds each report row at both sizes (the
    unmeasured ones saying why), and the summary its table and figure."""
    workdir, _ = finished_run
    results = workdir / "results"
    report = pd.read_csv(results / "report.csv")
    curve = pd.read_csv(results / "batch_sizes.csv")
    keys = ["variant", "method", "calibration_method", "calibration_size"]
    assert len(curve) == 2 * len(report)
    for size in (1, 4):
        at = curve[curve["batch_size"] == size]
        merged = report.merge(at, on=[*keys, "seed"], suffixes=("", "_curve"), validate="1:1")
        assert (merged["status"] == merged["status_curve"]).all()
    measured = curve[curve["status"] == "ok"]
    assert (measured[["images_per_s", "batch_latency_ms_p50"]] > 0).all().all()
    assert (measured["images_per_s_spread"] >= 0).all() and (measured["rounds"] == 2).all()
    assert curve.loc[curve["status"] != "ok", "images_per_s"].isna().all()
    markdown = (results / "summary.md").read_text()
    section = markdown.split("## Batch-size curve", 1)[1]
    assert "| configuration | batch 1 | batch 4 |" in section and " img/s, " in section
    for kind in ("png", "svg"):
        assert (results / "summary" / f"batch_size_curve.{kind}").stat().st_size > 0


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
    assert jobs == changed_jobs(config)


def test_a_new_seed_runs_only_that_seeds_jobs(finished_run):
    workdir, config = finished_run
    jobs = planned_jobs(workdir, "--config", "seeds=[0,1]")
    assert jobs == run_jobs(config)


def test_a_changed_training_setting_reruns_train_and_downstream(finished_run):
    workdir, config = finished_run
    changed = {**config["train"], "epochs": config["train"]["epochs"] + 1}
    jobs = planned_jobs(workdir, "--config", f"train={changed}")
    assert jobs == run_jobs(config)


def test_the_html_report_holds_the_summary(finished_run):
    workdir, config = finished_run
    results = workdir / "results"
    summary = pd.read_csv(results / "summary.csv")
    gpu = summary[summary["variant"] == "fp32-gpu"]
    assert sorted(gpu["method"]) == ["compiled", "eager"]
    unmeasured = gpu["verdict"].str.startswith("not measured: ")
    assert (~unmeasured if torch.cuda.is_available() else unmeasured).all()
    int8 = summary.loc[summary["variant"] == "int8-cpu", "mcnemar_p"]
    assert len(int8) == len(config["methods"]) and int8.between(0, 1).all()
    assert "## Table 1" in (results / "summary.md").read_text()
    figures = ["accuracy_vs_throughput", "accuracy_delta_vs_calibration", "speedup_and_size",
               "latency_batch1", "batch_size_curve"]  # fmt: skip
    for name in figures:
        for kind in ("png", "svg"):
            assert (results / "summary" / f"{name}.{kind}").stat().st_size > 0
    snakemake(workdir, "--report", "report.html")
    page = (workdir / "report.html").read_text()
    for name in ["summary.csv", "tables.html", *(f"{name}.png" for name in figures)]:
        assert name in page


def test_a_new_calibration_method_runs_only_its_jobs(finished_run):
    workdir, config = finished_run
    # minmax, not a per-tensor method: qat takes per-channel calibration methods only.
    jobs = planned_jobs(workdir, "--config", "calibration_methods=[histogram,minmax]")
    assert jobs == changed_jobs(config)
