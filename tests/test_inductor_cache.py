"""Each job compiles into a private Inductor cache (quantpipe.inductor_cache)."""

import os
from pathlib import Path

import pytest
import torch
from quantpipe import inductor_cache
from quantpipe.submit.executor import StageCall


@pytest.mark.slow
def test_a_job_compiles_into_its_own_folder_removed_at_its_end(monkeypatch):
    monkeypatch.delenv(inductor_cache.VARIABLE, raising=False)
    with inductor_cache.private() as folder:
        assert os.environ[inductor_cache.VARIABLE] == folder
        compiled = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        assert torch.equal(compiled(torch.ones(4)), torch.full((4,), 3.0))
        assert any(Path(folder).rglob("*.py")), "Inductor wrote its kernels elsewhere"
    assert not Path(folder).exists()
    assert inductor_cache.VARIABLE not in os.environ


def test_the_users_own_cache_setting_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(inductor_cache.VARIABLE, str(tmp_path))
    with inductor_cache.private() as folder:
        assert folder == str(tmp_path)
    assert os.environ[inductor_cache.VARIABLE] == str(tmp_path) and tmp_path.exists()


def test_a_stage_call_runs_inside_a_private_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(inductor_cache.VARIABLE, raising=False)
    seen = {}

    def run(log, **kwargs):
        seen["folder"] = os.environ.get(inductor_cache.VARIABLE)
        return {}

    monkeypatch.setattr("quantpipe.stages.report.run", run)
    StageCall("report", {})()
    assert seen["folder"] and "quantpipe-inductor-" in seen["folder"]
    assert not Path(seen["folder"]).exists()
