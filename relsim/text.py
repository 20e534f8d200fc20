"""Text embeddings in the relsim space (sentence-transformers/all-MiniLM-L6-v2).

relsim image embeddings were trained to match the MiniLM embedding of an anonymous caption, so a text
embedded here can be compared with image embeddings by cosine. The recipe is the one of the model card:
tokenize (truncating at the sentence-transformers ``max_seq_length``, 256 for this model), run the encoder,
mean-pool the last hidden state over the attention mask, L2-normalise.

Example:
    >>> from relsim.text import embed_text
    >>> emb = embed_text(["a dog", "an animal resting on a sofa"])  # doctest: +SKIP
    >>> emb.shape                                                   # doctest: +SKIP
    torch.Size([2, 384])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .backbone import ModelCache, canonical_device, quiet_transformers
from .errors import ArgumentError, CheckpointError
from .hub import download_advice, resolve
from .registry import DEFAULT_TEXT_MODEL

__all__ = ["DEFAULT_TEXT_MODEL", "TextEncoder", "embed_text", "clear_text_cache"]


# Files needed to run the encoder; the Hub repo also holds ONNX/OpenVINO/pytorch_model.bin copies we skip.
HUB_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
]


def _resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool | None,
    token: str | bool | None,
) -> tuple[Path, str | None]:
    """Return (local directory, resolved commit hash or None for a local directory)."""
    repo = resolve(
        name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        allow_patterns=HUB_FILES,
        offline_advice=download_advice("text", name_or_path, revision),
    )
    return repo.path, repo.revision


def _max_seq_length(model_dir: Path, tokenizer: Any, config: Any) -> int:
    """The truncation length sentence-transformers uses for this model."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000:
        return int(limit)
    return int(config.max_position_embeddings)


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise ArgumentError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ArgumentError("texts is empty: give at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ArgumentError(f"texts[{i}] is {type(text).__name__}, expected str")
    return list(texts)


class TextEncoder:
    """A MiniLM sentence encoder producing L2-normalised embeddings in the relsim space.

    Example:
        >>> enc = TextEncoder.from_pretrained()                 # doctest: +SKIP
        >>> enc.encode(["two cups, one empty"]).shape           # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str,
        revision: str | None,
        max_length: int,
        device: torch.device,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.max_length = max_length
        self.device = device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_TEXT_MODEL,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        max_length: int | None = None,
    ) -> TextEncoder:
        """Load an encoder from a Hub repo id or a local directory (a plain transformers save).

        ``max_length`` overrides the truncation length read from ``sentence_bert_config.json``.

        Example:
            >>> enc = TextEncoder.from_pretrained("/models/all-MiniLM-L6-v2", device="cpu")  # doctest: +SKIP
        """
        from transformers import AutoModel, AutoTokenizer

        model_dir, resolved = _resolve_model_dir(
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        dev = canonical_device(device)
        try:  # a text model's own code (auto_map) never runs
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            with quiet_transformers():
                model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).to(dev)
        except (ValueError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"the text model in {str(model_dir)!r} cannot be loaded: {reason}") from None
        length = max_length if max_length is not None else _max_seq_length(model_dir, tokenizer, model.config)
        name = str(model_dir) if resolved is None else str(name_or_path)
        return cls(model, tokenizer, name=name, revision=resolved, max_length=length, device=dev)

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Which weights produced the embeddings: model id or directory, and resolved commit."""
        return {"model": self.name, "revision": self.revision, "max_length": self.max_length}

    def encode(self, texts: str | Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embed texts: (N, dim) float32 on CPU, L2-normalised, in the order given.

        Example:
            >>> enc.encode(["a cat", "a dog"], batch_size=2).norm(dim=1)  # doctest: +SKIP
            tensor([1.0000, 1.0000])
        """
        items = _check_texts(texts)
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
        # Longest first so each batch holds texts of similar length: less padding, same results.
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        out = torch.empty(len(items), self.dim, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([items[i] for i in idx]).cpu()
        return out

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


#: Held weakly like every model cache, plus the last one used: embed_text's callers keep no encoder themselves.
_CACHE = ModelCache(keep_last=True)


def embed_text(
    texts: str | Sequence[str],
    model: str | os.PathLike | TextEncoder = DEFAULT_TEXT_MODEL,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """Embed texts with a cached :class:`TextEncoder`: (N, 384) float32, L2-normalised.

    Encoders are loaded once per (model, revision, device) and shared (``"cuda"`` and ``"cuda:0"`` are one
    device); the last one used stays loaded, others are freed once nothing holds them. ``kwargs`` go to
    :meth:`TextEncoder.from_pretrained` on the first load.

    Example:
        >>> q = embed_text("a tower of stacked objects")  # doctest: +SKIP
        >>> q.shape                                        # doctest: +SKIP
        torch.Size([1, 384])
    """
    if isinstance(model, TextEncoder):
        return model.encode(texts, batch_size=batch_size)
    items = _check_texts(texts)  # fail on bad input before loading a model
    encoder = _CACHE.get(
        (str(model), revision),
        device,
        lambda dev: TextEncoder.from_pretrained(model, revision=revision, device=dev, **kwargs),
    )
    return encoder.encode(items, batch_size=batch_size)


def clear_text_cache() -> None:
    """Forget the encoders cached by :func:`embed_text`."""
    _CACHE.clear()
