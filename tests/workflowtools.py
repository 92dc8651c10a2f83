"""Shared by the tests that run the whole workflow in a copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_CIFAR

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def copy_repository(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def tiny_config(workdir: Path) -> dict:
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["data"]["cifar10_copy"] = str(SHARED_CIFAR)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


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


def user_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
