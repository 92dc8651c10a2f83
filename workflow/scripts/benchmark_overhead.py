"""Scheduling overhead per job: quantpipe's submit layer vs Snakemake's Slurm executor plugin.

Both run the same DAG of N independent jobs, one at a time, on the local Slurm
(workflow/scripts/local_slurm.sh): each job is the report stage on a small metrics file. The
compute is that stage run by hand in a fresh process (median of 3); overhead per job is
(wall time - N x compute) / N. The plugin runs with its default settings, as a user would.

    .venv/bin/python workflow/scripts/benchmark_overhead.py [--jobs 12]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SUBMIT_STAGE = Path(__file__).resolve().with_name("submit_stage.py")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
METRICS = {"rows": [{"node_class": "any", "model": "m", "width": 1, "seed": 0,
                     "variant": "fp32-cpu", "method": "eager", "status": "ok", "accuracy": 0.5,
                     "images_per_s": 1.0, "size_bytes": 1}],
           "provenance": {"versions": {}}}  # fmt: skip
TRAIN = {"config": {"model": "m", "width": 1, "seed": 0}, "val_accuracy": 0.5}
RESOURCES = 'slurm_partition="cpu", cpus_per_task=1, mem_mb=500, runtime=5'
RULE = """\
rule all:
    input: expand("out/{{i}}.csv", i=range({jobs}))

rule job:
    input: benchmark_metrics=["m.json"], train_metrics=["t.json"]
    output: report="out/{{i}}.csv"
    params: stage="report", config={{"node_classes": ["any"]}}
    log: "logs/{{i}}.log"
    resources: {resources}
    {action}
"""
OURS = f'script: "{SUBMIT_STAGE}"'
PLUGIN = (
    f'shell: "{sys.executable} -m quantpipe.cli report --benchmark_metrics '
    "{input.benchmark_metrics} --train_metrics {input.train_metrics} --report {output.report} "
    '--config c.yaml"'
)


def workdir(root: Path, name: str, jobs: int, action: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "m.json").write_text(json.dumps(METRICS))
    (folder / "t.json").write_text(json.dumps(TRAIN))
    (folder / "c.yaml").write_text(json.dumps({"node_classes": ["any"]}))  # JSON is YAML
    rules = RULE.format(jobs=jobs, resources=RESOURCES, action=action)
    (folder / "Snakefile").write_text(textwrap.dedent(rules))
    return folder


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    jobs = parser.parse_args().jobs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        probe = workdir(root, "compute", jobs, OURS)
        command = [sys.executable, "-m", "quantpipe.cli", "report", "--benchmark_metrics",
                   "m.json", "--train_metrics", "t.json", "--report", "probe.csv",
                   "--config", "c.yaml"]  # fmt: skip
        compute = statistics.median(timed(command, probe) for _ in range(3))
        ours = timed([SNAKEMAKE, "--jobs", "1"], workdir(root, "ours", jobs, OURS))
        plugin = timed([SNAKEMAKE, "--jobs", "1", "--executor", "slurm"],
                       workdir(root, "plugin", jobs, PLUGIN))  # fmt: skip
    print(f"{jobs} jobs, one at a time, on the local Slurm; compute per job {compute:.2f} s")
    print(f"{'runner':<32}{'wall s':>8}{'overhead s/job':>16}")
    results = {}
    for name, wall in (("quantpipe (submitit)", ours), ("snakemake-executor-plugin-slurm", plugin)):
        results[name] = (wall - jobs * compute) / jobs
        print(f"{name:<32}{wall:>8.1f}{results[name]:>16.2f}")
    ratio = results["snakemake-executor-plugin-slurm"] / results["quantpipe (submitit)"]
    print(f"overhead ratio plugin / quantpipe: {ratio:.1f}x")


if __name__ == "__main__":
    main()
