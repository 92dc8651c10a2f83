import math
import re
import struct

import pandas as pd
import pytest
import torch
from quantpipe.artifacts import write_json
from quantpipe.reporting import stats
from quantpipe.reporting.figures import DPI, save_figure
from quantpipe.stages import summary as qs
from quantpipe.stages.report import build
from quantpipe.tasks.cifar10.data import load_splits
from quantpipe.tasks.cifar10.spec import SPEC
from quantpipe.tasks.classification import summary as cs
from quantpipe.tasks.classification.figures import plot_batch_size_curve, render_figures

# Three seeds whose FP32 CPU eager model gets the first 1000, 900, 800 test images wrong:
# accuracy 0.90, 0.91, 0.92 (mean 0.91, sd 0.01), 100, 110, 120 images/s (mean 110, sd 10).
SEEDS = {0: (1000, 100.0), 1: (900, 110.0), 2: (800, 120.0)}
T_2 = 4.302652729749459  # Student t, 95% two-sided, 2 degrees of freedom
PROVENANCE = {
    "threads": 2, "cpu_model": "test cpu", "cpu_int8_flags": "avx512_vnni", "gpu_name": None,
    "host": "node1", "slurm_job_id": None, "slurm_partition": None, "git_commit": "abc123",
    "date": "2026-11-27T00:00:00+00:00",
    "versions": {"torch": "2.14.1", "torchvision": "0.29.1", "torchao": "0.18.0", "python": "3.11"},
}  # fmt: skip
CONFIG = {"val_size": 5000, "seeds": [0, 1, 2], "node_classes": ["any"]}
CURVE_SIZES = (1, 64)  # benchmark.batch_sizes of the fixture's runs


def wrong_on(labels: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Predictions that are right everywhere except on images [start, stop)."""
    predicted = labels.clone()
    predicted[start:stop] = (predicted[start:stop] + 1) % 10
    return predicted.to(torch.uint8)


def measured(
    run: dict,
    variant: str,
    method: str,
    wrong: int,
    images_per_s: float,
    size: int,
    calibration_size=None,
    paired_speedup=None,
) -> dict:
    """A benchmark row as the benchmark stage writes it (`wrong` of the 10,000 images wrong)."""
    return {**run, "variant": variant, "method": method, "calibration_size": calibration_size,
            "paired_speedup": paired_speedup,
            "status": "ok", "reason": "", "accuracy": 1 - wrong / 10_000,
            "images_per_s": images_per_s, "test_set_seconds": 10_000 / images_per_s,
            "batch_size": 256, "latency_ms_p50": 2.0, "latency_ms_p90": 2.5,
            "latency_ms_p99": 3.0, "latencies_ms": [1.5, 2.0, 2.0, 3.0],
            "size_bytes": size, "images_per_s_spread": images_per_s / 20,
            "paired_speedup_spread": 0.1, "batch_curve": batch_curve(images_per_s)}  # fmt: skip


def batch_curve(images_per_s: float) -> list[dict]:
    """A row's batch-size curve at CURVE_SIZES: a quarter of its rate at batch 1, all of it at
    64; the time of one batch follows."""
    return [
        {"batch_size": size, "status": "ok", "reason": "", "images_per_s": images_per_s * share,
         "images_per_s_spread": images_per_s / 20,
         "batch_latency_ms_p50": 1e3 * size / (images_per_s * share), "rounds": 3,
         "round_images": 256}
        for size, share in zip(CURVE_SIZES, (0.25, 1.0), strict=True)
    ]  # fmt: skip


def write_run(
    root, labels: torch.Tensor, node_classes=("any",)
) -> tuple[list[str], list[str], list[str]]:
    """Benchmark metrics, predictions and train metrics of three seeds, as the stages write them.

    Per seed and node class: FP32 CPU eager and compiled (identical predictions), INT8 pt2e at 64
    and 512 calibration images (as many images lost as gained: no significant loss), INT8 eager
    at 64 (100 more images wrong in every seed: a significant loss); the k-th class's INT8 runs
    k + 1 times as fast (pt2e: 4x FP32 eager on the first class, 8x on the second). FP32 GPU once
    (class gpu), skipped.
    """
    metrics, predictions, trained = [], [], []
    for seed, (errors, rate) in SEEDS.items():
        run = {"model": "resnet18_cifar", "width": 8, "seed": seed}
        fp32 = wrong_on(labels, 0, errors)
        variants = {
            ("gpu", "fp32-gpu"): (
                [{**run, "node_class": "gpu", "variant": "fp32-gpu", "method": method,
                  "status": "skipped", "reason": "no CUDA device on this node"}
                 for method in ("eager", "compiled")],
                {},
            ),
        }  # fmt: skip
        for k, node_class in enumerate(node_classes):
            where = {**run, "node_class": node_class}
            variants[(node_class, "fp32-cpu")] = (
                [measured(where, "fp32-cpu", "eager", errors, rate, 4_000_000, paired_speedup=1),
                 measured(where, "fp32-cpu", "compiled", errors, 2 * rate, 4_000_000,
                          paired_speedup=2)],
                {"eager": fp32, "compiled": fp32},
            )  # fmt: skip
            for method, size, start, stop in [("pt2e", 64, 10, errors + 10),
                                              ("pt2e", 512, 5, errors + 5),
                                              ("eager", 64, 0, errors + 100)]:  # fmt: skip
                speedup = 4 * (k + 1)
                row = measured(where, "int8-cpu", method, stop - start, speedup * rate,
                               1_000_000, size, paired_speedup=speedup)  # fmt: skip
                stored = {method: wrong_on(labels, start, stop)}
                variants[(node_class, f"int8-cpu-{method}-c{size}")] = ([row], stored)
        for (node_class, variant), (rows, stored) in variants.items():
            folder = root / node_class / f"resnet18_cifar-w8-s{seed}" / variant
            folder.mkdir(parents=True)
            record = {"config": {**run, "batch_sizes": list(CURVE_SIZES)}, "rows": rows,
                      "provenance": PROVENANCE}  # fmt: skip
            write_json(folder / "metrics.json", record)
            torch.save(stored, folder / "predictions.pt")
            metrics.append(str(folder / "metrics.json"))
            predictions.append(str(folder / "predictions.pt"))
        write_json(root / f"train-{seed}.json", {"config": run, "val_accuracy": 0.9})
        trained.append(str(root / f"train-{seed}.json"))
    return metrics, predictions, trained


@pytest.fixture(scope="module")
def labels(cifar_dir) -> torch.Tensor:
    return load_splits(str(cifar_dir), CONFIG["val_size"])["test"][1]


@pytest.fixture
def fixture_run(tmp_path, labels):
    metrics, predictions, trained = write_run(tmp_path / "benchmark", labels)
    report = tmp_path / "report.csv"
    build(metrics, trained, CONFIG["node_classes"]).to_csv(report, index=False)
    return {"report": str(report), "benchmark_metrics": metrics, "predictions": predictions}


@pytest.fixture
def summary_table(fixture_run, labels) -> pd.DataFrame:
    report = pd.read_csv(fixture_run["report"])
    measurements = cs.paired_measurements(
        fixture_run["benchmark_metrics"], fixture_run["predictions"], labels, ["any"]
    )
    return cs.summarize(report, measurements, stats.config_hash(CONFIG))


def configuration(table: pd.DataFrame, variant: str, method: str, size=None) -> pd.Series:
    chosen = table[(table["variant"] == variant) & (table["method"] == method)]
    if size is not None:
        chosen = chosen[chosen["calibration_size"] == size]
    assert len(chosen) == 1
    return chosen.iloc[0]


@pytest.mark.parametrize(
    "df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]
)
def test_t_critical_matches_the_tables(df, expected):
    assert stats.t_critical(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_mean_interval_of_known_values():
    found = stats.mean_interval([0.90, 0.91, 0.92])
    half = T_2 * 0.01 / math.sqrt(3)
    assert found["mean"] == pytest.approx(0.91) and found["sd"] == pytest.approx(0.01)
    assert found["n"] == 3
    assert found["ci95_low"] == pytest.approx(0.91 - half)
    assert found["ci95_high"] == pytest.approx(0.91 + half)
    one = stats.mean_interval([0.5, float("nan")])
    assert one["mean"] == 0.5 and one["n"] == 1 and math.isnan(one["ci95_low"])
    assert stats.mean_interval([])["n"] == 0


def test_mcnemar_exact_for_few_discordant_images_else_chi_square():
    # Reference values from R: binom.test(3, 15)$p.value, mcnemar.test(matrix(c(0,10,30,0),2)).
    assert stats.mcnemar(12, 3) == (pytest.approx(0.03515625), "exact")
    assert stats.mcnemar(10, 30) == (pytest.approx(0.0026631, rel=1e-4), "chi2-cc")
    assert stats.binomial_two_sided_p(5, 10) == 1.0
    assert stats.binomial_two_sided_p(0, 0) == 1.0
    assert stats.binomial_two_sided_p(1, 10) == pytest.approx(22 / 1024)


def test_verdict_says_no_significant_loss_only_when_the_test_does_not_reject():
    assert stats.verdict(12, 3, 0.035) == "significant loss"
    assert stats.verdict(3, 12, 0.035) == "significant gain"
    assert stats.verdict(7, 3, 0.34) == "no significant loss"


def test_pareto_front_keeps_what_nothing_beats_on_both():
    xs, ys = [100, 200, 400, 300, 400], [0.91, 0.90, 0.89, 0.88, 0.85]
    assert stats.pareto_front(xs, ys) == [0, 1, 2]


def test_summary_from_fixture_metrics(summary_table):
    fp32 = configuration(summary_table, "fp32-cpu", "eager")
    half = T_2 * 0.01 / math.sqrt(3)
    assert fp32["seeds"] == 3 and fp32["accuracy_n"] == 3
    assert fp32["accuracy_mean"] == pytest.approx(0.91)
    assert fp32["accuracy_sd"] == pytest.approx(0.01)
    assert (fp32["accuracy_ci95_low"], fp32["accuracy_ci95_high"]) == (
        pytest.approx(0.91 - half), pytest.approx(0.91 + half))  # fmt: skip
    assert fp32["images_per_s_mean"] == pytest.approx(110)
    assert fp32["images_per_s_ci95_high"] == pytest.approx(110 + T_2 * 10 / math.sqrt(3))
    assert fp32["verdict"] == "baseline"
    pt2e = configuration(summary_table, "int8-cpu", "pt2e", 64)
    assert pt2e["speedup_vs_fp32_cpu_eager_mean"] == pytest.approx(4.0)
    assert pt2e["speedup_vs_fp32_cpu_eager_sd"] == pytest.approx(0.0)
    assert pt2e["size_ratio_mean"] == pytest.approx(4.0)
    assert pt2e["accuracy_delta_mean"] == pytest.approx(0.0)
    # 10 images lost and 10 gained per seed: 30 / 30, McNemar's chi-square with correction.
    assert (pt2e["baseline_only_correct"], pt2e["variant_only_correct"]) == (30, 30)
    assert pt2e["paired_images"] == 30_000
    assert pt2e["mcnemar_test"] == "chi2-cc"
    assert pt2e["mcnemar_p"] == pytest.approx(math.erfc(math.sqrt(1 / 60 / 2)))
    assert pt2e["verdict"] == "no significant loss"
    eager = configuration(summary_table, "int8-cpu", "eager", 64)
    assert eager["accuracy_delta_mean"] == pytest.approx(-0.01)
    assert (eager["baseline_only_correct"], eager["variant_only_correct"]) == (300, 0)
    assert eager["verdict"] == "significant loss" and eager["mcnemar_p"] < 1e-60
    compiled = configuration(summary_table, "fp32-cpu", "compiled")
    assert compiled["mcnemar_test"] == "exact" and compiled["mcnemar_p"] == 1.0
    assert fp32["config_hash"] == stats.config_hash(CONFIG)
    assert fp32["git_commit"] == "abc123" and fp32["threads"] == "2"


def test_unmeasured_configurations_say_why_and_carry_no_number(summary_table):
    gpu = configuration(summary_table, "fp32-gpu", "eager")
    assert gpu["status"] == "skipped" and gpu["seeds"] == 3
    assert gpu["verdict"] == "not measured: no CUDA device on this node"
    assert gpu["accuracy_n"] == 0
    numbers = [f"{metric}_{stat}" for metric in cs.METRICS for stat in ("mean", "ci95_low")]
    assert gpu[numbers].isna().all()


def test_best_int8_is_the_fastest_without_significant_loss(summary_table):
    best = cs.best_int8(summary_table)
    assert len(best) == 1
    assert best.iloc[0]["method"] == "pt2e"
    # pt2e at 64 and at 512 calibration images run at the same speed: the timing cannot rank them.
    assert best.iloc[0]["within_noise_of_best"] == "INT8 CPU pt2e c512"


def test_speed_differences_smaller_than_the_rounds_range_are_within_noise():
    def configuration(speedup, spread):
        return pd.Series(
            {"speedup_vs_fp32_cpu_eager_mean": speedup, "paired_speedup_spread_mean": spread}
        )

    assert stats.within_noise(configuration(3.0, 0.2), configuration(3.1, 0.05))
    assert not stats.within_noise(configuration(3.0, 0.05), configuration(3.1, 0.05))
    # No rounds, no noise known: nothing is called a tie.
    assert not stats.within_noise(configuration(3.0, math.nan), configuration(3.0, math.nan))
    safe = {"node_class": "any", "variant": "int8-cpu", "status": "ok",
            "verdict": "no significant loss",
            "model": "resnet18_cifar", "width": 8, "accuracy_mean": 0.9, "calibration_size": 64,
            "calibration_method": "minmax"}  # fmt: skip
    table = pd.DataFrame(
        [
            {**safe, "method": "pt2e", "speedup_vs_fp32_cpu_eager_mean": 3.0,
             "paired_speedup_spread_mean": 0.3},
            {**safe, "method": "eager", "speedup_vs_fp32_cpu_eager_mean": 2.8,
             "paired_speedup_spread_mean": 0.1},
            {**safe, "method": "onnxruntime", "speedup_vs_fp32_cpu_eager_mean": 2.0,
             "paired_speedup_spread_mean": 0.1},
        ]
    )  # fmt: skip
    (best,) = cs.best_int8(table).to_dict("records")
    assert best["method"] == "pt2e"
    assert best["within_noise_of_best"] == "INT8 CPU eager minmax c64"


def test_latencies_stay_out_of_the_report(fixture_run):
    assert "latencies_ms" not in pd.read_csv(fixture_run["report"]).columns


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def cells(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading` in summary.md."""
    section = markdown.split(f"## {heading}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    table = []
    for line in section[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table


@pytest.mark.slow
def test_run_writes_csv_markdown_html_and_figures(tmp_path, fixture_run, cifar_dir):
    out = tmp_path / "results"
    figures = [str(out / "summary" / f"{name}.{kind}") for name in SPEC.figures
               for kind in ("png", "svg")]  # fmt: skip
    result = qs.run(
        **fixture_run, data=str(cifar_dir), summary=str(out / "summary.csv"),
        markdown=str(out / "summary.md"), tables=str(out / "summary" / "tables.html"),
        figures=figures, config=CONFIG, log=lambda line: None,
    )  # fmt: skip
    assert result["configurations"] == 7
    table = pd.read_csv(out / "summary.csv")
    markdown = (out / "summary.md").read_text()
    # The figures of summary.md are the CSV's.
    every = cells(markdown, "Every configuration")
    assert len(every) == len(table)
    for row, (_, expected) in zip(every, table.iterrows(), strict=True):
        values = row[4 : 4 + len(cs.EVERY_COLUMNS)]
        for cell, (_, metric, scale, digits) in zip(values, cs.EVERY_COLUMNS, strict=True):
            if expected["status"] != "ok":
                assert cell.startswith("not measured")
                continue
            if math.isnan(expected[f"{metric}_mean"]):  # e.g. fp32_layers of an FP32 row
                assert cell == "—"
                continue
            mean, _, half = cell.partition(" ± ")
            assert mean == f"{expected[f'{metric}_mean'] * scale:.{digits}f}"
            low, high = expected[f"{metric}_ci95_low"], expected[f"{metric}_ci95_high"]
            assert half == f"{(high - low) / 2 * scale:.{digits}f}"
    curve = {row[0]: row[1:] for row in cells(markdown, "Batch-size curve")}
    assert len(curve) == 7
    eager = curve["resnet18_cifar w8: FP32 CPU eager"]
    assert eager[0].startswith("28 ± ") and eager[1].startswith("110 ± ")  # 27.5 and 110 img/s
    assert " img/s, " in eager[1] and eager[1].endswith(" ms")
    assert curve["resnet18_cifar w8: FP32 GPU eager"] == ["not measured: no CUDA device on this "
                                                          "node"] * 2  # fmt: skip
    best = cells(markdown, "Best INT8 method per model")[0]
    assert "INT8 CPU pt2e c512" in best  # as fast as the best within the timing noise
    fp32 = configuration(table, "fp32-cpu", "eager")
    table1 = {row[0]: row for row in cells(markdown, "Table 1")}
    assert table1["FP32 CPU eager"][1].split(" ± ")[0] == f"{fp32['test_set_seconds_mean']:.2f}"
    assert table1["FP32 CPU eager"][2] == "24.68" and table1["INT8 CPU pt2e c64"][4] == "11.84"
    assert table1["FP32 GPU eager"][1] == "not measured: no CUDA device on this node"
    assert table1["FP32 CPU eager"][5].split(" ± ")[0] == f"{fp32['accuracy_mean'] * 100:.2f}"
    # Provenance on the page, in the HTML twin and in the figures' footers.
    digest = stats.config_hash(CONFIG)[:12]
    assert f"config {digest}" in markdown and "git abc123" in markdown
    assert "test cpu" in markdown and "threads 2" in markdown and "torch 2.14.1" in markdown
    page = (out / "summary" / "tables.html").read_text()
    assert "<table>" in page and f"config {digest}" in page and "not measured" in page
    assert re.search(
        r"!\[accuracy vs throughput\]\(summary/accuracy_vs_throughput\.png\)", markdown
    )
    for name in SPEC.figures:
        assert png_size(out / "summary" / f"{name}.png")[0] > 1000
        svg = (out / "summary" / f"{name}.svg").read_text()
        assert svg.startswith("<?xml") and f"config {digest}" in svg.replace("\n", " ")


def test_figures_have_their_panels_sizes_and_units(summary_table, fixture_run, labels, tmp_path):
    measurements = cs.paired_measurements(
        fixture_run["benchmark_metrics"], fixture_run["predictions"], labels, ["any"]
    )
    curve = cs.curve_summary(fixture_run["benchmark_metrics"], stats.config_hash(CONFIG))
    figures = render_figures(summary_table, measurements, curve, "Provenance: config abc")
    panels = {name: len(figure.axes) for name, figure in figures.items()}
    assert panels == {"accuracy_vs_throughput": 1, "accuracy_delta_vs_calibration": 1,
                      "speedup_and_size": 2, "latency_batch1": 1,
                      "batch_size_curve": 2}  # fmt: skip
    for name, figure in figures.items():
        for ax in figure.axes:
            assert re.search(r"\(.*(%|images/s|ms|points|×|scale).*\)", ax.get_xlabel())
        path = tmp_path / f"{name}.png"
        save_figure(figure, str(path))
        width, height = figure.get_size_inches() * DPI
        assert png_size(path) == (round(width), round(height))
    assert png_size(tmp_path / "accuracy_vs_throughput.png") == (1350, 750)
    speed = figures["speedup_and_size"].axes[0]
    assert [label.get_text() for label in speed.get_yticklabels()][0] == "FP32 CPU compiled"
    boxes = [label.get_text() for label in figures["latency_batch1"].axes[0].get_yticklabels()]
    assert len(boxes) == 5 and all("(12 calls)" in box for box in boxes)  # 3 seeds x 4 calls
    legend = figures["accuracy_vs_throughput"].axes[0].get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    assert any("not measured (no CUDA device on this node)" in text for text in texts)
    assert any(text.startswith("Pareto front") for text in texts)


def test_the_batch_size_curve_is_summarized_over_seeds_and_drawn_log_log(fixture_run):
    curve = cs.curve_summary(fixture_run["benchmark_metrics"], stats.config_hash(CONFIG))
    # 7 configurations (the two GPU ones not measured) at 2 batch sizes.
    assert len(curve) == 14 and list(curve["batch_size"].unique()) == list(CURVE_SIZES)
    fp32 = curve[(curve["variant"] == "fp32-cpu") & (curve["method"] == "eager")]
    fp32 = fp32.set_index("batch_size")
    assert fp32.loc[64, "images_per_s_mean"] == pytest.approx(110.0)  # 100, 110, 120 img/s
    assert fp32.loc[1, "images_per_s_mean"] == pytest.approx(27.5)
    assert fp32.loc[64, "images_per_s_n"] == 3 and fp32.loc[64, "seeds"] == 3
    gpu = curve[curve["variant"] == "fp32-gpu"]
    assert (gpu["status"] == "skipped").all() and gpu["images_per_s_mean"].isna().all()
    figure = plot_batch_size_curve(curve)
    speed, batch = figure.axes
    assert speed.get_xscale() == speed.get_yscale() == batch.get_yscale() == "log"
    assert len(speed.get_lines()) >= 5 and len(batch.get_lines()) == 5  # measured configurations
    # Each throughput point carries a bar as long as the rounds' range (mean over seeds).
    bars = [collection for collection in speed.collections if len(collection.get_segments())]
    assert len(bars) == 5
    (low, high) = bars[0].get_segments()[-1][:, 1]
    assert high - low == pytest.approx(curve["images_per_s_spread_mean"].dropna().iloc[1])
    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert sum("not measured (no CUDA device on this node)" in text for text in texts) == 2


def test_without_a_curve_the_summary_says_how_to_ask_for_one(tmp_path):
    empty = cs.curve_summary([], "abc")
    assert empty.empty
    blocks = cs.curve_blocks(empty)
    assert blocks == [("h2", "Batch-size curve"), ("p", cs.NO_CURVE)]
    assert "benchmark.batch_sizes is empty" in cs.NO_CURVE
    figure = plot_batch_size_curve(empty)
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert any("set benchmark.batch_sizes" in text for text in texts)
    save_figure(figure, str(tmp_path / "batch_size_curve.png"))
    assert png_size(tmp_path / "batch_size_curve.png")[0] > 1000


@pytest.mark.slow
def test_what_int8_buys_is_told_per_node_class_and_never_across(tmp_path, labels, cifar_dir):
    """Two node classes (INT8 4x FP32 eager on avx2, 8x on amx): statistics, paired tests and
    tables per class; summary.md's per-class table gives each class's best INT8 with its paired
    speedup, spread, batch-1 latency and CPU."""
    classes = ["avx2", "amx"]
    metrics, predictions, trained = write_run(tmp_path / "benchmark", labels, classes)
    report = tmp_path / "report.csv"
    build(metrics, trained, classes).to_csv(report, index=False)
    out = tmp_path / "results"
    figures = [str(out / "summary" / f"{name}.{kind}") for name in SPEC.figures
               for kind in ("png", "svg")]  # fmt: skip
    qs.run(
        report=str(report), benchmark_metrics=metrics, predictions=predictions,
        data=str(cifar_dir), summary=str(out / "summary.csv"), markdown=str(out / "summary.md"),
        tables=str(out / "summary" / "tables.html"), figures=figures,
        config={**CONFIG, "node_classes": classes}, log=lambda line: None,
    )  # fmt: skip
    table = pd.read_csv(out / "summary.csv")
    pt2e = table[(table["method"] == "pt2e") & (table["calibration_size"] == 64)]
    pt2e = pt2e.set_index("node_class")
    assert pt2e.loc["avx2", "speedup_vs_fp32_cpu_eager_mean"] == pytest.approx(4.0)
    assert pt2e.loc["amx", "speedup_vs_fp32_cpu_eager_mean"] == pytest.approx(8.0)
    assert (pt2e["seeds"] == 3).all() and (pt2e["baseline_only_correct"] == 30).all()
    markdown = (out / "summary.md").read_text()
    assert "## Table 1: resnet18_cifar, width 8, node class amx" in markdown
    assert "## Table 1: resnet18_cifar, width 8, node class avx2" in markdown
    rows = {row[0]: row for row in cells(markdown, "What INT8 buys per node class")}
    assert sorted(rows) == ["amx", "avx2"]
    for node_class, speedup in (("amx", "8.00"), ("avx2", "4.00")):
        row = [cell.split(" ± ")[0] for cell in rows[node_class]]  # the seeds agree: ± 0.00
        assert row[1:5] == ["resnet18_cifar w8", "pt2e c64", speedup, "0.10"]
        assert row[5:8] == ["2.00", "2.00", "no significant loss"]
        assert row[8:] == ["test cpu", "avx512_vnni", "node1, no Slurm"]
