"""Captioner inputs: the prompt texts, the chat template around one image, image preparation, batches.

What upstream's anonymous captioner sees (tests/fixtures/anonymous_caption/upstream.json): the image as RGB,
squashed to 448x448 with Lanczos (no crop), in one user turn ``[image, prompt]`` of the Qwen2.5-VL chat template
with the default system prompt and the generation prompt. relsim also applies the EXIF orientation and puts
transparency on white, as everywhere else in relsim (upstream's ``convert("RGB")`` drops alpha).

Everything here is label-free and shared by inference (:mod:`relsim.caption`) and captioner training.

Example:
    >>> prompt = CaptionPrompt.from_tokenizer(tokenizer, TRAINING_PROMPT, image_token_id=151655)  # doctest: +SKIP
    >>> pixels = prepare_image("photo.jpg", 0)                  # uint8 (3, 448, 448)          # doctest: +SKIP
    >>> batch = build_batch([prompt], [256])                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from . import backbone
from .errors import ArgumentError
from .preprocess import PATCH_SIZE, ImageInput, decode, to_pixel_tensor

#: The prompt of upstream's training config (``config.yaml``): relsim's default.
TRAINING_PROMPT = (
    "You are given a single image.\n"
    "Carefully analyze it to understand its underlying logic, layout, structure, or creative concept. Then generate "
    "a single, reusable anonymous caption that could describe any image following the same concept.\n"
    "The caption must:\n"
    "- Fully capture the general logic or analogy of the image.\n"
    "- Include placeholders (e.g., {Object}, {Word}, {Character}, {Meaning}, {Color}, etc.) wherever variations "
    "can occur.\n"
    "- Be concise and standalone.\n"
    "Important: Only output the anonymous caption. Do not provide any explanations or additional text.\n"
)


def _indented(text: str, tail: str) -> str:
    """The inference scripts' triple-quoted copies of the prompt: a leading newline, 4-space indents."""
    return "\n" + "".join("    " + line + "\n" for line in text.splitlines()) + tail


#: ``anonymous_caption.py`` (upstream's batch script): the prompt indented inside a triple-quoted string.
BATCH_INFERENCE_PROMPT = _indented(TRAINING_PROMPT, "    ")
#: ``anonymous_caption_hf.py`` (the Hub model card's example): the same, without the trailing indent.
HUB_EXAMPLE_PROMPT = _indented(TRAINING_PROMPT, "")
#: The three upstream prompt texts by name. They tokenize differently, so the captions can differ too.
PROMPTS = {"training": TRAINING_PROMPT, "batch": BATCH_INFERENCE_PROMPT, "hub": HUB_EXAMPLE_PROMPT}

#: Upstream squashes every image to this square (``resize((448, 448), LANCZOS)``): 256 visual tokens.
IMAGE_SIZE = 448


def chat_messages(prompt: str) -> list[dict]:
    """One user turn ``[image, prompt]``: what upstream hands to ``apply_chat_template``."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


@dataclass(frozen=True)
class CaptionPrompt:
    """Token ids of the chat around one image: ``prefix + [image_pad] * n + suffix``.

    ``suffix`` holds the prompt text, the end of the user turn and the generation prompt
    (``<|im_start|>assistant\\n``), so generation starts right after it.
    """

    text: str
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    image_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer, text: str, image_token_id: int) -> CaptionPrompt:
        """Apply the chat template with the generation prompt and split the ids at the image placeholder.

        The template is tokenized as one string, as transformers' processor does after expanding the image
        placeholder; the placeholder is a special token, so the split does not change any other id.
        """
        if not isinstance(text, str) or not text.strip():
            raise ArgumentError(f"the caption prompt must be a non-empty string, got {text!r}")
        rendered = tokenizer.apply_chat_template(chat_messages(text), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if ids.count(image_token_id) != 1:
            raise ArgumentError(f"the chat template does not give exactly one image placeholder: {rendered!r}")
        cut = ids.index(image_token_id)
        return cls(text, tuple(ids[:cut]), tuple(ids[cut + 1 :]), image_token_id)

    def ids(self, image_tokens: int) -> list[int]:
        """The whole prompt for an image of ``image_tokens`` merged visual tokens."""
        return [*self.prefix, *[self.image_token_id] * image_tokens, *self.suffix]


def prepare_image(item: ImageInput, index: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Decode and validate one input (EXIF applied, alpha on white), squash to ``size`` x ``size`` with
    Lanczos: uint8 (3, size, size). Pillow returns an image of the target size unchanged, as upstream's does.

    >>> import numpy as np
    >>> prepare_image(np.zeros((30, 40, 3), np.uint8), 0).shape
    torch.Size([3, 448, 448])
    """
    if isinstance(item, torch.Tensor):
        item = item.detach()  # captions carry no gradient; decode() would keep a float tensor that needs one
    image = decode(item, index)
    return to_pixel_tensor(image.resize((size, size), Image.LANCZOS))


def image_tokens(size: int = IMAGE_SIZE) -> int:
    """Merged visual tokens of a ``size`` x ``size`` image (256 for 448)."""
    side = size // PATCH_SIZE
    return backbone.image_tokens((1, side, side))


def sequence_positions(prompt: CaptionPrompt, grid_thw: Sequence[int]) -> torch.Tensor:
    """3-D multimodal RoPE positions (3, L) of one unpadded prompt (:func:`relsim.backbone.rope_positions`)."""
    return backbone.rope_positions(len(prompt.prefix), grid_thw, len(prompt.suffix))


@dataclass
class PromptBatch:
    """Left-padded prompts of a batch: every row ends with its generation prompt, so row ``i``'s next token
    follows column ``-1``."""

    input_ids: torch.Tensor
    """(B, L) token ids; padding on the left."""
    positions: torch.Tensor
    """(3, B, L) 3-D RoPE positions; padding gets 0, as transformers gives it."""
    attention_mask: torch.Tensor | None
    """(B, L) 1 for real tokens, 0 for padding; None when no row is padded."""
    lengths: torch.Tensor
    """(B,) real tokens per row."""


def build_batch(prompts: Sequence[CaptionPrompt], grids: torch.Tensor, pad_token_id: int) -> PromptBatch:
    """Token ids, positions and attention mask of one left-padded batch (one image per row).

    ``grids`` is the (B, 3) ``image_grid_thw`` of the images, in order.
    """
    grids = grids.cpu()
    seqs = [p.ids(backbone.image_tokens(g.tolist())) for p, g in zip(prompts, grids, strict=True)]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    positions = torch.zeros((3, len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, (seq, prompt, grid) in enumerate(zip(seqs, prompts, grids, strict=True)):
        start = length - len(seq)
        ids[row, start:] = torch.tensor(seq)
        positions[:, row, start:] = sequence_positions(prompt, grid.tolist())
        mask[row, start:] = 1
    lengths = mask.sum(1)
    return PromptBatch(ids, positions, None if bool(mask.all()) else mask, lengths)


__all__ = [
    "TRAINING_PROMPT",
    "BATCH_INFERENCE_PROMPT",
    "HUB_EXAMPLE_PROMPT",
    "PROMPTS",
    "IMAGE_SIZE",
    "CaptionPrompt",
    "PromptBatch",
    "build_batch",
    "chat_messages",
    "image_tokens",
    "prepare_image",
    "sequence_positions",
]
