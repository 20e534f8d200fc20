"""Training configuration: one dataclass, read from JSON or YAML, overridable from the command line.

The defaults are the paper's recipe (docs/architecture.md, §1): LoRA r=16 / alpha=32 / dropout 0.05 on
q_proj and v_proj, a Linear(3584, 384) head, InfoNCE at temperature 0.07 against frozen
all-MiniLM-L6-v2 caption embeddings, AdamW lr 1e-4 / weight decay 0.01, cosine schedule, grad-norm clip
1.0, bf16, batch 64, 3 epochs.

Example:
    >>> cfg = TrainConfig(train_jsonl="captions.jsonl", image_dir="images", output_dir="run")
    >>> cfg.batch_size, cfg.lr, cfg.temperature
    (64, 0.0001, 0.07)
    >>> cfg = TrainConfig.from_file("cfg.yaml", max_steps=10)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import DEFAULT_BASE_MODEL, DEFAULT_TEXT_MODEL

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``TrainConfig.to_dict()`` is recorded in every checkpoint."""

    # -- data -----------------------------------------------------------------------------------------
    train_jsonl: str = ""
    """Anonymous-captions JSONL: one ``{"image_hash", "caption", "url_link"}`` object per line."""
    image_dir: str = ""
    """Folder of ``{image_hash}.png`` files (``relsim data download`` fills it)."""
    eval_jsonl: str | None = None
    """Held-out JSONL (images in ``image_dir``); when unset, ``eval_size`` records of ``train_jsonl`` are held out."""
    eval_size: int = 1000
    """Records held out from ``train_jsonl`` when ``eval_jsonl`` is unset (a stable choice: by hash of image_hash)."""
    output_dir: str = "relsim-run"
    target_cache: str | None = None
    """Directory of the caption-embedding cache; default ``{output_dir}/targets``."""

    # -- model ----------------------------------------------------------------------------------------
    base_model: str = DEFAULT_BASE_MODEL
    base_revision: str | None = None
    text_model: str = DEFAULT_TEXT_MODEL
    text_revision: str | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    projection_dim: int = 384
    temperature: float = 0.07

    # -- optimisation ---------------------------------------------------------------------------------
    epochs: int = 3
    max_steps: int | None = None
    """Total optimiser steps (the schedule's length); default: ``epochs`` full passes."""
    stop_after_step: int | None = None
    """End this invocation after this step (writing a resumable checkpoint); the schedule is unchanged."""
    batch_size: int = 64
    """Images per optimiser step, over all processes."""
    micro_batch_size: int | None = None
    """Images per forward per process; default ``batch_size // world_size`` (no accumulation). The
    contrastive negatives of one loss are ``micro_batch_size * world_size`` images."""
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_steps: int = 0
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
    progress: bool | None = None
    """tqdm progress bar; default: when stderr is a terminal."""
    resume: str | None = None
    """A ``checkpoint-*`` directory to resume from, or ``"latest"`` (the newest in ``output_dir``, if any)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # paths may be given as Path objects; the config stays JSON
            if isinstance(getattr(self, f.name), os.PathLike):
                setattr(self, f.name, os.fspath(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        positive = ("lora_r", "projection_dim", "batch_size", "eval_batch_size", "log_every", "eval_every")
        for name in positive + ("save_every", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after_step", "micro_batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be > 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers, got {self.adam_betas}")
        if self.eval_size < 0 or self.warmup_steps < 0 or self.num_workers < 0 or self.grad_clip < 0:
            raise ValueError("eval_size, warmup_steps, num_workers and grad_clip must be >= 0")

    # -- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every option as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error (a typo must not silently train the default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
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
                raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of option -> value")
        return cls.from_dict({**values, **overrides})

    def save(self, path: str | Path) -> None:
        """Write the options as JSON (:meth:`from_file` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def field_types() -> dict[str, tuple[type, bool, bool]]:
    """``name -> (scalar type, optional, is_list)`` for every option, for building command-line flags."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        if optional:
            hint = next(a for a in args if a is not type(None))
        is_list = typing.get_origin(hint) is list
        scalar = typing.get_args(hint)[0] if is_list else hint
        out[f.name] = (scalar, optional, is_list)
    return out
