"""Node classes as a sweep axis, planned by Snakemake (dry runs in a copy of the repository): every
CPU benchmark once per class, the GPU ones once; the Slurm profile sends each class where it says,
and a class it does not map stops the run before any job."""

import re

import pytest
import yaml
from workflowtools import copy_repository, node_class_profile, planned_jobs, snakemake, tiny_config

CLASSES = "node_classes=[any,vnni]"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("node_classes")
    copy_repository(workdir)
    config = tiny_config(workdir)
    config["methods"] = ["pt2e"]
    config["benchmark"]["gpu"] = True  # the GPU rows: once, on the gpu class
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def planned_benchmarks(output: str) -> dict[str, str]:
    """Each planned benchmark job's metrics path -> its resources line, from a dry run's output."""
    jobs = re.findall(r"output: (results/benchmark/\S+/metrics\.json).*?\n\s+resources: ([^\n]*)",
                      output, re.DOTALL)  # fmt: skip
    return dict(jobs)


@pytest.mark.slow
def test_every_cpu_benchmark_runs_on_every_class_and_the_gpu_ones_once(workdir):
    assert planned_jobs(workdir)["benchmark"] == 2  # fp32-cpu, int8 pt2e on class any
    jobs = planned_jobs(workdir, "--config", CLASSES)
    assert jobs["benchmark"] == 4 and jobs["benchmark_gpu"] == 3
    output = snakemake(workdir, "--dry-run", "--config", CLASSES)
    run = "resnet18_cifar-w8-s0"
    assert set(planned_benchmarks(output.stdout + output.stderr)) == {
        f"results/benchmark/{node_class}/{run}/{variant}/metrics.json"
        for node_class, variant in [
            ("any", "fp32-cpu"), ("vnni", "fp32-cpu"), ("any", "int8-cpu-pt2e-histogram-c64"),
            ("vnni", "int8-cpu-pt2e-histogram-c64"), ("gpu", "fp32-gpu"), ("gpu", "bf16-gpu"),
            ("gpu", "fp16-gpu")]
    }  # fmt: skip


def test_the_slurm_profile_sends_each_class_where_it_maps_it(workdir, tmp_path):
    copy_repository(tmp_path)
    (tmp_path / "config.yaml").write_text((workdir / "config.yaml").read_text())
    node_class_profile(tmp_path, {"any": ("cpu", ""), "vnni": ("gpu", "avx512_vnni")})
    output = snakemake(tmp_path, "--dry-run", "--config", CLASSES, profile="profiles/slurm")
    for path, resources in planned_benchmarks(output.stdout + output.stderr).items():
        node_class = path.split("/")[2]
        partition = {"any": "cpu", "vnni": "gpu", "gpu": "gpu"}[node_class]
        assert f"slurm_partition={partition}," in resources, (path, resources)
        constraint = "avx512_vnni" if node_class == "vnni" else ""
        assert f"constraint={constraint}," in resources, (path, resources)
        assert ("exclusive=1" in resources) == (node_class != "gpu"), (path, resources)


@pytest.mark.slow
def test_a_class_the_profile_does_not_map_stops_the_run_before_any_job(workdir):
    refused = snakemake(workdir, "--dry-run", "--config", CLASSES, profile="profiles/slurm",
                        check=False)  # fmt: skip
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "rule benchmark:" not in text
    assert "node class 'vnni' (config `node_classes`) is not defined by the profile" in text
    assert "set-resources: benchmark: slurm_partition" in text
    # On this machine (profiles/local) every class runs here: nothing to map.
    assert planned_jobs(workdir, "--config", CLASSES)["benchmark"] == 4
