"""The shared Qwen2.5-VL base: device and dtype parsing, body and tokenizer loading, the weights lock, visual
token counts, the 3-D multimodal RoPE positions, and ``ModelCache``: the one rule for caching loaded models.

The embedder (relsim.encoder / relsim.pretrained), the captioner (relsim.caption), the text model, training
and the evaluation baselines all stand on this module; it imports none of them.

Example:
    >>> device = canonical_device("cpu")
    >>> parse_dtype("bf16", device)
    torch.bfloat16
    >>> image_tokens((1, 32, 32))
    256
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from torch import nn

from .checkpoint import open_safetensors, read_json
from .errors import ArgumentError, CheckpointError, ModelNotFoundError
from .hub import BASE_FILES, ResolvedRepo, resolve
from .preprocess import MERGE_SIZE

MERGE = MERGE_SIZE
T = TypeVar("T")


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def canonical_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> the default; ``"cuda"`` -> ``cuda:<current>`` so equal devices compare equal."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``None`` -> the device's default; ``"bf16"``, ``"float16"``, ... -> the torch dtype (float32/bf16/fp16 only)."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str):
        names = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "half": torch.float16,
        }
        if dtype not in names:
            raise ArgumentError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ArgumentError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attention 2 when it is installed and usable, else PyTorch SDPA."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def _device_map(device: torch.device) -> dict | None:
    """Load straight onto an accelerator when transformers can (it needs ``accelerate`` for that);
    otherwise the weights pass through host memory once and are then moved."""
    if device.type == "cpu" or importlib.util.find_spec("accelerate") is None:
        return None
    return {"": device}


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load reports and "Loading weights" bars off for a block (one bar per load of weights
    already on disk is noise), restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_base(name: str | Path, revision: str | None, *, named_by: str | None = None, **hub) -> ResolvedRepo:
    """The base model's files. ``named_by``: the adapter that named this base (rather than the caller); a base
    that cannot be found then suggests ``base_model=`` (``--base-model``)."""
    try:
        return resolve(name, revision=revision, allow_patterns=BASE_FILES, **hub)
    except (ModelNotFoundError, FileNotFoundError) as err:
        if named_by is None:
            raise
        raise ModelNotFoundError(
            f"{err} -- {named_by!r} names the base model {name!r}; pass base_model= (--base-model) "
            "to load the base from elsewhere"
        ) from err


def load_tokenizer(path: Path):
    """The tokenizer a checkpoint ships, never running code it names (``auto_map``): a tokenizer that needs its
    own code, or files that are missing or broken, are a :class:`CheckpointError` naming the directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError, TypeError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"the tokenizer in {str(path)!r} cannot be loaded (relsim needs tokenizer.json or vocab.json + "
            f"merges.txt, and never runs a checkpoint's own code): {reason}"
        ) from None


def check_base_files(path: Path) -> None:
    """Fail early, naming the file, on a base directory that transformers would misread: no or a broken
    ``config.json`` (transformers then builds a default config of a much larger model), another architecture,
    pickled weights, a missing or truncated shard."""
    config = read_json(path / "config.json")
    if config.get("model_type") not in ("qwen2_5_vl",):
        raise CheckpointError(
            f"{str(path / 'config.json')!r} describes model_type {config.get('model_type')!r}, not Qwen2.5-VL"
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{str(index)!r} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
    elif (path / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    elif any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(
            f"{str(path)!r} holds only pickled weights (*.bin); relsim loads safetensors only "
            "(convert them with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    else:
        raise CheckpointError(f"{str(path)!r} has no weights (model.safetensors or model.safetensors.index.json)")
    for shard in shards:
        if not (path / shard).is_file():
            raise CheckpointError(f"{shard} is listed in {str(index)!r} but missing from {str(path)!r}")
        with open_safetensors(path / shard):  # the header check catches truncated and garbage files
            pass


def load_body(path: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The Qwen2.5-VL vision tower + language model, without the LM head (never read from disk)."""
    from transformers import Qwen2_5_VLModel

    check_base_files(path)

    try:
        with quiet_transformers():  # the load report lists lm_head as unexpected: that is the point
            body, info = Qwen2_5_VLModel.from_pretrained(
                path,
                dtype=dtype,
                attn_implementation=attn_implementation(device, dtype),
                device_map=_device_map(device),
                output_loading_info=True,
                trust_remote_code=False,
            )
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"the base model in {str(path)!r} cannot be loaded: {reason}") from None
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.startswith("lm_head")]
    if info.get("missing_keys") or unexpected or info.get("mismatched_keys"):
        raise CheckpointError(
            f"the base model in {str(path)!r} does not fit Qwen2.5-VL: missing {sorted(info['missing_keys'])[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}, mismatched {sorted(info.get('mismatched_keys', []))[:5]}"
        )
    return body.to(device)


class ModelCache:
    """The one caching rule for loaded models (embedders, captioners, text encoders): one instance per
    ``(key, device)`` with the device normalised (``"cuda"`` and ``"cuda:0"`` are one entry), held by weak
    reference, so a model nobody uses any more is freed; loads run under a lock, so two threads load once.

    ``keep_last=True`` also holds the most recently used model, for helpers whose callers keep nothing
    (``relsim.text.embed_text``): asking for another model or device lets the previous one go.

    >>> class Model:
    ...     def __init__(self, device):
    ...         self.device = device
    >>> cache = ModelCache()
    >>> model = cache.get(("tiny",), "cpu", Model)
    >>> cache.get(("tiny",), torch.device("cpu"), Model) is model
    True
    """

    def __init__(self, *, keep_last: bool = False) -> None:
        self._models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._keep_last = keep_last
        self._last: Any = None

    def get(self, key: Hashable, device: str | torch.device | None, load: Callable[[torch.device], T]) -> T:
        """The cached model for ``key`` on ``device`` (None: the default device), else ``load(device)``'s,
        cached. A cached model that was moved elsewhere since (e.g. a metric's ``.to()``) is not reused."""
        device = canonical_device(device)
        with self._lock:
            model = self._models.get((key, str(device)))
            if model is None or _device_of(model) != device:
                model = load(device)
                self._models[(key, str(device))] = model
            if self._keep_last:
                self._last = model
            return model

    def clear(self) -> None:
        """Forget every cached model (those still used elsewhere stay alive there)."""
        with self._lock:
            self._models.clear()
            self._last = None

    def __len__(self) -> int:
        return len(self._models)


def _device_of(model: Any) -> torch.device:
    device = model.device
    return device if isinstance(device, torch.device) else torch.device(device)


# ---------------------------------------------------------------------------------------------------------
# Visual tokens and positions


def image_tokens(grid_thw: Sequence[int]) -> int:
    """Visual tokens of one image after the 2x2 merge (256 for 448x448)."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (MERGE * MERGE)


def rope_positions(prefix: int, grid_thw: Sequence[int], suffix: int) -> torch.Tensor:
    """3-D multimodal RoPE positions (3, L) of one unpadded prompt ``prefix`` text tokens + one image + ``suffix``
    text tokens, as transformers' ``get_rope_index`` gives them for an image.

    Text counts up on all three axes; the image grid (gh x gw merged tokens, one frame) starts at ``s`` with
    ``(t, h, w) = (s, s + row, s + col)``; the text after it resumes at ``s + max(gh, gw)`` (an image's time
    axis does not advance the text: upstream scales it by ``second_per_grid_t = 0``).

    >>> rope_positions(2, (1, 4, 4), 1)[:, -1].tolist()
    [4, 4, 4]
    """
    t, h, w = (int(x) for x in grid_thw)
    gh, gw = h // MERGE, w // MERGE
    start = prefix
    rows = torch.arange(gh).repeat_interleave(gw).repeat(t)
    cols = torch.arange(gw).repeat(gh * t)
    frames = torch.arange(t).repeat_interleave(gh * gw)
    image = torch.stack([frames, rows, cols]) + start
    after = start + max(gh, gw)
    return torch.cat(
        [
            torch.arange(start).expand(3, -1),
            image,
            (torch.arange(suffix) + after).expand(3, -1),
        ],
        dim=1,
    )


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def weights_lock(body: nn.Module) -> threading.Lock:
    """The lock held while a forward pass reads ``body``'s weights.

    The captioner runs on the embedder's body with some weights swapped for the base's (see relsim.caption):
    holding this lock keeps an embedding in another thread from seeing them.
    """
    with _LOCKS_LOCK:
        lock = _LOCKS.get(body)
        if lock is None:
            lock = _LOCKS[body] = threading.Lock()
        return lock


__all__ = [
    "ModelCache",
    "attn_implementation",
    "canonical_device",
    "check_base_files",
    "default_device",
    "default_dtype",
    "image_tokens",
    "load_body",
    "load_tokenizer",
    "parse_dtype",
    "quiet_transformers",
    "resolve_base",
    "rope_positions",
    "weights_lock",
]
