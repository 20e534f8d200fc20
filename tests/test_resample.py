"""Tests for relsim.resample: Pillow's resize as tensor ops, exact (uint8) and differentiable (float)."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from PIL import Image

from relsim import preprocess, resample

FILTERS = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def blocky_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Flat areas with hard edges: sums land on 0 and 255 and exercise the 8-bit clipping."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 255, 17, 238], np.uint8), (height // 7 + 1, width // 7 + 1, 3))
    return Image.fromarray(np.repeat(np.repeat(coarse, 7, 0), 7, 1)[:height, :width].copy())


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(pixels(image).copy()).permute(2, 0, 1)


def random_size_pairs(n: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = random.Random(seed)
    return [((rng.randint(1, 400), rng.randint(1, 400)), (rng.randint(1, 400), rng.randint(1, 400))) for _ in range(n)]


FIXED_PAIRS = [
    ((640, 480), (448, 448)),  # train mode before the crop (not used as such, but a common pair)
    ((480, 480), (448, 448)),  # train mode, 640x480 after the crop
    ((1080, 1080), (448, 448)),  # train mode, 1920x1080 after the crop
    ((640, 480), (644, 476)),  # native mode, smart_resize
    ((91, 57), (84, 56)),
    ((1, 1), (448, 448)),
    ((3000, 7), (13, 2)),
    ((7, 3000), (2, 13)),
    ((200, 200), (150, 99)),  # Pillow 13 runs this one vertical first
    ((300, 300), (290, 310)),
]


# ---------------------------------------------------------------------------------------------------------
# exact uint8 path


@pytest.mark.parametrize("kernel", resample.KERNELS)
@pytest.mark.parametrize(("size", "out"), FIXED_PAIRS + random_size_pairs(40, seed=4))
def test_resize_uint8_equals_pillow_bit_for_bit(kernel, size, out):
    for make in (noise_image, blocky_image):
        image = make(*size, seed=sum(size) + sum(out))
        expected = pixels(image.resize(out, FILTERS[kernel]))
        got = resample.resize_uint8(as_tensor(image), out[::-1], kernel)
        assert got.dtype == torch.uint8
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected, err_msg=f"{size}->{out} {kernel}")


def test_resize_uint8_batches_and_no_op():
    images = [noise_image(50, 40, seed=i) for i in range(3)]
    batch = torch.stack([as_tensor(image) for image in images])
    got = resample.resize_uint8(batch, (28, 56), "lanczos")
    for image, out in zip(images, got, strict=True):
        np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), pixels(image.resize((56, 28), Image.LANCZOS)))
    same = as_tensor(images[0])
    assert resample.resize_uint8(same, (40, 50), "bicubic") is same


def test_resize_uint8_rejects_float_and_unknown_kernel():
    with pytest.raises(TypeError, match="uint8"):
        resample.resize_uint8(torch.rand(3, 10, 10), (5, 5), "lanczos")
    with pytest.raises(ValueError, match="kernel must be one of"):
        resample.resample_weights(10, 5, "nearest")


@pytest.mark.parametrize("mode", preprocess.MODES)
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 300), (57, 91), (448, 448), (20, 30)])
def test_resize_for_mode_on_uint8_tensor_equals_pil_path(mode, size):
    image = noise_image(*size, seed=size[0])
    expected = preprocess.to_pixel_tensor(preprocess.resize_for_mode(image, mode))
    decoded = preprocess.prepare(image, 0, mode, resize=False)
    assert decoded.shape == (3, size[1], size[0])
    got = preprocess.resize_for_mode(decoded, mode)
    assert got.shape == expected.shape == (3, *preprocess.target_size(size[1], size[0], mode))
    assert torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resize_uint8_on_cuda_equals_pillow():
    for size, out in FIXED_PAIRS:
        image = noise_image(*size)
        got = resample.resize_uint8(as_tensor(image).cuda(), out[::-1], "lanczos").cpu()
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), pixels(image.resize(out, Image.LANCZOS)))
    for tensor in tensor_inputs().values():  # CUDA tensors are quantised and resized without leaving the GPU
        kept = preprocess.prepare(tensor.cuda(), 0, "train", resize=False)
        assert kept.device.type == "cuda" or tensor.shape[0] == 4
        resized = preprocess.resize_for_mode(kept.cuda(), "train").cpu()
        assert torch.equal(resized, preprocess.prepare(tensor, 0, "train"))


# ---------------------------------------------------------------------------------------------------------
# float path and shared pieces


@pytest.mark.parametrize("kernel", resample.KERNELS)
@pytest.mark.parametrize(
    ("size", "out"), [((57, 91), (56, 84)), ((640, 480), (448, 448)), ((5, 3), (60, 40)), ((3000, 7), (13, 2))]
)
def test_resample_weights_equal_pillow_float_resize(kernel, size, out):
    # Pillow's mode F resize uses the same coefficients in float, without 8-bit rounding or clipping.
    values = np.random.default_rng(0).random(size[::-1]).astype(np.float32)
    expected = np.asarray(Image.fromarray(values, "F").resize(out, FILTERS[kernel]))
    x = torch.from_numpy(values).double()[None]
    got = resample.resample_axis(resample.resample_axis(x, -1, out[0], kernel), -2, out[1], kernel)[0]
    assert got.dtype == torch.float64
    assert np.abs(got.numpy() - expected).max() <= 1e-6


@pytest.mark.parametrize(
    ("size", "out"),
    [((640, 480), (644, 476)), ((91, 57), (84, 56)), ((57, 91), (56, 84)), ((300, 300), (290, 310))]
    + [((3000, 310), (300, 30)), ((310, 3000), (30, 300)), ((200, 200), (150, 99)), ((200, 200), (150, 101))],
)
def test_pass_order_matches_pillow(size, out):
    # Pillow rounds between passes, so the order shows: compare against both orders done in two steps.
    image = noise_image(*size, seed=9)
    (width, height), (out_width, out_height) = size, out
    expected = pixels(image.resize(out, Image.BICUBIC))
    vertical_first = image.resize((width, out_height), Image.BICUBIC).resize(out, Image.BICUBIC)
    horizontal_first = image.resize((out_width, height), Image.BICUBIC).resize(out, Image.BICUBIC)
    assert not np.array_equal(pixels(vertical_first), pixels(horizontal_first))
    pil_vertical_first = np.array_equal(pixels(vertical_first), expected)
    assert pil_vertical_first or np.array_equal(pixels(horizontal_first), expected)
    assert resample.vertical_first(height, width, out_height, out_width) == pil_vertical_first


def test_float_resize_gradients_are_exact():
    # Values away from 0 and 1 keep the clamps inactive, so the resize is linear and gradcheck applies.
    x = (0.3 + 0.4 * torch.rand(2, 6, 7, dtype=torch.float64)).requires_grad_()
    for size, kernel in [((3, 4), "lanczos"), ((10, 9), "bicubic"), ((6, 3), "bicubic")]:
        resize = functools.partial(resample.resize_float, size=size, kernel=kernel)
        assert torch.autograd.gradcheck(resize, (x,), fast_mode=True)


def test_prepare_without_resize_still_checks_the_size():
    with pytest.raises(preprocess.ImageInputError, match=r"image 5 \(numpy array.*aspect ratio"):
        preprocess.prepare(np.zeros((1, 300, 3), np.uint8), 5, "native", resize=False)
    # train mode crops to a square first, so any aspect ratio is fine
    assert preprocess.prepare(np.zeros((1, 300, 3), np.uint8), 5, "train", resize=False).shape == (3, 1, 300)


def tensor_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=g)
    unit = torch.rand(3, 50, 70, generator=g)
    return {
        "uint8 rgb": rgb,
        "uint8 gray": rgb[:1],
        "uint8 rgba": torch.cat([rgb, rgb[:1]]),
        "float32 rgb": unit,
        "float32 gray": unit[1:2],
        "float64 rgb": unit.double(),
        "float16 rgb": unit.half(),
        "float32 on the 0.5/255 ties": torch.full((3, 28, 28), 0.5 / 255),
    }


@pytest.mark.parametrize("name", list(tensor_inputs()))
@pytest.mark.parametrize("mode", preprocess.MODES)
def test_tensors_stay_tensors_without_resize_and_give_the_same_pixels(name, mode, monkeypatch):
    tensor = tensor_inputs()[name]
    through_pil = preprocess.to_pixel_tensor(preprocess.decode(tensor, 0))
    to_pil = []
    original = preprocess._uint8_hwc_to_pil
    monkeypatch.setattr(preprocess, "_uint8_hwc_to_pil", lambda *args: to_pil.append(1) or original(*args))
    kept = preprocess.prepare(tensor, 0, mode, resize=False)
    assert kept.dtype == torch.uint8 and kept.device == tensor.device
    assert torch.equal(kept, through_pil)
    # 4 channels are composited on white by PIL; the others never leave the tensor's device
    assert len(to_pil) == (1 if tensor.shape[0] == 4 else 0)
    assert torch.equal(preprocess.resize_for_mode(kept, mode), preprocess.prepare(tensor, 0, mode))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.full((3, 8, 8), float("nan")), "NaN or inf"),
        (torch.full((3, 8, 8), float("inf")), "NaN or inf"),
        (torch.full((3, 8, 8), 1.5), r"range \[1.5, 1.5\]"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), "expected dtype uint8"),
        (torch.zeros(2, 8, 8), "C in"),
        (torch.zeros(3, 0, 8), "zero-size"),
    ],
)
def test_bad_tensors_without_resize_name_the_item(tensor, message):
    with pytest.raises(preprocess.ImageInputError, match=rf"image 4 \(tensor.*{message}"):
        preprocess.prepare(tensor, 4, "train", resize=False)
