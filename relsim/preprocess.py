"""Inputs -> validated RGB images -> Qwen2.5-VL pixel patches.

Pipeline for one image (what a DataLoader worker runs)::

    decode(item, i) -> resize_for_mode(image, mode) -> to_pixel_tensor(image)

and for a batch, on the target device::

    pixel_values, image_grid_thw = patchify(tensors, device=device)

With the model on a GPU the resize moves to the device too: workers run ``prepare(..., resize=False)``
(decoding only) and ``resize_for_mode`` resizes the uint8 tensor there, pixel for pixel as Pillow does.

Two modes (see docs/inputs.md): ``"train"`` centre-crops to a square and resizes to 448x448 with Lanczos,
as the model saw in training; ``"native"`` keeps the aspect ratio and resizes to the Qwen2-VL
``smart_resize`` size with bicubic, as upstream inference does. The patch layout is exactly the one of
transformers' Qwen2-VL image processor.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ArgumentError, ImageInputError
from .resample import resize_float, resize_uint8

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

MODES = ("train", "native")
TRAIN_SIZE = 448
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: every side handed to the model is a multiple of this
MIN_PIXELS = 3136
MAX_PIXELS = 12845056
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SINGLE_KINDS = (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)
_EXPECTED_TYPES = "a path, a PIL image, a numpy HWC array or a torch CHW tensor"


# ---------------------------------------------------------------------------------------------------------
# Input lists


def as_image_list(images: object, *, name: str = "images") -> list[ImageInput]:
    """Turn one image, a list/tuple of images or a batch into a list of single images.

    NCHW tensors are split into CHW slices (autograd is kept), NHWC numpy arrays into HWC slices.

    >>> len(as_image_list(torch.zeros(2, 3, 8, 8)))
    2
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list = list(images.unbind(0))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ImageInputError(f"{name} is empty")
    for index, item in enumerate(items):
        if not isinstance(item, _SINGLE_KINDS):
            raise ImageInputError(
                f"{name}[{index}]: unsupported type {type(item).__name__}; expected {_EXPECTED_TYPES}"
            )
    return items


def _describe(item: object, index: int) -> str:
    """'image 3 (path '/x.png')' and the like, for error messages."""
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} (path '{os.fspath(item)}')"
    if isinstance(item, np.ndarray):
        return f"image {index} (numpy array, shape {tuple(item.shape)}, dtype {item.dtype})"
    if isinstance(item, torch.Tensor):
        return f"image {index} (tensor, shape {tuple(item.shape)}, dtype {item.dtype})"
    if isinstance(item, Image.Image):
        return f"image {index} (PIL image, mode {item.mode}, size {item.size})"
    return f"image {index} ({type(item).__name__})"


# ---------------------------------------------------------------------------------------------------------
# Decoding


def decode(item: ImageInput, index: int) -> Image.Image | torch.Tensor:
    """Validate one input and return an RGB PIL image, or a float CHW tensor when gradients must flow.

    Paths are loaded fully; EXIF orientation is applied; transparency is composited onto white.
    Float tensors that require grad (with grad enabled) come back as float32 (3, H, W) in [0, 1].

    >>> decode(np.zeros((4, 6, 3), np.uint8), 0).size
    (6, 4)
    """
    if isinstance(item, (str, os.PathLike)):
        return _decode_path(item, index)
    if isinstance(item, Image.Image):
        return _pil_to_rgb(item, _describe(item, index))
    if isinstance(item, np.ndarray):
        return _decode_numpy(item, index)
    if isinstance(item, torch.Tensor):
        return _decode_tensor(item, index)
    raise ImageInputError(f"image {index}: unsupported type {type(item).__name__}; expected {_EXPECTED_TYPES}")


def _decode_path(path: str | os.PathLike, index: int) -> Image.Image:
    where = _describe(path, index)
    if not os.path.exists(path):
        raise ImageInputError(f"{where}: file not found")
    if os.path.isdir(path):
        raise ImageInputError(f"{where}: is a directory, expected an image file")
    if os.path.getsize(path) == 0:
        raise ImageInputError(f"{where}: file is empty")
    try:
        with Image.open(path) as img:
            _check_bomb_limit(img, where)
            img.load()  # decode now, so truncated files fail here and not in a worker later
            return _pil_to_rgb(img, where)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageInputError(f"{where}: {_bomb_message(err)}") from err
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, zlib/struct errors, ...
        raise ImageInputError(f"{where}: cannot read image file ({type(err).__name__}: {err})") from err


def _check_bomb_limit(img: Image.Image, where: str) -> None:
    # PIL raises above 2x MAX_IMAGE_PIXELS and only warns above 1x; we refuse both. (Checked by hand
    # rather than with warnings.catch_warnings, which is not thread-safe.)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise ImageInputError(f"{where}: {_bomb_message(f'{img.width}x{img.height} pixels')}")


def _bomb_message(detail: object) -> str:
    return (
        "image exceeds PIL's decompression-bomb limit "
        f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {detail}"
    )


def _pil_to_rgb(img: Image.Image, where: str) -> Image.Image:
    img = _apply_exif_orientation(img, where)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        return _high_bit_depth_to_rgb(img, where)
    if img.mode in _ALPHA_MODES or img.has_transparency_data:
        return _composite_on_white(img)
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageInputError(f"{where}: cannot convert PIL mode {img.mode} to RGB ({err})") from err


def _apply_exif_orientation(img: Image.Image, where: str) -> Image.Image:
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        if orientation in (None, 1):
            return img  # the common case: no copy
        return ImageOps.exif_transpose(img)
    except Exception as err:  # a damaged EXIF block should not make a decodable photo unusable
        warnings.warn(f"{where}: ignoring unreadable EXIF data ({err})", stacklevel=4)
        return img


def _composite_on_white(img: Image.Image) -> Image.Image:
    if img.mode == "La":  # PIL has no direct La -> RGBA conversion
        img = img.convert("RGBa")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _high_bit_depth_to_rgb(img: Image.Image, where: str) -> Image.Image:
    """Scale 16-bit (I;16*, and I, read as 16-bit data) to 0..255; F must hold values in [0, 1].

    PIL's own convert("L") clips these modes at 255 instead of scaling them.
    """
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageInputError(
                f"{where}: float (mode F) pixels must be finite and in [0, 1], "
                f"got range [{np.nanmin(values)}, {np.nanmax(values)}]"
            )
        scaled = values * 255
    else:
        if values.min() < 0 or values.max() > 65535:
            raise ImageInputError(
                f"{where}: mode {img.mode} is read as 16-bit data and must be in [0, 65535], "
                f"got range [{values.min():g}, {values.max():g}]"
            )
        scaled = values * (255 / 65535)
    gray = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def _decode_numpy(arr: np.ndarray, index: int) -> Image.Image:
    where = _describe(arr, index)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageInputError(f"{where}: expected an H x W or H x W x C array with C in (1, 3, 4)")
    if arr.size == 0:
        raise ImageInputError(f"{where}: array is empty (zero-size)")
    if arr.dtype == np.uint8:
        return _uint8_hwc_to_pil(arr, where)
    if np.issubdtype(arr.dtype, np.floating):
        check_pixel_values(arr, where)
        return _uint8_hwc_to_pil(np.round(arr.astype(np.float64) * 255).astype(np.uint8), where)
    raise ImageInputError(f"{where}: expected dtype uint8 (0-255) or float (0-1)")


def check_pixel_values(x: torch.Tensor | np.ndarray, where: str) -> None:
    """uint8 (0-255) or finite floats in [0, 1]; anything else is an :class:`ImageInputError` naming ``where``, the
    dtype or the range found, and the likely fix. One device sync for a tensor (``aminmax``).

    >>> check_pixel_values(torch.rand(3, 8, 8) * 255, "image 0")
    Traceback (most recent call last):
    relsim.errors.ImageInputError: expected float values of image 0 in [0, 1], got range ...
    """
    tensor = isinstance(x, torch.Tensor)
    if x.dtype == (torch.uint8 if tensor else np.uint8):
        return
    if not (x.is_floating_point() if tensor else np.issubdtype(x.dtype, np.floating)):
        raise ImageInputError(f"{where}: expected dtype uint8 (0-255) or a floating dtype (0-1), got dtype {x.dtype}")
    if (x.numel() if tensor else x.size) == 0:
        return
    lo, hi = torch.stack(x.detach().aminmax()).tolist() if tensor else (float(np.min(x)), float(np.max(x)))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max, inf shows
        raise ImageInputError(f"{where}: contains NaN or inf")
    if lo < 0 or hi > 1:
        hint = " (images in [-1, 1]? pass (img + 1) / 2)" if lo < 0 else " (images in 0-255? pass them as uint8)"
        hint = hint if lo < 0 or hi > 2 else ""
        raise ImageInputError(f"expected float values of {where} in [0, 1], got range [{lo:g}, {hi:g}]{hint}")


def _uint8_hwc_to_pil(arr: np.ndarray, where: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(arr)), where)


def _decode_tensor(t: torch.Tensor, index: int, *, keep_tensor: bool = False) -> Image.Image | torch.Tensor:
    """Validate a CHW tensor. Returns an RGB PIL image, the float tensor when gradients must flow, or with
    ``keep_tensor`` (1 or 3 channels) a uint8 (3, H, W) tensor on the input's device: the same pixels as the
    PIL image, without the trip through host memory."""
    where = _describe(t, index)
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageInputError(f"{where}: expected a C x H x W tensor with C in (1, 3, 4)")
    if t.numel() == 0:
        raise ImageInputError(f"{where}: tensor is empty (zero-size)")
    if t.dtype == torch.uint8:
        as_uint8 = t.detach()
    elif not t.is_floating_point():
        raise ImageInputError(f"{where}: expected dtype uint8 (0-255) or a floating dtype (0-1)")
    else:
        check_pixel_values(t, where)
        if t.requires_grad and torch.is_grad_enabled():
            return _differentiable_rgb(t)
        # Quantise exactly like numpy float input: in float64, round half to even.
        as_uint8 = (t.detach().double() * 255).round().clamp(0, 255).to(torch.uint8)
    if keep_tensor and t.shape[0] != 4:  # alpha goes through PIL's compositing below
        return as_uint8.expand(3, -1, -1) if t.shape[0] == 1 else as_uint8
    return _uint8_hwc_to_pil(as_uint8.cpu().permute(1, 2, 0).numpy(), where)


def _differentiable_rgb(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float in [0, 1] -> (3, H, W) float32, alpha composited on white, graph kept."""
    t = t.to(torch.float32)
    if t.shape[0] == 4:
        rgb, alpha = t[:3], t[3:]
        return rgb * alpha + (1 - alpha)
    if t.shape[0] == 1:
        return t.expand(3, -1, -1)
    return t


# ---------------------------------------------------------------------------------------------------------
# Resizing


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """The Qwen2-VL resize rule as upstream's inference applies it (qwen-vl-utils' ``fetch_image``): sides
    multiples of ``factor`` and at least ``factor``, area within [min_pixels, max_pixels].

    Same arithmetic as qwen-vl-utils (Python ``round``, ties to even). Each side is raised to ``factor``
    *before* the area bounds apply, which is where transformers' own version differs (it refuses sides under
    ``factor``; a 500x10 image is 504x28 upstream).

    >>> smart_resize(480, 640), smart_resize(500, 10)
    ((476, 644), (504, 28))
    """
    if max(height, width) / min(height, width) > 200:
        raise ArgumentError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")


def target_size(height: int, width: int, mode: str) -> tuple[int, int]:
    """(height, width) the model sees for an image of this size in ``mode``.

    >>> target_size(480, 640, "train"), target_size(480, 640, "native")
    ((448, 448), (476, 644))
    """
    _check_mode(mode)
    return (TRAIN_SIZE, TRAIN_SIZE) if mode == "train" else smart_resize(height, width)


def resize_for_mode(image: Image.Image | torch.Tensor, mode: str) -> Image.Image | torch.Tensor:
    """Bring a decoded image to the size the model sees in ``mode``.

    "train": centre square crop, then 448x448 Lanczos. "native": ``smart_resize`` size, bicubic.
    Tensors are resized with the same Pillow filters on their own device: uint8 (3, H, W) exactly as
    Pillow does (``resample.resize_uint8``), float (the differentiable path) without 8-bit rounding
    (``resample.resize_float``; the remaining gap is measured in docs/inputs.md).

    >>> resize_for_mode(Image.new("RGB", (640, 480)), "train").size
    (448, 448)
    """
    _check_mode(mode)
    if isinstance(image, torch.Tensor):
        height, width = image.shape[-2:]
    else:
        width, height = image.size
    target = target_size(height, width, mode)
    if mode == "train":
        image = _center_square(image, height, width)
        resample, kernel = Image.LANCZOS, "lanczos"
    else:
        resample, kernel = Image.BICUBIC, "bicubic"
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            return resize_uint8(image, target, kernel)
        return resize_float(image, target, kernel)
    if image.size != (target[1], target[0]):
        image = image.resize((target[1], target[0]), resample=resample)
    return image


def _center_square(image: Image.Image | torch.Tensor, height: int, width: int) -> Image.Image | torch.Tensor:
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    if side == height == width:
        return image
    if isinstance(image, torch.Tensor):
        return image[..., top : top + side, left : left + side]
    return image.crop((left, top, left + side, top + side))


# ---------------------------------------------------------------------------------------------------------
# Tensors and patches


def to_pixel_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) tensor; a (float, differentiable) tensor is returned as is.

    >>> to_pixel_tensor(Image.new("RGB", (5, 4))).shape
    torch.Size([3, 4, 5])
    """
    if isinstance(image, torch.Tensor):
        return image
    if image.mode != "RGB":
        raise ArgumentError(f"to_pixel_tensor expects an RGB image (use decode first), got mode {image.mode}")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def prepare(item: ImageInput, index: int, mode: str, *, resize: bool = True) -> torch.Tensor:
    """decode -> resize_for_mode -> to_pixel_tensor: the per-image CPU work of a DataLoader worker.

    ``resize=False`` stops after decoding (the size is still checked), for a caller that resizes on
    the model's device with :func:`resize_for_mode`, which gives the same pixels. Tensors then stay on their
    device as uint8 (3, H, W) (except 4-channel ones, composited on white by PIL).

    >>> prepare(np.zeros((30, 40, 3), np.uint8), 0, "train").shape
    torch.Size([3, 448, 448])
    >>> prepare(np.zeros((30, 40, 3), np.uint8), 0, "train", resize=False).shape
    torch.Size([3, 30, 40])
    """
    _check_mode(mode)
    if not resize and isinstance(item, torch.Tensor):
        image = _decode_tensor(item, index, keep_tensor=True)
    else:
        image = decode(item, index)
    try:
        if resize:
            image = resize_for_mode(image, mode)
        else:
            height, width = image.shape[-2:] if isinstance(image, torch.Tensor) else image.size[::-1]
            target_size(height, width, mode)
    except ImageInputError:
        raise
    except ValueError as err:  # smart_resize refuses aspect ratios over 200
        raise ImageInputError(f"{_describe(item, index)}: {err}") from err
    return to_pixel_tensor(image)


def patchify(
    images: Sequence[torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise (3, H, W) images and flatten them into Qwen2-VL patches.

    Inputs: uint8 (0-255) or float (0-1) tensors, H and W multiples of 28. Returns ``pixel_values``
    (total patches, 1176) in ``dtype`` and ``image_grid_thw`` (N, 3) = [1, H/14, W/14] per image, both on
    ``device`` (default: the first image's device), in input order. Equal-sized images are normalised and
    flattened together wherever they sit in the list: one vectorised op per size on an accelerator; on a
    CPU in cache-sized pieces (a few MB), which is several times faster there than one large pass. Every
    piece is written straight into the output.

    >>> pv, grid = patchify([torch.zeros(3, 56, 84, dtype=torch.uint8)])
    >>> pv.shape, grid.tolist()
    (torch.Size([24, 1176]), [[1, 4, 6]])
    """
    if len(images) == 0:
        raise ArgumentError("patchify needs at least one image")
    for i, img in enumerate(images):
        _check_patchable(img, i)
    device = torch.device(device) if device is not None else images[0].device
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)

    counts = [(img.shape[1] // PATCH_SIZE) * (img.shape[2] // PATCH_SIZE) for img in images]
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    pixel_values = torch.empty((starts[-1], 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2), dtype=dtype, device=device)
    for members in _equal_size_groups(images, device):
        batch = (_to_unit_float([images[i] for i in members], device) - mean) / std
        patches = _patch_layout(batch)
        if members == list(range(members[0], members[-1] + 1)):  # adjacent in the output: one copy
            _patch_layout_of(pixel_values[starts[members[0]] : starts[members[-1] + 1]], batch.shape).copy_(patches)
            continue
        for j, i in enumerate(members):
            _patch_layout_of(pixel_values[starts[i] : starts[i + 1]], (1, *batch.shape[1:])).copy_(patches[j : j + 1])
    grids = [[1, img.shape[1] // PATCH_SIZE, img.shape[2] // PATCH_SIZE] for img in images]
    return pixel_values, torch.tensor(grids, dtype=torch.long, device=device)


def _check_patchable(img: torch.Tensor, index: int) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ArgumentError(f"patchify: image {index} must be a (3, H, W) tensor, got {shape}")
    if img.shape[1] % FACTOR or img.shape[2] % FACTOR:
        size = tuple(img.shape[1:])
        raise ArgumentError(f"patchify: image {index} has size {size}, not multiples of {FACTOR}")
    if img.dtype != torch.uint8 and not img.is_floating_point():
        raise ArgumentError(f"patchify: image {index} has dtype {img.dtype}, expected uint8 or float")


#: On a CPU, normalise and flatten at most this many bytes of float pixels at a time (at least one image): the
#: working set then stays in cache. A batch of 32 images at 448x448 in one pass was 5x slower on a 2-core EPYC.
_CPU_PIECE_BYTES = 4 << 20


def _equal_size_groups(images: Sequence[torch.Tensor], device: torch.device) -> list[list[int]]:
    """Indices of equal-sized images, in order of first appearance; on a CPU split into cache-sized pieces."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    if device.type != "cpu":
        return list(groups.values())
    pieces = []
    for shape, members in groups.items():
        per_piece = max(1, _CPU_PIECE_BYTES // (4 * math.prod(shape)))
        pieces += [members[k : k + per_piece] for k in range(0, len(members), per_piece)]
    return pieces


def _to_unit_float(run: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack a run of equal-sized images as float32 in [0, 1] on ``device`` (uint8 travels as uint8)."""
    if all(img.dtype == torch.uint8 for img in run):
        return torch.stack([img.to(device) for img in run]).to(torch.float32) * (1 / 255)
    return torch.stack([_unit_float(img.to(device)) for img in run])


def _unit_float(img: torch.Tensor) -> torch.Tensor:
    return img.to(torch.float32) * (1 / 255) if img.dtype == torch.uint8 else img.to(torch.float32)


def _patch_layout(batch: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> a (B, H/28, W/28, 2, 2, C, T, 14, 14) view in the order of transformers' Qwen2-VL processor.

    Patches are grouped by 2x2 merge window (row-major over windows, then within a window); each patch
    is flattened as (channel, time, row, col), the image repeated on the time axis (an expanded view: the
    copy into the output writes it twice).
    """
    b, c, height, width = batch.shape
    gh, gw = height // PATCH_SIZE, width // PATCH_SIZE
    m, p, t = MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE
    x = batch.reshape(b, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    return x.unsqueeze(6).expand(*x.shape[:6], t, p, p)


def _patch_layout_of(rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The (B * H/14 * W/14, 1176) rows of ``B`` images of ``shape`` (B, C, H, W) viewed as ``_patch_layout``."""
    b, c, height, width = shape
    m, p, t = MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE
    return rows.view(b, height // (p * m), width // (p * m), m, m, c, t, p, p)


__all__ = [
    "ImageInput",
    "MODES",
    "TRAIN_SIZE",
    "PATCH_SIZE",
    "MERGE_SIZE",
    "TEMPORAL_PATCH_SIZE",
    "FACTOR",
    "MIN_PIXELS",
    "MAX_PIXELS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "as_image_list",
    "decode",
    "check_pixel_values",
    "smart_resize",
    "target_size",
    "resize_for_mode",
    "to_pixel_tensor",
    "prepare",
    "patchify",
]
