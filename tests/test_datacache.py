"""quantpipe.datacache and the tasks' sources: the download sources for real, over HTTP from a
server on 127.0.0.1 that serves files built from the cached copies (CIFAR-10's archive through
torchvision's downloader, the ISBI 2012 stack PNG by PNG), verification of what arrives, one fetch
per machine, the order of the sources, and the lock that lets concurrent fills fetch once."""

import functools
import http.server
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from quantpipe import datacache
from quantpipe.stages.prepare_data import run
from quantpipe.tasks.cifar10 import sources as cifar
from quantpipe.tasks.cifar10.files import EXPECTED_SHA256, FILES, META, load_batch, verify
from quantpipe.tasks.cifar10.pickles import DataError
from quantpipe.tasks.isbi2012_em import data as em
from quantpipe.tasks.isbi2012_em import sources as em_sources

QUIET = {"log": lambda _: None}


class Server:
    """http.server on 127.0.0.1 in a thread, serving `root`; `requests` lists (method, path)."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(("GET", self.path))
                super().do_GET()

            def do_HEAD(self):
                requests.append(("HEAD", self.path))
                super().do_HEAD()

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hangs up early (torchvision's redirect probe) is no error

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = Quiet(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def served(tmp_path_factory, cifar_dir, isbi_dir):
    """A server holding cifar-10-python.tar.gz (top folder cifar-10-batches-py/, as the official
    archive) and em/{image,label}/N.png, built from the cached copies."""
    root = tmp_path_factory.mktemp("served")
    _archive(root / "cifar-10-python.tar.gz", {name: cifar_dir / name for name in FILES})
    shutil.copytree(isbi_dir, root / "em")
    server = Server(root)
    yield server
    server.close()


def _archive(path: Path, members: dict[str, Path]) -> None:
    """A cifar-10-python.tar.gz: each file under cifar-10-batches-py/ as in the official archive.
    compresslevel 0: still a real gzip stream, built in a second instead of ten (pixels hardly
    compress anyway)."""
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        for name, source in members.items():
            tar.add(source, arcname=f"cifar-10-batches-py/{name}")


@pytest.fixture
def server(served):
    served.requests.clear()
    return served


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty machine: its own cache, no local copies."""
    monkeypatch.setenv("QUANTPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTPIPE_DATA", raising=False)
    return tmp_path / "cache"


def test_the_cache_lives_under_the_xdg_cache_unless_quantpipe_cache_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTPIPE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datacache.cache_root() == tmp_path / "xdg" / "quantpipe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datacache.cache_root() == tmp_path / "home" / ".cache" / "quantpipe"
    monkeypatch.setenv("QUANTPIPE_CACHE", str(tmp_path / "mine"))
    assert datacache.cache_root() == tmp_path / "mine"


def test_cifar_stage_downloads_the_archive_once_and_verifies_it(server, cache, tmp_path):
    url = f"{server.url}/cifar-10-python.tar.gz"
    config = {"cifar10_url": url, "allow_npm": False}
    out = tmp_path / "resources" / "cifar-10-batches-py"
    record = run(str(out), str(tmp_path / "first.json"), config, **QUIET)

    assert record["cache"]["source"] == "download" and record["cache"]["location"] == url
    # Only the archive. torchvision's redirect probe opens it once before the download (a GET with
    # a "Method: HEAD" header, dropped after the headers), so two GETs.
    assert server.gets() == ["/cifar-10-python.tar.gz"] * 2
    cached = cache / "data" / "cifar-10-batches-py"
    assert record["cache"]["path"] == str(cached)
    assert sorted(p.name for p in cached.iterdir()) == sorted(FILES)
    assert verify(cached)[META]["label_names"][0] == "airplane"
    # the stage's output is a verified copy of the cache
    assert record["source"] == "copy" and record["location"] == str(cached)
    assert record["train_images"] == 50_000 and record["test_images"] == 10_000
    assert np.array_equal(load_batch(out / "test_batch")[0], load_batch(cached / "test_batch")[0])

    server.requests.clear()
    again = run(str(tmp_path / "second"), str(tmp_path / "second.json"), config, **QUIET)
    assert again["cache"]["source"] == "existing" and again["train_images"] == 50_000
    assert server.requests == []  # the cache was used


def test_a_cifar_archive_with_other_content_is_refused_and_never_cached(server, cache, cifar_dir):
    members = {name: cifar_dir / name for name in FILES}
    members["data_batch_3"] = cifar_dir / "data_batch_2"  # a valid batch, but not this one
    _archive(server.root / "other.tar.gz", members)
    with pytest.raises(DataError) as error:
        cifar.cached(url=f"{server.url}/other.tar.gz", allow_npm=False, **QUIET)
    message = str(error.value)
    assert f"download: {server.url}/other.tar.gz" in message
    assert "data_batch_3: content does not match CIFAR-10" in message
    assert EXPECTED_SHA256["data_batch_3"][0] in message
    assert not (cache / "data" / "cifar-10-batches-py").exists()


def test_em_stage_downloads_the_60_pngs_once_and_verifies_them(server, cache, tmp_path):
    config = {"task": "isbi2012_em", "isbi2012_url": f"{server.url}/em"}
    destination = tmp_path / "resources" / "isbi2012_em.zarr"
    record = run(str(destination), str(tmp_path / "first.json"), config, **QUIET)

    assert record["cache"]["source"] == "download"
    expected = {f"/em/{kind}/{n}.png" for kind in em.KINDS for n in range(em.SLICES)}
    assert sorted(server.gets()) == sorted(expected)  # each file once
    cached = cache / "data" / "isbi2012-em"
    image, label = em.read_stack(cached)
    assert record["source"] == str(cached)
    group = zarr.open_group(destination, mode="r")
    assert np.array_equal(group["image"][:], image)
    assert np.array_equal(group["membrane"][:], (label == 0).astype(np.uint8))

    server.requests.clear()
    again = run(str(tmp_path / "second.zarr"), str(tmp_path / "second.json"), config, **QUIET)
    assert again["cache"]["source"] == "existing" and server.requests == []


def test_a_tampered_png_is_named_with_both_hashes_and_nothing_is_cached(server, cache):
    tampered = server.root / "tampered"
    shutil.copytree(server.root / "em", tampered, dirs_exist_ok=True)
    pixels = np.asarray(Image.open(tampered / "label" / "17.png")).copy()
    pixels[200, 300] = 255 - pixels[200, 300]
    Image.fromarray(pixels).save(tampered / "label" / "17.png")

    with pytest.raises(em.DataError) as error:
        em_sources.cached(url=f"{server.url}/tampered", **QUIET)
    message = str(error.value)
    assert f"{server.url}/tampered/label/17.png: its pixels have SHA-256" in message
    assert em.pixel_sha256(pixels) in message and em.LABEL_SHA256[17] in message
    assert "data.isbi2012_url" in message  # and what to do about it
    assert "/tampered/label/18.png" not in "".join(server.gets())  # it stopped at the bad file
    target = cache / "data" / "isbi2012-em"
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [".isbi2012-em.lock"]  # no staging left


def test_a_local_copy_in_quantpipe_data_comes_first(server, cache, isbi_dir, tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    (local / "isbi2012-em").symlink_to(isbi_dir)
    monkeypatch.setenv("QUANTPIPE_DATA", str(local))
    record = em_sources.cached(url=f"{server.url}/em", **QUIET)
    assert record["source"] == "copy" and record["location"] == str(local / "isbi2012-em")
    assert server.requests == []
    assert not (cache / "data" / "isbi2012-em").is_symlink()  # a copy, not a link to it
    em.read_stack(cache / "data" / "isbi2012-em")


def test_every_failed_source_is_reported(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTPIPE_DATA", str(tmp_path / "no-such-folder"))
    with pytest.raises(em.DataError) as error:
        em_sources.cached(copy=str(tmp_path / "nor-this"), allow_download=False, **QUIET)
    message = str(error.value)
    assert f"copy: {tmp_path / 'no-such-folder' / 'isbi2012-em'}" in message
    assert f"copy: {tmp_path / 'nor-this'}" in message
    assert "QUANTPIPE_DATA" in message and "data.isbi2012_url" in message


def test_concurrent_fills_download_once(server, cache):
    records, errors = [], []

    def fill():
        try:
            records.append(em_sources.cached(url=f"{server.url}/em", **QUIET))
        except Exception as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=fill) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r["source"] for r in records) == ["download", "existing", "existing"]
    assert len(server.gets()) == 2 * em.SLICES  # each PNG fetched once in all
    assert len({r["path"] for r in records}) == 1
