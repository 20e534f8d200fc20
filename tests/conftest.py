"""Shared fixtures: tiny random checkpoints built once per test session (see tests/tiny.py)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

torch.set_num_threads(2)
# relsim caches content hashes of local checkpoints under RELSIM_CACHE: keep the tests' out of the user's cache
os.environ["RELSIM_CACHE"] = tempfile.mkdtemp(prefix="relsim-test-cache-")


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relsim-fixtures")


@pytest.fixture(scope="session")
def base_dir(fixture_root) -> Path:
    """A tiny random Qwen2.5-VL base model in the Hub layout (its stop tokens scaled so captions end at varied
    lengths; the embedder never reads the LM head)."""
    return tiny.build_base(fixture_root / "base", stop_rows=5.0)


@pytest.fixture(scope="session")
def adapter_dirs(fixture_root, base_dir) -> dict[str, Path]:
    """One upstream-layout relsim adapter per key layout, all on ``base_dir``."""
    return {
        layout: tiny.build_adapter(fixture_root / f"adapter-{layout}", base_dir, layout=layout)
        for layout in tiny.ADAPTER_LAYOUTS
    }


@pytest.fixture(scope="session")
def adapter_dir(adapter_dirs) -> Path:
    """The layout the published checkpoint most likely has (transformers 4.57 + peft)."""
    return adapter_dirs["v457"]


@pytest.fixture(scope="session")
def captioner_dirs(fixture_root, base_dir) -> dict[str, Path]:
    """One upstream-style anonymous-captioner checkpoint folder per key layout, all on ``base_dir``."""
    return {
        layout: tiny.build_captioner_adapter(fixture_root / f"captioner-{layout}", base_dir, layout=layout)
        for layout in tiny.ADAPTER_LAYOUTS
    }


@pytest.fixture(scope="session")
def captioner_dir(captioner_dirs) -> Path:
    """The layout a captioner trained with transformers 4.57 and no new tokens has."""
    return captioner_dirs["v5"]


@pytest.fixture(scope="session")
def tiny_model(adapter_dir, base_dir):
    """A loaded tiny RelSimModel on CPU, float32, train mode."""
    import relsim

    return relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_native_model(adapter_dir, base_dir):
    import relsim

    return relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")


@pytest.fixture(scope="session")
def hf_cache(fixture_root, base_dir, adapter_dir, captioner_dir) -> dict:
    """A HF cache (``HF_HOME``) holding the tiny fixtures under the real repo ids, as ``hf download`` leaves them.

    The adapter repo holds no config.json (like the real one); the captioner repo holds upstream's trainer-state
    pickles. Returns the home dir and the commits.
    """
    home = fixture_root / "hf_home"
    hub = home / "hub"
    adapter_commit = tiny.populate_hf_cache(hub, tiny.ADAPTER_REPO, adapter_dir)
    base_commit = tiny.populate_hf_cache(hub, tiny.BASE_REPO, base_dir)
    captioner_commit = tiny.populate_hf_cache(hub, tiny.CAPTIONER_REPO, captioner_dir)
    return {
        "home": home,
        "adapter_commit": adapter_commit,
        "base_commit": base_commit,
        "captioner_commit": captioner_commit,
    }


@pytest.fixture
def offline_hub(hf_cache, monkeypatch):
    """Point huggingface_hub at the populated cache and forbid network access."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(hf_cache["home"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(hf_cache["home"]))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hf_cache["home"] / "hub"))
    return hf_cache


@pytest.fixture
def captioner_calls(monkeypatch) -> list[int]:
    """The number of images of every captioner run (``caption``, ``stream``, ``generate_ids``), recorded."""
    from relsim.caption import Captioner

    calls: list[int] = []
    real = Captioner._stream

    def counting(self, items, *args, **kwargs):
        calls.append(len(items))
        return real(self, items, *args, **kwargs)

    monkeypatch.setattr(Captioner, "_stream", counting)
    return calls


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``relsim ARGV`` in this process: (exit code, stdout, stderr)."""
    from relsim.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB test image (gradients plus noise), deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / (7 + seed) + y / 13),
            127 + 100 * np.cos(y / (11 + seed)),
            127 + 100 * np.sin((x + y) / 17),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n small photo-like images, alternately JPEG and PNG, of different sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}"
        photo(40 + 6 * i, 56, seed + i).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def photos() -> list[Image.Image]:
    """Four photo-like images of different sizes and aspect ratios."""
    return [photo(448, 448, 0), photo(480, 640, 1), photo(300, 100, 2), photo(90, 200, 3)]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean and sends a whole body in one call."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", kind: str = "image/png") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering with ``handler``; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
