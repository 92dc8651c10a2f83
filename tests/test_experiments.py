"""Every experiment in workflow/experiments/ passes the schema and the consistency checks, and
Snakemake plans its whole DAG (a dry run, in a copy of the repository, with no data at hand)."""

import itertools

import pytest
import yaml
from conftest import REPO
from quantpipe.configuration import check_consistency, coerce_to_schema
from snakemake.utils import validate
from workflowtools import copy_repository, planned_jobs

EXPERIMENTS = sorted((REPO / "workflow" / "experiments").glob("*.yaml"))
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def merged(experiment) -> dict:
    """config.yaml under the experiment, as `--configfile` gives it to the Snakefile."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in yaml.safe_load(experiment.read_text()).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("experiments")
    copy_repository(workdir)
    return workdir


def test_there_are_experiments():
    assert {path.name for path in EXPERIMENTS} >= {"study.yaml", "cifar_gpu.yaml"}


# Planning checks each model's readiness for its methods (a torch.export of MobileNetV3 takes
# over 30 s on 2 cores): the full tier plans those.
SLOW_TO_PLAN = {"mobilenet_budget"}


@pytest.mark.parametrize(
    "experiment",
    [
        pytest.param(path, marks=[pytest.mark.slow] if path.stem in SLOW_TO_PLAN else [])
        for path in EXPERIMENTS
    ],
    ids=[path.stem for path in EXPERIMENTS],
)
def test_an_experiment_is_valid_and_plans_without_data(experiment, workdir, tmp_path, monkeypatch):
    config = merged(experiment)
    coerce_to_schema(config, SCHEMA)
    validate(config, SCHEMA, set_default=True)
    check_consistency(config)
    # No data anywhere: an empty cache and no local copies. Planning must not need them.
    monkeypatch.setenv("QUANTPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTPIPE_DATA", raising=False)
    relative = experiment.relative_to(REPO)
    jobs = planned_jobs(workdir, "--configfile", str(relative))
    runs = len(list(itertools.product(config["models"], config["widths"], config["seeds"])))
    assert jobs["prepare_data"] == 1 and jobs["train"] == runs and jobs["all"] == 1
    assert jobs["report"] == jobs["summary"] == 1
    quantize = runs * len(config["methods"]) * len(config["calibration_methods"])
    assert jobs["quantize"] + jobs.get("quantize_gpu", 0) == quantize * len(
        config["calibration_sizes"]
    )
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))
    assert not (workdir / "resources").exists()
