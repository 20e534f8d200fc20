"""`relsim data download` against a local HTTP server: good images, a 404, a truncated file, a slow
response, a flaky one, a JPEG; atomic writes, resume and the failure report."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import QuietHandler, photo, serve
from PIL import Image

from relsim.cli import main
from relsim.train.download import FAILURES_FILE, download_images


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GOOD = {f"good{i}": _encoded(photo(40 + 7 * i, 50, seed=i), "PNG") for i in range(4)}
JPEG = _encoded(photo(48, 64, seed=9), "JPEG")
TRUNCATED = GOOD["good0"][: len(GOOD["good0"]) // 2]


class _Handler(QuietHandler):
    hits: Counter = Counter()
    flaky_failures = 1

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.strip("/").split(".")[0]
        type(self).hits[name] += 1
        if name in GOOD:
            self._send(200, GOOD[name])
        elif name == "photo":
            self._send(200, JPEG, "image/jpeg")
        elif name == "truncated":
            self._send(200, TRUNCATED)
        elif name == "slow":
            time.sleep(3.0)  # longer than the client's timeout
            with contextlib.suppress(OSError):
                self._send(200, GOOD["good1"])
        elif name == "flaky" and type(self).hits[name] <= type(self).flaky_failures:
            self._send(503, b"busy", "text/plain")
        elif name == "flaky":
            self._send(200, GOOD["good2"])
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture
def server():
    _Handler.hits = Counter()
    with serve(_Handler) as url:
        yield url


def _jsonl(path: Path, base: str, names: list[str]) -> Path:
    lines = [json.dumps({"image_hash": n, "caption": f"caption {n}", "url_link": f"{base}/{n}.png"}) for n in names]
    lines.append(json.dumps({"image_hash": "local", "caption": "c", "url_link": "file:///etc/passwd"}))
    path.write_text("\n".join(lines) + "\n")
    return path


NAMES = ["good0", "good1", "good2", "good3", "photo", "missing", "truncated", "slow", "flaky"]


def test_download_reports_failures_and_resumes(server, tmp_path):
    jsonl = _jsonl(tmp_path / "captions.jsonl", server, NAMES)
    out = tmp_path / "images"
    started = time.monotonic()
    report = download_images(jsonl, out, workers=4, timeout=1.0, retries=1, backoff=0.0)
    assert time.monotonic() - started < 15
    assert report.total == 10 and report.downloaded == 6 and report.present == 0
    reasons = {f["image_hash"]: f["reason"] for f in report.failed}
    assert set(reasons) == {"missing", "truncated", "slow", "local"}
    assert reasons["missing"] == "HTTP 404" and "undecodable" in reasons["truncated"]
    assert "timed out" in reasons["slow"] and "http" in reasons["local"]
    # bounded requests: no retry after a 404; one retry for transient failures
    assert _Handler.hits["missing"] == 1 and _Handler.hits["truncated"] == 2 and _Handler.hits["slow"] == 2
    assert _Handler.hits["flaky"] == 2  # a 503, then success

    for name in ("good0", "good1", "good3"):
        assert (out / f"{name}.png").read_bytes() == GOOD[name]  # PNG stored byte for byte
    assert (out / "flaky.png").read_bytes() == GOOD["good2"]
    with Image.open(out / "photo.png") as img:  # the JPEG, decoded and stored as PNG
        assert img.format == "PNG" and img.size == (64, 48)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no partial files left behind
    assert not (out / "missing.png").exists() and not (out / "truncated.png").exists()
    failures = [json.loads(line) for line in (out / FAILURES_FILE).read_text().splitlines()]
    assert [f["image_hash"] for f in failures] == sorted(reasons)

    # Resume: nothing that is there is fetched again.
    _Handler.hits.clear()
    again = download_images(jsonl, out, workers=4, timeout=1.0, retries=0, backoff=0.0)
    assert again.present == 6 and again.downloaded == 0 and len(again.failed) == 4
    assert sum(_Handler.hits[n] for n in ("good0", "good1", "good2", "good3", "photo", "flaky")) == 0


def test_verify_existing_replaces_a_corrupt_file_and_cli_exit_code(server, tmp_path):
    jsonl = _jsonl(tmp_path / "captions.jsonl", server, ["good0", "good1"])
    out = tmp_path / "images"
    out.mkdir()
    (out / "good0.png").write_bytes(TRUNCATED)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["data", "download", str(jsonl), str(out), "--verify-existing", "--timeout", "2", "--retries", "0"])
    assert code == 1  # the file:// record fails
    assert "3 images: 2 downloaded, 0 already present, 1 failed" in stdout.getvalue()
    assert (out / "good0.png").read_bytes() == GOOD["good0"]


def test_image_list_without_captions_downloads(server, tmp_path):
    """Upstream's retrieval pool (random_images_14k.jsonl) has only image_hash and url_link."""
    jsonl = tmp_path / "random_images.jsonl"
    jsonl.write_text("".join(json.dumps({"image_hash": n, "url_link": f"{server}/{n}.png"}) + "\n" for n in GOOD))
    report = download_images(jsonl, tmp_path / "images", workers=2, timeout=2.0, retries=0)
    assert report.downloaded == len(GOOD) and not report.failed
    assert (tmp_path / "images" / "good3.png").read_bytes() == GOOD["good3"]


def test_captions_stay_required_for_training(tmp_path):
    from relsim.train.data import read_jsonl

    jsonl = tmp_path / "no_captions.jsonl"
    jsonl.write_text(json.dumps({"image_hash": "a", "url_link": "http://x/a.png"}) + "\n")
    with pytest.raises(ValueError, match=r"no_captions.jsonl:1: expected a JSON object with image_hash and caption"):
        read_jsonl(jsonl)
    assert read_jsonl(jsonl, require_caption=False)[0].caption is None
    jsonl.write_text(json.dumps({"image_hash": "a", "caption": 3}) + "\n")
    with pytest.raises(ValueError, match="caption must be a string"):
        read_jsonl(jsonl, require_caption=False)
