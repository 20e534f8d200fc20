"""Caption targets: frozen all-MiniLM-L6-v2 embeddings of the captions, computed once and cached on disk.

The cache is one safetensors file per text encoder (name + commit, or a hash of a local directory's
files): ``keys`` (N, 32) uint8 SHA-256 digests of the caption texts and ``embeddings`` (N, 384) float32.
Captions already in the file are never re-encoded; new ones are appended.

Example:
    >>> targets = caption_targets(["a dog on a sofa", "two cups"], cache_dir="cache")   # doctest: +SKIP
    >>> targets.shape                                                                  # doctest: +SKIP
    torch.Size([2, 384])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ArgumentError
from ..hub import download_advice, resolve
from ..registry import DEFAULT_TEXT_MODEL

FORMAT = "relsim-caption-targets/1"
_TEXT_FILES = ["*.json", "*.txt", "*.safetensors"]


@dataclass(frozen=True)
class TextModel:
    """A text encoder on disk and the key its embeddings are cached under."""

    name: str
    path: Path
    revision: str | None
    key: str


def resolve_text_model(name: str = DEFAULT_TEXT_MODEL, revision: str | None = None) -> TextModel:
    """Find the encoder (Hub id or local directory); its key is ``name@commit`` or a hash of its files."""
    advice = download_advice("text", name, revision)
    repo = resolve(name, revision=revision, allow_patterns=_TEXT_FILES, offline_advice=advice)
    key = repo.revision if repo.is_local else f"{name}@{repo.revision}"  # a local directory's content hash
    return TextModel(name=str(name), path=repo.path, revision=repo.revision, key=key)


def caption_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_file(cache_dir: str | Path, model: TextModel) -> Path:
    return Path(cache_dir) / f"captions-{hashlib.sha256(model.key.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(path: Path, model: TextModel) -> tuple[dict[bytes, int], torch.Tensor | None]:
    if not path.is_file():
        return {}, None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("model_key") != model.key:
            raise ArgumentError(f"{path} holds targets of {meta.get('model_key')!r}, not {model.key!r}")
        keys, embeddings = f.get_tensor("keys"), f.get_tensor("embeddings")
    if keys.shape != (embeddings.shape[0], 32):
        raise ArgumentError(f"{path} is damaged: keys {tuple(keys.shape)}, embeddings {tuple(embeddings.shape)}")
    return {bytes(row.tolist()): i for i, row in enumerate(keys)}, embeddings


def _write_cache(path: Path, model: TextModel, keys: list[bytes], embeddings: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    key_tensor = torch.tensor([list(k) for k in keys], dtype=torch.uint8).reshape(len(keys), 32)
    meta = {"format": FORMAT, "model_key": model.key, "text_model": model.name, "text_revision": str(model.revision)}
    save_file({"keys": key_tensor, "embeddings": embeddings.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def default_encoder(model: TextModel, device: str | torch.device | None) -> Callable[[list[str]], torch.Tensor]:
    from ..text import TextEncoder

    encoder = TextEncoder.from_pretrained(model.path, device=device)
    return lambda texts: encoder.encode(texts, batch_size=256)


def caption_targets(
    captions: Sequence[str],
    *,
    cache_dir: str | Path,
    text_model: str | TextModel = DEFAULT_TEXT_MODEL,
    revision: str | None = None,
    device: str | torch.device | None = None,
    encoder: Callable[[list[str]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, 384) float32 targets for ``captions``, in order, encoding only what the cache lacks.

    ``text_model`` is a Hub id or directory (with ``revision``), or an already resolved :class:`TextModel`.
    ``encoder`` (texts -> embeddings) replaces loading :class:`relsim.text.TextEncoder`.
    """
    model = text_model if isinstance(text_model, TextModel) else resolve_text_model(text_model, revision)
    path = cache_file(cache_dir, model)
    index, stored = _read_cache(path, model)
    wanted = [caption_key(c) for c in captions]
    new: dict[bytes, str] = {}
    for k, c in zip(wanted, captions, strict=True):
        if k not in index and k not in new:
            new[k] = c
    if new:
        encode = encoder if encoder is not None else default_encoder(model, device)
        fresh = encode(list(new.values())).float().cpu()
        if fresh.shape[0] != len(new):
            raise ArgumentError(f"the text encoder returned {fresh.shape[0]} rows for {len(new)} captions")
        keys = [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])] + list(new)
        stored = fresh if stored is None else torch.cat([stored, fresh])
        _write_cache(path, model, keys, stored)
        index = {k: i for i, k in enumerate(keys)}
    if stored is None:
        return torch.empty(0, 0)
    return stored[torch.tensor([index[k] for k in wanted], dtype=torch.long)]


__all__ = [
    "FORMAT",
    "TextModel",
    "resolve_text_model",
    "caption_key",
    "cache_file",
    "default_encoder",
    "caption_targets",
]
