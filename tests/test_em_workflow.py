"""The whole DAG on the tiny EM config (task isbi2012_em), on this machine, in a copy of the
repository: a U-Net trained a few steps, quantized by both methods, segmented tile by tile."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from conftest import REPO
from workflowtools import copy_repository, planned_jobs, snakemake

pytestmark = pytest.mark.workflow
MODELS = ("unet3d_aniso",)  # tests/configs/tiny_em.yaml


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, isbi_dir):
    workdir = tmp_path_factory.mktemp("em_workflow")
    copy_repository(workdir)
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny_em.yaml").read_text())
    # isbi_dir: the cache is filled, so the workflow's prepare_data (no downloads) can copy it
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir)
    return workdir, config


def test_report_scores_fp32_and_both_int8_methods(finished_run):
    workdir, _ = finished_run
    report = pd.read_csv(workdir / "results" / "report.csv")
    for model in MODELS:
        rows = report[report["model"] == model]
        ok = rows[(rows["status"] == "ok") & (rows["device"] == "cpu")]
        ok = ok.set_index(["variant", "method"])
        assert set(ok.index) == {("fp32-cpu", "eager"), ("fp32-cpu", "compiled"),
                                 ("int8-cpu", "pt2e"), ("int8-cpu", "eager")}  # fmt: skip
        for column in ("v_rand", "v_info", "pixel_error"):
            assert ok[column].between(0, 1).all(), column
        assert (ok["voxels_per_s"] > 0).all() and (ok["threads"] >= 1).all()
        for _, row in ok.iterrows():
            hours = 1.5625e15 / row["voxels_per_s"] / 3600
            assert math.isclose(row["job_hours_per_mm3"], hours, rel_tol=1e-9)
        # Every CPU row timed in a round beside FP32 eager (tiny_em.yaml), FP32 eager beside
        # itself: the report's speedup is the pair's.
        assert (ok["rounds"] == 1).all() and (ok["paired_speedup"] > 0).all()
        assert (ok["voxels_per_s_spread"] >= 0).all() and (ok["paired_speedup_spread"] >= 0).all()
        assert (ok["speedup_vs_fp32_cpu_eager"] == ok["paired_speedup"]).all()
        fp32 = ok.loc[("fp32-cpu", "eager")]
        assert fp32["speedup_vs_fp32_cpu_eager_unpaired"] == 1 and fp32["v_rand_delta"] == 0
        for method in ("pt2e", "eager"):  # INT8 scores the segmentation about as FP32 does
            int8 = ok.loc[("int8-cpu", method)]
            assert int8["v_rand_delta"] == pytest.approx(int8["v_rand"] - fp32["v_rand"])
            assert abs(int8["pixel_error"] - fp32["pixel_error"]) < 0.05, method
        assert "accuracy" not in report.columns  # the report has the task's own columns
        gpu = rows[rows["variant"] == "fp32-gpu"]
        assert sorted(gpu["method"]) == ["compiled", "eager"]
        if torch.cuda.is_available():
            assert (gpu["status"] == "ok").all() and gpu["v_rand"].between(0, 1).all()
            assert (gpu["voxels_per_s"] > 0).all() and gpu["paired_speedup"].isna().all()
        else:
            assert (gpu["status"] == "skipped").all()
            assert gpu["reason"].str.contains("CUDA").all() and gpu["v_rand"].isna().all()


def test_summary_has_a_cost_table_per_model(finished_run):
    workdir, _ = finished_run
    results = workdir / "results"
    markdown = (results / "summary.md").read_text()
    for model in MODELS:
        assert f"Cost per cubic millimetre on node class any: {model}" in markdown
    assert "job-hours per mm³" in markdown and "cost vs FP32 CPU" in markdown
    for name in ("quality_vs_throughput", "cost_per_mm3"):
        for kind in ("png", "svg"):
            assert (results / "summary" / f"{name}.{kind}").stat().st_size > 0


def test_a_second_run_does_nothing(finished_run):
    workdir, _ = finished_run
    done = snakemake(workdir)
    assert "Nothing to be done" in done.stdout + done.stderr


def test_a_new_tile_size_reruns_inference_not_training(finished_run):
    workdir, config = finished_run
    em = {**config["em"], "tile": config["em"]["tile"] // 2}
    jobs = planned_jobs(workdir, "--config", f"em={em}")
    assert jobs == {"quantize": 2, "benchmark": 3, "benchmark_gpu": 1, "segment": 3,
                    "report": 1, "summary": 1, "all": 1}  # fmt: skip


def test_the_whole_stack_is_segmented_by_a_job_array_per_variant(finished_run):
    workdir, _ = finished_run
    for model in MODELS:
        runs = sorted((workdir / "results" / "segment").glob(f"{model}-*/*/metrics.json"))
        variants = {path.parent.name for path in runs}
        assert variants == {"fp32-cpu", "int8-cpu-pt2e-histogram-c8",
                            "int8-cpu-eager-histogram-c8"}  # fmt: skip
        for path in runs:
            record = json.loads(path.read_text())
            assert len(record["tasks"]) == 3  # em.array_tasks, by default
            assert record["voxels"] == 30 * 512 * 512
            probability = zarr.open_array(path.parent / "membrane.zarr", mode="r")[:]
            assert probability.shape == (30, 512, 512)
            assert np.isfinite(probability).all()  # every block was written
            assert ((probability >= 0) & (probability <= 1)).all()
        # INT8 segments the stack as FP32 does: the same network, 8-bit weights and activations.
        maps = {
            path.parent.name: zarr.open_array(path.parent / "membrane.zarr", mode="r")[:]
            for path in runs
        }
        fp32 = maps.pop("fp32-cpu")
        for variant, probability in maps.items():
            gap = float(np.abs(probability - fp32).mean())
            print(f"{variant}: mean |p - p_fp32| {gap:.4f}")
            assert gap < 0.05, variant
