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

#: The CPU proxy of Qwen2.5-VL-7B (benchmarks/proxy.py explains the shapes): upstream's work splits into
#: vision / language / LM head / attention as the 7B's does at 448x448 and at 1024x768, at 1/159 of the FLOPs.
PROXY_TEXT = dict(
    hidden_size=320, intermediate_size=21100, num_hidden_layers=2, num_attention_heads=5, num_key_value_heads=1
)
PROXY_VISION = dict(depth=8, hidden_size=32, intermediate_size=5150, num_heads=2, fullatt_block_indexes=[7])
#: Rows of the proxy's LM head in the upstream pipeline (the 7B's 151,666 per 28 layers, for 2 layers).
PROXY_LM_HEAD_ROWS = 10700

#: Size overrides for ``tiny.build_base``: None = the tiny test model. ``tiny`` and ``mid`` keep the real
#: 152k-row LM head while shrinking everything else, so the head dominates upstream's work on them;
#: ``proxy`` has the 7B's proportions.
MODEL_SIZES: dict[str, tuple[dict | None, dict | None]] = {
    "tiny": (None, None),
    "mid": (
        dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
        ),
        dict(depth=8, hidden_size=320, intermediate_size=856, num_heads=4, fullatt_block_indexes=[3, 7]),
    ),
    "proxy": (PROXY_TEXT, PROXY_VISION),
}
#: Rows of the upstream pipeline's LM head per model size (default: the resized vocabulary, 151,666).
LM_HEAD_ROWS = {"proxy": PROXY_LM_HEAD_ROWS}

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
#: Dense bf16 tensor-core peaks from NVIDIA's data sheets (FLOP/s), matched against the card's name in order.
SPEC_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)
PROJECTION_DIM = 384


def build_checkpoint(root: Path, size: str = "tiny") -> tuple[Path, Path]:
    """A random base model of the named size and an upstream-layout adapter on it: (adapter, base)."""
    import tiny

    text, vision = MODEL_SIZES[size]
    base = tiny.build_base(root / f"{size}-base", text=text, vision=vision)
    adapter = tiny.build_adapter(root / f"{size}-adapter", base)
    return adapter, base


def upstream_pipeline(adapter: Path, base: Path, model_size: str = "tiny", dtype: torch.dtype = torch.float32):
    """tests/reference.py's ``UpstreamPipeline`` on a built checkpoint, its LM head cut to ``LM_HEAD_ROWS``.

    The proxy's LM head has fewer rows than the vocabulary so that its share of upstream's work is the 7B's;
    the logits are never read, so only the shape of the head matters.
    """
    from reference import UpstreamPipeline

    pipeline = UpstreamPipeline(adapter, base, dtype=dtype)
    rows = LM_HEAD_ROWS.get(model_size)
    if rows is not None:
        model = pipeline.model.get_base_model()
        hidden = model.config.text_config.hidden_size
        model.set_output_embeddings(torch.nn.Linear(hidden, rows, bias=False, dtype=dtype))
    return pipeline


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


class PaddingMeter:
    """Counts the language-model tokens of every batch a ``RelSimModel`` runs inside a ``with`` block.

    ``real``: the tokens of the sequences themselves; ``padded``: batch size x longest sequence, what the
    batch computes. ``waste`` = padded / real (1.0: no padding).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.real = self.padded = self.batches = 0

    def __enter__(self) -> PaddingMeter:
        self.real = self.padded = self.batches = 0
        self._handle = self.model.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _count(self, model, args) -> None:
        from relsim.backbone import image_tokens

        lengths = [model.prompt.length(image_tokens(grid)) for grid in args[1].tolist()]
        self.real += sum(lengths)
        self.padded += len(lengths) * max(lengths)
        self.batches += 1

    @property
    def waste(self) -> float | None:
        return self.padded / self.real if self.real else None


def pair_scores(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine scores of every pair of distinct images (the upper triangle of ``E @ E.T``), float64."""
    e = embeddings.double()
    rows, cols = torch.triu_indices(len(e), len(e), 1)
    return (e @ e.T)[rows, cols]


def bf16_agreement(relsim_bf16: torch.Tensor, upstream_bf16: torch.Tensor, float32: torch.Tensor) -> dict:
    """How far relsim-bf16 and upstream-bf16 are apart, against how far each is from the float32 result.

    Arguments are (N, 384) embeddings of the same N images. Scores are the cosines of every pair. The check
    (``within_spread``): the RMS relsim-bf16 vs upstream-bf16 score difference is no larger than two
    independent bf16 roundings of the measured sizes would give, sqrt(rms_r^2 + rms_u^2) with rms_r, rms_u each
    pipeline's RMS difference from float32: the two pipelines disagree no more than bf16 rounding explains.
    Two pipelines drifting apart (errors in opposite directions) exceed it by up to sqrt(2). RMS, not the
    largest pair: the largest of 28 differences of two independent roundings often exceeds either one's own
    largest (seen: 1.12x on an AVX2 CPU, 0.86x on another). ``gap_over_spread`` is the ratio the check passes
    at; ``relsim_over_upstream`` compares the two RMS errors against float32.
    """
    scores = {name: pair_scores(e) for name, e in (("r", relsim_bf16), ("u", upstream_bf16), ("f", float32))}
    embeddings = {"r": relsim_bf16, "u": upstream_bf16, "f": float32}
    out: dict = {"images": len(float32), "pairs": len(scores["f"])}
    for key, (a, b) in {"relsim_vs_upstream": "ru", "relsim_vs_float32": "rf", "upstream_vs_float32": "uf"}.items():
        diff = scores[a] - scores[b]
        out[key] = {
            "score_max": float(diff.abs().max()),
            "score_rms": float(diff.pow(2).mean().sqrt()),
            "embedding_max": float((embeddings[a].double() - embeddings[b].double()).abs().max()),
        }
    gap = out["relsim_vs_upstream"]["score_rms"]
    ours, theirs = out["relsim_vs_float32"]["score_rms"], out["upstream_vs_float32"]["score_rms"]
    spread = (ours**2 + theirs**2) ** 0.5
    out["gap_over_spread"] = gap / spread if spread else float("inf")
    out["within_spread"] = gap <= spread
    out["relsim_over_upstream"] = ours / theirs if theirs else float("inf")
    return out


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (how busy a shared machine was), where the OS tells."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


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


#: Categories of :func:`flop_split`.
FLOP_PARTS = ("vision", "language", "lm_head", "attention")
#: Text tokens around the image: relsim cuts the prompt after ``<|query|>``; upstream runs the whole chat
#: template up to ``<|im_start|>assistant\n`` (DESIGN.md section 1, item 3).
PROMPT_TOKENS = {"relsim": 17, "upstream": 22}
#: Rows of upstream's LM head after ``resize_token_embeddings(len(tokenizer))``.
UPSTREAM_LM_HEAD_ROWS = 151666


def flop_split(
    config,
    width: int,
    height: int,
    mode: str = "train",
    *,
    prompt_tokens: int = PROMPT_TOKENS["relsim"],
    causal: bool = True,
    lm_head_rows: int = 0,
) -> dict[str, float]:
    """Forward FLOPs (2 x multiply-adds) of one image, by part: ``vision`` (patch embedding, the blocks' qkv,
    proj and MLP, the merger), ``language`` (the decoder layers' projections and MLPs, the 384-d projection),
    ``lm_head`` (``lm_head_rows`` logits at every position: 0 for relsim, which never runs it) and
    ``attention`` (scores and values, vision windows and full layers and the language model).

    ``config`` is a ``Qwen2_5_VLConfig``. ``prompt_tokens``: text tokens around the image (17 for relsim, 22 for
    upstream's full chat template). ``causal=True`` counts the language model's attention over the causal half
    only (what flash kernels compute); ``False`` the full square (what eager attention computes).
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
    vision = 2 * patches * patch_in * c  # patch embedding
    vision += v.depth * 2 * patches * (3 * c * c + c * c + 3 * c * inter)  # qkv, proj, gated MLP
    window = v.window_size // v.patch_size  # patches per window side (8)
    window_tokens = _window_token_sq(gh, gw, window)
    attention = sum(
        4 * (patches * patches if i in v.fullatt_block_indexes else window_tokens) * c for i in range(v.depth)
    )
    hidden4 = c * v.spatial_merge_size**2
    vision += 2 * merged * (hidden4 * hidden4 + hidden4 * v.out_hidden_size)  # merger MLP
    d, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    tokens = merged + prompt_tokens
    language = t.num_hidden_layers * 2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * t.intermediate_size)
    pairs = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    attention += t.num_hidden_layers * 4 * pairs * d
    language += 2 * d * PROJECTION_DIM
    lm_head = 2 * tokens * d * lm_head_rows
    return {
        "vision": float(vision),
        "language": float(language),
        "lm_head": float(lm_head),
        "attention": float(attention),
    }


def image_flops(
    config, width: int, height: int, mode: str = "train", *, prompt_tokens: int = 17, causal: bool = True
) -> float:
    """Forward FLOPs (2 x multiply-adds) of one image through the relsim path: vision tower + language model.

    Counts every matmul: patch embedding, qkv/proj/MLP per vision block, attention scores and values in
    windows and full layers, merger, decoder layers up to ``<|query|>``, the 384-d projection; no LM head.
    The sum of :func:`flop_split`; see there for the arguments.
    """
    return sum(flop_split(config, width, height, mode, prompt_tokens=prompt_tokens, causal=causal).values())


def upstream_flops(config, width: int, height: int, *, lm_head_rows: int = UPSTREAM_LM_HEAD_ROWS) -> dict[str, float]:
    """:func:`flop_split` of the upstream procedure: native resolution, the whole prompt, the LM head everywhere."""
    return flop_split(
        config, width, height, "native", prompt_tokens=PROMPT_TOKENS["upstream"], lm_head_rows=lm_head_rows
    )


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
