"""Does the paired speedup hold when a neighbour loads the node? A rehearsal of issue 12's case.

Takes a finished run's CPU benchmarks (their metrics.json record the config, model and artifact),
and runs the benchmark stage again into a scratch folder: FP32 CPU alone on a quiet machine, then
each INT8 variant twice, quiet and with a neighbour: CPU-burning processes that this script starts
just before the job and stops just after it. For each INT8 row it prints
  - unpaired: INT8 images/s of this job / FP32 eager images/s of the quiet FP32 job, what a
    report gets when two jobs on different nodes or at different times are divided, and
  - paired: the row's own `paired_speedup` (FP32 eager timed in the same process, round by
    round with the INT8 model, quantpipe.tasks.classification.rounds),
quiet and loaded, with the pair's spread.

    PYTHONPATH=workflow python workflow/scripts/neighbour_benchmark.py --results results \\
        --burners 1 --workdir /tmp/neighbour
"""

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path


def _burn() -> None:
    while True:
        pass


class Neighbour:
    """`count` processes spinning on the CPU while the context is open."""

    def __init__(self, count: int) -> None:
        self.count, self.processes = count, []

    def __enter__(self) -> "Neighbour":
        self.processes = [
            multiprocessing.Process(target=_burn, daemon=True) for _ in range(self.count)
        ]
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *_) -> None:
        for process in self.processes:
            process.terminate()
            process.join()


def recorded_benchmarks(results: Path) -> list[dict]:
    """The CPU benchmark records of `results`, FP32 CPU (eager and compiled) first."""
    records = []
    for path in sorted(results.glob("benchmark/**/metrics.json")):
        record = json.loads(path.read_text())
        config = record["config"]
        plain_fp32 = config["variant"] == "fp32-cpu" and not config.get("method")
        if plain_fp32 or config["variant"] == "int8-cpu":
            records.append({"path": path, "config": config})
    if not any(r["config"]["variant"] == "fp32-cpu" for r in records):
        raise SystemExit(f"{results}: no fp32-cpu benchmark; run the pipeline first")
    return sorted(records, key=lambda r: r["config"]["variant"] != "fp32-cpu")


def rerun(record: dict, results: Path, data: str, workdir: Path, label: str) -> list[dict]:
    """The benchmark stage again on the record's config, into `workdir`; its rows."""
    from quantpipe.stages import benchmark

    config = record["config"]
    run_folder = record["path"].parent.parent.name
    model = results / "train" / run_folder / "model.pt"
    artifact = None
    if config["variant"] == "int8-cpu":
        artifact = (
            results / "quantize" / run_folder
            / f"{config['method']}-{config['calibration_method']}-c{config['calibration_size']}"
            / "int8.pt"
        )  # fmt: skip
    out = workdir / label / record["path"].parent.name
    out.mkdir(parents=True, exist_ok=True)
    done = benchmark.run(
        str(model), data,
        str(out / "metrics.json"), str(out / "predictions.pt"), config,
        artifact=str(artifact) if artifact else None, log=lambda _: None,
    )  # fmt: skip
    return done["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="a finished run's results/")
    parser.add_argument("--data", default="resources/cifar-10-batches-py")
    parser.add_argument("--burners", type=int, default=1, help="CPU-burning processes")
    parser.add_argument("--workdir", default="neighbour-benchmark", help="scratch folder")
    args = parser.parse_args()
    results, workdir = Path(args.results), Path(args.workdir)
    records = recorded_benchmarks(results)
    fp32 = rerun(records[0], results, args.data, workdir, "quiet")
    eager = next(row for row in fp32 if row["method"] == "eager")["images_per_s"]
    print(f"FP32 eager alone, quiet: {eager:.0f} images/s; {os.cpu_count()} CPUs, "
          f"neighbour: {args.burners} CPU-burning process(es)", flush=True)  # fmt: skip
    print("| variant | neighbour | images/s | unpaired speedup | paired speedup (range) |")
    print("|---|---|---|---|---|")
    for record in records[1:]:
        for label in ("quiet", "loaded"):
            with Neighbour(args.burners if label == "loaded" else 0):
                rows = rerun(record, results, args.data, workdir, label)
            for row in rows:
                name = f"{record['path'].parent.name} {row['method']}"
                print(
                    f"| {name} | {label} | {row['images_per_s']:.0f} | "
                    f"{row['images_per_s'] / eager:.2f}x | {row['paired_speedup']:.2f}x "
                    f"({row['paired_speedup_spread']:.2f}) |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
