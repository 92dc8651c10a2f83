"""The CPU's multiply-accumulate ceilings, measured, and a model's multiply-accumulates per image.

A variant's achieved rate (images/s x MACs per image) over the ceiling for its precision says how
much of the machine it uses. The ceilings are what the machine's own libraries reach on large,
well-shaped problems with the threads the job has:

- FP32: a large 3x3 convolution in channels_last through oneDNN (torch.mm would go through MKL,
  which misses its fast path on some CPUs, e.g. AMD's: oneDNN is what the FP32 models run on).
- INT8: torch._int_mm (int8 x int8 -> int32) at 2048 x 2048 x 2048 (VNNI or AMX where present).

Each is the best of several timed calls after a warm-up, so noise from a shared machine lowers a
ceiling only if it lasts the whole measurement.
"""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

GIGA = 1e9


def _best_rate(call, macs: float, seconds: float, repeats: int = 3) -> float:
    """MACs/s of the fastest of `repeats` timed blocks of calls, each about seconds/repeats long."""
    call()  # warm-up: primitive creation, weight reordering, page faults
    call()
    best = 0.0
    for _ in range(repeats):
        calls, started = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / repeats:
                break
        best = max(best, calls * macs / elapsed)
    return best


def fp32_macs_per_s(seconds: float = 1.0) -> float:
    """FP32 multiply-accumulates per second of a 256->256 3x3 convolution, 32x32, batch 16."""
    batch, channels, size = 16, 256, 32
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)
    images = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    macs = batch * channels * channels * 9 * size * size
    with torch.inference_mode():
        return _best_rate(lambda: conv(images), macs, seconds)


def int8_macs_per_s(seconds: float = 1.0, size: int = 2048) -> float:
    """INT8 multiply-accumulates per second of torch._int_mm at size x size x size."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator)
    with torch.inference_mode():
        return _best_rate(lambda: torch._int_mm(a, b), size**3, seconds)


def measure(seconds: float = 1.0) -> dict:
    """Both ceilings in GMAC/s (1 MAC = 2 ops), with the threads torch uses now."""
    return {
        "fp32_gmac_per_s": fp32_macs_per_s(seconds) / GIGA,
        "int8_gmac_per_s": int8_macs_per_s(seconds) / GIGA,
        "threads": torch.get_num_threads(),
        "fp32_kernel": "oneDNN conv2d 3x3 256->256, 32x32, batch 16, channels_last",
        "int8_kernel": "torch._int_mm 2048x2048x2048",
    }


def macs_per_image(model: torch.nn.Module, image_shape=(3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass on one image (convolutions and matmuls)."""
    training = model.training
    model.eval()  # batch norm in training mode would update its statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *image_shape))
    finally:
        model.train(training)
    return counter.get_total_flops() // 2


def utilisation(
    precision: str, macs: int, images_per_s, latency_ms_p50, ceilings: dict | None
) -> dict:
    """A row's achieved rate and its fraction of the ceiling for its precision."""
    ceiling = (ceilings or {}).get(f"{precision}_gmac_per_s")
    achieved = images_per_s * macs / GIGA if images_per_s else None
    batch1 = 1e3 / latency_ms_p50 * macs / GIGA if latency_ms_p50 else None
    return {
        "macs_per_image": macs,
        "ceiling_gmac_per_s": ceiling,
        "achieved_gmac_per_s": achieved,
        "fraction_of_ceiling": achieved / ceiling if ceiling and achieved else None,
        "fraction_of_ceiling_batch1": batch1 / ceiling if ceiling and batch1 else None,
    }
