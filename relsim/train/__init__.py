"""relsim.train: a minimal, correct reproduction of the paper's two fine-tunings (``pip install "relsim[train]"``):
the relsim embedder (:class:`TrainConfig`, ``relsim train``) and the anonymous captioner
(:class:`CaptionerTrainConfig`, ``relsim train-captioner``), on one training loop.

Recipes and commands: docs/training.md. Checkpoints load with ``relsim.load(directory)`` and
``relsim.load_captioner(directory)``.

Example:
    >>> from relsim.train import TrainConfig, train
    >>> config = TrainConfig(train_jsonl="captions.jsonl", image_dir="images", output_dir="run")
    >>> result = train(config)                                # doctest: +SKIP
    >>> model = relsim.load(result.final)                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import WrongTypeError
from .config import CaptionerTrainConfig, DistillConfig, TrainConfig

if TYPE_CHECKING:
    from .loop import TrainResult

__all__ = ["TrainConfig", "CaptionerTrainConfig", "DistillConfig", "train"]


def train(config: TrainConfig | CaptionerTrainConfig | DistillConfig) -> TrainResult:
    """Train the model ``config`` describes: a relsim embedder (:class:`TrainConfig`), an anonymous captioner
    (:class:`CaptionerTrainConfig`) or a distilled student (:class:`DistillConfig`); see docs/training.md and
    docs/students.md. Heavy imports happen here, not on import."""
    import torch

    from . import distributed

    if isinstance(config, CaptionerTrainConfig):
        from .captioner import CaptionerTrainer as trainer_class
    elif isinstance(config, TrainConfig):
        from .embedder import EmbedderTrainer as trainer_class
    elif isinstance(config, DistillConfig):
        from .distill import DistillTrainer as trainer_class
    else:
        raise WrongTypeError(
            f"expected a TrainConfig, CaptionerTrainConfig or DistillConfig, got {type(config).__name__}"
        )
    config.validate()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    env, device = distributed.setup(config.device)
    try:
        return trainer_class(config, env, device).run()
    finally:
        if owns_group:
            distributed.cleanup()
