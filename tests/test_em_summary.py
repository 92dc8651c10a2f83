"""The summary stage on task isbi2012_em's report.csv: a cost table per node class and model,
with the paired speed ratios and what their noise blurs, and its figures."""

import pandas as pd
import pytest
from quantpipe.reporting.stats import config_hash
from quantpipe.stages import summary
from quantpipe.tasks.isbi2012_em.spec import SPEC
from quantpipe.tasks.isbi2012_em.summary import document, summarize

PROVENANCE = {
    "git_commit": "abc123", "torch": "2.14.1", "torchvision": "0.29.1", "torchao": "0.18.0",
    "python": "3.11", "cpu_model": "test cpu", "cpu_int8_flags": "", "gpu_name": None,
    "threads": 4, "host": "node1", "ran_on": "node1, no Slurm",
}  # fmt: skip


def em_row(
    node_class: str,
    model: str,
    seed: int,
    variant: str,
    method: str,
    speedup: float | None,
    spread: float = 0.05,
) -> dict:
    """A report.csv row as the report stage writes it for the EM task; no speedup: skipped. The
    speedup is paired with rounds' range `spread`, the unpaired one 10% above it."""
    row = {"node_class": node_class, "model": model, "width": 16, "seed": seed,
           "variant": variant, "method": method,
           "calibration_method": "minmax" if variant == "int8-cpu" else None,
           "calibration_size": 64 if variant == "int8-cpu" else None, "batch_size": 1,
           **PROVENANCE, "date": f"2026-01-0{seed + 1}"}  # fmt: skip
    if speedup is None:
        return {**row, "status": "skipped", "reason": "no CUDA device on this node"}
    quality = {"v_rand": 0.9, "v_info": 0.95, "pixel_error": 0.1}
    return {**row, "status": "ok", "reason": None, **quality,
            **{f"{name}_delta": 0.0 for name in quality}, "voxels_per_s": 1e6 * speedup,
            "job_hours_per_mm3": 1.5625e15 / (1e6 * speedup) / 3600,
            "voxels_per_s_spread": 1e5, "speedup_vs_fp32_cpu_eager": speedup,
            "paired_speedup_spread": spread, "speedup_vs_fp32_cpu_eager_unpaired": speedup * 1.1,
            "size_mb": 4 / speedup, "size_ratio": speedup,
            "fp32_layers": int(method.endswith("-budget")) if variant == "int8-cpu" else None,
           }  # fmt: skip


def test_run_writes_a_cost_table_per_node_class_and_model_and_the_figures(tmp_path):
    """Two CPU node classes (INT8 2x FP32 on avx2, 3x on amx) and the GPU rows (class gpu)."""
    rows = [
        em_row(node_class, model, seed, variant, method, speedup)
        for model in ("unet2d", "unet3d_aniso")
        for seed in (0, 1)
        for node_class, variant, method, speedup in [
            ("avx2", "fp32-cpu", "eager", 1.0), ("avx2", "int8-cpu", "pt2e", 2.0),
            ("amx", "fp32-cpu", "eager", 1.0), ("amx", "int8-cpu", "pt2e", 3.0),
            ("gpu", "fp32-gpu", "eager", None)]
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "report.csv", index=False)
    out = tmp_path / "results"
    figures = [str(out / "summary" / f"{name}.{kind}") for name in SPEC.figures
               for kind in ("png", "svg")]  # fmt: skip
    config = {"task": "isbi2012_em", "em": {"tile": 256}}
    arguments = dict(
        report=str(tmp_path / "report.csv"), benchmark_metrics=[], predictions=[], data="unread",
        summary=str(out / "summary.csv"), markdown=str(out / "summary.md"),
        tables=str(out / "summary" / "tables.html"), config=config, log=lambda line: None,
    )  # fmt: skip
    result = summary.run(**arguments, figures=figures)
    assert result["configurations"] == 10
    table = pd.read_csv(out / "summary.csv")
    int8 = table[table["variant"] == "int8-cpu"].set_index(["node_class", "model"])
    assert (int8["seeds"] == 2).all()
    assert (int8.loc["avx2", "cost_vs_fp32_cpu_eager_mean"] == 0.5).all()
    assert list(int8.loc["amx", "cost_vs_fp32_cpu_eager_mean"]) == pytest.approx([1 / 3] * 2)
    markdown = (out / "summary.md").read_text()
    for node_class in ("avx2", "amx", "gpu"):
        for model in ("unet2d", "unet3d_aniso"):
            heading = f"Cost per cubic millimetre on node class {node_class}: {model}, width 16"
            assert heading in markdown
    assert "not measured: no CUDA device on this node" in markdown
    digest = config_hash(config)[:12]
    for name in SPEC.figures:
        assert (out / "summary" / f"{name}.png").stat().st_size > 0
        svg = (out / "summary" / f"{name}.svg").read_text().replace("\n", " ")
        assert svg.count(f"Provenance: config {digest}") == 1  # the footer, once
    with pytest.raises(ValueError, match="unknown figures \\['accuracy_vs_throughput'\\]"):
        summary.run(**arguments, figures=[str(out / "accuracy_vs_throughput.png")])


def test_speed_ratios_within_the_rounds_range_are_marked_not_ranked():
    rows = [
        em_row("any", "unet2d", 0, variant, method, speedup, spread)
        for variant, method, speedup, spread in [
            ("fp32-cpu", "eager", 1.0, 0.05), ("fp32-cpu", "compiled", 1.9, 0.1),
            ("int8-cpu", "pt2e", 2.0, 0.15), ("int8-cpu", "eager", 1.5, 0.05),
            ("int8-cpu", "qat", 1.03, 0.02),
        ]
    ]  # fmt: skip
    # A GPU row has no pair (its spread is empty): it is neither ranked nor tied.
    rows.append(
        {**em_row("gpu", "unet2d", 0, "fp32-gpu", "eager", 5.0), "paired_speedup_spread": None}
    )
    table = summarize(pd.DataFrame(rows), "digest").set_index(["variant", "method"])["timing"]
    assert table[("int8-cpu", "pt2e")] == "fastest"
    fastest = "the fastest (INT8 CPU pt2e minmax c64)"
    assert table[("fp32-cpu", "compiled")] == f"within noise of {fastest}"
    assert table[("int8-cpu", "eager")] == ""
    assert table[("int8-cpu", "qat")] == "within noise of FP32 eager"
    assert table[("fp32-cpu", "eager")] == ""  # not compared with itself
    assert table[("fp32-gpu", "eager")] == ""
    # The first table is class any's; the GPU rows (class gpu) have their own.
    block = [block for block in document(summarize(pd.DataFrame(rows), "d"), {}, {})
             if block[0] == "table"][0]  # fmt: skip
    _, header, cells = block
    assert "speed, rounds' range" in header and header[-1] == "timing"
    (pt2e,) = [row for row in cells if row[0] == "INT8 CPU pt2e minmax c64"]
    assert (pt2e[header.index("speed, rounds' range")], pt2e[-1]) == ("0.15", "fastest")


def test_a_budgeted_variant_says_how_many_layers_it_kept_in_fp32():
    rows = [
        em_row("any", "unet2d", 0, variant, method, speedup)
        for variant, method, speedup in [
            ("fp32-cpu", "eager", 1.0), ("int8-cpu", "pt2e", 2.0), ("int8-cpu", "pt2e-budget", 1.8),
        ]
    ]  # fmt: skip
    (_, header, cells) = next(
        block for block in document(summarize(pd.DataFrame(rows), "d"), {}, {})
        if block[0] == "table"
    )  # fmt: skip
    column = header.index("layers in FP32")
    kept = {row[0]: row[column] for row in cells}
    assert kept == {"FP32 CPU eager": "—", "INT8 CPU pt2e minmax c64": "0",
                    "INT8 CPU pt2e-budget minmax c64": "1"}  # fmt: skip
