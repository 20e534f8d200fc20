"""Known checkpoints and defaults: the names relsim loads when none is given (no heavy imports here).

Example:
    >>> from relsim.registry import DEFAULT_MODEL, PRETRAINED
    >>> PRETRAINED[DEFAULT_MODEL]["base_model"]
    'Qwen/Qwen2.5-VL-7B-Instruct'
"""

from __future__ import annotations

#: The published relsim embedder (LoRA adapter + projection on Qwen2.5-VL-7B-Instruct).
DEFAULT_MODEL = "thaoshibe/relsim-qwenvl25-lora"
#: The published anonymous captioner (LoRA adapter on the same base).
DEFAULT_CAPTIONER = "thaoshibe/relsim-anonymous-caption-qwen25vl-lora"
#: The base model both published adapters were trained on.
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
#: The text encoder whose space relsim's image embeddings live in.
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: Known checkpoints and the revisions a default load pins. ``None`` follows the repo's main branch:
#: we record no commit we could not verify; pass ``revision=`` (and ``base_revision=``) to pin one.
PRETRAINED: dict[str, dict[str, str | None]] = {
    DEFAULT_MODEL: {"revision": None, "base_model": DEFAULT_BASE_MODEL, "base_revision": None},
}
#: The same for captioners.
CAPTIONERS: dict[str, dict[str, str | None]] = {
    DEFAULT_CAPTIONER: {"revision": None, "base_model": DEFAULT_BASE_MODEL, "base_revision": None},
}

__all__ = ["DEFAULT_MODEL", "DEFAULT_CAPTIONER", "DEFAULT_BASE_MODEL", "DEFAULT_TEXT_MODEL", "PRETRAINED", "CAPTIONERS"]
