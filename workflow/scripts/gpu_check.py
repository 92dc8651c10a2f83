"""One-shot GPU check: the benchmark's fp32/bf16/fp16 GPU rows (and optionally QAT on CUDA).

Made for a lent GPU machine that has PyTorch but no network, no CIFAR-10 and no venv: everything it
needs is packed here first into one folder (about 48 MB with --with-qat; a device call carries at
most 64 MiB with the repository), then run there in one go (a few minutes on an H100).

1. Here, on the CPU, pack a model trained here (the default config's width-16 resnet18_cifar, or
   any train-stage model.pt), CIFAR-10's 10,000 test images and, with --with-qat, 4,096 training
   images and a torchao wheel (the GPU image has no torchao):

       .venv/bin/python workflow/scripts/gpu_check.py pack \\
           --model results/train/resnet18_cifar-w16-s0/model.pt \\
           --data resources/cifar-10-batches-py --out resources/gpu_check --with-qat

   (`resources/` is git-ignored: name `resources/gpu_check` in the device call's `carry`.)

2. There, from the repository root:

       python3 -m pip install -q --no-index --no-deps --target /tmp/site \\
           resources/gpu_check/wheels/*.whl  # for --qat only
       PYTHONPATH=workflow:/tmp/site PYTHONUNBUFFERED=1 \\
           python3 workflow/scripts/gpu_check.py run --bundle resources/gpu_check [--qat]

   The model is rebuilt from its checkpoint (quantpipe.stages.train.load_trained): a model by
   reference
   `pkg.module:callable` needs its package there too (add its folder to PYTHONPATH).

It prints one row per precision and mode (eager, torch.compile'd): accuracy on the 10,000 test
images, images/s over them at batch 256, batch-1 latency p50/p99 -- measured by the
benchmark stage's own code (`quantpipe.stages.benchmark`: the same modules, channels_last,
autocast and timing). A
precision the GPU cannot run says skipped with the reason. With --qat it also fine-tunes the model
with fake quantization on CUDA (`quantpipe.quantize.qat`, the quantize stage's code), converts it
to INT8 and prints the INT8 model's test accuracy (run on the CPU) beside FP32's.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
QAT_TRAINING_IMAGES = 4096


def pack(args) -> None:
    from quantpipe.tasks.cifar10.data import load_splits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.model, out / "model.pt")
    splits = load_splits(args.data, args.val_size)
    images, labels = splits["test"]
    torch.save({"images": images.clone(), "labels": labels.clone()}, out / "test.pt")
    if args.with_qat:
        images, labels = splits["train"]
        chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        chosen = chosen[:QAT_TRAINING_IMAGES]
        torch.save({"images": images[chosen].clone(), "labels": labels[chosen].clone()},
                   out / "train.pt")  # fmt: skip
        version = metadata.version("torchao")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
             "-d", str(out / "wheels"), f"torchao=={version}"],
            check=True,
        )  # fmt: skip
    total = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"packed {out}: {total / 2**20:.1f} MiB")


def precision_rows(bundle: Path, config: dict) -> list[dict]:
    from quantpipe import precision
    from quantpipe.models.build import load_trained
    from quantpipe.stages import benchmark
    from quantpipe.tasks.cifar10.data import normalize
    from quantpipe.tasks.classification.measure import measure

    test = torch.load(bundle / "test.pt", weights_only=True)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return normalize(batch).contiguous(memory_format=torch.channels_last)

    rows = []
    for name in PRECISIONS:
        variant = f"{name}-gpu"
        reason = precision.unusable(name)
        if reason:
            rows += [{"variant": variant, "method": m, "status": "skipped", "reason": reason}
                     for m in ("eager", "compiled")]  # fmt: skip
            continue
        net, _ = load_trained(str(bundle / "model.pt"))
        example = torch.zeros(1, *test["images"].shape[1:])
        for label, device, module, size in benchmark.implementations(
            variant, net, None, None, example
        ):
            started = time.perf_counter()
            result = measure(module, test["images"], test["labels"], device, config, prepare)
            result.pop("predictions"), result.pop("latencies_ms")
            rows.append({"variant": variant, "method": label, "status": "ok", **result,
                         "size_mb": size / 1e6,
                         "wall_s": time.perf_counter() - started})  # fmt: skip
            print(f"{variant} {label}: accuracy {result['accuracy']:.4f}, "
                  f"{result['images_per_s']:.0f} img/s, p50 {result['latency_ms_p50']:.3f} ms "
                  f"({rows[-1]['wall_s']:.0f} s with compilation)", flush=True)  # fmt: skip
    return rows


def qat_rows(bundle: Path, steps: int, device: str) -> list[dict]:
    """QAT on CUDA with the quantize stage's code; INT8 and FP32 test accuracy on the CPU."""
    from quantpipe.models.build import load_trained
    from quantpipe.quantize import pt2e, qat
    from quantpipe.tasks.cifar10.data import normalize
    from quantpipe.tasks.classification.images import augment

    net, record = load_trained(str(bundle / "model.pt"))
    train = torch.load(bundle / "train.pt", weights_only=True)
    test = torch.load(bundle / "test.pt", weights_only=True)
    x = normalize(test["images"])

    def accuracy(model) -> float:
        with torch.no_grad():
            right = sum((model(x[i : i + 500]).argmax(1) == test["labels"][i : i + 500]).sum()
                        for i in range(0, len(x), 500))  # fmt: skip
        return int(right) / len(x)

    calibration = normalize(train["images"][:512])

    def transform(batch, generator):
        return normalize(augment(batch, generator))

    fine_tune = qat.FineTune.from_config(
        train["images"], train["labels"], transform, {"steps": steps, "device": device},
        record.get("config", {}), seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    quantized = qat.quantize(net, calibration.split(64), calibration[:2], fine_tune=fine_tune)
    with tempfile.TemporaryDirectory() as folder:
        qat.save(quantized, Path(folder) / "int8.pt", calibration[:2])
        loaded = pt2e.load(Path(folder) / "int8.pt")
        seconds = time.perf_counter() - started
        rows = [
            {"variant": "fp32-cpu", "method": "eager", "accuracy": accuracy(net)},
            {"variant": "int8-cpu", "method": "qat", "accuracy": accuracy(loaded),
             "qat_device": fine_tune.record["device"], "qat_seconds": seconds,
             "qat_steps": steps, "qat_training_images": len(train["images"])},
        ]  # fmt: skip
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def run(args) -> None:
    bundle = Path(args.bundle)
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, GPU: {gpu}")
    config = {"batch_size": 256, "warmup": args.warmup,
              "latency_iterations": args.latency_iterations}  # fmt: skip
    rows = precision_rows(bundle, config)
    if args.qat:
        try:
            rows += qat_rows(bundle, args.qat_steps, args.qat_device)
        except Exception as error:  # report and keep the precision rows
            print(f"qat: failed: {type(error).__name__}: {error}", flush=True)
            rows.append({"variant": "int8-cpu", "method": "qat", "status": "failed",
                         "reason": f"{type(error).__name__}: {str(error)[:300]}"})  # fmt: skip
    print("\n| variant | method | status | accuracy | img/s (b256) | p50 ms (b1) | p99 ms (b1) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row.get("status", "ok") != "ok":
            print(f"| {row['variant']} | {row['method']} | {row['status']}: {row['reason']} "
                  "| | | | |")  # fmt: skip
            continue
        print(f"| {row['variant']} | {row['method']} | ok | {row['accuracy']:.4f} | "
              f"{row.get('images_per_s', float('nan')):.0f} | "
              f"{row.get('latency_ms_p50', float('nan')):.3f} | "
              f"{row.get('latency_ms_p99', float('nan')):.3f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: pack the model and data to carry")
    packing.add_argument("--model", required=True, help="a train-stage model.pt")
    packing.add_argument("--data", default="resources/cifar-10-batches-py")
    packing.add_argument("--val-size", type=int, default=5000)
    packing.add_argument("--out", default="resources/gpu_check")
    packing.add_argument("--with-qat", action="store_true",
                         help="also training images and a torchao wheel for run --qat")  # fmt: skip
    running = commands.add_parser("run", help="there: measure on the GPU")
    running.add_argument("--bundle", default="resources/gpu_check")
    running.add_argument("--warmup", type=int, default=3)
    running.add_argument("--latency-iterations", type=int, default=200)
    running.add_argument("--qat", action="store_true", help="also QAT on CUDA (needs torchao)")
    running.add_argument("--qat-steps", type=int, default=300)
    running.add_argument(
        "--qat-device",
        choices=("cuda", "auto"),
        default="cuda",
        help="cuda: fail without a GPU; auto: else the CPU (to try it here)",
    )
    running.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    (pack if args.command == "pack" else run)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
