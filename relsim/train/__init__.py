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

from .config import CaptionerTrainConfig, DistillConfig, TrainConfig

if TYPE_CHECKING:
    from .loop import TrainResult

__all__ = ["TrainConfig", "CaptionerTrainConfig", "DistillConfig", "train"]


def train(config: TrainConfig | CaptionerTrainConfig) -> TrainResult:
    """Run training; see :func:`relsim.train.loop.train`."""
    from .loop import train as _train

    return _train(config)
