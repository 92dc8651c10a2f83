"""`quantpipe compare`: every way to run one trained model on this CPU, measured side by side.

In one process, on the same trained model, calibration images and test images: FP32 eager, FP32
torch.compile, each INT8 method (pt2e, eager) and the peers (ONNX Runtime, OpenVINO; FP32 and
INT8) when the `peers` extra is installed. Each INT8 model goes through its backend's artifact
(quantize, save, load, compile), exactly as the pipeline's benchmark stage gets it.

Timing is interleaved: each round runs every variant in turn (batch-256 throughput, then batch-1
latency), starting from a different variant each round, so noise from a shared machine hits all
variants alike; the table prints medians over rounds (throughput) and over all batch-1 calls
(p50, p99). Accuracy is one untimed pass over the test images. Ratios compare each row with FP32
eager and with the best peer of the same precision; `% ceiling` is the achieved multiply-
accumulate rate over the machine's ceiling for that precision (quantpipe.ceilings).

    quantpipe compare --model results/train/RUN/model.pt --data resources/cifar-10-batches-py
"""

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quantpipe import ceilings, optional, provenance, tasks
from quantpipe.artifacts import write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import EXAMPLE_BATCH, PEERS, backend, load_for_cpu, quantize_and_save
from quantpipe.quantize.calibration import parse
from quantpipe.stages.benchmark import state_dict_bytes
from quantpipe.submit import log as stage_log

DEFAULT_METHODS = ("pt2e", "eager", "onnxruntime", "openvino")
# A model by reference (quantpipe.models.references) rarely is one the eager method can take.
NO_FUSION_GROUPS = "the model has no fusion_groups(), which the eager method needs"


@dataclass
class Variant:
    name: str
    precision: str  # fp32 | int8
    runtime: str  # torch | onnxruntime | openvino
    module: object = None
    size_bytes: int | None = None
    skipped: str = ""
    accuracy: float | None = None
    throughputs: list = field(default_factory=list)
    latencies: list = field(default_factory=list)

    @property
    def peer(self) -> bool:
        return self.runtime != "torch"


def _quiet(_line: str) -> None:
    pass


def build_variants(net, calibration, example, architecture, config: dict, log=print) -> list:
    """FP32 eager and compiled, the peers' FP32, then every INT8 method, each ready to call."""
    methods = config["methods"]
    variants = [
        Variant("FP32 eager", "fp32", "torch", net, state_dict_bytes(net)),
        Variant(
            "FP32 compiled", "fp32", "torch", _unfrozen(torch.compile(net)), state_dict_bytes(net)
        ),
    ]
    for method in methods:
        if method in PEERS:
            if optional.missing(method):
                variants.append(Variant(f"FP32 {method}", "fp32", method, skipped=_absent(method)))
                continue
            runtime, size = backend(method).fp32_for_cpu(net, example)
            variants.append(Variant(f"FP32 {method}", "fp32", method, runtime, size))
    with tempfile.TemporaryDirectory(prefix="quantpipe-compare-") as tmp:
        for method in methods:
            name = f"INT8 {method}"
            runtime = method if method in PEERS else "torch"
            if method in PEERS and optional.missing(method):
                variants.append(Variant(name, "int8", runtime, skipped=_absent(method)))
                continue
            if method == "eager" and not hasattr(net, "fusion_groups"):
                variants.append(Variant(name, "int8", runtime, skipped=NO_FUSION_GROUPS))
                continue
            started = time.perf_counter()
            artifact = Path(tmp) / f"{method}.int8"
            quantize_and_save(
                method,
                net,
                calibration,
                example,
                architecture,
                artifact,
                config["calibration_method"],
                log=_quiet,
            )
            module = load_for_cpu(method, str(artifact))
            variants.append(Variant(name, "int8", runtime, module, artifact.stat().st_size))
            log(f"compare: {name} quantized in {time.perf_counter() - started:.1f} s")
    return variants


def _unfrozen(compiled):
    """FP32 torch.compile as the benchmark stage runs it: Inductor without freezing, although
    pt2e.compile_for_cpu turns freezing on for the whole process (it compiles lazily, at a call)."""

    def call(images):
        with torch._inductor.config.patch(freezing=False):
            return compiled(images)

    return call


def _absent(method: str) -> str:
    return f"not installed ({', '.join(optional.missing(method))}): {optional.PEERS_INSTALL}"


def _throughput(module, images: torch.Tensor, batch_size: int, batches: int) -> float:
    """Images/s over `batches` calls of `batch_size` images (fewer if `images` holds fewer)."""
    batch_size = min(batch_size, len(images))
    seen, started = 0, time.perf_counter()
    for index in range(batches):
        start = (index * batch_size) % (len(images) - batch_size + 1)
        seen += len(module(images[start : start + batch_size]))
    return seen / (time.perf_counter() - started)


def _latencies(module, images: torch.Tensor, calls: int) -> list[float]:
    found = []
    for index in range(calls):
        image = images[index % len(images)][None]
        tick = time.perf_counter()
        module(image)
        found.append((time.perf_counter() - tick) * 1e3)
    return found


def measure(variants: list, test_images, test_labels, config: dict, log=print) -> None:
    """Accuracy (one pass), then `rounds` interleaved rounds of throughput and latency."""
    batch_size = config["batch_size"]
    live = [variant for variant in variants if not variant.skipped]
    timed = test_images[: max(batch_size, 1) * 2]
    with torch.inference_mode():
        for variant in live:
            started = time.perf_counter()
            correct = 0
            for start in range(0, len(test_images), batch_size):
                output = variant.module(test_images[start : start + batch_size])
                correct += (output.argmax(1) == test_labels[start : start + batch_size]).sum()
            variant.accuracy = int(correct) / len(test_images)
            for _ in range(config["warmup"]):  # every shape the timed loops use
                variant.module(timed[:batch_size])
                variant.module(timed[:1])
            log(
                f"compare: {variant.name}: accuracy {variant.accuracy:.4f} "
                f"({time.perf_counter() - started:.1f} s with warm-up)"
            )
        for round_index in range(config["rounds"]):
            order = live[round_index % len(live) :] + live[: round_index % len(live)]
            for variant in order:
                variant.throughputs.append(
                    _throughput(variant.module, timed, batch_size, config["throughput_batches"])
                )
                variant.latencies += _latencies(variant.module, timed, config["latency_calls"])
            log(f"compare: round {round_index + 1}/{config['rounds']} done")


def summarize(variants: list, macs: int, machine: dict | None) -> list[dict]:
    """One plain row per variant: medians, ratios against FP32 eager and the best peer."""
    rows = []
    for variant in variants:
        row = {
            "variant": variant.name,
            "precision": variant.precision,
            "runtime": variant.runtime,
            "status": "skipped" if variant.skipped else "ok",
            "reason": variant.skipped,
            "size_mb": variant.size_bytes / 1e6 if variant.size_bytes else None,
        }
        if not variant.skipped:
            cut = statistics.quantiles(variant.latencies, n=100, method="inclusive")
            row.update(
                accuracy=variant.accuracy,
                images_per_s=statistics.median(variant.throughputs),
                latency_ms_p50=statistics.median(variant.latencies),
                latency_ms_p99=cut[98],
                rounds=len(variant.throughputs),
                batch1_calls=len(variant.latencies),
            )
            usage = ceilings.utilisation(
                variant.precision, macs, row["images_per_s"], row["latency_ms_p50"], machine
            )
            row.update(
                fraction_of_ceiling=usage["fraction_of_ceiling"],
                fraction_of_ceiling_batch1=usage["fraction_of_ceiling_batch1"],
            )
        rows.append(row)
    ok = [row for row in rows if row["status"] == "ok"]
    eager = next((row for row in ok if row["variant"] == "FP32 eager"), None)
    for row in ok:
        peers = [
            other
            for other in ok
            if other["runtime"] != "torch" and other["precision"] == row["precision"]
        ]
        best_rate = max((peer["images_per_s"] for peer in peers), default=None)
        best_p50 = min((peer["latency_ms_p50"] for peer in peers), default=None)
        row["throughput_vs_fp32_eager"] = row["images_per_s"] / eager["images_per_s"]
        row["latency_vs_fp32_eager"] = eager["latency_ms_p50"] / row["latency_ms_p50"]
        row["throughput_vs_best_peer"] = row["images_per_s"] / best_rate if best_rate else None
        row["latency_vs_best_peer"] = best_p50 / row["latency_ms_p50"] if best_p50 else None
        row["accuracy_delta"] = row["accuracy"] - eager["accuracy"]
    return rows


COLUMNS = [
    # (header, key, format); ratios are "how many times better": >1 is faster than the reference
    ("variant", "variant", "{}"),
    ("acc %", "accuracy", "{:.2%}"),
    ("Δacc", "accuracy_delta", "{:+.2%}"),
    ("MB", "size_mb", "{:.2f}"),
    ("b1 p50 ms", "latency_ms_p50", "{:.3f}"),
    ("b1 p99 ms", "latency_ms_p99", "{:.3f}"),
    ("b1 ×eager", "latency_vs_fp32_eager", "{:.2f}"),
    ("b1 ×peer", "latency_vs_best_peer", "{:.2f}"),
    ("img/s", "images_per_s", "{:.0f}"),
    ("×eager", "throughput_vs_fp32_eager", "{:.2f}"),
    ("×peer", "throughput_vs_best_peer", "{:.2f}"),
    ("%ceil", "fraction_of_ceiling", "{:.0%}"),
    ("b1 %ceil", "fraction_of_ceiling_batch1", "{:.0%}"),
]


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table, one line per variant; skipped variants say why."""
    header = [title for title, _, _ in COLUMNS]
    lines = []
    for row in rows:
        if row["status"] != "ok":
            lines.append([row["variant"], f"skipped: {row['reason']}"])
            continue
        lines.append(
            ["—" if row.get(key) is None else form.format(row[key]) for _, key, form in COLUMNS]
        )
    widths = [
        max(len(header[i]), *(len(line[i]) for line in lines if len(line) == len(header)))
        for i in range(len(header))
    ]

    def render(cells):
        if len(cells) != len(header):
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(
            f"{cell:<{widths[i]}}" if i == 0 else f"{cell:>{widths[i]}}"
            for i, cell in enumerate(cells)
        )

    return "\n".join([render(header), render(["-" * w for w in widths])] + list(map(render, lines)))


def compare(model: str, data: str, config: dict, log=print) -> dict:
    """Build every variant of `model` and measure them interleaved: rows and context."""
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
        threads = config["threads"]
    else:
        threads = provenance.set_threads()
    net, record = load_trained(model)
    trained = record.get("config", {})
    val_size = config.get("val_size") or trained.get("val_size", 5000)
    seed = trained.get("seed", 0)
    calibration_method = parse(config["calibration_method"]).name
    config = {**config, "calibration_method": calibration_method}
    task = tasks.load(trained.get("task"))
    split_config = {**trained, "val_size": val_size, "seed": seed}
    test_images, test_labels = task.splits(data, split_config)["test"]
    test_images = task.normalizer(data, split_config)(test_images[: config["test_images"]])
    test_labels = test_labels[: config["test_images"]]
    images = task.calibration_inputs(data, split_config, config["calibration_size"])
    macs = ceilings.macs_per_image(net, tuple(test_images.shape[1:]))
    log(
        f"compare: {model}: {record.get('architecture')}, {macs / 1e9:.3f} GMAC per image; "
        f"{threads} threads; calibration {calibration_method} on {len(images)} images"
    )
    machine = ceilings.measure() if config["ceilings"] else None
    if machine:
        log(f"compare: ceilings {ceilings.describe(machine)}")
    calibration = list(images.split(config["calibration_batch_size"]))
    variants = build_variants(
        net,
        calibration,
        images[:EXAMPLE_BATCH].clone(),
        record.get("architecture"),
        config,
        log,
    )
    measure(variants, test_images, test_labels, config, log)
    rows = summarize(variants, macs, machine)
    where = provenance.collect()
    return {
        "stage": "compare",
        "model": model,
        "architecture": record.get("architecture"),
        "config": config,
        "macs_per_image": macs,
        "ceilings": machine,
        "rows": rows,
        "machine": {
            key: where[key] for key in ("cpu_model", "cpu_int8_flags", "threads", "host", "date")
        },
        "versions": {**where["versions"], **_peer_versions()},
        "provenance": where,
    }


def _peer_versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("onnxruntime", "openvino", "nncf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def report(result: dict) -> str:
    """The table with the context needed to read it."""
    machine, config = result["machine"], result["config"]
    versions = ", ".join(
        f"{name} {result['versions'].get(name)}"
        for name in ("torch", "torchao", "onnxruntime", "openvino", "nncf")
    )
    lines = [
        f"model {result['model']} {result['architecture']}: "
        f"{result['macs_per_image'] / 1e9:.3f} GMAC per image",
        f"CPU {machine['cpu_model']} (INT8: {machine['cpu_int8_flags']}), "
        f"{machine['threads']} threads; {versions}",
        f"calibration {config['calibration_method']} on {config['calibration_size']} training "
        f"images; accuracy on {config['test_images']} test images; "
        f"{config['rounds']} interleaved rounds: batch {config['batch_size']} x "
        f"{config['throughput_batches']} (median img/s), {config['latency_calls']} batch-1 calls "
        "each (p50/p99 over all calls)",
    ]
    if result["ceilings"]:
        lines.append(
            f"ceilings, each the better of a GEMM and a oneDNN convolution: "
            f"{ceilings.describe(result['ceilings'])}"
        )
    lines.append(
        "×eager: times faster than FP32 eager; ×peer: than the best peer runtime "
        "(ONNX Runtime, OpenVINO) of the same precision"
    )
    return "\n".join(lines) + "\n\n" + format_table(result["rows"])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantpipe compare",
        description="Every FP32 and INT8 runtime of one trained model on this CPU, side by side "
        "(interleaved rounds, medians).",
    )
    parser.add_argument("--model", required=True, help="a train stage model.pt")
    parser.add_argument("--data", required=True, help="CIFAR-10 (cifar-10-batches-py)")
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--calibration-method", default="histogram", help="see config.schema.yaml")
    parser.add_argument("--calibration-batch-size", type=int, default=64)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=DEFAULT_METHODS,
        help="INT8 methods; onnxruntime and openvino also add their FP32 (default: all)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--throughput-batches", type=int, default=4, help="per variant per round")
    parser.add_argument("--latency-calls", type=int, default=50, help="per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=10_000, help="for accuracy")
    parser.add_argument("--val-size", type=int, help="default: the model's training config")
    parser.add_argument("--threads", type=int, help="default: the CPUs this process may use")
    parser.add_argument("--no-ceilings", dest="ceilings", action="store_false")
    parser.add_argument("--json", help="also write every number (and provenance) here")
    return parser


def main(argv: list[str] | None = None, log=None) -> int:
    arguments = vars(parser().parse_args(argv))
    model, data, json_path = arguments.pop("model"), arguments.pop("data"), arguments.pop("json")
    result = compare(model, data, arguments, log=log or stage_log)
    print(report(result), flush=True)
    if json_path:
        write_json(json_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
