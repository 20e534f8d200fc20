"""Shared helpers for the benchmark scripts: random models, photo-like JPEGs, timing, memory, FLOPs, output.

Run the scripts from the repository root (``python benchmarks/<name>.py``); they import ``tests/tiny.py``
and ``tests/reference.py``, which build random checkpoints and the upstream-style reference pipeline.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: Size overrides for ``tiny.build_base``: None = the tiny test model.
MODEL_SIZES: dict[str, tuple[dict | None, dict | None]] = {
    "tiny": (None, None),
    "mid": (
        dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
        ),
        dict(depth=8, hidden_size=320, intermediate_size=856, num_heads=4, fullatt_block_indexes=[3, 7]),
    ),
}

#: The real Qwen2.5-VL-7B-Instruct shapes (config.json of the Hub repo).
QWEN25_VL_7B_TEXT = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4
)
QWEN25_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
)

#: Image sizes of the benchmarks as (width, height).
SIZES: dict[str, tuple[int, int]] = {
    "448x448": (448, 448),
    "640x480": (640, 480),
    "1024x768": (1024, 768),
    "1920x1080": (1920, 1080),
}

H100_BF16_DENSE_FLOPS = 989e12
PROJECTION_DIM = 384


def build_checkpoint(root: Path, size: str = "tiny") -> tuple[Path, Path]:
    """A random base model of the named size and an upstream-layout adapter on it: (adapter, base)."""
    import tiny

    text, vision = MODEL_SIZES[size]
    base = tiny.build_base(root / f"{size}-base", text=text, vision=vision)
    adapter = tiny.build_adapter(root / f"{size}-adapter", base)
    return adapter, base


def photo_array(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic photo-like RGB array: smooth colour fields, a few soft shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(1, 6, 3)
        image[..., c] = 128 + 70 * np.sin(a * x * np.pi + p) * np.cos(b * y * np.pi)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        image += blob[..., None] * rng.uniform(-90, 90, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_photos(folder: Path, width: int, height: int, count: int, *, seed: int = 0, quality: int = 90) -> list[Path]:
    """Write ``count`` distinct photo-like JPEGs of one size into ``folder`` (reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo-{width}x{height}-{seed + i}.jpg"
        if not path.exists():
            Image.fromarray(photo_array(width, height, seed + i)).save(path, quality=quality)
        paths.append(path)
    return paths


def setup_cpu(threads: int | None) -> int:
    """Flush denormals (random weights produce them, and they slow CPU kernels 10-60x); set torch threads."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``fn`` (other processes only ever add time)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class PeakRSS:
    """Peak resident memory of this process inside a ``with`` block, in MiB.

    Linux resets the high-water mark when ``5`` is written to ``/proc/self/clear_refs``; elsewhere (or if
    that is refused) the value is the process's peak so far (``ru_maxrss``).
    """

    def __enter__(self) -> PeakRSS:
        self.exact = _reset_peak_rss()
        self.mib = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.mib = peak_rss_mib()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict:
    """What the numbers were measured on."""
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def image_flops(
    config, width: int, height: int, mode: str = "train", *, prompt_tokens: int = 17, causal: bool = True
) -> float:
    """Forward FLOPs (2 x multiply-adds) of one image through the relsim path: vision tower + language model.

    ``config`` is a ``Qwen2_5_VLConfig``. Counts every matmul: patch embedding, qkv/proj/MLP per vision
    block, attention scores and values in windows and full layers, merger, decoder layers up to
    ``<|query|>``, the 384-d projection; no LM head. ``prompt_tokens``: text tokens around the image (17 for
    the relsim prompt). ``causal=True`` counts the language model's attention over the causal half only (what
    flash kernels compute); ``False`` counts the full square (what eager attention computes).
    """
    from relsim.preprocess import TRAIN_SIZE, smart_resize

    v, t = config.vision_config, config.text_config
    if mode == "train":
        h, w = TRAIN_SIZE, TRAIN_SIZE
    else:
        h, w = smart_resize(height, width)
    gh, gw = h // v.patch_size, w // v.patch_size
    patches = gh * gw
    merged = patches // v.spatial_merge_size**2
    c, inter = v.hidden_size, v.intermediate_size
    patch_in = 3 * v.temporal_patch_size * v.patch_size**2
    flops = 2 * patches * patch_in * c  # patch embedding
    per_block = 2 * patches * (3 * c * c + c * c + 3 * c * inter)  # qkv, proj, gated MLP
    window = v.window_size // v.patch_size  # patches per window side (8)
    window_tokens = _window_token_sq(gh, gw, window)
    for i in range(v.depth):
        attn_pairs = patches * patches if i in v.fullatt_block_indexes else window_tokens
        flops += per_block + 4 * attn_pairs * c  # QK^T and AV
    hidden4 = c * v.spatial_merge_size**2
    flops += 2 * merged * (hidden4 * hidden4 + hidden4 * v.out_hidden_size)  # merger MLP
    d, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    tokens = merged + prompt_tokens
    per_layer = 2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * t.intermediate_size)
    pairs = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    flops += t.num_hidden_layers * (per_layer + 4 * pairs * d)
    flops += 2 * d * PROJECTION_DIM
    return float(flops)


def _window_token_sq(gh: int, gw: int, window: int) -> int:
    """Sum over attention windows of (tokens in the window)^2 for a gh x gw patch grid."""
    total = 0
    for top in range(0, gh, window):
        for left in range(0, gw, window):
            n = min(window, gh - top) * min(window, gw - left)
            total += n * n
    return total


def write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) ``columns``; floats get 3 significant digits."""

    def fmt(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join(lines)
