"""The benchmark stage: accuracy, throughput, latency and size of one model variant.

Variants: `fp32-cpu` (eager, the study's baseline, and torch.compile; or, given a peer `method`,
that peer runtime's FP32), `fp32-gpu`, `bf16-gpu` and `fp16-gpu` (the same on CUDA, channels_last;
bf16 and fp16 under autocast, quantpipe.precision; or rows marked skipped with the reason where
CUDA or the precision is unusable) and `int8-cpu` (a quantize artifact).
Every measurement follows a warm-up and runs with as many threads as the CPUs the job was given.
Throughput is the timed pass over all 10,000 test images at the large batch (the study's "time over
the test set"); latency is per batch-1 call. Per-image predictions are stored for paired tests.
CPU rows also say what fraction of the machine's multiply-accumulate ceiling for their precision
they reach (quantpipe.ceilings, measured in the same job). With `task: isbi2012_em` the variants
are measured on the tiled EM volume instead (quantpipe.tasks.isbi2012_em.benchmark).
"""

import io
import os
import statistics
import time

import torch
from quantpipe import ceilings, provenance
from quantpipe.artifacts import atomic_path, write_json
from quantpipe.precision import GPU_VARIANTS, for_precision, unusable
from quantpipe.tasks.cifar10.data import load_splits, normalize

VARIANTS = ("fp32-cpu", *GPU_VARIANTS, "int8-cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(module, test_images, test_labels, device, config: dict, log=print) -> dict:
    """Warm up, time the full test pass at config['batch_size'], then batch-1 latency."""
    batch_size = config["batch_size"]
    # Every shape the timed loops use, the last partial batch included: a compiled module
    # recompiles for each new shape, and that must not be timed.
    shapes = {min(batch_size, len(test_images)), len(test_images) % batch_size, 1} - {0}
    with torch.inference_mode():
        for shape in sorted(shapes, reverse=True):
            for _ in range(config["warmup"]):
                module(test_images[:shape].to(device))
        _synchronize(device)
        predictions = []
        started = time.perf_counter()
        for step, start in enumerate(range(0, len(test_images), batch_size), 1):
            output = module(test_images[start : start + batch_size].to(device))
            predictions.append(output.argmax(1).cpu())
            if step % 10 == 0:
                done = min(start + batch_size, len(test_images))
                rate = done / (time.perf_counter() - started)
                log(
                    f"benchmark: test pass {done}/{len(test_images)} images, {rate:.0f} img/s, "
                    f"ETA {(len(test_images) - done) / rate:.0f} s"
                )
        _synchronize(device)
        test_seconds = time.perf_counter() - started
        predictions = torch.cat(predictions)
        latencies = []
        for index in range(config["latency_iterations"]):
            image = test_images[index % len(test_images)][None].to(device)
            _synchronize(device)
            tick = time.perf_counter()
            module(image)
            _synchronize(device)
            latencies.append((time.perf_counter() - tick) * 1e3)
            if (index + 1) % 100 == 0:
                log(f"benchmark: batch-1 latency {index + 1}/{config['latency_iterations']} calls")
    cut = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "accuracy": (predictions == test_labels).float().mean().item(),
        "test_set_seconds": test_seconds,
        "images_per_s": len(test_images) / test_seconds,
        "batch_size": batch_size,
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p90": cut[89],
        "latency_ms_p99": cut[98],
        "latency_iterations": len(latencies),
        # Every batch-1 call, for the summary's latency distribution (not a report.csv column).
        "latencies_ms": [round(latency, 4) for latency in latencies],
        "predictions": predictions.to(torch.uint8),
    }


def state_dict_bytes(module: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def implementations(variant: str, model: str, artifact: str | None, method: str | None):
    """(method label, device, callable module, size in bytes) for each row of this variant."""
    from quantpipe.stages.train import load_trained

    if variant == "int8-cpu":
        from quantpipe.quantize import load_for_cpu

        yield method, torch.device("cpu"), load_for_cpu(method, artifact), os.path.getsize(artifact)
        return
    device = torch.device("cuda" if variant in GPU_VARIANTS else "cpu")
    net, _ = load_trained(model)
    if method:  # a peer runtime's FP32 (ONNX Runtime, OpenVINO)
        from quantpipe.quantize import backend

        runtime, size = backend(method).fp32_for_cpu(net, torch.zeros(2, 3, 32, 32))
        yield method, device, runtime, size
        return
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    size = state_dict_bytes(net)  # FP32 weights, also under autocast
    net = for_precision(net, variant.split("-")[0])
    yield "eager", device, net, size
    yield "compiled", device, torch.compile(net), size


def run(
    model: str,
    data: str,
    metrics: str,
    predictions: str,
    config: dict,
    artifact: str | None = None,
    log=print,
) -> dict:
    """Benchmark `config['variant']`: rows to `metrics`, per-image predictions to `predictions`."""
    if config.get("task") == "isbi2012_em":
        from quantpipe.tasks.isbi2012_em.benchmark import run as benchmark_em

        return benchmark_em(model, data, metrics, predictions, config, artifact, log)
    variant = config["variant"]
    threads = provenance.set_threads()
    base, rows = start_rows(config, log)
    machine = None
    kept_predictions = {}
    if not rows:
        test_images, test_labels = load_splits(data, config["val_size"])["test"]
        test_images = normalize(test_images)
        if variant not in GPU_VARIANTS:
            from quantpipe.stages.train import load_trained

            macs = ceilings.macs_per_image(load_trained(model)[0], tuple(test_images.shape[1:]))
            machine = ceilings.measure()
            log(
                f"benchmark: ceilings with {threads} threads: FP32 "
                f"{machine['fp32_gmac_per_s']:.0f} GMAC/s, INT8 {machine['int8_gmac_per_s']:.0f} "
                f"GMAC/s; the model: {macs / 1e9:.3f} GMAC per image"
            )
        for label, device, module, size in implementations(
            variant, model, artifact, config.get("method")
        ):
            log(f"benchmark: {variant} {label} on {device}, {threads} threads")
            if device.type == "cuda":
                test_images = test_images.contiguous(memory_format=torch.channels_last)
            result = measure(module, test_images, test_labels, device, config, log)
            kept_predictions[label] = result.pop("predictions")
            rows.append(
                {
                    **base,
                    "method": label,
                    "status": "ok",
                    "reason": "",
                    **result,
                    "size_bytes": size,
                    **(
                        ceilings.utilisation(
                            base["precision"],
                            macs,
                            result["images_per_s"],
                            result["latency_ms_p50"],
                            machine,
                        )
                        if machine
                        else {}
                    ),
                }
            )
            log(
                f"benchmark: {variant} {label}: accuracy {result['accuracy']:.4f}, "
                f"{result['images_per_s']:.0f} img/s, p50 {result['latency_ms_p50']:.2f} ms"
            )
    return write_results(metrics, predictions, config, rows, kept_predictions, machine)


def start_rows(config: dict, log=print, **extra) -> tuple[dict, list[dict]]:
    """(what every row of this variant says, `extra` included; the rows when it cannot run:
    skipped, with why)."""
    variant = config["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    base = {
        "variant": variant,
        "device": "cuda" if variant in GPU_VARIANTS else "cpu",
        "precision": variant.split("-")[0],
        "calibration_method": config.get("calibration_method"),
        "calibration_size": config.get("calibration_size"),
        **{key: config[key] for key in ("model", "width", "seed")},
        **extra,
    }
    reason = unusable(base["precision"]) if variant in GPU_VARIANTS else None
    if not reason:
        return base, []
    log(f"benchmark: {variant} skipped: {reason}")
    return base, [
        {**base, "method": label, "status": "skipped", "reason": reason}
        for label in ("eager", "compiled")
    ]


def write_results(
    metrics: str, predictions: str, config: dict, rows: list, kept: dict, machine: dict | None
) -> dict:
    """Each row's predictions to `predictions`, the rows and provenance to `metrics`."""
    with atomic_path(predictions) as tmp:
        torch.save(kept, tmp)
    record = {
        "stage": "benchmark",
        "config": config,
        "rows": rows,
        "ceilings": machine,
        "provenance": provenance.collect(),
    }
    write_json(metrics, record)
    return record
