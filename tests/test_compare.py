"""The machine's ceilings, a model's multiply-accumulates, `quantpipe compare` on a tiny model."""

import json
import math
import re
import time

import pytest
import torch
from quantpipe import ceilings, cli, optional
from quantpipe.compare import format_table, summarize
from quantpipe.models.build import build_model
from torch import nn


def test_ceilings_are_the_better_of_a_gemm_and_a_convolution():
    # Which probe wins is a measurement, not a test: 0.3 s on a shared machine can come out
    # either way. The benchmark stage logs the ceilings; `quantpipe compare` prints each
    # variant's fraction of them.
    found = ceilings.measure(seconds=0.3)
    print(found)
    assert found["threads"] == torch.get_num_threads()
    for precision in ("fp32", "int8"):
        probes = [found[f"{precision}_{kind}_gmac_per_s"] for kind in ("gemm", "conv")]
        assert all(math.isfinite(rate) and rate > 0 for rate in probes), precision
        assert found[f"{precision}_gmac_per_s"] == max(probes)
        winner = "gemm" if probes[0] >= probes[1] else "conv"
        kernel = ceilings.KERNELS[f"{precision}_{winner}"]
        sizes = {ceilings.GEMM_SIZE, ceilings.SMALL_GEMM_SIZE}
        assert found[f"{precision}_kernel"] in {kernel.format(size=n) for n in sizes}
    assert re.fullmatch(r"FP32 \d+ GMAC/s \(GEMM \d+, conv \d+\), INT8 .*\)",
                        ceilings.describe(found))  # fmt: skip


def test_a_gemm_too_slow_for_the_full_size_is_probed_small():
    """A kernel whose quarter-size call already implies a full-size call of minutes (torch._int_mm
    without VNNI) is timed at SMALL_GEMM_SIZE and says so; a fast one at GEMM_SIZE."""
    kernel = "gemm {size}"
    slow = ceilings._gemm_rate(lambda a, b: time.sleep(0.01), lambda n: n, kernel, 0.05)
    assert slow[1] == kernel.format(size=ceilings.SMALL_GEMM_SIZE)
    fast = ceilings._gemm_rate(lambda a, b: None, lambda n: n, kernel, 0.05)
    assert fast[1] == kernel.format(size=ceilings.GEMM_SIZE) and fast[0] > slow[0]


@pytest.mark.slow
def test_int8_ceiling_probes_the_kernel_a_compiled_pt2e_model_runs():
    """A compiled PT2E network lowers its convolutions to the oneDNN call the INT8 probe times,
    and its rate stays below the ceiling."""
    from quantpipe.quantize import pt2e
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    images = torch.randn(128, 3, 32, 32)
    quantized = pt2e.quantize(net, [images], images[:2], log=lambda _: None)
    compiled = pt2e.compile_for_cpu(quantized)
    with torch.no_grad():
        _, code = run_and_get_code(compiled, images)
        assert "torch.ops.onednn.qconv_pointwise" in "\n".join(code)
        started, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - started < 0.5:
            compiled(images)
            calls += 1
        images_per_s = calls * len(images) / (time.perf_counter() - started)
    machine = ceilings.measure(seconds=0.4)
    usage = ceilings.utilisation("int8", ceilings.macs_per_image(net), images_per_s, None, machine)
    print(usage, machine)
    assert 0 < usage["fraction_of_ceiling"] < 1


def test_macs_are_counted_once_per_image():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    assert ceilings.macs_per_image(net) == 3 * 8 * 9 * 32 * 32 + 8 * 32 * 32 * 10
    model = build_model("resnet18_cifar", width=64).train()
    assert ceilings.macs_per_image(model) == pytest.approx(0.556e9, rel=0.01)  # as FACTS.md
    assert model.training  # counting leaves the mode (and batch-norm statistics) alone


def test_utilisation_is_the_achieved_rate_over_the_ceiling():
    machine = {"fp32_gmac_per_s": 100.0, "int8_gmac_per_s": 800.0}
    found = ceilings.utilisation("int8", 10**9, 400.0, 5.0, machine)
    assert found["achieved_gmac_per_s"] == pytest.approx(400.0)
    assert found["fraction_of_ceiling"] == pytest.approx(0.5)
    assert found["fraction_of_ceiling_batch1"] == pytest.approx(200 / 800)
    assert ceilings.utilisation("fp32", 10**9, 50.0, 20.0, machine)["fraction_of_ceiling"] == 0.5
    assert ceilings.utilisation("fp32", 10**9, 50.0, 20.0, None)["fraction_of_ceiling"] is None


def test_ratios_compare_with_fp32_eager_and_the_best_peer_of_the_same_precision():
    from quantpipe.compare import Variant

    def made(name, precision, runtime, rate, p50):
        variant = Variant(name, precision, runtime, object(), 1_000_000, accuracy=0.9)
        variant.throughputs, variant.latencies = [rate, rate], [p50] * 10
        return variant

    rows = summarize(
        [
            made("FP32 eager", "fp32", "torch", 100, 10.0),
            made("FP32 onnxruntime", "fp32", "onnxruntime", 200, 4.0),
            made("INT8 pt2e", "int8", "torch", 1000, 1.0),
            made("INT8 onnxruntime", "int8", "onnxruntime", 500, 0.5),
            made("INT8 openvino", "int8", "openvino", 800, 2.0),
            Variant("INT8 other", "int8", "other", skipped="not installed"),
        ],
        macs=10**9,
        machine=None,
    )
    pt2e = next(row for row in rows if row["variant"] == "INT8 pt2e")
    assert pt2e["throughput_vs_fp32_eager"] == 10 and pt2e["latency_vs_fp32_eager"] == 10
    assert pt2e["throughput_vs_best_peer"] == 1000 / 800  # the fastest INT8 peer at batch 256
    assert pt2e["latency_vs_best_peer"] == 0.5  # the fastest INT8 peer at batch 1
    fp32 = next(row for row in rows if row["variant"] == "FP32 eager")
    assert fp32["throughput_vs_best_peer"] == 0.5  # against FP32 peers only
    text = format_table(rows)
    assert "INT8 other" in text and "skipped: not installed" in text


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as the train stage writes it, of a width-4 network (random weights)."""
    torch.manual_seed(0)
    architecture = {"name": "resnet18_cifar", "width": 4, "num_classes": 10}
    net = build_model(**architecture).eval()
    path = tmp_path_factory.mktemp("compare") / "model.pt"
    record = {"config": {"val_size": 5000, "seed": 0}, "architecture": architecture}
    torch.save({"architecture": architecture, "state_dict": net.state_dict(), "record": record},
               path)  # fmt: skip
    return path


@pytest.mark.slow
def test_compare_prints_every_variant(tiny_checkpoint, cifar_dir, tmp_path, capsys):
    out = tmp_path / "compare.json"
    status = cli.main([
        "compare", "--model", str(tiny_checkpoint), "--data", str(cifar_dir),
        "--calibration-size", "32", "--test-images", "64", "--batch-size", "16", "--rounds", "2",
        "--throughput-batches", "1", "--latency-calls", "3", "--warmup", "1", "--threads", "1",
        "--json", str(out),
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    print(printed)
    expected = ["FP32 eager", "FP32 compiled", "INT8 pt2e", "INT8 eager", "INT8 onnxruntime",
                "INT8 openvino", "FP32 onnxruntime", "FP32 openvino"]  # fmt: skip
    for name in expected:
        assert f"\n{name} " in printed
    for header in ("b1 p50 ms", "b1 p99 ms", "img/s", "×eager", "×peer", "acc %", "MB", "%ceil"):
        assert header in printed
    result = json.loads(out.read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == set(expected)
    for name in ("FP32 eager", "FP32 compiled", "INT8 pt2e", "INT8 eager"):
        row = rows[name]
        assert row["status"] == "ok" and row["images_per_s"] > 0 and row["latency_ms_p50"] > 0
        assert row["rounds"] == 2 and row["batch1_calls"] == 6
        assert 0 < row["fraction_of_ceiling"]
    assert rows["FP32 eager"]["throughput_vs_fp32_eager"] == 1
    assert rows["INT8 pt2e"]["size_mb"] < rows["FP32 eager"]["size_mb"]
    assert rows["FP32 compiled"]["accuracy"] == pytest.approx(rows["FP32 eager"]["accuracy"])
    for method in ("onnxruntime", "openvino"):
        if optional.missing(method):  # the extra is optional: the row says how to get it
            assert rows[f"INT8 {method}"]["status"] == "skipped"
            assert optional.PEERS_INSTALL in rows[f"INT8 {method}"]["reason"]
        else:
            assert rows[f"INT8 {method}"]["status"] == "ok"
            assert rows[f"INT8 {method}"]["throughput_vs_best_peer"] is not None


def test_cli_lists_compare(capsys):
    assert cli.main([]) == 2
    usage = capsys.readouterr().out  # usage: quantpipe {prepare_data,train,...,compare} ...
    listed = usage.removeprefix("usage: quantpipe {").split("}", 1)[0].split(",")
    assert {"train", "quantize", "benchmark", "report", "summary", "compare"} <= set(listed)
