"""Tests for relsim.preprocess: decoding, the two modes, and patch parity with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps
from reference import _processor_module
from tiny import PROCESSOR_FIXTURE

from relsim import preprocess as P
from relsim.preprocess import ImageInputError

# transformers' Qwen2-VL image processor without torchvision (the PIL backend, or the numpy one before 5.x)
hf_processor_module, ImageProcessor = _processor_module()
hf_smart_resize = hf_processor_module.smart_resize
PROCESSOR_CONFIG = PROCESSOR_FIXTURE / "preprocessor_config.json"
DEFAULT_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
}
SIZES = [(448, 448), (640, 480), (300, 1000), (57, 91)]  # (width, height)

# The differentiable path runs Pillow's filters in float; Pillow rounds to 8 bits between its two passes and
# at the end, which bounds the gap (measured max 1.23/255, mean 0.0012; docs/inputs.md).
TENSOR_MAX_DIFF = 2 / 255
TENSOR_MEAN_DIFF = 0.002
TENSOR_SIZES = [(57, 91), (1000, 300), (640, 480), (1500, 2000), (300, 200)]  # (width, height)


# ---------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def processor():
    cfg = json.loads(PROCESSOR_CONFIG.read_text()) if PROCESSOR_CONFIG.exists() else DEFAULT_CONFIG
    return ImageProcessor(
        min_pixels=cfg["min_pixels"],
        max_pixels=cfg["max_pixels"],
        image_mean=cfg["image_mean"],
        image_std=cfg["image_std"],
        patch_size=cfg["patch_size"],
        merge_size=cfg["merge_size"],
        temporal_patch_size=cfg["temporal_patch_size"],
    )


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    coarse = noise_image(max(width // 16, 2), max(height // 16, 2), seed)
    return coarse.resize((width, height), Image.BICUBIC)


def edges_image(width: int, height: int, seed: int = 0) -> Image.Image:
    image = smooth_image(width, height, seed)
    rng = np.random.default_rng(seed + 1)
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(1, width // 3 + 2)), y0 + int(rng.integers(1, height // 3 + 2))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def run_pipeline(item, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return P.patchify([P.prepare(item, 0, mode)])


def chw_uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("mode", P.MODES)
@pytest.mark.parametrize("size", SIZES)
def test_patchify_matches_transformers_processor(processor, size, mode):
    image = noise_image(*size)
    resized = P.resize_for_mode(P.decode(image, 0), mode)
    pixel_values, grid = P.patchify([P.to_pixel_tensor(resized)])
    ref = processor(images=[resized], return_tensors="pt")
    assert grid.dtype == torch.long
    assert torch.equal(grid, ref["image_grid_thw"])
    assert pixel_values.shape == ref["pixel_values"].shape
    assert pixel_values.dtype == torch.float32
    assert (pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_native_mode_matches_processor_on_original_image(processor, size):
    # Upstream resizes before the processor; the processor's own (identical) resize must agree.
    image = noise_image(*size, seed=1)
    pixel_values, grid = run_pipeline(image, "native")
    ref = processor(images=[image], return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"])
    assert (pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


def test_patchify_batch_matches_processor_and_keeps_order(processor):
    images = [noise_image(*s, seed=i) for i, s in enumerate([(640, 480), (640, 480), (57, 91), (640, 480)])]
    resized = [P.resize_for_mode(P.decode(im, i), "native") for i, im in enumerate(images)]
    pixel_values, grid = P.patchify([P.to_pixel_tensor(r) for r in resized])
    ref = processor(images=resized, return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"])
    assert (pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


def test_patchify_equal_size_batch_equals_one_by_one():
    tensors = [P.prepare(noise_image(300, 200, seed=i), i, "train") for i in range(3)]
    batched, grid = P.patchify(tensors)
    single = torch.cat([P.patchify([t])[0] for t in tensors])
    assert torch.equal(batched, single)
    assert grid.tolist() == [[1, 32, 32]] * 3


def test_patchify_groups_equal_sizes_wherever_they_sit_and_keeps_order(processor):
    sizes = [(300, 200), (57, 91), (300, 200), (200, 300), (300, 200)]
    tensors = [P.prepare(noise_image(*s, seed=i), i, "native") for i, s in enumerate(sizes)]
    pixel_values, grid = P.patchify(tensors)
    assert torch.equal(pixel_values, torch.cat([P.patchify([t])[0] for t in tensors]))
    assert torch.equal(grid, torch.cat([P.patchify([t])[1] for t in tensors]))
    images = [Image.fromarray(t.permute(1, 2, 0).numpy()) for t in tensors]
    assert (pixel_values - processor(images=images, return_tensors="pt")["pixel_values"]).abs().max() <= 1e-5


def test_patchify_works_in_one_op_per_size_on_a_gpu_and_in_cache_sized_pieces_on_a_cpu():
    images = [torch.zeros(3, 448, 448, dtype=torch.uint8)] * 5 + [torch.zeros(3, 56, 56, dtype=torch.uint8)] * 2
    images.insert(2, torch.zeros(3, 28, 56, dtype=torch.uint8))
    assert P._equal_size_groups(images, torch.device("cuda")) == [[0, 1, 3, 4, 5], [2], [6, 7]]
    per_piece = P._CPU_PIECE_BYTES // (4 * 3 * 448 * 448)  # 448x448 float32 is 2.4 MB: one per piece
    assert per_piece == 1
    assert P._equal_size_groups(images, torch.device("cpu")) == [[0], [1], [3], [4], [5], [2], [6, 7]]


def test_patchify_float_input_equals_uint8_and_dtype_option():
    t = P.prepare(noise_image(100, 100), 0, "train")
    from_uint8, _ = P.patchify([t])
    from_float, _ = P.patchify([t.float() / 255])
    assert (from_uint8 - from_float).abs().max().item() <= 1e-5
    bf16, grid = P.patchify([t], device="cpu", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and grid.device.type == "cpu"
    mixed, _ = P.patchify([t, t.float() / 255])
    assert (mixed - torch.cat([from_uint8, from_uint8])).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 30, 28, dtype=torch.uint8),
        torch.zeros(1, 28, 28, dtype=torch.uint8),
        torch.zeros(1, 3, 28, 28, dtype=torch.uint8),
        torch.zeros(3, 28, 28, dtype=torch.int64),
    ],
)
def test_patchify_rejects_bad_tensors(bad):
    with pytest.raises(ValueError, match="patchify: image 0"):
        P.patchify([bad])
    with pytest.raises(ValueError):
        P.patchify([])


# ---------------------------------------------------------------------------------------------------------
# smart_resize and modes


def test_smart_resize_equals_upstream():
    """qwen-vl-utils' rule (upstream inference) everywhere; transformers' own agrees wherever it accepts a size
    (it refuses sides under 28 in some releases; qwen-vl-utils raises them to 28 first)."""
    from reference import qwen_vl_utils_smart_resize

    sizes = [
        (h, w)
        for h in (1, 13, 14, 27, 28, 42, 56, 70, 98, 126, 333, 480, 1000, 4000)
        for w in (2, 14, 42, 70, 91, 300, 640, 1001, 5000)
    ]
    sizes += [(3000, 4000), (4032, 3024), (8000, 6000), (20000, 100), (14, 2800), (70, 70), (126, 154)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                P.smart_resize(h, w)
            with pytest.raises(ValueError):
                qwen_vl_utils_smart_resize(h, w)
            continue
        assert P.smart_resize(h, w) == qwen_vl_utils_smart_resize(h, w), (h, w)
        if min(h, w) >= 28:
            assert P.smart_resize(h, w) == hf_smart_resize(h, w, 28, 3136, 12845056), (h, w)
    # Ties go to even (Python round): 42/28 = 1.5 -> 2, 70/28 = 2.5 -> 2.
    assert P.smart_resize(70, 126) == (56, 112)


@pytest.mark.parametrize("size", [(640, 480), (641, 480), (480, 641), (300, 1000), (57, 91), (448, 448), (50, 50)])
def test_train_mode_matches_upstream_steps(size):
    image = noise_image(*size, seed=3)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    expected = image.crop((left, top, left + side, top + side)).resize((448, 448), Image.LANCZOS)
    got = P.resize_for_mode(P.decode(image, 0), "train")
    assert got.size == (448, 448)
    assert np.array_equal(pixels(got), pixels(expected))


def test_native_mode_uses_bicubic_to_smart_size():
    image = noise_image(640, 480, seed=4)
    got = P.resize_for_mode(image, "native")
    assert np.array_equal(pixels(got), pixels(image.resize((644, 476), Image.BICUBIC)))
    same = noise_image(56, 84)
    assert P.resize_for_mode(same, "native") is same


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="train.*native"):
        P.resize_for_mode(noise_image(10, 10), "eval")
    with pytest.raises(ValueError, match="train.*native"):
        P.prepare(noise_image(10, 10), 0, "Train")


def test_prepare_outputs_and_extreme_aspect_ratio():
    out = P.prepare(noise_image(30, 40), 0, "train")
    assert out.shape == (3, 448, 448) and out.dtype == torch.uint8
    with pytest.raises(ImageInputError, match="image 5 .*aspect ratio"):
        P.prepare(np.zeros((1, 300, 3), np.uint8), 5, "native")
    assert P.prepare(np.zeros((1, 300, 3), np.uint8), 5, "train").shape == (3, 448, 448)


# ---------------------------------------------------------------------------------------------------------
# EXIF, alpha, and modes of PIL images


def test_path_decodes_like_the_pil_image(tmp_path):
    image = noise_image(33, 21, seed=8)
    for name in ("plain.png", "plain.bmp", "plain.webp"):
        path = tmp_path / name
        image.save(path, lossless=True)  # only WebP reads the option
        for item in (path, str(path)):
            decoded = P.decode(item, 0)
            assert decoded.mode == "RGB" and np.array_equal(pixels(decoded), pixels(image))


def test_exif_orientation_is_applied(tmp_path):
    image = noise_image(64, 32, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        raw.load()
        expected = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
        from_pil = P.decode(raw, 0)
    got = P.decode(path, 0)
    assert got.size == (32, 64)
    assert np.array_equal(pixels(got), pixels(expected))
    assert np.array_equal(pixels(from_pil), pixels(expected))
    # Already transposed (ImageOps.exif_transpose clears the tag): not rotated twice.
    with Image.open(path) as raw:
        upright = ImageOps.exif_transpose(raw)
    assert np.array_equal(pixels(P.decode(upright, 0)), pixels(expected))


def test_rgba_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent
    rgba[0, 1] = (10, 20, 30, 255)  # opaque
    rgba[1, 0] = (0, 0, 0, 128)  # half: black over white
    image = Image.fromarray(rgba, "RGBA")
    out = pixels(P.decode(image, 0))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[1, 0].tolist() == [127, 127, 127]
    assert image.mode == "RGBA"  # the input is not modified
    assert np.array_equal(pixels(P.decode(rgba, 0)), out)  # numpy H x W x 4 takes the same path
    assert np.array_equal(pixels(P.decode(torch.from_numpy(rgba).permute(2, 0, 1), 0)), out)


def test_la_pa_and_palette_transparency_on_white(tmp_path):
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert pixels(P.decode(la, 0)).tolist() == [[[255, 255, 255], [50, 50, 50]]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    path = tmp_path / "palette.png"
    palette.save(path)
    for item in (palette, path):
        assert pixels(P.decode(item, 0)).tolist() == [[[255, 255, 255], [0, 0, 255]]]

    pa = palette.convert("PA")
    assert pixels(P.decode(pa, 0)).tolist() == [[[255, 255, 255], [0, 0, 255]]]

    rgb_key = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
    rgb_key.info["transparency"] = (1, 2, 3)
    assert pixels(P.decode(rgb_key, 0)).tolist() == [[[255, 255, 255], [4, 5, 6]]]

    premultiplied = Image.fromarray(np.array([[[0, 0, 0, 0], [40, 40, 40, 255]]], np.uint8), "RGBA")
    assert pixels(P.decode(premultiplied.convert("RGBa"), 0)).tolist() == [[[255, 255, 255], [40, 40, 40]]]


def test_grayscale_bilevel_cmyk_ycbcr():
    gray = Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L")
    assert pixels(P.decode(gray, 0)).tolist() == [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]]
    bilevel = Image.fromarray(np.array([[False, True, True]]))
    assert bilevel.mode == "1"
    assert pixels(P.decode(bilevel, 0)).tolist() == [[[0, 0, 0], [255, 255, 255], [255, 255, 255]]]
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert pixels(P.decode(cmyk, 0))[0, 0].tolist() == [255, 0, 0]
    ycbcr = noise_image(8, 8).convert("YCbCr")
    assert np.array_equal(pixels(P.decode(ycbcr, 0)), pixels(ycbcr.convert("RGB")))
    assert np.array_equal(pixels(P.decode(np.array([[0, 100, 255]], np.uint8), 0)), pixels(P.decode(gray, 0)))
    column = np.array([[[0], [100]]], np.uint8)
    assert pixels(P.decode(column, 0)).tolist() == [[[0, 0, 0], [100, 100, 100]]]


def test_sixteen_and_thirty_two_bit_grayscale(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    expected = [0, 1, 128, 255]
    assert pixels(P.decode(path, 0))[0, :, 0].tolist() == expected
    assert pixels(P.decode(path, 0))[0, :, 2].tolist() == expected
    as_i = Image.fromarray(values.astype(np.int32))
    assert as_i.mode == "I"
    assert pixels(P.decode(as_i, 0))[0, :, 1].tolist() == expected
    as_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert as_f.mode == "F"
    assert pixels(P.decode(as_f, 0))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ImageInputError, match="image 2 .*mode F"):
        P.decode(Image.fromarray(np.array([[0.0, 2.0]], np.float32)), 2)
    with pytest.raises(ImageInputError, match="image 2 .*16-bit"):
        P.decode(Image.fromarray(np.array([[-1, 70000]], np.int32)), 2)


# ---------------------------------------------------------------------------------------------------------
# bad inputs


def assert_input_error(item, *expected: str, index: int = 7) -> ImageInputError:
    with pytest.raises(ImageInputError) as info:
        P.decode(item, index)
    message = str(info.value)
    assert f"image {index}" in message
    for text in expected:
        assert text in message, (text, message)
    return info.value


def test_bad_paths(tmp_path):
    missing = tmp_path / "missing.jpg"
    assert_input_error(missing, str(missing), "not found")
    assert_input_error(str(tmp_path), str(tmp_path), "directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_input_error(empty, str(empty), "empty")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 20)
    assert_input_error(text, str(text), "cannot read")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    noise_image(128, 128).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(path, str(path), "cannot read")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [100, 10])  # 16x16 = 256 px: the warning band (1x-2x) and the error band
def test_decompression_bomb(tmp_path, monkeypatch, limit):
    path = tmp_path / "bomb.png"
    noise_image(16, 16).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert_input_error(path, str(path), "decompression-bomb")


@pytest.mark.parametrize(
    ("array", "text"),
    [
        (np.zeros(5, np.uint8), "(5,)"),
        (np.zeros((2, 4, 4, 3), np.uint8), "(2, 4, 4, 3)"),
        (np.zeros((4, 4, 2), np.uint8), "(4, 4, 2)"),
        (np.zeros((3, 32, 32), np.uint8), "(3, 32, 32)"),  # CHW numpy is not accepted
        (np.zeros((4, 4, 3), np.int32), "int32"),
        (np.zeros((4, 4, 3), np.uint16), "uint16"),
        (np.zeros((4, 4, 3), bool), "bool"),
        (np.full((4, 4, 3), 1.5, np.float32), "[0, 1]"),
        (np.full((4, 4, 3), -0.1, np.float64), "[0, 1]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), np.inf, np.float32), "inf"),
        (np.zeros((0, 4, 3), np.uint8), "(0, 4, 3)"),
        (np.zeros((4, 0), np.float32), "zero-size"),
    ],
)
def test_bad_numpy_arrays(array, text):
    assert_input_error(array, text, "shape")


@pytest.mark.parametrize(
    ("tensor", "text"),
    [
        (torch.zeros(4, 4), "(4, 4)"),
        (torch.zeros(1, 3, 4, 4), "(1, 3, 4, 4)"),
        (torch.zeros(2, 4, 4), "(2, 4, 4)"),
        (torch.zeros(8, 8, 3), "(8, 8, 3)"),  # HWC tensors are not accepted
        (torch.zeros(3, 4, 4, dtype=torch.int64), "int64"),
        (torch.zeros(3, 4, 4, dtype=torch.bool), "bool"),
        (torch.full((3, 4, 4), 255.0), "[0, 1]"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (torch.full((3, 4, 4), float("inf")).requires_grad_(), "inf"),
        (torch.zeros(3, 0, 4), "zero-size"),
    ],
)
def test_bad_tensors(tensor, text):
    assert_input_error(tensor, text, "shape")


@pytest.mark.parametrize("item", [None, 3, {"a": 1}, b"bytes"])
def test_unsupported_types(item):
    assert_input_error(item, type(item).__name__)
    with pytest.raises(ImageInputError, match=rf"images\[1\]: unsupported type {type(item).__name__}"):
        P.as_image_list([noise_image(4, 4), item])


def test_empty_inputs():
    for empty in ([], (), torch.zeros(0, 3, 8, 8), np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(ImageInputError, match="^images is empty$"):
            P.as_image_list(empty)
    with pytest.raises(ImageInputError, match="^refs is empty$"):
        P.as_image_list([], name="refs")
    with pytest.raises(ImageInputError, match=r"images\[0\]: unsupported type NoneType"):
        P.as_image_list(None)


# ---------------------------------------------------------------------------------------------------------
# lists and tensors


def test_as_image_list_shapes(tmp_path):
    batch = torch.rand(3, 3, 8, 8, requires_grad=True)
    items = P.as_image_list(batch)
    assert len(items) == 3 and items[1].shape == (3, 8, 8)
    sum(item.sum() for item in items).backward()
    assert torch.equal(batch.grad, torch.ones_like(batch))  # slices keep the graph

    nhwc = np.zeros((2, 5, 6, 3), np.uint8)
    assert [a.shape for a in P.as_image_list(nhwc)] == [(5, 6, 3), (5, 6, 3)]
    assert len(P.as_image_list(torch.zeros(3, 8, 8))) == 1
    assert len(P.as_image_list(np.zeros((5, 6, 3), np.uint8))) == 1
    image = noise_image(4, 4)
    assert P.as_image_list(image) == [image]
    assert P.as_image_list(str(tmp_path / "a.png")) == [str(tmp_path / "a.png")]
    assert P.as_image_list((tmp_path, image)) == [tmp_path, image]


@pytest.mark.parametrize("mode", P.MODES)
def test_uint8_and_plain_float_tensors_take_the_pil_path(mode):
    image = noise_image(91, 57, seed=6)
    expected, expected_grid = run_pipeline(image, mode)
    as_uint8 = chw_uint8(image)
    got, grid = run_pipeline(as_uint8, mode)
    assert torch.equal(got, expected) and torch.equal(grid, expected_grid)
    got_float, _ = run_pipeline(as_uint8.float() / 255, mode)
    assert torch.equal(got_float, expected)
    gray = torch.from_numpy(np.array(image.convert("L")))[None]
    assert torch.equal(run_pipeline(gray, mode)[0], run_pipeline(image.convert("L"), mode)[0])


def test_numpy_float_matches_uint8():
    image = noise_image(20, 10)
    as_float = pixels(image).astype(np.float32) / 255
    assert np.array_equal(pixels(P.decode(as_float, 0)), pixels(image))


@pytest.mark.parametrize("mode", P.MODES)
def test_float_tensor_with_grad_is_differentiable(mode):
    x = (chw_uint8(smooth_image(120, 90)).float() / 255).requires_grad_()
    decoded = P.decode(x, 0)
    assert isinstance(decoded, torch.Tensor) and decoded.requires_grad
    pixel_values, grid = run_pipeline(x, mode)
    assert pixel_values.requires_grad
    pixel_values.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    expected_grid = [[1, 32, 32]] if mode == "train" else [[1, 6, 8]]
    assert grid.tolist() == expected_grid


def test_differentiable_alpha_and_gray():
    rgba = torch.zeros(4, 2, 2)
    rgba[:3] = 0.2
    rgba[3, 0, 0] = 1.0
    rgba.requires_grad_()
    out = P.decode(rgba, 0)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    assert out[:, 0, 0].tolist() == pytest.approx([0.2] * 3)
    assert out[:, 1, 1].tolist() == [1.0, 1.0, 1.0]
    out.sum().backward()
    assert rgba.grad is not None
    gray = torch.rand(1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = P.decode(gray, 0)
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32 and out.requires_grad


def test_grad_tensor_under_no_grad_takes_exact_path():
    x = (chw_uint8(noise_image(40, 30)).float() / 255).requires_grad_()
    with torch.no_grad():
        assert isinstance(P.decode(x, 0), Image.Image)


@pytest.mark.parametrize("kind", ["smooth", "edges", "noise"])
@pytest.mark.parametrize("mode", P.MODES)
def test_tensor_resize_matches_pil(kind, mode):
    make = {"smooth": smooth_image, "edges": edges_image, "noise": noise_image}[kind]
    for i, size in enumerate(TENSOR_SIZES):
        image = make(*size, seed=i)
        exact = P.prepare(image, 0, mode).float() / 255
        x = (chw_uint8(image).float() / 255).requires_grad_()
        got = P.prepare(x, 0, mode).detach()
        assert got.shape == exact.shape
        diff = (got - exact).abs()
        assert diff.max().item() <= TENSOR_MAX_DIFF, (size, diff.max().item() * 255)
        assert diff.mean().item() <= TENSOR_MEAN_DIFF, (size, diff.mean().item())


def test_to_pixel_tensor():
    image = noise_image(5, 4)
    t = P.to_pixel_tensor(image)
    assert t.shape == (3, 4, 5) and t.dtype == torch.uint8
    assert np.array_equal(t.permute(1, 2, 0).numpy(), pixels(image))
    x = torch.rand(3, 4, 5)
    assert P.to_pixel_tensor(x) is x
    with pytest.raises(ValueError, match="RGB"):
        P.to_pixel_tensor(image.convert("L"))
