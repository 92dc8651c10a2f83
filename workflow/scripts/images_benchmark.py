"""Peak memory and decode rate of task images on a generated folder of a given size.

Writes a folder of JPEGs in ImageFolder layout (smooth colour fields with noise, so that they
compress like photographs), then runs each stage's data path in its own process and prints what
it used: prepare_data (hash, parallel decode into the cache, verify), a second prepare_data (the
cache reused), one training epoch's batches (augmented and normalised), the calibration images,
and the benchmark's timed test pass (through a one-layer model: the data path is measured, not
a network).

Memory is read from /proc/self/status every 20 ms: RssAnon (the process's own memory) and
RssFile (pages of mapped files: the libraries; the stages read the cache with plain reads, not a
memory map, so its pages stay in the page cache, outside the process). VmHWM is the kernel's
peak of both together. Decode workers are separate processes; the largest one's peak is
given.

    PYTHONPATH=workflow python workflow/scripts/images_benchmark.py --images 100000 \\
        --image-size 224 --workdir /scratch/images-benchmark
"""

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 10


class PeakMemory:
    """Peaks of this process's RssAnon, RssFile and VmHWM (MB), sampled in a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self.every_s, self.running = every_s, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def _status() -> dict:
        values = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0]) / 1024
        return values

    def _sample(self) -> None:
        while self.running:
            status = self._status()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], status.get(key, 0))
            time.sleep(self.every_s)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return {
            "peak_rss_anon_mb": round(self.peaks["RssAnon"]),
            "peak_rss_file_mb": round(self.peaks["RssFile"]),
            "vm_hwm_mb": round(self._status()["VmHWM"]),
            "largest_worker_peak_mb": round(workers),
        }


def _write_images(job: tuple) -> None:
    from PIL import Image

    root, start, stop, size, test_every = job
    rng = np.random.default_rng(start)
    for index in range(start, stop):
        split = "test" if (index // CLASSES) % test_every == 0 else "train"
        folder = Path(root) / split / f"class{index % CLASSES}"
        colours = rng.uniform(0, 255, (3, 3))
        down = np.linspace(0, 1, size)[:, None, None]
        across = np.linspace(0, 1, size)[None, :, None]
        field = colours[0] * (1 - down) + down * (colours[1] * (1 - across) + colours[2] * across)
        image = field + rng.normal(0, 12, (size, size, 3))
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:07d}.jpg", quality=90)


def generate(root: Path, count: int, size: int) -> None:
    for split in ("train", "test"):
        for label in range(CLASSES):
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
    step, test_every = 500, 6
    jobs = [
        (str(root), start, min(start + step, count), size, test_every)
        for start in range(0, count, step)
    ]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_write_images, jobs)


def phase(name: str, workdir: Path, image_size: int, batch_size: int, calibration: int) -> dict:
    """One stage's data path in this process, its time and peak memory."""
    import torch
    from quantpipe import tasks

    task = tasks.load("images")
    data = str(workdir / "data")
    config = {"root": str(workdir / "folder"), "image_size": image_size, "val_fraction": 0.1}
    lines = []
    memory = PeakMemory()
    started = time.perf_counter()
    result = {}
    if name in ("prepare", "prepare_again"):
        record = task.prepare(data, config, log=lines.append)
        decoded = [line for line in lines if line.startswith("decode: ") and "images/s" in line]
        result = {"cache": record["cache"]["source"], "images": record["images"]}
        if decoded:
            result["decode_images_per_s"] = float(decoded[-1].split(", ")[1].split()[0])
    elif name == "train_epoch":
        net = torch.nn.Conv2d(3, 1, 1)
        run = {"seed": 0, "batch_size": batch_size, "lr": 0.1, "momentum": 0.9,
               "weight_decay": 0.0, "label_smoothing": 0.0}  # fmt: skip
        training = task.training(data, run, net, torch.device("cpu"))
        seen = sum(len(y) for _, y in training.batches(torch.Generator().manual_seed(0)))
        result = {"images": seen, "images_per_s": round(seen / (time.perf_counter() - started))}
    elif name == "calibration":
        images = task.calibration_inputs(data, {"seed": 0}, calibration)
        result = {"images": len(images), "mb": round(images.numel() * 4 / 2**20)}
    elif name == "benchmark":
        net = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, CLASSES)
        ).eval()
        base = {"variant": "fp32-cpu", "device": "cpu", "precision": "fp32"}
        run = {"batch_size": batch_size, "warmup": 1, "latency_iterations": 20, "rounds": 2,
               "paired_images": 256, "batch_sizes": []}  # fmt: skip
        rows, _, _ = task.benchmark(
            data, net, [("eager", torch.device("cpu"), net, 0)], base, run, log=lambda _: None
        )
        result = {"images_per_s": round(rows[0]["images_per_s"])}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return {**result, **memory.stop()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the folder")
    parser.add_argument("--image-size", type=int, default=224, help="images.image_size")
    parser.add_argument("--source-size", type=int, default=256, help="edge of the JPEGs written")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=512, help="calibration images")
    parser.add_argument("--workdir", default="images-benchmark", help="scratch folder (kept)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir).absolute()
    os.environ.setdefault("QUANTPIPE_CACHE", str(workdir / "cache"))
    if args.phase:
        found = phase(args.phase, workdir, args.image_size, args.batch_size, args.calibration)
        print(json.dumps(found))
        return 0
    if workdir.exists():
        shutil.rmtree(workdir)
    started = time.perf_counter()
    generate(workdir / "folder", args.images, args.source_size)
    written = sum(p.stat().st_size for p in (workdir / "folder").rglob("*.jpg"))
    print(
        f"generated {args.images} JPEGs of {args.source_size}x{args.source_size} "
        f"({written / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s; "
        f"{len(os.sched_getaffinity(0))} CPUs",
        flush=True,
    )
    results = {}
    for name in ("prepare", "prepare_again", "train_epoch", "calibration", "benchmark"):
        done = subprocess.run(
            [sys.executable, __file__, "--phase", name, *sys.argv[1:]],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            print(done.stdout, done.stderr, file=sys.stderr)
            return done.returncode
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]}", flush=True)
    cache_mb = sum(p.stat().st_size for p in (workdir / "data").glob("*.npy")) / 2**20
    print(f"cache: {cache_mb:.0f} MB of uint8 arrays at {args.image_size}x{args.image_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
