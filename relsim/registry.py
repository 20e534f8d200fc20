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

#: The evaluation baselines (``relsim eval retrieval --methods clip,dino``).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_DINO_MODEL = "facebook/dinov2-large"

#: What ``relsim download WHAT`` fetches: per WHAT, the option naming its repo, the option naming its revision,
#: and the default repo. ``embedder`` and ``captioner`` bring their base model along.
DOWNLOADS: dict[str, tuple[str, str, str]] = {
    "embedder": ("--model", "--revision", DEFAULT_MODEL),
    "base": ("--base-model", "--base-revision", DEFAULT_BASE_MODEL),
    "captioner": ("--captioner", "--captioner-revision", DEFAULT_CAPTIONER),
    "text": ("--text-model", "--text-revision", DEFAULT_TEXT_MODEL),
    "clip": ("--clip-model", "--clip-revision", DEFAULT_CLIP_MODEL),
    "dino": ("--dino-model", "--dino-revision", DEFAULT_DINO_MODEL),
}

#: Known checkpoints and the revisions a default load pins. ``None`` follows the repo's main branch:
#: we record no commit we could not verify; pass ``revision=`` (and ``base_revision=``) to pin one.
PRETRAINED: dict[str, dict[str, str | None]] = {
    DEFAULT_MODEL: {"revision": None, "base_model": DEFAULT_BASE_MODEL, "base_revision": None},
}
#: The same for captioners.
CAPTIONERS: dict[str, dict[str, str | None]] = {
    DEFAULT_CAPTIONER: {"revision": None, "base_model": DEFAULT_BASE_MODEL, "base_revision": None},
}

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_CAPTIONER",
    "DEFAULT_BASE_MODEL",
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "DOWNLOADS",
    "PRETRAINED",
    "CAPTIONERS",
]
