"""The CPU's multiply-accumulate ceilings, measured, and a model's multiply-accumulates per image.

A variant's achieved rate (images/s x MACs per image) over the ceiling for its precision says how
much of the machine it uses. For that fraction to stay below 1 and to compare across node classes,
each ceiling is the better of two probes, run with the threads the job has, so that no library's
weak spot on one CPU sets it:

- a large GEMM: torch.mm for FP32 (MKL, which misses its fast path on some CPUs, e.g. AMD's) and
  torch._int_mm for INT8 (signed x signed: without AMX, VNNI multiplies unsigned by signed, and
  oneDNN pays a compensation step; INT8 models reached 103% of it on an AMD EPYC);
- a large 3x3 convolution in channels_last through oneDNN, the path the models run: nn.Conv2d for
  FP32, and for INT8 the kernel Inductor lowers a compiled PT2E convolution to
  (onednn.qconv_pointwise: uint8 activations, prepacked int8 weights, ReLU fused, uint8 out).

Each probe is the best of several timed blocks after a warm-up, so noise from a shared machine
lowers a ceiling only if it lasts the whole measurement.
"""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

GIGA = 1e9
GEMM_SIZE = 2048  # m = n = k
# The convolutions: 3x3, same padding, CHANNELS in and out, SIZE x SIZE images, channels_last.
BATCH, CHANNELS, SIZE = 16, 256, 32
CONV_MACS = BATCH * CHANNELS * CHANNELS * 9 * SIZE * SIZE
CONV = f"3x3 {CHANNELS}->{CHANNELS}, {SIZE}x{SIZE}, batch {BATCH}, channels_last"
# A GEMM kernel without a fast path on this CPU is probed at a quarter of the size: torch._int_mm
# on an AMD EPYC without VNNI ran 0.1 GMAC/s, 90 s for one 2048^3 call (far below the convolution,
# so it never sets the ceiling), and the probe must not cost every benchmark job minutes.
SMALL_GEMM_SIZE = GEMM_SIZE // 4
KERNELS = {
    "fp32_gemm": "torch.mm {size}x{size}x{size}",
    "fp32_conv": f"oneDNN conv2d {CONV}",
    "int8_gemm": "torch._int_mm {size}x{size}x{size}",
    "int8_conv": f"oneDNN qconv_pointwise u8s8 + ReLU {CONV}",
}


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


def _random_bytes(dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """Uniform over the dtype's whole range (torch.uint8 or torch.int8), the same every time."""
    low = int(torch.iinfo(dtype).min)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(low, low + 256, shape, dtype=dtype, generator=generator)


def _gemm_rate(multiply, operand, kernel: str, seconds: float) -> tuple[float, str]:
    """(MACs/s, kernel) of a square GEMM at GEMM_SIZE, or at SMALL_GEMM_SIZE where one call at
    GEMM_SIZE would take over 5x the probe's time (the small call's rate says so): the probe's
    warm-up and timed blocks need at least 5 calls."""
    small = operand(SMALL_GEMM_SIZE)
    started = time.perf_counter()
    multiply(small, small)
    full_call_s = (time.perf_counter() - started) * (GEMM_SIZE / SMALL_GEMM_SIZE) ** 3
    size = GEMM_SIZE if full_call_s < 5 * seconds else SMALL_GEMM_SIZE
    a = operand(size) if size == GEMM_SIZE else small
    rate = _best_rate(lambda: multiply(a, a), size**3, seconds)
    return rate, kernel.format(size=size)


def fp32_gemm_macs_per_s(seconds: float) -> tuple[float, str]:
    return _gemm_rate(torch.mm, lambda n: torch.randn(n, n), KERNELS["fp32_gemm"], seconds)


def fp32_conv_macs_per_s(seconds: float) -> tuple[float, str]:
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)
    images = torch.randn(BATCH, CHANNELS, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    return _best_rate(lambda: conv(images), CONV_MACS, seconds), KERNELS["fp32_conv"]


def int8_gemm_macs_per_s(seconds: float) -> tuple[float, str]:
    operand = lambda n: _random_bytes(torch.int8, n, n)  # noqa: E731
    return _gemm_rate(torch._int_mm, operand, KERNELS["int8_gemm"], seconds)


def int8_conv_macs_per_s(seconds: float) -> tuple[float, str]:
    """The call Inductor makes for an interior convolution of a compiled PT2E model (uint8 in
    and out, per-channel int8 weights prepacked, bias and ReLU fused); tests/test_compare.py
    checks that a compiled PT2E convolution still lowers to it."""
    images = _random_bytes(torch.uint8, BATCH, CHANNELS, SIZE, SIZE)
    images = images.contiguous(memory_format=torch.channels_last)
    weight = _random_bytes(torch.int8, CHANNELS, CHANNELS, 3, 3)
    scales, zero_points = torch.full((CHANNELS,), 0.01), torch.zeros(CHANNELS, dtype=torch.long)
    geometry = ([1, 1], [1, 1], [1, 1], 1)  # stride, padding, dilation, groups
    packed = torch.ops.onednn.qconv_prepack(weight, scales, 0.02, 0, *geometry, list(images.shape))
    bias = torch.zeros(CHANNELS)

    def call():
        return torch.ops.onednn.qconv_pointwise(
            images, 0.02, 0, packed, scales, zero_points, bias, *geometry, 0.05, 0, None, "relu",
            [], "",
        )  # fmt: skip

    return _best_rate(call, CONV_MACS, seconds), KERNELS["int8_conv"]


PROBES = {
    "fp32": {"gemm": fp32_gemm_macs_per_s, "conv": fp32_conv_macs_per_s},
    "int8": {"gemm": int8_gemm_macs_per_s, "conv": int8_conv_macs_per_s},
}


def measure(seconds: float = 2.0) -> dict:
    """Each precision's ceiling in GMAC/s (1 MAC = 2 ops): the better of its GEMM and its
    convolution, with the threads torch uses now; both probes' figures and the winner's kernel
    are kept. `seconds` is the timed total of the four probes."""
    found = {"threads": torch.get_num_threads()}
    with torch.inference_mode():
        for precision, probes in PROBES.items():
            probed = {kind: probe(seconds / 4) for kind, probe in probes.items()}
            rates = {kind: rate / GIGA for kind, (rate, _) in probed.items()}
            best = max(rates, key=rates.get)
            found[f"{precision}_gmac_per_s"] = rates[best]
            found[f"{precision}_kernel"] = probed[best][1]
            for kind, rate in rates.items():
                found[f"{precision}_{kind}_gmac_per_s"] = rate
    return found


def describe(machine: dict) -> str:
    """'FP32 58 GMAC/s (GEMM 36, conv 58), INT8 ...': each ceiling and both its probes."""
    return ", ".join(
        f"{precision.upper()} {machine[f'{precision}_gmac_per_s']:.0f} GMAC/s (GEMM "
        f"{machine[f'{precision}_gemm_gmac_per_s']:.0f}, conv "
        f"{machine[f'{precision}_conv_gmac_per_s']:.0f})"
        for precision in PROBES
    )


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
