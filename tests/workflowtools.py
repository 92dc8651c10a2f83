"""Shared by the tests that run the whole workflow in a copy of the repository."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from quantpipe.tasks.cifar10 import sources as cifar

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def copy_repository(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        source, copy = REPO / name, target / name
        if source.is_symlink():  # ./slurm, the profile link: a link in the copy too
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.symlink_to(os.readlink(source))
        elif source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)


def tiny_config(workdir: Path) -> dict:
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cifar.cached()  # the workflow's prepare_data (no downloads in tiny.yaml) copies the cache
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def node_class_profile(workdir: Path, classes: dict[str, tuple[str, str]]) -> None:
    """Map node classes in the copy's profiles/slurm, as a user does for their cluster:
    `classes` gives each class its (partition, constraint)."""
    path = workdir / "profiles" / "slurm" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    benchmark = profile["set-resources"]["benchmark"]
    for key, index in (("slurm_partition", 0), ("constraint", 1)):
        mapping = {name: where[index] for name, where in classes.items()}
        benchmark[key] = f"{mapping}[wildcards.node_class]"
    path.write_text(yaml.safe_dump(profile))


def snakemake(
    workdir: Path, *args: str, profile: str = "profiles/local", check: bool = True
) -> subprocess.CompletedProcess:
    """Run Snakemake as a user does: the venv's bin first on PATH, from the repository root."""
    done = subprocess.run([SNAKEMAKE, "--profile", profile, *args], cwd=workdir, env=user_env(),
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    if check and done.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule that Snakemake would run (dry run)."""
    output = snakemake(workdir, "--dry-run", *args)
    text = output.stdout + output.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def with_userpkg(workdir: Path) -> str:
    """PYTHONPATH with the copy's tests/userpkg first, as a user puts their own package there:
    Snakemake imports it, and every job it starts inherits the variable."""
    return os.pathsep.join(
        filter(None, [str(workdir / "tests" / "userpkg"), os.environ.get("PYTHONPATH")])
    )


def user_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def processes_under(folder) -> list[str]:
    """Command lines of live processes that mention `folder` (e.g. submitit's local jobs)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(folder) in text:
                found.append(text)
    return found
