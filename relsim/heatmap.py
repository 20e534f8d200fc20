"""Pair heatmaps: where in image A its relational similarity to B (an image or a text) comes from.

The default method, ``"gradxinput"`` (docs/heatmaps.md), exactly:

- x_i: the language model's input vector of A's i-th image token (the vision merger's output, one per 2x2 patch
  group), i over the grid (grid_h/2, grid_w/2) of A's patches in the model's mode;
- g_i = d cos(e_A, e_B) / d x_i with e_B fixed (B's embedding, or the MiniLM embedding of a text);
- c_i = <g_i, x_i>; the map is max(c, 0) / sum(max(c, 0)) on that grid, float32.

The backward runs in the model's dtype; x is a float32 leaf, so g and c are accumulated in float32. When the
sum is zero (every c_i <= 0), or A and B are the same image to the dtype's rounding (1 - |cos| <= ``flat_tolerance``:
cos is at its maximum (or minimum) there, its gradient is zero, and what a backward returns is rounding noise), the
map is uniform (1/n everywhere) and ``Heatmap.uniform`` is True. An (A, A) pair therefore has a defined, uniform
map.

Example:
    >>> hm = model.heatmap("peach.jpg", "earth.jpg")                       # doctest: +SKIP
    >>> hm.map.shape, float(hm.map.sum())                                  # doctest: +SKIP
    (torch.Size([16, 16]), 1.0)
    >>> hm.overlay().save("peach-vs-earth.png")                            # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import preprocess
from .batching import is_single
from .errors import ArgumentError, ImageInputError

__all__ = ["Heatmap", "compute", "colour_map", "flat_tolerance", "METHODS", "INFERNO", "TOKENS_PER_BATCH"]

#: ``"gradxinput"``: c_i = <g_i, x_i>, kept where positive (the default; what the score rests on, first order).
#: ``"gradnorm"``: ||g_i||_2, how sensitive the score is to token i in any direction (saliency, not attribution).
METHODS = ("gradxinput", "gradnorm")
#: The colour map of overlays: matplotlib's "inferno" sampled at 9 evenly spaced points (RGB in [0, 1]), linearly
#: interpolated; 0 (no share) is near black, the largest share pale yellow.
INFERNO = np.array(
    [
        (0.0015, 0.0005, 0.0139),
        (0.1293, 0.0473, 0.2908),
        (0.3415, 0.0623, 0.4294),
        (0.5409, 0.1347, 0.4151),
        (0.7357, 0.2159, 0.3302),
        (0.8943, 0.3534, 0.1936),
        (0.9784, 0.5579, 0.0349),
        (0.9746, 0.7977, 0.2063),
        (0.9884, 0.9984, 0.6449),
    ],
    dtype=np.float32,
)
#: Pixels of A the model never saw (train mode's centre crop leaves the sides out) are dimmed to this brightness.
_UNSEEN_BRIGHTNESS = 0.35
#: Language-model tokens of one heatmap batch. Each keeps its activations for the backward (about 4.9 MB per token
#: in the 7B in bfloat16, docs/heatmaps.md): 8192 tokens is about 40 GB; a CUDA out-of-memory halves the batch.
TOKENS_PER_BATCH = 8192
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def flat_tolerance(dtype: torch.dtype) -> float:
    """How close to 1 a pair's cosine may be before its gradient is rounding noise: one unit of ``dtype``'s
    rounding, at least 8 of float32's (float32: 9.5e-7; bfloat16: 0.0078; float16: 0.00098). Such a pair gets a
    uniform map.

    >>> flat_tolerance(torch.float32) < 1e-6
    True
    """
    return max(torch.finfo(dtype).eps, 8 * torch.finfo(torch.float32).eps)


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) through :data:`INFERNO`.

    >>> colour_map(np.array([0.0, 1.0])).tolist()
    [[0, 0, 4], [252, 255, 164]]
    """
    stops = np.linspace(0, 1, len(INFERNO))
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1)
    rgb = np.stack([np.interp(v, stops, INFERNO[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)  # eq=False: a tensor field has no single truth value
class Heatmap:
    """One image's map: the share of its relational similarity to B that each of its visual tokens carries.

    Attributes:
        map: float32 (rows, cols) on the CPU, non-negative, summing to 1; row-major over A's token grid.
        image_size: A's displayed (width, height), EXIF orientation applied.
        box: (left, top, right, bottom) of the part of A the map covers, in displayed pixels (train mode: the
            centre square the model sees; native mode: the whole image).
        method: the method that made it (:data:`METHODS`).
        score: cos(e_A, e_B) of this pass, float32.
        uniform: True when the map is uniform by definition (nothing positive to attribute, or A and B the same
            to rounding; see the module's docstring).
        source: A as it was given (a path, a PIL image, an array), what :meth:`overlay` draws on by default.

    >>> hm.overlay(alpha=0.6).save("a.png"); hm.to_image().size                    # doctest: +SKIP
    (448, 448)
    """

    map: torch.Tensor
    image_size: tuple[int, int]
    box: tuple[int, int, int, int]
    method: str
    score: float
    uniform: bool
    source: Any = field(default=None, repr=False, compare=False)

    def to_image(self, size: tuple[int, int] | None = None) -> Image.Image:
        """The map alone, coloured (:data:`INFERNO`, the largest share brightest), one block per token; ``size``
        (width, height) defaults to 28 px per token, the pixels of the model's input each token stands for."""
        rows, cols = self.map.shape
        size = size or (cols * preprocess.FACTOR, rows * preprocess.FACTOR)
        return Image.fromarray(colour_map(self._scaled())).resize(size, Image.Resampling.NEAREST)

    def overlay(self, image: Any = None, alpha: float = 0.5) -> Image.Image:
        """The map over A as displayed: upsampled (bilinear) to :attr:`box`, coloured with :data:`INFERNO`
        (scaled so the largest share is brightest) and blended in with weight ``alpha``; what the model did not
        see is dimmed. ``image``: what to draw on (default: A itself, read again); another size (a thumbnail)
        is fine, the map is scaled to it."""
        if not 0 <= alpha <= 1:
            raise ArgumentError(f"alpha must be in [0, 1], got {alpha}")
        base = _rgb(self.source if image is None else image)
        width, height = base.size
        sx, sy = width / self.image_size[0], height / self.image_size[1]
        left, top = round(self.box[0] * sx), round(self.box[1] * sy)
        right, bottom = max(left + 1, round(self.box[2] * sx)), max(top + 1, round(self.box[3] * sy))
        values = Image.fromarray(self._scaled()).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
        out = np.asarray(base, dtype=np.float32) * _UNSEEN_BRIGHTNESS
        seen = np.asarray(base, dtype=np.float32)[top:bottom, left:right]
        out[top:bottom, left:right] = (1 - alpha) * seen + alpha * colour_map(np.asarray(values))
        return Image.fromarray(np.round(out).astype(np.uint8))

    def _scaled(self) -> np.ndarray:
        values = self.map.numpy().astype(np.float32)
        top = float(values.max())
        return values / top if top > 0 else values


def compute(
    model: torch.nn.Module,
    a: Any,
    b: Any = None,
    *,
    text: str | Sequence[str] | None = None,
    method: str = "gradxinput",
    batch_size: int = 8,
    text_model: str | os.PathLike | None = None,
    text_revision: str | None = None,
) -> Heatmap | list[Heatmap]:
    """Heatmaps of the images ``a`` against ``b`` (images) or ``text`` (relational descriptions): one image ``a``
    gives a :class:`Heatmap`, a list (or batch) a list. ``b`` / ``text``: one for all, or as many as ``a``.

    Costs a forward and a backward through the language model per image (``batch_size`` at a time), plus B's
    embedding; works in the model's mode and dtype. ``text_model`` / ``text_revision``: the MiniLM for ``text``
    (default all-MiniLM-L6-v2). The metric path is untouched: gradients exist only inside this call.

    >>> compute(model, ["a.jpg", "b.jpg"], text="{Fruit} cut open")[0].map.shape   # doctest: +SKIP
    torch.Size([16, 16])
    """
    if method not in METHODS:
        raise ArgumentError(f"method must be one of {METHODS}, got {method!r}")
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if (b is None) == (text is None):
        raise ArgumentError("heatmap needs exactly one of b (an image) or text (a relational description)")
    single = is_single(a)
    items = [x.detach() if isinstance(x, torch.Tensor) else x for x in preprocess.as_image_list(a, name="a")]
    targets = _target_embeddings(model, b, text, len(items), batch_size, text_model, text_revision)
    out: list[Heatmap | None] = [None] * len(items)
    window = max(4 * batch_size, 16)
    for start in range(0, len(items), window):
        indices = list(range(start, min(start + window, len(items))))
        prepared = {i: preprocess.prepare(items[i], i, model.mode) for i in indices}
        for batch in _batches(model, prepared, batch_size):
            results = _attribute_fitting(model, [prepared[i] for i in batch], targets[batch], method)
            for i, (values, score, uniform) in zip(batch, results, strict=True):
                out[i] = _heatmap(model, items[i], values, score, uniform, method)
    return out[0] if single else out  # type: ignore[return-value]


def _target_embeddings(model, b, text, n: int, batch_size: int, text_model, text_revision) -> torch.Tensor:
    """e_B for each A, (n, D) float32 on the model's device, unit length."""
    if text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        _check_count(len(texts), n, "text")
        if not all(isinstance(t, str) for t in texts):
            bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise ArgumentError(f"text[{bad}]: expected a string, got {type(texts[bad]).__name__}")
        chosen = {"model": text_model} if text_model is not None else {}
        targets = model.embed_text(texts, **chosen, revision=text_revision, device=model.device)
    else:
        images = preprocess.as_image_list(b, name="b")
        _check_count(len(images), n, "b")
        targets = model.embed(images, batch_size=batch_size, output_device=None)
    if targets.shape[-1] != model.embedding_dim:
        raise ArgumentError(f"B's embedding has {targets.shape[-1]} dimensions, the model's {model.embedding_dim}")
    targets = F.normalize(targets.to(model.device, torch.float32), dim=-1)
    return targets.expand(n, -1) if len(targets) == 1 else targets


def _check_count(count: int, n: int, name: str) -> None:
    if count not in (1, n):
        raise ArgumentError(f"heatmap needs one {name} or as many as images in a ({n}), got {count}")


def _batches(model, prepared: dict[int, torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal token grid (no padding), at most ``batch_size`` and the model's token budget each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, pixels in prepared.items():
        groups.setdefault(tuple(pixels.shape), []).append(i)
    batches = []
    for shape, members in groups.items():
        tokens = model.prompt.length(shape[1] * shape[2] // preprocess.FACTOR**2)
        cap = max(1, min(batch_size, min(model.max_tokens_per_batch, TOKENS_PER_BATCH) // tokens))
        batches += [members[k : k + cap] for k in range(0, len(members), cap)]
    return batches


def _attribute_fitting(model, pixels: list[torch.Tensor], targets: torch.Tensor, method: str):
    """:func:`_attribute`, the batch halved as long as a GPU runs out of memory."""
    try:
        return _attribute(model, pixels, targets, method)
    except torch.cuda.OutOfMemoryError:
        if len(pixels) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(pixels) // 2
        first = _attribute_fitting(model, pixels[:half], targets[:half], method)
        return first + _attribute_fitting(model, pixels[half:], targets[half:], method)


def _attribute(model, pixels: list[torch.Tensor], targets: torch.Tensor, method: str):
    """Per image: the (rows, cols) float32 map (normalised, uniform fallback applied), cos(e_A, e_B) and whether
    the map is the uniform fallback."""
    leaves: list[torch.Tensor] = []

    def as_leaf(tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.detach().to(torch.float32).requires_grad_(True)  # float32: g and c accumulate in float32
        leaves.append(x)
        return x

    with torch.inference_mode(False), torch.enable_grad():
        pixel_values, grid = preprocess.patchify(pixels, device=model.device, dtype=model.dtype)
        embeddings = model(pixel_values, grid, image_hook=as_leaf)
        cosines = (embeddings * targets.clone()).sum(-1)  # a clone: targets may come from inference mode
        # The weights lock is released here: autograd saved the weight tensors themselves, so a captioner's
        # pointer swap in another thread cannot reach this backward.
        (grad,) = torch.autograd.grad(cosines.sum(), leaves[0])
    x = leaves[0].detach()
    contributions = (grad * x).sum(-1) if method == "gradxinput" else grad.norm(dim=-1)
    tolerance = flat_tolerance(model.dtype)
    grids = grid.tolist()
    results = []
    per_image = contributions.split([h * w // preprocess.MERGE_SIZE**2 for _, h, w in grids])
    for values, (_, h, w), cos in zip(per_image, grids, cosines.tolist(), strict=True):
        values = values.clamp(min=0).reshape(h // preprocess.MERGE_SIZE, w // preprocess.MERGE_SIZE).cpu()
        total = float(values.sum())
        flat = not (total > 0 and np.isfinite(total)) or 1 - abs(cos) <= tolerance
        results.append((torch.full_like(values, 1 / values.numel()) if flat else values / total, cos, flat))
    return results


def _heatmap(model, item: Any, values: torch.Tensor, score: float, uniform: bool, method: str) -> Heatmap:
    width, height = _displayed_size(item)
    if model.mode == "train":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    else:
        box = (0, 0, width, height)
    return Heatmap(values, (width, height), box, method, score, uniform, source=item)


def _displayed_size(item: Any) -> tuple[int, int]:
    """(width, height) as decoded: EXIF orientation applied to files and PIL images; arrays as they are."""
    if isinstance(item, np.ndarray):
        return int(item.shape[1]), int(item.shape[0])
    if isinstance(item, torch.Tensor):
        return int(item.shape[-1]), int(item.shape[-2])
    if isinstance(item, Image.Image):
        return _oriented_size(item)
    with Image.open(item) as image:  # the header only; prepare() has read the whole file already
        return _oriented_size(image)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    try:
        transposed = image.getexif().get(0x0112, 1) in _EXIF_TRANSPOSED
    except Exception:  # preprocess ignores an unreadable EXIF block too
        transposed = False
    return (image.height, image.width) if transposed else image.size


def _rgb(source: Any) -> Image.Image:
    """An RGB PIL image of ``source`` as relsim decodes it (EXIF orientation applied, alpha on white)."""
    if source is None:
        raise ArgumentError("overlay needs the image: this heatmap has no source, pass image=")
    image = preprocess.decode(source, 0)
    if isinstance(image, torch.Tensor):  # a float tensor that requires grad
        image = Image.fromarray((image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"cannot draw on {type(source).__name__}")
    return image.convert("RGB")
