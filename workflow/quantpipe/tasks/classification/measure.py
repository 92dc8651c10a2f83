"""The timed test pass of a classifier: accuracy, images/s at the large batch, batch-1
latency, and per-image predictions for the summary's paired tests."""

import statistics
import time

import torch


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
