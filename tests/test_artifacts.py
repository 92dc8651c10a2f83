"""Outputs are written atomically; damaged or foreign checkpoints fail clearly."""

import subprocess
import sys

import pytest
import torch
from quantpipe.artifacts import ArtifactError, atomic_path, load_torch, write_json
from quantpipe.models.build import load_trained
from quantpipe.quantize import pt2e


def test_a_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past 4 kB, as a full disk would.
    script = f"""
import resource, signal
from quantpipe.artifacts import write_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
write_json({str(tmp_path / "big.json")!r}, {{"x": "y" * 100_000}})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0
    assert "refused more data" in done.stderr and "Free space in" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_checkpoint_names_the_file_and_the_fix(tmp_path):
    good = tmp_path / "model.pt"
    torch.save({"architecture": {}, "state_dict": {"w": torch.ones(1000)}, "record": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(ArtifactError, match=r"truncated\.pt cannot be loaded.*Rerun the train"):
        load_trained(truncated)


def test_a_foreign_file_is_not_taken_for_a_checkpoint(tmp_path):
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    with pytest.raises(ArtifactError, match="not a quantpipe checkpoint .*architecture"):
        load_trained(foreign)
    code = tmp_path / "code.pt"
    torch.save({"architecture": {}, "state_dict": {}, "record": print}, code)
    with pytest.raises(ArtifactError, match="not a safe tensor file"):
        load_torch(code, ("architecture",), "fix it")


def test_a_damaged_int8_program_is_a_clear_error(tmp_path):
    damaged = tmp_path / "int8.pt"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError, match="cannot be loaded as a PT2E INT8 program"):
        pt2e.load(damaged)


def test_write_json_is_readable_and_shareable(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().strip() == '{\n  "a": 1\n}'
    assert (tmp_path / "m.json").stat().st_mode & 0o044  # mkstemp's 0600 is widened
