"""``relsim data download``: fetch the images of a JSONL (``image_hash``, ``url_link``) into ``{image_hash}.png``,
or those of upstream's seed-group JSON into ``{group}/{i}.png`` (the Hub dataset layout; see
:mod:`relsim.train.seed_groups`).

Concurrent (threads), with per-request timeouts, retries with exponential back-off for transient
failures (timeouts, connection errors, HTTP 408/425/429/5xx, undecodable bodies), a size cap, and a
check that every image decodes before it is written. Files are written atomically (temporary name,
then rename), so an interrupted run leaves no partial image and a rerun skips what is there (resume).
Failures are listed in ``download_failures.jsonl`` in the image directory. Only http(s) URLs are fetched.

PNG responses are stored byte for byte; other formats are decoded (EXIF orientation applied,
transparency on white, as relsim preprocesses) and stored as PNG.

Example:
    >>> report = download_images("anonymous_captions_train.jsonl", "images", workers=32)   # doctest: +SKIP
    >>> print(report.summary())                                                           # doctest: +SKIP
    114000 images: 113512 downloaded, 0 already present, 488 failed (see images/download_failures.jsonl)
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from ..batching import progress_bar
from ..errors import ArgumentError
from ..preprocess import ImageInputError, decode
from .data import Record, read_jsonl
from .seed_groups import SeedImage, is_seed_group_file, read_seed_group_json

USER_AGENT = "relsim-data-download/1 (+https://pypi.org/project/relsim/)"
FAILURES_FILE = "download_failures.jsonl"
_RETRY_STATUS = {408, 425, 429}


class PermanentError(Exception):
    """A failure that retrying cannot fix (404, bad URL, too large)."""


@dataclass
class DownloadReport:
    total: int = 0
    downloaded: int = 0
    present: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.total} images: {self.downloaded} downloaded, {self.present} already present, "
        return text + f"{len(self.failed)} failed"


def fetch(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """GET ``url``; ``timeout`` bounds the whole request, not just each socket read."""
    if urlparse(url).scheme not in ("http", "https"):
        raise PermanentError(f"not an http(s) URL: {url!r}")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentError(f"larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {timeout:g} s")
                chunks.append(chunk)
    except urllib.error.HTTPError as err:
        if err.code in _RETRY_STATUS or err.code >= 500:
            raise
        raise PermanentError(f"HTTP {err.code}") from err
    return b"".join(chunks)


def to_png(data: bytes, name: str) -> bytes:
    """Check ``data`` decodes as relsim decodes images; return the PNG bytes to store."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise ArgumentError(f"{img.width}x{img.height} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS")
            rgb = decode(img.copy() if fmt != "PNG" else _loaded(img), 0)
    except ImageInputError as err:
        raise ArgumentError(f"{name}: undecodable image ({err})") from err
    except Exception as err:  # PIL raises many kinds on corrupt data
        raise ArgumentError(f"{name}: undecodable image ({type(err).__name__}: {err})") from err
    if fmt == "PNG":
        return data
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def _loaded(img: Image.Image) -> Image.Image:
    img.load()  # a truncated PNG fails here
    return img


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _download_one(
    record: Record | SeedImage, out: Path, *, timeout: float, retries: int, backoff: float, max_bytes: int
) -> None:
    if not record.url:
        raise PermanentError("no url_link")
    attempt = 0
    while True:
        try:
            png = to_png(fetch(record.url, timeout=timeout, max_bytes=max_bytes), record.filename)
            (out / record.filename).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out / record.filename, png)
            return
        except PermanentError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as err:  # timeouts, resets, 5xx, corrupt bodies
            if attempt >= retries:
                raise PermanentError(_reason(err)) from err
            time.sleep(backoff * 2**attempt * (1 + random.random()))
            attempt += 1


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return f"connection error: {err.reason}"
    if isinstance(err, TimeoutError):
        return f"timed out ({err})" if str(err) else "timed out"
    return f"{type(err).__name__}: {err}"


def _is_valid(path: Path) -> bool:
    try:
        to_png(path.read_bytes(), path.name)
        return True
    except (OSError, ValueError):
        return False


def _failure(record: Record | SeedImage, reason: str) -> dict[str, str]:
    if isinstance(record, SeedImage):
        return {"image": record.file, "group": record.group, "url": record.url or "", "reason": reason}
    return {"image_hash": record.image_hash, "url": record.url or "", "reason": reason}


def download_images(
    jsonl: str | Path | list[Record] | list[SeedImage],
    out_dir: str | Path,
    *,
    workers: int = 16,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_bytes: int = 64 << 20,
    verify_existing: bool = False,
    limit: int | None = None,
    progress: bool | None = None,
) -> DownloadReport:
    """Download every record's image to ``out_dir/{image_hash}.png`` (a seed-group JSON's to
    ``out_dir/{group}/{i}.png``); see the module docstring."""
    if not isinstance(jsonl, list) and is_seed_group_file(jsonl):
        jsonl = read_seed_group_json(jsonl)
    records = read_jsonl(jsonl, require_caption=False) if not isinstance(jsonl, list) else jsonl
    records = records[:limit] if limit is not None else records
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(total=len(records))
    todo = []
    for r in records:
        path = out / r.filename
        if path.is_file() and (not verify_existing or _is_valid(path)):
            report.present += 1
        else:
            todo.append(r)
    bar = progress_bar(len(todo), progress, "relsim data download")
    lock = threading.Lock()
    kwargs = dict(timeout=timeout, retries=retries, backoff=backoff, max_bytes=max_bytes)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_download_one, r, out, **kwargs): r for r in todo}
        for future in as_completed(futures):
            record = futures[future]
            error = future.exception()
            with lock:
                if error is None:
                    report.downloaded += 1
                else:
                    report.failed.append(_failure(record, str(error)))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    report.failed.sort(key=lambda f: f.get("image_hash") or f["image"])
    failures = out / FAILURES_FILE
    if report.failed:
        write_atomic(failures, "".join(json.dumps(f) + "\n" for f in report.failed).encode())
    else:
        failures.unlink(missing_ok=True)
    return report


__all__ = [
    "USER_AGENT",
    "FAILURES_FILE",
    "PermanentError",
    "DownloadReport",
    "fetch",
    "to_png",
    "write_atomic",
    "download_images",
]
