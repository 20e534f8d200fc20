"""The anonymous captioner being trained: Qwen2.5-VL body + frozen LM head + peft LoRA on q_proj/v_proj.

A training sequence is the inference prompt (``relsim.caption_inputs``: system turn, user turn ``[image, prompt]``,
``<|im_start|>assistant\\n``) followed by the answer: the caption's tokens and ``<|im_end|>``. The loss is the
cross-entropy of the answer tokens only, ``<|im_end|>`` included so the model learns to stop; the prompt, the
image and the padding are masked *by position* (the answer starts where the prompt ends), never by searching for
the caption's tokens. Upstream masked "every token before the first occurrence of the tokenized caption", which
is the same on its data, except that it also trained the ``\\n`` the chat template puts after ``<|im_end|>``
(never generated: generation stops at ``<|im_end|>``), and it would unmask part of the prompt for a caption
whose tokens occur in the prompt.

Positions are the inference positions (3-D RoPE over the image, then counting on), so a checkpoint generates
exactly what this model's greedy decoding does (:func:`greedy_captions`, what evaluation runs). Logits are
computed only at the answer positions (upstream computed all ~330 x 152064 of every sequence).

Example:
    >>> model, tokenizer = build_captioner_model(base_dir, prompt=TRAINING_PROMPT)    # doctest: +SKIP
    >>> answers = [answer_ids(tokenizer, "A {Fruit} cut open.")]                      # doctest: +SKIP
    >>> loss_sum, tokens, correct = model(*patchify(images), answers)                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import generation, preprocess
from ..backbone import image_tokens
from ..caption_inputs import CaptionPrompt, build_batch, sequence_positions
from ..checkpoint import BaseShards
from ..errors import ArgumentError
from .model import HubNames, LoraModel, add_lora, require_peft

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"


def answer_ids(tokenizer, caption: str) -> list[int]:
    """The tokens the captioner learns for ``caption``: the text as generation produces it after the prompt
    (tokenized on its own), then ``<|im_end|>``."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end is None or end == tokenizer.unk_token_id:
        raise ArgumentError(f"the tokenizer has no {END_OF_TURN} token")
    return list(tokenizer(caption, add_special_tokens=False)["input_ids"]) + [end]


@dataclass
class TrainingBatch:
    """A right-padded batch of prompt + answer sequences and where the loss is taken."""

    input_ids: torch.Tensor
    """(B, L) token ids, padded on the right."""
    positions: torch.Tensor
    """(3, B, L) 3-D RoPE positions, as inference computes them (padding continues the count)."""
    sources: torch.Tensor
    """(N,) flat indices into (B, L) of the states that predict the answer tokens (each answer token's
    predecessor)."""
    targets: torch.Tensor
    """(N,) the answer tokens, in order."""

    def labels(self) -> torch.Tensor:
        """The causal-LM labels in transformers' convention: (B, L), the answer tokens in place, ``-100`` elsewhere."""
        labels = torch.full_like(self.input_ids, IGNORE_INDEX).flatten()
        labels[self.sources + 1] = self.targets
        return labels.view_as(self.input_ids)


def training_batch(
    prompt: CaptionPrompt, grids: torch.Tensor, answers: Sequence[Sequence[int]], pad_token_id: int
) -> TrainingBatch:
    """Token ids, positions and loss positions of prompt + answer sequences, one image per row.

    ``grids`` is the (B, 3) ``image_grid_thw`` of the images. Padding follows the answer, so causal attention
    never lets it reach a real token and no attention mask is needed.
    """
    grids = grids.cpu()
    if len(answers) != grids.shape[0]:
        raise ArgumentError(f"{len(answers)} answers for {grids.shape[0]} images")
    rows, row_positions, prompt_lengths = [], [], []
    for grid, answer in zip(grids, answers, strict=True):
        if not answer:
            raise ArgumentError("an answer must hold at least one token (the end of turn)")
        ids = prompt.ids(image_tokens(grid.tolist()))
        before = sequence_positions(prompt, grid.tolist())
        after = before[:, -1:] + 1 + torch.arange(len(answer))
        rows.append(ids + list(answer))
        row_positions.append(torch.cat([before, after], dim=1))
        prompt_lengths.append(len(ids))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    positions = torch.zeros((3, len(rows), length), dtype=torch.long)
    sources, targets = [], []
    for i, (row, position, start) in enumerate(zip(rows, row_positions, prompt_lengths, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        positions[:, i, : len(row)] = position
        positions[:, i, len(row) :] = position[:, -1:] + 1 + torch.arange(length - len(row))
        answer = row[start:]
        sources.append(i * length + start - 1 + torch.arange(len(answer)))
        targets.append(torch.tensor(answer))
    return TrainingBatch(input_ids, positions, torch.cat(sources), torch.cat(targets))


class CaptionerTrainModel(LoraModel):
    """Trainable captioner. ``forward(pixel_values, grid_thw, answers)`` -> (summed answer-token cross-entropy,
    answer tokens, correctly predicted answer tokens); the sum is float32 and carries the gradient."""

    def __init__(
        self, peft_model: nn.Module, prompt: CaptionPrompt, pad_token_id: int, autocast: torch.dtype | None
    ) -> None:
        super().__init__(peft_model, autocast)
        self.prompt = prompt
        self.pad_token_id = pad_token_id

    @property
    def lm_head(self) -> torch.Tensor:
        return self.peft.base_model.model.lm_head.weight

    def input_embeddings(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` with the vision tower's features in place of ``<|image_pad|>``."""
        body = self.body
        visual = body.visual(pixel_values.to(self.device, body.visual.dtype), grid_thw=grid_thw.to(self.device))
        features = getattr(visual, "pooler_output", visual)  # transformers >= 5 returns a model output
        embeds = body.language_model.embed_tokens(ids)
        mask = (ids == self.prompt.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, answers: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, int, int]:
        if grid_thw.shape[0] == 0:
            return self.anchor().float(), 0, 0
        batch = training_batch(self.prompt, grid_thw, answers, self.pad_token_id)
        ids = batch.input_ids.to(self.device)
        with self.autocast_context():
            # Nothing before the first LoRA layer is trained: the vision tower and the embedding lookup run
            # without building a graph (same values, less memory).
            with torch.no_grad():
                embeds = self.input_embeddings(pixel_values, grid_thw, ids)
            hidden = self.body.language_model(
                inputs_embeds=embeds, position_ids=batch.positions.to(self.device), use_cache=False
            ).last_hidden_state
            states = hidden.reshape(-1, hidden.shape[-1])[batch.sources.to(self.device)]
            logits = F.linear(states, self.lm_head).float()
        targets = batch.targets.to(self.device)
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        correct = int((logits.detach().argmax(dim=-1) == targets).sum())
        return loss_sum, int(targets.numel()), correct


@torch.no_grad()
def greedy_captions(
    model: CaptionerTrainModel,
    pixels: list[torch.Tensor],
    settings: generation.GenerationSettings,
) -> list[generation.Generated]:
    """Generate from prepared images (uint8 (3, 448, 448)) with the model as it is (call ``model.eval()`` first):
    the decoding :class:`relsim.caption.Captioner` runs on a saved checkpoint, with the LoRA unmerged."""
    pixel_values, grids = preprocess.patchify(pixels, device=model.device, dtype=model.lm_head.dtype)
    batch = build_batch([model.prompt] * len(pixels), grids, model.pad_token_id)
    ids = batch.input_ids.to(model.device)
    language_model = model.body.language_model
    with model.autocast_context():
        embeds = model.input_embeddings(pixel_values, grids, ids)
        step = generation.StepModel(language_model, model.lm_head, language_model.embed_tokens)
        mask = None if batch.attention_mask is None else batch.attention_mask.to(model.device)
        return generation.generate(step, embeds, batch.positions.to(model.device), mask, ids, settings)


def read_lm_head(base_path: Path, body: nn.Module) -> torch.Tensor:
    """The base model's LM head weight (the input embedding when the two are tied)."""
    shards = BaseShards(base_path)
    if shards.key("lm_head.weight") is not None:
        return shards.tensor("lm_head.weight")
    if getattr(body.config.get_text_config(), "tie_word_embeddings", False):
        return body.language_model.embed_tokens.weight.detach()
    raise ArgumentError(f"the base model in {str(base_path)!r} has no lm_head.weight to train a captioner with")


def build_captioner_model(
    base_path: str | Path,
    *,
    prompt: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: list[str] | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = False,
) -> tuple[CaptionerTrainModel, object]:
    """Load the base body and LM head from a local directory and add LoRA. Returns (model, tokenizer).

    ``dtype`` is the frozen weights' dtype; the LoRA factors are float32 (master weights). Initialisation is a
    function of ``seed`` only.
    """
    from ..backbone import load_body, load_tokenizer

    require_peft()  # before the base's weights are read
    device = torch.device(device)
    base_path = Path(base_path)
    body = load_body(base_path, device, dtype)
    body.requires_grad_(False)
    weight = read_lm_head(base_path, body)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    head.weight = nn.Parameter(weight.to(device, dtype), requires_grad=False)
    tokenizer = load_tokenizer(base_path)
    chat = CaptionPrompt.from_tokenizer(tokenizer, prompt, int(body.config.image_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    torch.manual_seed(seed)
    peft_model = add_lora(
        HubNames(body, head),
        body,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        gradient_checkpointing=gradient_checkpointing,
    )
    model = CaptionerTrainModel(peft_model, chat, int(pad), autocast)
    model.master_weights()
    return model, tokenizer


__all__ = [
    "IGNORE_INDEX",
    "END_OF_TURN",
    "answer_ids",
    "TrainingBatch",
    "training_batch",
    "CaptionerTrainModel",
    "greedy_captions",
    "read_lm_head",
    "build_captioner_model",
]
