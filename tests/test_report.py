import json
from pathlib import Path

import pandas as pd
import pytest
from quantpipe.artifacts import write_json
from quantpipe.reporting.rows import LEADING
from quantpipe.stages.report import build, run

PROVENANCE = {
    "threads": 2, "cpu_model": "test cpu", "cpu_int8_flags": "avx512_vnni", "gpu_name": None,
    "host": "node1", "slurm_node": "node1", "slurm_job_id": "42", "slurm_partition": "cpu",
    "git_commit": "abc",
    "date": "2026-11-27T00:00:00+00:00",
    "versions": {"torch": "2.14.1", "torchvision": "0.29.1", "torchao": "0.18.0", "python": "3.11"},
}  # fmt: skip
RUN = {"model": "resnet18_cifar", "width": 16, "seed": 0}
CLASSES = ["any"]


def row(variant, method, accuracy, rate, size, node_class="any", **extra):
    return {**RUN, "node_class": node_class, "variant": variant, "method": method, "status": "ok",
            "reason": "", "accuracy": accuracy, "images_per_s": rate, "size_bytes": size,
            **extra}  # fmt: skip


@pytest.fixture
def metrics(tmp_path):
    return write_metrics(tmp_path)


def write_metrics(tmp_path, **paired):
    """Benchmark files of one run; `paired` (method: paired_speedup) as the rows' pairs."""
    files = {
        "fp32": [row("fp32-cpu", "eager", 0.90, 100.0, 4_000_000),
                 row("fp32-cpu", "compiled", 0.90, 200.0, 4_000_000)],
        "gpu": [{**RUN, "node_class": "gpu", "variant": "fp32-gpu", "method": "eager",
                 "status": "skipped", "reason": "no CUDA device on this node"}],
        "int8": [row("int8-cpu", "pt2e", 0.895, 800.0, 1_000_000, calibration_size=512)],
    }  # fmt: skip
    for rows in files.values():
        for entry in rows:
            if entry["method"] in paired:
                entry.update(paired_speedup=paired[entry["method"]], paired_speedup_spread=0.1)
    paths = []
    for name, rows in files.items():
        path = tmp_path / f"{name}.json"
        write_json(path, {"config": RUN, "rows": rows, "provenance": PROVENANCE})
        paths.append(str(path))
    train = tmp_path / "train.json"
    write_json(train, {"config": RUN, "val_accuracy": 0.91})
    return paths, [str(train)]


def test_report_derives_deltas_speedups_and_ratios(metrics):
    table = build(*metrics, CLASSES).set_index(["variant", "method"])
    int8 = table.loc[("int8-cpu", "pt2e")]
    assert int8["accuracy_delta"] == pytest.approx(-0.005)
    assert int8["speedup_vs_fp32_cpu_eager"] == pytest.approx(8.0)
    assert int8["speedup_vs_best_fp32_cpu"] == pytest.approx(4.0)
    assert int8["size_ratio"] == pytest.approx(4.0)
    assert int8["size_mb"] == pytest.approx(1.0)
    assert int8["val_accuracy_fp32"] == pytest.approx(0.91)
    assert str(int8["slurm_job_id"]) == "42" and int8["torch"] == "2.14.1"


def test_unmeasured_rows_carry_a_reason_and_no_number(metrics):
    gpu = build(*metrics, CLASSES).query("variant == 'fp32-gpu'").iloc[0]
    assert gpu["status"] == "skipped" and "CUDA" in gpu["reason"]
    measured = [
        "accuracy",
        "images_per_s",
        "latency_ms_p50",
        "size_mb",
        "speedup_vs_fp32_cpu_eager",
    ]
    assert pd.isna(gpu[measured]).all()


def test_speedups_come_from_the_pair_where_the_row_has_one(tmp_path):
    """FP32 eager timed in the row's own job gives its speedup; the two jobs' rates stay beside
    it as the unpaired speedup; the best FP32 CPU is the best by the pairs too."""
    files = write_metrics(tmp_path, compiled=1.6, pt2e=7.5)
    table = build(*files, CLASSES).set_index(["variant", "method"])
    int8, compiled = table.loc[("int8-cpu", "pt2e")], table.loc[("fp32-cpu", "compiled")]
    assert int8["speedup_vs_fp32_cpu_eager"] == pytest.approx(7.5)
    assert int8["speedup_vs_fp32_cpu_eager_unpaired"] == pytest.approx(8.0)
    assert int8["paired_speedup_spread"] == pytest.approx(0.1)
    assert compiled["speedup_vs_fp32_cpu_eager"] == pytest.approx(1.6)
    assert int8["speedup_vs_best_fp32_cpu"] == pytest.approx(7.5 / 1.6)
    assert int8["slurm_node"] == "node1" and int8["cpu_int8_flags"] == "avx512_vnni"


def curve(rate):
    """A benchmark row's batch-size curve at batches 1 and 64."""
    return [
        {"batch_size": size, "status": "ok", "reason": "", "images_per_s": rate * share,
         "images_per_s_spread": rate / 20, "batch_latency_ms_p50": 1e3 * size / rate / share,
         "rounds": 3, "round_images": 256}
        for size, share in ((1, 0.25), (64, 1.0))
    ]  # fmt: skip


def test_the_batch_size_curves_go_to_their_own_csv_not_to_report_csv(tmp_path):
    """batch_sizes.csv: a row per measurement and batch size with its run keys and where it
    ran; a row that was not measured gives each asked-for batch size a row saying why;
    report.csv keeps one row per measurement."""
    paths, trained = write_metrics(tmp_path)
    for path in paths:
        record = json.loads(Path(path).read_text())
        record["config"] = {**RUN, "batch_sizes": [1, 64]}
        for entry in record["rows"]:
            if entry["status"] == "ok":
                entry["batch_curve"] = curve(entry["images_per_s"])
        write_json(path, record)
    out = tmp_path / "results"
    result = run(paths, trained, str(out / "report.csv"), str(out / "batch_sizes.csv"),
                 {"node_classes": CLASSES}, log=lambda line: None)  # fmt: skip
    report = pd.read_csv(result["report"])
    assert len(report) == 4 and "batch_curve" not in report.columns
    table = pd.read_csv(result["batch_sizes"])
    assert len(table) == 4 * 2
    assert list(table.columns[: len(LEADING) + 1]) == [*LEADING, "batch_size"]
    int8 = table[(table["variant"] == "int8-cpu")].set_index("batch_size")
    assert int8.loc[1, "images_per_s"] == pytest.approx(200.0)
    assert int8.loc[64, "batch_latency_ms_p50"] == pytest.approx(80.0)
    assert (int8["seed"] == 0).all() and (int8["calibration_size"] == 512).all()
    assert (int8["cpu_model"] == "test cpu").all() and (int8["torch"] == "2.14.1").all()
    gpu = table[table["variant"] == "fp32-gpu"]
    assert list(gpu["batch_size"]) == [1, 64] and (gpu["status"] == "skipped").all()
    assert gpu["reason"].str.contains("CUDA").all() and gpu["images_per_s"].isna().all()


def test_without_a_curve_batch_sizes_csv_holds_its_header_alone(metrics, tmp_path):
    out = tmp_path / "results"
    run(*metrics, str(out / "report.csv"), str(out / "batch_sizes.csv"), {"node_classes": CLASSES},
        log=lambda line: None)  # fmt: skip
    table = pd.read_csv(out / "batch_sizes.csv")
    assert table.empty and "batch_size" in table.columns and "cpu_model" in table.columns


def test_each_node_class_compares_with_its_own_fp32_and_gpu_rows_with_the_first(tmp_path):
    """Two classes of one run: speedups and deltas divide within a class, never across; a GPU
    row compares with the first class of the config; each row says where it ran."""
    rows = [
        row("fp32-cpu", "eager", 0.90, 100.0, 4_000_000, node_class="amx"),
        row("int8-cpu", "pt2e", 0.89, 900.0, 1_000_000, node_class="amx", paired_speedup=8.5),
        row("fp32-cpu", "eager", 0.91, 50.0, 4_000_000, node_class="avx2"),
        row("int8-cpu", "pt2e", 0.90, 100.0, 1_000_000, node_class="avx2", paired_speedup=2.1),
        row("fp32-gpu", "eager", 0.90, 5000.0, 4_000_000, node_class="gpu"),
    ]
    path, train = tmp_path / "rows.json", tmp_path / "train.json"
    write_json(path, {"config": RUN, "rows": rows, "provenance": PROVENANCE})
    write_json(train, {"config": RUN, "val_accuracy": 0.91})
    table = build([str(path)], [str(train)], ["avx2", "amx"]).set_index(["node_class", "variant"])
    amx, avx2 = table.loc[("amx", "int8-cpu")], table.loc[("avx2", "int8-cpu")]
    assert amx["speedup_vs_fp32_cpu_eager"] == pytest.approx(8.5)
    assert amx["speedup_vs_fp32_cpu_eager_unpaired"] == pytest.approx(9.0)  # 900 / amx's 100
    assert avx2["speedup_vs_fp32_cpu_eager_unpaired"] == pytest.approx(2.0)  # 100 / avx2's 50
    assert amx["accuracy_delta"] == pytest.approx(-0.01)
    assert avx2["accuracy_delta"] == pytest.approx(-0.01)
    assert (amx["baseline_node_class"], avx2["baseline_node_class"]) == ("amx", "avx2")
    gpu = table.loc[("gpu", "fp32-gpu")]
    assert gpu["baseline_node_class"] == "avx2"  # the config's first class
    assert gpu["speedup_vs_fp32_cpu_eager"] == pytest.approx(100.0)  # 5000 / avx2's 50
    assert (table["ran_on"] == "Slurm node node1, partition cpu").all()


def test_rows_measured_without_slurm_say_so(tmp_path):
    here = {**PROVENANCE, "slurm_node": None, "slurm_job_id": None, "slurm_partition": None}
    path, train = tmp_path / "rows.json", tmp_path / "train.json"
    write_json(path, {"config": RUN, "rows": [row("fp32-cpu", "eager", 0.9, 100.0, 1)],
                      "provenance": here})  # fmt: skip
    write_json(train, {"config": RUN, "val_accuracy": 0.91})
    (only,) = build([str(path)], [str(train)], CLASSES).to_dict("records")
    assert only["node_class"] == "any" and only["ran_on"] == "node1, no Slurm"
