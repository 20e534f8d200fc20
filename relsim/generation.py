"""Batched text generation for a Qwen2.5-VL language model: KV cache, greedy or sampled, one stream per row.

The settings follow ``transformers``' ``generate()`` exactly: the model's ``generation_config.json`` is merged
under the caller's arguments (upstream's greedy captions therefore still get the base model's
``repetition_penalty`` 1.05 and stop at either of its eos ids), the repetition penalty covers the whole
sequence (prompt included), and sampling applies transformers' own temperature, top-k and top-p warpers in
``generate()``'s order. Three things differ from a batched ``generate()`` call, each to make a row's result
independent of the batch it ran in:

- left padding is never penalised (transformers >= 5.2x does the same; older releases penalise the pad id);
- each row samples from its own ``torch.Generator`` (``seeds``), so ``seed=`` gives the same captions whatever
  the batch size or an out-of-memory split;
- finished rows leave the batch (the KV cache is compacted once half of the rows are done).

Example:
    >>> settings = GenerationSettings.from_config(generation_config, max_new_tokens=128)          # doctest: +SKIP
    >>> rows = generate(step, first_logits, cache, batch, settings, embed=embed_tokens)           # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ArgumentError

#: transformers' defaults for what neither the caller nor the model's generation config sets.
TRANSFORMERS_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def base_generation_config(base_path: str | Path, body):
    """The base model's ``GenerationConfig`` (what ``generate()`` merges in, and relsim's captioner and its
    training too); without a ``generation_config.json``, the model config's token ids, as transformers does."""
    from transformers import GenerationConfig

    if not (Path(base_path) / "generation_config.json").is_file():
        return GenerationConfig.from_model_config(body.config)
    return GenerationConfig.from_pretrained(base_path, trust_remote_code=False)


#: Generation config fields that would add a logits processor this module does not implement (value when off).
_UNSUPPORTED = {
    "num_beams": 1,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "min_length": 0,
    "min_new_tokens": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "renormalize_logits": False,
}


@dataclass(frozen=True)
class GenerationSettings:
    """How to pick tokens. Build it with :meth:`from_config` to get ``generate()``'s merge of defaults."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ArgumentError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ArgumentError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise ArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
            if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
                raise ArgumentError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise ArgumentError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    @classmethod
    def from_config(cls, config=None, **overrides) -> GenerationSettings:
        """Caller's ``overrides`` (None: not given) > ``config`` (a ``GenerationConfig``) > transformers' defaults.

        Raises ``ValueError`` when ``config`` enables a logits processor relsim does not implement, rather than
        generating something else than ``generate()`` would.
        """
        stored = config.to_dict() if config is not None else {}
        unsupported = {k: stored[k] for k, off in _UNSUPPORTED.items() if stored.get(k, off) not in (off, None)}
        if unsupported:
            raise ArgumentError(f"the model's generation config sets options relsim does not implement: {unsupported}")
        values = {}
        for name in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"):
            value = overrides.get(name)
            if value is None:
                value = stored.get(name)
            if value is None:
                value = TRANSFORMERS_DEFAULTS.get(name)
            if value is not None:
                values[name] = value
        eos = overrides.get("eos_token_ids") or stored.get("eos_token_id")
        values["eos_token_ids"] = tuple([eos] if isinstance(eos, int) else eos or ())
        return cls(**values)


@dataclass
class Generated:
    """One row's result: the new token ids (the stop token left out) and the stop token that ended it, if any."""

    tokens: list[int]
    stop_token: int | None = None

    @property
    def stopped(self) -> bool:
        """Whether a stop token ended the text (rather than ``max_new_tokens``)."""
        return self.stop_token is not None


def _warpers(settings: GenerationSettings):
    """transformers' sampling warpers, in ``generate()``'s order."""
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = []
    if settings.temperature is not None and settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k is not None and settings.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=1))
    if settings.top_p is not None and settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=1))
    return warpers


def process_logits(
    logits: torch.Tensor, history: torch.Tensor | None, settings: GenerationSettings, warpers=()
) -> torch.Tensor:
    """Float32 scores after the repetition penalty (over the token ids in ``history``, (B, T)) and the sampling
    warpers: transformers' ``RepetitionPenaltyLogitsProcessor`` arithmetic (gather, scale, scatter)."""
    scores = logits
    if history is not None:
        penalty = settings.repetition_penalty
        picked = torch.gather(scores, 1, history)
        picked = torch.where(picked < 0, picked * penalty, picked / penalty)
        scores = scores.scatter(1, history, picked)
    for warper in warpers:
        scores = warper(None, scores)
    return scores


class StepModel:
    """A Qwen2.5-VL language model + LM head + input embedding as :func:`generate` drives it."""

    def __init__(
        self,
        language_model: torch.nn.Module,
        lm_head: torch.Tensor,
        embed: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.language_model = language_model
        self.lm_head = lm_head
        self.embed = embed
        # transformers renamed ``past_key_values`` to ``cache`` (5.2x); the old name still works there, with a warning.
        parameters = inspect.signature(language_model.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"

    def new_cache(self):
        """An empty KV cache for this language model."""
        from transformers import DynamicCache

        return DynamicCache(config=self.language_model.config)

    def __call__(self, embeds, positions, attention_mask, cache) -> torch.Tensor:
        """Float32 logits (B, V) of the last position."""
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
        )
        return F.linear(out.last_hidden_state[:, -1], self.lm_head).float()


def generate(
    model: StepModel,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prompt_ids: torch.Tensor,
    settings: GenerationSettings,
    *,
    seeds: Sequence[int] | None = None,
) -> list[Generated]:
    """Generate for a left-padded batch: ``embeds`` (B, L, H), ``positions`` (3, B, L), ``attention_mask``
    (B, L) or None, ``prompt_ids`` (B, L) (what the repetition penalty counts; padding is left out).

    ``seeds`` (one per row) are needed when ``settings.do_sample``.
    """
    batch, device = embeds.shape[0], embeds.device
    if settings.do_sample and (seeds is None or len(seeds) != batch):
        raise ArgumentError("sampling needs one seed per row")
    cache = model.new_cache()
    logits = model(embeds, positions, attention_mask, cache)
    vocab = logits.shape[-1]
    history = None  # the token ids the repetition penalty counts: prompt and generated, padding left out
    if settings.repetition_penalty != 1.0:
        history = prompt_ids.to(device)
        if attention_mask is not None:  # padding counts as the row's last token, which is penalised anyway
            history = torch.where(attention_mask.to(device).bool(), history, history[:, -1:])
        if int(history.max()) >= vocab:
            raise ArgumentError(f"prompt token {int(history.max())} is outside the LM head's {vocab} rows")
    generators = None
    if settings.do_sample:
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    warpers = _warpers(settings) if settings.do_sample else ()
    stops = torch.tensor(settings.eos_token_ids or [-1], device=device)
    next_position = positions.amax(dim=(0, 2)).to(device) + 1
    mask = None if attention_mask is None else attention_mask.to(device)

    results = [Generated([]) for _ in range(batch)]
    rows = list(range(batch))  # the result each live row of the batch writes to
    live = torch.ones(batch, dtype=torch.bool)
    for step in range(settings.max_new_tokens):
        scores = process_logits(logits, history, settings, warpers)
        if settings.do_sample:
            probs = torch.softmax(scores, dim=-1)
            tokens = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
        else:
            tokens = scores.argmax(dim=-1)
        stopped = torch.isin(tokens, stops).cpu()
        for i, (token, stop) in enumerate(zip(tokens.tolist(), stopped.tolist(), strict=True)):
            if live[i]:
                if stop:
                    results[rows[i]].stop_token = token
                else:
                    results[rows[i]].tokens.append(token)
        live &= ~stopped
        if not live.any() or step == settings.max_new_tokens - 1:
            break
        if (~live).sum() * 2 >= len(rows):  # compact: finished rows stop costing compute
            keep = live.nonzero().flatten()
            cache.batch_select_indices(keep.to(device))
            keep_device = keep.to(device)
            tokens, next_position = tokens[keep_device], next_position[keep_device]
            history = None if history is None else history[keep_device]
            mask = None if mask is None else mask[keep_device]
            generators = None if generators is None else [generators[i] for i in keep.tolist()]
            rows = [rows[i] for i in keep.tolist()]
            live = torch.ones(len(rows), dtype=torch.bool)
        if history is not None:
            history = torch.cat([history, tokens[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_positions = next_position.view(1, -1, 1).expand(3, -1, 1)
        next_position = next_position + 1
        logits = model(model.embed(tokens[:, None]), step_positions, mask, cache)
    return results


__all__ = ["GenerationSettings", "Generated", "StepModel", "generate", "process_logits", "TRANSFORMERS_DEFAULTS"]
