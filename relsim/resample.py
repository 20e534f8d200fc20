"""Pillow's resize (Lanczos, bicubic) as tensor ops, so it can run on the model's device.

Two versions of Pillow's separable two-pass filter (``libImaging/Resample.c``):

- :func:`resize_uint8`: bit-exact. Pillow's 22-bit fixed-point weights, int32 sums, rounding and 8-bit
  clipping after each pass, in Pillow's pass order. Any device; on a GPU it takes the resize off the
  DataLoader workers, whose job is then decoding only.
- :func:`resize_float`: differentiable. The same weights in float, no 8-bit rounding (within 1.2/255 of
  Pillow, see docs/inputs.md).

>>> x = torch.randint(0, 256, (3, 480, 480), dtype=torch.uint8)
>>> resize_uint8(x, (448, 448), "lanczos").shape
torch.Size([3, 448, 448])
"""

from __future__ import annotations

import functools
import math

import numpy as np
import PIL
import torch

from .errors import ArgumentError, WrongTypeError

KERNELS = ("bicubic", "lanczos")
PRECISION_BITS = 22  # Pillow: 32 - 8 - 2; two spare bits for negative lobes and overshoot
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
_BLOCK = 128  # outputs per block of the banded float weight matrix


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5, support 2), same operation order as the C code."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    # math.sin is the C library's sin, as in Pillow; numpy's vectorised sin may differ in the last bit,
    # which can move a fixed-point weight by one.
    y = x * math.pi
    sin = np.fromiter(map(math.sin, y.ravel().tolist()), np.float64, count=y.size).reshape(y.shape)
    return np.where(x == 0.0, 1.0, sin / np.where(x == 0.0, 1.0, y))


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's Lanczos kernel: sinc(x) * sinc(x / 3) on [-3, 3)."""
    inside = (x >= -3.0) & (x < 3.0)
    return np.where(inside, _sinc(np.where(inside, x, 0.0)) * _sinc(np.where(inside, x / 3, 0.0)), 0.0)


_FILTERS = {"bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


def vertical_first(in_height: int, in_width: int, out_height: int, out_width: int) -> bool:
    """Whether Pillow runs the vertical pass first (it matters: Pillow rounds to 8 bits between passes).

    Horizontal first, except from Pillow 13 (python-pillow/Pillow#9549) when the height shrinks by more
    than twice as many pixels as the width does. The rule was fitted to Pillow 13.0 and is checked against
    it in tests/test_resample.py.
    """
    if _PILLOW_MAJOR < 13 or out_height >= in_height:
        return False
    return in_height - out_height > 2 * (in_width - out_width)


@functools.lru_cache(maxsize=256)
def resample_weights(in_size: int, out_size: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs``: per output, its first input index and its normalised weights.

    Returns ``starts`` (out,) int64 and ``weights`` (out, taps) float64, zero past each output's last
    input. Every float operation is Pillow's, in Pillow's order (the sum of weights runs tap by tap), so
    the fixed-point weights derived from these are Pillow's bit for bit. Read-only arrays (cached).

    >>> starts, weights = resample_weights(640, 448, "lanczos")
    >>> weights.shape, float(weights[0].sum())
    ((448, 11), 1.0)
    """
    if kernel not in _FILTERS:
        raise ArgumentError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    filter_fn, filter_support = _FILTERS[kernel]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    taps = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # Pillow's (int) casts truncate toward zero; the max(.., 0) makes that equal to floor here.
    starts = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    stops = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    index = starts[:, None] + np.arange(taps)[None, :]
    weights = filter_fn((index - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(index < stops[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for tap in range(taps):  # sequential, as Pillow sums; numpy's pairwise sum can differ in the last bit
        total = total + weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    starts.flags.writeable = weights.flags.writeable = False
    return starts, weights


# ---------------------------------------------------------------------------------------------------------
# Exact: 8-bit fixed point


def resize_uint8(image: torch.Tensor, size: tuple[int, int], kernel: str) -> torch.Tensor:
    """Resize uint8 (..., H, W) to ``size`` = (height, width) exactly as Pillow resizes an RGB image.

    Runs on ``image.device``; the result is uint8, equal to ``Image.resize`` pixel for pixel.

    >>> resize_uint8(torch.zeros(3, 30, 40, dtype=torch.uint8), (28, 28), "bicubic").shape
    torch.Size([3, 28, 28])
    """
    if image.dtype != torch.uint8:
        raise WrongTypeError(f"resize_uint8 expects a uint8 tensor, got {image.dtype}")
    return _two_passes(image, size, kernel, _fixed_point_pass)


def _two_passes(image: torch.Tensor, size: tuple[int, int], kernel: str, one_pass) -> torch.Tensor:
    """Run ``one_pass(image, axis, out_size, kernel)`` for each axis whose size changes, in Pillow's order."""
    height, width = size
    passes = [(-1, width), (-2, height)]
    if vertical_first(image.shape[-2], image.shape[-1], height, width):
        passes.reverse()
    for axis, out_size in passes:
        if image.shape[axis] != out_size:
            image = one_pass(image, axis, out_size, kernel)
    return image


def _fixed_point_pass(image: torch.Tensor, axis: int, out_size: int, kernel: str) -> torch.Tensor:
    """One Pillow pass along ``axis``: int32 sum of pixel x weight from 2**21, then clip8(sum >> 22).

    Integer sums are exact in any order (Pillow's never overflow int32); the loop runs over taps, each a
    strided gather along ``axis`` of the whole image.
    """
    index, weights = _fixed_point_table(image.shape[axis], out_size, kernel, image.device)
    if axis == -2:
        weights = weights.unsqueeze(-1)  # (taps, out, 1): broadcast over columns
    pixels = image.to(torch.int32)
    shape = list(image.shape)
    shape[axis] = out_size
    total = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for tap in range(index.shape[0]):
        total += pixels.index_select(axis, index[tap]) * weights[tap]
    # Pillow's clip8: an arithmetic shift (floor), then clamp to 0..255.
    return (total >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=256)
def _fixed_point_table(in_size: int, out_size: int, kernel: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``index`` (taps, out) int64, clipped into the image, and Pillow's int32 weights (taps, out), on ``device``.

    Weights past an output's last input are zero, so the clipped index reads a pixel that adds nothing.
    """
    starts, weights = resample_weights(in_size, out_size, kernel)
    scaled = weights * (1 << PRECISION_BITS)
    # Pillow's normalize_coeffs_8bpc: (int)(x +/- 0.5), which truncates toward zero.
    fixed = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    index = np.minimum(starts[None, :] + np.arange(weights.shape[1])[:, None], in_size - 1)
    return torch.from_numpy(index).to(device), torch.from_numpy(np.ascontiguousarray(fixed.T)).to(device)


# ---------------------------------------------------------------------------------------------------------
# Differentiable: float


def resize_float(image: torch.Tensor, size: tuple[int, int], kernel: str) -> torch.Tensor:
    """Resize float (..., H, W) in [0, 1] to ``size`` = (height, width) with Pillow's filter, as matmuls.

    One pass per axis whose size changes, in Pillow's order. Values are clamped to [0, 1] after each
    pass, where Pillow clips to 8 bits (it also rounds there; this does not, so gradients flow).

    >>> resize_float(torch.rand(3, 30, 40), (28, 28), "lanczos").shape
    torch.Size([3, 28, 28])
    """
    return _two_passes(image, size, kernel, lambda x, *args: resample_axis(x, *args).clamp(0, 1))


def resample_axis(x: torch.Tensor, axis: int, out_size: int, kernel: str) -> torch.Tensor:
    """Resample float ``x`` along ``axis`` (-1: width, -2: height) to ``out_size`` with Pillow's weights."""
    if axis == -2:
        return resample_axis(x.transpose(-1, -2), -1, out_size, kernel).transpose(-1, -2)
    index, weights = _float_blocks(x.shape[-1], out_size, kernel)
    windows = x[..., index]  # (..., blocks, span): each block of outputs reads one window of inputs
    out = torch.einsum("...bs,bos->...bo", windows, weights.to(x.device, x.dtype))
    return out.flatten(-2)[..., :out_size]


@functools.lru_cache(maxsize=64)
def _float_blocks(in_size: int, out_size: int, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (out, in) weight matrix of one axis in banded form, on CPU: ``index`` (blocks, span) int64 and
    ``weights`` (blocks, _BLOCK, span) float64.

    Block b holds outputs [b * _BLOCK, (b + 1) * _BLOCK) (zero rows past ``out_size``) and reads the inputs
    ``index[b]``, so ``x[..., index]`` contracted with ``weights`` over ``span`` is the full matmul without its
    zeros: a dense matrix would cost O(in * out) per image row, too much for large native-mode images.
    """
    starts, row_weights = resample_weights(in_size, out_size, kernel)
    n_blocks = -(-out_size // _BLOCK)
    pad = n_blocks * _BLOCK - out_size
    starts = np.pad(starts, (0, pad), mode="edge")
    row_weights = np.pad(row_weights, ((0, pad), (0, 0)))
    block_start = starts[::_BLOCK]  # starts never decrease, so a block's first row reads its first input
    offsets = starts - np.repeat(block_start, _BLOCK)
    taps = row_weights.shape[1]
    span = int(offsets.max()) + taps
    dense = np.zeros((n_blocks * _BLOCK, span))
    np.put_along_axis(dense, offsets[:, None] + np.arange(taps), row_weights, axis=1)
    # Window positions past the last input carry zero weight; clipping keeps the gather in bounds.
    index = np.minimum(block_start[:, None] + np.arange(span), in_size - 1)
    return torch.from_numpy(index), torch.from_numpy(dense.reshape(n_blocks, _BLOCK, span))


__all__ = [
    "KERNELS",
    "PRECISION_BITS",
    "vertical_first",
    "resample_weights",
    "resize_uint8",
    "resize_float",
    "resample_axis",
]
