"""Training configuration: a dataclass per model, read from JSON or YAML, overridable from the command line.

:class:`BaseConfig` holds what every run shares (optimiser, schedule, logs, checkpoints, LoRA).
:class:`TrainConfig` is the embedder's run; its defaults are the paper's recipe (docs/architecture.md, §1):
LoRA r=16 / alpha=32 / dropout 0.05 on q_proj and v_proj, a Linear(3584, 384) head, InfoNCE at temperature
0.07 against frozen all-MiniLM-L6-v2 caption embeddings, AdamW lr 1e-4 / weight decay 0.01, cosine schedule,
grad-norm clip 1.0, bf16, batch 64, 3 epochs. :class:`CaptionerTrainConfig` is the anonymous captioner's run,
with upstream's captioner recipe as its defaults.

Example:
    >>> cfg = TrainConfig(train_jsonl="captions.jsonl", image_dir="images", output_dir="run")
    >>> cfg.batch_size, cfg.lr, cfg.temperature
    (64, 0.0001, 0.07)
    >>> cfg = TrainConfig.from_file("cfg.yaml", max_steps=10)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ArgumentError
from ..registry import DEFAULT_BASE_MODEL, DEFAULT_TEXT_MODEL

_Config = TypeVar("_Config", bound="BaseConfig")
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("cosine", "linear")


@dataclass
class BaseConfig:
    """What every relsim training run shares (the loop, optimiser, logs, checkpoints). The model-specific
    configurations, :class:`TrainConfig` (the embedder) and :class:`CaptionerTrainConfig`, add their data and
    model options and set their own recipe's defaults."""

    output_dir: str = "relsim-run"

    # -- model ----------------------------------------------------------------------------------------
    base_model: str = DEFAULT_BASE_MODEL
    base_revision: str | None = None
    text_model: str = DEFAULT_TEXT_MODEL
    text_revision: str | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    # -- optimisation ---------------------------------------------------------------------------------
    epochs: int = 3
    max_steps: int | None = None
    """Total optimiser steps (the schedule's length); default: ``epochs`` full passes."""
    stop_after_step: int | None = None
    """End this invocation after this step (writing a resumable checkpoint); the schedule is unchanged."""
    batch_size: int = 64
    """Images per optimiser step, over all processes."""
    micro_batch_size: int | None = None
    """Images per forward per process; default ``batch_size // world_size`` (no accumulation)."""
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    """``cosine`` (linear warm-up from lr/(warmup+1), then cosine to 0) or ``linear`` (transformers' default
    schedule: warm-up from 0, then linear to 0)."""
    grad_clip: float = 1.0
    precision: str = "auto"
    """``bf16`` (base weights in bf16, bf16 autocast; LoRA and head kept in float32), ``fp32``, or ``auto``
    (bf16 on CUDA, fp32 elsewhere)."""
    gradient_checkpointing: bool = True
    seed: int = 0
    num_workers: int = 4
    device: str | None = None
    """Default: CUDA when available, else CPU; ``cuda`` without an index means ``cuda:LOCAL_RANK``."""

    # -- evaluation, logging, checkpoints -------------------------------------------------------------
    eval_every: int = 500
    eval_batch_size: int = 32
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int | None = None
    """Keep only the newest N ``checkpoint-*`` directories (default: keep all)."""
    tensorboard: bool = False
    """Also write the logs to ``output_dir/tensorboard`` (needs ``pip install tensorboard``)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs ``pip install wandb`` and a login; ``WANDB_MODE=offline`` works)."""
    wandb_project: str | None = None
    progress: bool | None = None
    """tqdm progress bar; default: when stderr is a terminal."""
    resume: str | None = None
    """A ``checkpoint-*`` directory to resume from, or ``"latest"`` (the newest in ``output_dir``, if any)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # paths may be given as Path objects; the config stays JSON
            if isinstance(getattr(self, f.name), os.PathLike):
                setattr(self, f.name, os.fspath(getattr(self, f.name)))
        self.check_types()
        self.validate()

    def check_types(self) -> None:
        """Raise ``ValueError`` naming the first option whose value has the wrong type (``"lr": "fast"``,
        ``"batch_size": "4"`` or ``4.5``, ``"train_jsonl": ["a", "b"]``): a config file is JSON or YAML, so the
        type is not checked by Python."""
        for name, (scalar, optional, is_list) in field_types(type(self)).items():
            value = getattr(self, name)
            if value is None and optional:
                continue
            if is_list:
                ok = isinstance(value, list) and all(_is_a(v, scalar) for v in value)
                expected = f"a list of {_TYPE_NAMES[scalar]}s"
            else:
                ok, expected = _is_a(value, scalar), _TYPE_NAMES[scalar]
            if not ok:
                unset = " or unset (null)" if optional else ""
                raise ArgumentError(f"training option {name} must be {expected}{unset}, got {value!r}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ArgumentError(f"{f.name} must be a finite number, got {value}")
        positive = ("lora_r", "batch_size", "eval_batch_size", "log_every", "eval_every")
        for name in positive + ("save_every", "epochs"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after_step", "micro_batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArgumentError(f"{name} must be >= 1 or unset, got {value}")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ArgumentError(
                f"micro_batch_size {self.micro_batch_size} must be <= batch_size {self.batch_size} (it divides a step)"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ArgumentError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr <= 0:
            raise ArgumentError(f"lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ArgumentError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ArgumentError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if len(self.adam_betas) != 2 or not all(math.isfinite(b) for b in self.adam_betas):
            raise ArgumentError(f"adam_betas must be two numbers, got {self.adam_betas}")
        if self.warmup_steps < 0 or self.num_workers < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ArgumentError("warmup_steps, num_workers, grad_clip and weight_decay must be >= 0")

    # -- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every option as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_Config], values: dict[str, Any]) -> _Config:
        """Build from a mapping; unknown keys are an error (a typo must not silently train the default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ArgumentError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_file(cls: type[_Config], path: str | Path, **overrides: Any) -> _Config:
        """Read a ``.json`` or ``.yaml``/``.yml`` file (YAML needs PyYAML); ``overrides`` win over the file."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                message = f"{path} is YAML but PyYAML is not installed; use JSON or `pip install pyyaml`"
                raise ImportError(message) from err
            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ArgumentError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as err:
                raise ArgumentError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ArgumentError(f"{path} must hold a mapping of option -> value")
        return cls.from_dict({**values, **overrides})

    def save(self, path: str | Path) -> None:
        """Write the options as JSON (:meth:`from_file` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class TrainConfig(BaseConfig):
    """The embedder's run (``relsim train``); ``TrainConfig.to_dict()`` is recorded in every checkpoint."""

    # -- data -----------------------------------------------------------------------------------------
    train_jsonl: str = ""
    """Anonymous-captions JSONL: one ``{"image_hash", "caption", "url_link"}`` object per line."""
    image_dir: str = ""
    """Folder of ``{image_hash}.png`` files (``relsim data download`` fills it). A record with a ``path`` (what
    ``relsim caption -o`` writes) is read from that path when the folder lacks its file (or is unset)."""
    eval_jsonl: str | None = None
    """Held-out JSONL (images in ``image_dir``); when unset, ``eval_size`` records of ``train_jsonl`` are held out."""
    eval_size: int = 1000
    """Records held out from ``train_jsonl`` when ``eval_jsonl`` is unset (a stable choice: by hash of image_hash)."""
    target_cache: str | None = None
    """Directory of the caption-embedding cache; default ``{output_dir}/targets``."""

    # -- model ----------------------------------------------------------------------------------------
    projection_dim: int = 384
    temperature: float = 0.07
    """The contrastive negatives of one loss are ``micro_batch_size * world_size`` images."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the shared ones, then the embedder's)."""
        super().validate()
        if self.projection_dim < 1:
            raise ArgumentError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.temperature <= 0:
            raise ArgumentError(f"temperature must be > 0, got {self.temperature}")
        if self.eval_size < 0:
            raise ArgumentError(f"eval_size must be >= 0, got {self.eval_size}")


@dataclass
class CaptionerTrainConfig(BaseConfig):
    """The anonymous captioner's run (``relsim train-captioner``). The defaults are upstream's recipe
    (``anonymous_caption/config.yaml``): LoRA r16/alpha32/dropout 0.05 on q_proj/v_proj, AdamW lr 2e-4 without
    weight decay, 50 warm-up steps then linear decay (transformers' Trainer schedule), batch 32, 50 epochs,
    seed 42; bf16 where upstream used fp16 (docs/training.md says why).

    >>> cfg = CaptionerTrainConfig(seed_groups="seed-groups/seed_group.json")
    >>> cfg.lr, cfg.batch_size, cfg.epochs, cfg.warmup_steps, cfg.seed, cfg.lr_schedule
    (0.0002, 32, 50, 50, 42, 'linear')
    """

    output_dir: str = "relsim-captioner-run"
    # -- data -----------------------------------------------------------------------------------------
    seed_groups: str = ""
    """Upstream's seed-group JSON, a folder holding it (the Hub dataset layout), or a folder of seed-group
    folders (each with ``caption.txt`` and images); see :mod:`relsim.train.seed_groups`."""
    image_dir: str | None = None
    """Where the JSON's images are (``{group}/{i}.png``); default ``images/`` next to the JSON."""
    eval_fraction: float = 0.05
    """Share of seed groups held out (whole groups, chosen by hash of their names); 0: none."""
    eval_captions: int = 16
    """Held-out images captioned greedily at every evaluation (a fixed sample), logged with their reference."""
    prompt: str | None = None
    """The user prompt; default upstream's training prompt (``relsim.caption_inputs.TRAINING_PROMPT``)."""
    max_new_tokens: int = 128

    # -- upstream's recipe ----------------------------------------------------------------------------
    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    lr_schedule: str = "linear"
    seed: int = 42
    eval_every: int = 50
    save_every: int = 100
    eval_batch_size: int = 8

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the shared ones, then the captioner's)."""
        super().validate()
        if not 0 <= self.eval_fraction < 1:
            raise ArgumentError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_captions < 0 or self.max_new_tokens < 1:
            raise ArgumentError("eval_captions must be >= 0 and max_new_tokens >= 1")
        if self.prompt is not None and not self.prompt.strip():
            raise ArgumentError("prompt must be a non-empty text or unset (upstream's training prompt)")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _is_a(value: Any, scalar: type) -> bool:
    """``value`` fits an option of type ``scalar`` (an int fits a float option; a bool fits only a bool one)."""
    if scalar is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if scalar is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, scalar)


@dataclass
class DistillConfig(BaseConfig):
    """A student's run (``relsim distill TEACHER --student BACKBONE``); recorded in every checkpoint."""

    output_dir: str = "relsim-student-run"
    teacher: str = ""
    """The teacher: a relsim collection (local folder or object-store URI) that ``relsim embed`` wrote."""
    student: str = "facebook/dinov2-small"
    """The student's backbone: a Hub id or directory transformers loads without remote code."""
    student_revision: str | None = None
    captions_jsonl: str | None = None
    """Optional anonymous captions (``relsim caption -o`` / the paper's JSONL): rows are matched by ``path``, by
    ``image_hash`` = file stem, or by ``image_hash`` = content SHA-256."""
    cosine_weight: float = 1.0
    structure_weight: float = 1.0
    caption_weight: float = 0.5
    """Weight of the caption term (used only with ``captions_jsonl``)."""
    projection_dim: int = 384
    eval_size: int = 1000
    """Teacher rows held out (whole images, chosen by content hash) to measure agreement."""
    lora: bool = False
    """Train LoRA adapters on the backbone (and the head) instead of every weight."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "query", "value"])

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    warmup_steps: int = 100
    gradient_checkpointing: bool = False
    eval_every: int = 500
    save_every: int = 1000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        super().validate()
        for name in ("cosine_weight", "structure_weight", "caption_weight"):
            if getattr(self, name) < 0:
                raise ArgumentError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.projection_dim < 1 or self.eval_size < 0:
            raise ArgumentError("projection_dim must be >= 1 and eval_size >= 0")


def field_types(cls: type[BaseConfig] = TrainConfig) -> dict[str, tuple[type, bool, bool]]:
    """``name -> (scalar type, optional, is_list)`` for every option of ``cls``, for building command-line flags."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        if optional:
            hint = next(a for a in args if a is not type(None))
        is_list = typing.get_origin(hint) is list
        scalar = typing.get_args(hint)[0] if is_list else hint
        out[f.name] = (scalar, optional, is_list)
    return out


__all__ = [
    "PRECISIONS",
    "LR_SCHEDULES",
    "BaseConfig",
    "TrainConfig",
    "CaptionerTrainConfig",
    "field_types",
]
