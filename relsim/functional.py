"""Functional relational similarity: the mirror of :class:`relsim.RelationalSimilarity`.

Same inputs, same validation, same values as the metric class; no state.

Example:
    >>> import relsim
    >>> from relsim.functional import relational_similarity
    >>> model = relsim.load()                                                  # doctest: +SKIP
    >>> relational_similarity(generated, reference, model=model)               # doctest: +SKIP
    tensor(0.6132)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .backbone import parse_dtype
from .encoder import RelSimModel
from .errors import ArgumentError, WrongTypeError
from .preprocess import ImageInput, ImageInputError, check_pixel_values
from .pretrained import DEFAULT_MODEL, load
from .similarity import ImageEmbedder

#: What one side of an update may be: an (N, C, H, W) tensor, an (N, H, W, C) numpy array or a list of images.
ImageBatch = Tensor | np.ndarray | Sequence[ImageInput]
Reduction = Literal["mean", "sum", "none"]
ModelArg = RelSimModel | str | os.PathLike | None

REDUCTIONS = ("mean", "sum", "none")
_CHANNELS = (1, 3, 4)
_CONVENTION = (
    "a batch of images: an (N, C, H, W) tensor (C in 1, 3, 4; uint8 0-255 or float 0-1), an (N, H, W, C) numpy "
    "array, or a list of images (paths, PIL images, HWC numpy arrays, CHW tensors)"
)

# model=None / an id in the functional API: keep the last model loaded here alive, so that a loop of calls does
# not reload 16 GB each time once the caller drops the returned scores (relsim.load only caches live models).
_LAST_LOADED: list[RelSimModel] = []


# ---------------------------------------------------------------------------------------------------------
# Validation


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"Expected argument `reduction` to be one of {REDUCTIONS}, got {reduction!r}")


def _check_images(images: ImageBatch, name: str) -> list[ImageInput]:
    """Validate one side of a batch of pairs and split it into single images (autograd is kept)."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] not in _CHANNELS:
            hint = ""
            if images.ndim == 3:
                hint = "; for one image pass img[None]"
            elif images.ndim == 4 and images.shape[-1] in _CHANNELS:
                hint = "; channels-last? pass img.permute(0, 3, 1, 2)"
            raise ImageInputError(
                f"Expected `{name}` to be {_CONVENTION}; got a tensor of shape {tuple(images.shape)}{hint}"
            )
        check_pixel_values(images, f"`{name}`")
        return list(images.unbind(0))
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] not in _CHANNELS:
            raise ImageInputError(f"Expected `{name}` to be {_CONVENTION}; got a numpy array of shape {images.shape}")
        check_pixel_values(images, f"`{name}`")
        return list(images)
    if isinstance(images, (list, tuple)):
        for i, item in enumerate(images):
            where = f"{name}[{i}]"
            if isinstance(item, Tensor):
                if item.ndim != 3 or item.shape[0] not in _CHANNELS:
                    raise ImageInputError(
                        f"Expected `{where}` to be a (C, H, W) tensor with C in {_CHANNELS}, "
                        f"got shape {tuple(item.shape)}"
                    )
                check_pixel_values(item, f"`{where}`")
            elif isinstance(item, np.ndarray):
                if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[-1] not in _CHANNELS):
                    raise ImageInputError(
                        f"Expected `{where}` to be an (H, W) or (H, W, C) array with C in {_CHANNELS}, "
                        f"got shape {item.shape}"
                    )
                check_pixel_values(item, f"`{where}`")
            elif not isinstance(item, (str, os.PathLike, Image.Image)):
                raise ImageInputError(
                    f"Expected `{where}` to be a path, a PIL image, a numpy HWC array or a CHW tensor, "
                    f"got {type(item).__name__}"
                )
        return list(images)
    raise ImageInputError(f"Expected `{name}` to be {_CONVENTION}; got {type(images).__name__}")


def _check_same_length(a: list, b: list) -> None:
    if len(a) != len(b):
        raise ImageInputError(
            f"Expected `img1` and `img2` to hold the same number of images (one pair each), got {len(a)} and {len(b)}"
        )


# ---------------------------------------------------------------------------------------------------------
# Model


def resolve_model(
    model: ModelArg,
    *,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    mode: str | None = None,
    base_model: str | os.PathLike | None = None,
    load_kwargs: dict | None = None,
) -> RelSimModel:
    """A loaded model as it is (checked against dtype/device/mode if given), or load an id / directory / the default.

    Loading goes through :func:`relsim.load`, which returns the instance already loaded for the same
    (model, revision, base, mode, dtype, device) in this process.
    """
    if isinstance(model, ImageEmbedder):
        if revision is not None or base_model is not None or load_kwargs:
            raise ArgumentError(
                "`revision`, `base_model` and `load_kwargs` apply only when `model` is a Hub id or a directory"
            )
        _check_model_matches(model, dtype=dtype, device=device, mode=mode)
        return model
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, (str, os.PathLike)):
        raise WrongTypeError(
            f"Expected `model` to be a loaded relsim.RelSimModel, a Hub id, a directory or None, "
            f"got {type(model).__name__}"
        )
    kwargs = dict(load_kwargs or {})
    if base_model is not None:
        if "base_model" in kwargs:
            raise ArgumentError("`base_model` is given twice: as an argument and in `load_kwargs`")
        kwargs["base_model"] = base_model
    return load(model, revision=revision, dtype=dtype, device=device, mode=mode or "train", **kwargs)


def _check_model_matches(
    model: RelSimModel,
    *,
    dtype: torch.dtype | str | None,
    device: str | torch.device | None,
    mode: str | None,
) -> None:
    """A loaded model may be shared: never convert it behind its other users' backs, refuse a mismatch instead."""
    if dtype is not None and parse_dtype(dtype, model.device) != model.dtype:
        raise ArgumentError(
            f"the model was loaded in {model.dtype} but dtype={dtype!r} was given; load it with that dtype "
            "(relsim.load(..., dtype=...)) or pass the model id instead"
        )
    if device is not None:
        want = torch.device(device)
        have = model.device
        if want.type != have.type or (want.index is not None and want.index != have.index):
            raise ArgumentError(
                f"the model is on {have} but device={str(want)!r} was given; load it there or move the metric "
                "with .to(device)"
            )
    if mode is not None and mode != model.mode:
        raise ArgumentError(f"the model was loaded in mode {model.mode!r} but mode={mode!r} was given")


# ---------------------------------------------------------------------------------------------------------
# Update / compute


def relational_similarity_update(
    img1: ImageBatch,
    img2: ImageBatch,
    model: RelSimModel,
    *,
    batch_size: int = 32,
) -> Tensor:
    """Validate a batch of pairs and score them: (N,) float32 cosines, equal to ``model.score(img1, img2)``.

    Each distinct image (same path or same object, e.g. one reference repeated) is embedded once. Gradients
    reach float tensor inputs that require grad when autograd is enabled.
    """
    a = _check_images(img1, "img1")
    b = _check_images(img2, "img2")
    _check_same_length(a, b)
    if not a:
        return torch.zeros(0)
    return model.score(a, b, batch_size=batch_size)


def relational_similarity_compute(score_sum: Tensor, total: Tensor, reduction: Reduction) -> Tensor:
    """``"sum"``: the sum of the scores; ``"mean"``: sum / count (NaN when no pair was seen)."""
    return score_sum if reduction == "sum" else score_sum / total


def _reduce_scores(scores: Tensor, reduction: Reduction) -> Tensor:
    """Reduce (N,) scores exactly as the metric's states would: same sum, same division."""
    if reduction == "none":
        return scores
    total = torch.tensor(scores.numel(), device=scores.device)
    return relational_similarity_compute(torch.zeros((), device=scores.device) + scores.sum(), total, reduction)


def relational_similarity(
    img1: ImageBatch,
    img2: ImageBatch,
    *,
    model: ModelArg = None,
    reduction: Reduction = "mean",
    batch_size: int = 32,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    mode: str | None = None,
    base_model: str | os.PathLike | None = None,
    load_kwargs: dict | None = None,
) -> Tensor:
    """Relational similarity of the pairs ``(img1[i], img2[i])``: cosine in [-1, 1], higher = more similar.

    Args:
        img1: a batch of images: an (N, C, H, W) tensor (uint8 0-255 or float 0-1), an (N, H, W, C) numpy
            array, or a list of images (paths, PIL images, HWC arrays, CHW tensors; sizes may differ).
        img2: a batch of the same length as ``img1``, paired by index.
        model: a loaded :class:`relsim.RelSimModel` (recommended), a Hub id or directory, or None for the
            default model. Ids are loaded once per process and the last one loaded here is kept alive.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the (N,) scores).
        batch_size: images per forward of the backbone.
        revision: the branch, tag or commit of ``model`` (when it is a Hub id), for :func:`relsim.load`.
        dtype: the backbone's dtype when loading; with a loaded model, only checked against it.
        device: the backbone's device when loading; with a loaded model, only checked against it.
        mode: ``"train"`` or ``"native"`` preprocessing when loading; with a loaded model, only checked.
        base_model: the base Qwen2.5-VL of an adapter directory or id (default: the one its
            ``adapter_config.json`` names), for :func:`relsim.load`.
        load_kwargs: :func:`relsim.load`'s other keyword arguments, e.g. ``base_revision``, ``cache_dir``.

    Returns:
        A scalar (``"mean"``, ``"sum"``) or an (N,) tensor, float32, on ``img1``'s device when it is a tensor and
        on the CPU otherwise. Differentiable w.r.t. float tensor inputs that require grad.

    Example:
        >>> model = relsim.load()                                              # doctest: +SKIP
        >>> img1 = torch.rand(4, 3, 448, 448)                                  # doctest: +SKIP
        >>> img2 = ["ref.jpg"] * 4                                             # doctest: +SKIP
        >>> relational_similarity(img1, img2, model=model)                     # doctest: +SKIP
        tensor(0.5871)
    """
    check_reduction(reduction)
    resolved = resolve_model(
        model, revision=revision, dtype=dtype, device=device, mode=mode, base_model=base_model, load_kwargs=load_kwargs
    )
    if not isinstance(model, ImageEmbedder):
        _LAST_LOADED[:] = [resolved]
    scores = relational_similarity_update(img1, img2, resolved, batch_size=batch_size)
    if isinstance(img1, Tensor):
        scores = scores.to(img1.device)
    return _reduce_scores(scores, reduction)


__all__ = ["relational_similarity", "ImageBatch", "REDUCTIONS"]
