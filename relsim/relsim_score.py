"""Upstream relsim's API, computed by relsim: code written for the research release runs unchanged.

The paper's authors published relsim 0.1.0 (PyPI ``relsim``, github.com/thaoshibe/relsim), whose API is
``relsim()`` and ``preprocess_image`` in ``relsim.relsim_score`` (also importable from ``relsim``); their later
README (the CVPR 2026 version) adds ``preprocess_image([...])`` returning a list and
``embed(images, max_image_size=None, micro_batch_size=None)``. This module keeps those calls and their numbers:
native resolution, no EXIF orientation, and transparency as 0.1.0 handled it (``preprocess_image`` drops alpha
with ``convert("RGB")``; an RGBA image handed straight to ``embed`` is composited onto white, as qwen-vl-utils
0.0.14 does). Loading and embedding are relsim's own (:func:`relsim.load`, :class:`relsim.RelSimModel`). New
code should call :func:`relsim.load` directly (docs/upgrading.md).

Example:
    >>> from relsim.relsim_score import relsim
    >>> from PIL import Image
    >>> model, preprocess = relsim(pretrained=True, checkpoint_dir="thaoshibe/relsim-qwenvl25-lora")  # doctest: +SKIP
    >>> model(preprocess(Image.open("a.jpg")), preprocess(Image.open("b.jpg")))                      # doctest: +SKIP
    0.731204
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .encoder import RelSimModel
from .errors import ArgumentError, ImageInputError, WrongTypeError
from .preprocess import ImageInput, as_image_list
from .pretrained import load
from .registry import DEFAULT_MODEL


def preprocess_image(img: Image.Image | list[Image.Image] | tuple[Image.Image, ...]) -> Image.Image | list[Image.Image]:
    """``img.convert("RGB")``, as upstream's ``preprocess_image`` (alpha is dropped, not composited); a list or
    tuple of PIL images gives a list, as in upstream's later README.

    >>> preprocess_image(Image.new("RGBA", (4, 4))).mode
    'RGB'
    >>> [im.mode for im in preprocess_image([Image.new("L", (4, 4)), Image.new("P", (2, 2))])]
    ['RGB', 'RGB']
    """
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, (list, tuple)):
        for index, item in enumerate(img):
            if not isinstance(item, Image.Image):
                kind = type(item).__name__
                raise WrongTypeError(f"Input must be a PIL Image or a list of PIL Images; item {index} is a {kind}")
        return [item.convert("RGB") for item in img]
    raise WrongTypeError(f"Input must be a PIL Image or a list of PIL Images, not {type(img).__name__}")


class UpstreamModel:
    """What upstream 0.1.0's ``relsim()`` returned, on a :class:`relsim.RelSimModel` in native mode.

    ``embed(img)`` gives (N, 384) float32 L2-normalised embeddings on the model's device, ``model(img1, img2)``
    their dot product as a float. The relsim model itself is :attr:`model` (``score``, ``pairwise``, batches).

    >>> model, preprocess = relsim(checkpoint_dir="thaoshibe/relsim-qwenvl25-lora")     # doctest: +SKIP
    >>> model.embed(preprocess(Image.open("a.jpg"))).shape                             # doctest: +SKIP
    torch.Size([1, 384])
    """

    def __init__(self, model: RelSimModel) -> None:
        if model.mode != "native":
            raise ArgumentError(f"upstream 0.1.0 embedded images at native resolution; this model is in {model.mode!r}")
        self.model = model
        """The :class:`relsim.RelSimModel` underneath."""

    @property
    def device(self) -> torch.device:
        """Where the model's weights and the embeddings live."""
        return self.model.device

    def embed(
        self,
        images: ImageInput | list[ImageInput],
        max_image_size: int | None = None,
        micro_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Embed one image (-> (1, 384)) or a list of images (-> (N, 384)): float32, L2-normalised, on :attr:`device`.

        PIL images and paths are read as upstream read them (no EXIF orientation; RGBA composited onto white,
        other modes converted to RGB); numpy arrays and tensors are taken as :meth:`relsim.RelSimModel.embed`
        takes them. As in upstream's later README: ``max_image_size`` shrinks an image whose longest edge is
        longer to that many pixels (PIL's ``thumbnail``, LANCZOS; PIL images and files only); ``micro_batch_size``
        embeds that many images per forward pass (the rows are the same; default: relsim's batches of 32).
        ``None`` or 0 turns either off, as upstream.

        >>> model.embed([img1, img2], max_image_size=1024, micro_batch_size=8).shape     # doctest: +SKIP
        torch.Size([2, 384])
        """
        max_size = _optional_size(max_image_size, "max_image_size")
        batch = _optional_size(micro_batch_size, "micro_batch_size")
        items = [_upstream_rgb(item, index, max_size) for index, item in enumerate(as_image_list(images))]
        if batch:
            return self.model.embed(items, batch, output_device=None)
        return self.model.embed(items, output_device=None)

    def __call__(self, img1: ImageInput, img2: ImageInput) -> float:
        """Relational similarity of two images: the dot product of their embeddings (higher = more similar)."""
        embeddings = self.embed([img1, img2])
        return float((embeddings[0] * embeddings[1]).sum())

    def eval(self) -> UpstreamModel:
        """The model is always in evaluation mode; returns ``self``, as upstream did."""
        self.model.eval()
        return self

    def __repr__(self) -> str:
        return f"UpstreamModel({self.model.fingerprint.get('model')!r}, device={str(self.device)!r})"


def relsim(
    pretrained: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> tuple[UpstreamModel, Callable[[Image.Image], Image.Image]]:
    """Load a relsim checkpoint the way upstream 0.1.0's ``relsim()`` did: returns ``(model, preprocess)``.

    Args:
        pretrained: must be True (upstream supported nothing else).
        checkpoint_dir: a Hub repo id or a local directory (default: ``thaoshibe/relsim-qwenvl25-lora``; 0.1.0
            required it). The base model is the one the adapter's ``adapter_config.json`` names.
        cache_dir: the Hugging Face cache directory (default: ``HF_HOME``).
        load_kwargs: other arguments of :func:`relsim.load` (``device``, ``dtype``, ``base_model``,
            ``revision``, ...); the mode is always ``"native"``.

    Example:
        >>> model, preprocess = relsim(checkpoint_dir="thaoshibe/relsim-qwenvl25-lora")     # doctest: +SKIP
        >>> model(preprocess(Image.open("a.jpg")), preprocess(Image.open("b.jpg")))       # doctest: +SKIP
        0.731204
    """
    if not pretrained:
        raise ArgumentError("Only pretrained=True is supported")
    if "mode" in load_kwargs:
        raise ArgumentError("relsim() computes upstream's numbers in native mode; for mode=, call relsim.load()")
    checkpoint = DEFAULT_MODEL if checkpoint_dir is None else checkpoint_dir
    model = load(checkpoint, cache_dir=cache_dir, mode="native", **load_kwargs)
    return UpstreamModel(model), preprocess_image


def _optional_size(value: int | None, name: str) -> int | None:
    """A positive int, or None for None and 0 (upstream's "off"); anything else is refused with its name."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WrongTypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ArgumentError(f"{name} must be positive (or None / 0 for no limit), got {value}")
    return int(value) or None


def _shrunk(img: Image.Image, max_size: int | None) -> Image.Image:
    """Upstream's ``max_image_size``: a copy thumbnailed (LANCZOS) when an edge is longer than ``max_size``."""
    if max_size and (img.width > max_size or img.height > max_size):
        img = img.copy()
        img.thumbnail((max_size, max_size), Image.LANCZOS)
    return img


def _upstream_rgb(item: ImageInput, index: int, max_size: int | None = None) -> ImageInput:
    """A PIL image or a path as qwen-vl-utils 0.0.14 read it (shrunk to ``max_size`` as upstream's later ``embed``
    does), as a uint8 HWC array (which carries no EXIF data, so relsim applies no orientation); anything else
    unchanged, and refused when ``max_size`` is set (upstream shrank PIL images only)."""
    if isinstance(item, Image.Image):
        return np.asarray(_shrunk(_qwen_vl_utils_rgb(item), max_size))
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if path.startswith(("http://", "https://", "data:image")):
            raise ImageInputError(f"image {index} ({path[:80]}): relsim reads local files; download it first")
        path = path.removeprefix("file://")
        try:
            with Image.open(path) as img:
                img.load()
                return np.asarray(_shrunk(_qwen_vl_utils_rgb(img), max_size))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ImageInputError(f"image {index} ({Path(path)}): cannot read image file ({err})") from err
    if max_size:
        kind = type(item).__name__
        raise WrongTypeError(f"image {index}: max_image_size shrinks PIL images and image files, not {kind}")
    return item


def _qwen_vl_utils_rgb(img: Image.Image) -> Image.Image:
    """qwen-vl-utils' ``to_rgb``: RGBA pasted onto white through its alpha, every other mode ``convert("RGB")``."""
    if img.mode == "RGBA":
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(img, mask=img.getchannel("A"))
        return out
    return img.convert("RGB")


__all__ = ["relsim", "preprocess_image", "UpstreamModel"]
