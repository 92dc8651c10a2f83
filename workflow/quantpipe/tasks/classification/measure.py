"""The timed test pass of a classifier: accuracy, images/s at the large batch, batch-1
latency, and per-image predictions for the summary's paired tests."""

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(module, test_images, test_labels, device, config: dict, prepare, log=print) -> dict:
    """Warm up, time the full test pass at config['batch_size'], then batch-1 latency.

    `test_images` are uint8; `prepare` makes each batch model input (normalised) before its
    clock starts, so the set is never held whole as float and the time is the model's alone:
    the transfer to `device`, the forward pass and the predictions' return.
    """
    batch_size = config["batch_size"]
    # Every shape the timed loops use, the last partial batch included: a compiled module
    # recompiles for each new shape, and that must not be timed.
    shapes = {min(batch_size, len(test_images)), len(test_images) % batch_size, 1} - {0}
    with torch.inference_mode():
        for shape in sorted(shapes, reverse=True):
            batch = prepare(test_images[:shape])
            for _ in range(config["warmup"]):
                module(batch.to(device))
        synchronize(device)
        predictions = []
        test_seconds = 0.0
        for step, start in enumerate(range(0, len(test_images), batch_size), 1):
            batch = prepare(test_images[start : start + batch_size])
            tick = time.perf_counter()
            output = module(batch.to(device))
            predictions.append(output.argmax(1).cpu())  # .cpu() waits for the device
            test_seconds += time.perf_counter() - tick
            if step % 10 == 0:
                done = min(start + batch_size, len(test_images))
                rate = done / test_seconds
                log(
                    f"benchmark: test pass {done}/{len(test_images)} images, {rate:.0f} img/s, "
                    f"ETA {(len(test_images) - done) / rate:.0f} s"
                )
        predictions = torch.cat(predictions)
        latencies = []
        for index in range(config["latency_iterations"]):
            at = index % len(test_images)
            image = prepare(test_images[at : at + 1]).to(device)
            synchronize(device)
            tick = time.perf_counter()
            module(image)
            synchronize(device)
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
