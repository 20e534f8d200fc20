"""RelSimModel's public API: embed / score / pairwise, batching, inputs, dedup, failure handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import photo

from relsim import ImageInputError
from relsim.batching import deduplicate


def test_embed_shapes_and_norms(tiny_model, photos):
    emb = tiny_model.embed(photos)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert tiny_model.embed(photos[0]).shape == (1, 384)


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_native_model"])
def test_batched_equals_one_at_a_time(request, fixture, photos):
    model = request.getfixturevalue(fixture)
    images = photos + [photo(448, 448, 9), photo(480, 640, 8)]  # repeated sizes share a bucket
    batched = model.embed(images, batch_size=4, num_workers=2)
    single = torch.cat([model.embed(im, batch_size=1, num_workers=0) for im in images])
    assert (batched - single).abs().max() <= 1e-5


def test_token_cap_splits_batches_without_changing_results(tiny_native_model, photos, monkeypatch):
    expected = tiny_native_model.embed(photos)
    monkeypatch.setattr(tiny_native_model, "max_tokens_per_batch", 300)
    sizes = []
    original = tiny_native_model.forward

    def spy(pixel_values, grid_thw):
        sizes.append((int((grid_thw.prod(-1) // 4).sum()), len(grid_thw)))
        return original(pixel_values, grid_thw)

    monkeypatch.setattr(tiny_native_model, "forward", spy)
    assert (tiny_native_model.embed(photos) - expected).abs().max() <= 1e-5
    assert len(sizes) > 1 and all(tokens <= 300 or count == 1 for tokens, count in sizes)


def _batch_lengths(model, monkeypatch) -> list[list[int]]:
    """Record the sequence lengths of every batch ``model`` runs."""
    from relsim.backbone import image_tokens

    batches: list[list[int]] = []
    original = model.forward

    def spy(pixel_values, grid_thw):
        batches.append([model.prompt.length(image_tokens(g)) for g in grid_thw.tolist()])
        return original(pixel_values, grid_thw)

    monkeypatch.setattr(model, "forward", spy)
    return batches


#: Sequence lengths in native mode: 480x640 and 640x480 -> 476x644 / 644x476, 391 image tokens + 17 prompt
#: tokens; 448x448 -> 273; 470x450 -> 476x448, 289; 300x100 -> 308x112, 61; 90x200 -> 84x196, 38.
MIXED_SIZES = [(480, 640), (448, 448), (640, 480), (300, 100), (470, 450), (448, 448), (90, 200), (480, 640)]


def test_native_batches_mix_sizes_only_within_the_padding_budget(tiny_native_model, monkeypatch):
    images = [photo(h, w, i) for i, (h, w) in enumerate(MIXED_SIZES)]
    single = torch.cat([tiny_native_model.embed(im, batch_size=1, num_workers=0) for im in images])
    batches = _batch_lengths(tiny_native_model, monkeypatch)
    batched = tiny_native_model.embed(images, batch_size=8, num_workers=2)
    assert (batched - single).abs().max() <= 1e-5
    # equal token counts share a batch whatever their shape; 289 pads two 273s by 32 of 835 tokens (3.8%)
    assert batches == [[408, 408, 408], [289, 273, 273], [61], [38]]
    for lengths in batches:
        assert len(lengths) * max(lengths) <= (1 + tiny_native_model.max_padding) * sum(lengths)


def test_a_tighter_padding_budget_splits_batches(tiny_native_model, monkeypatch):
    monkeypatch.setattr(tiny_native_model, "max_padding", 0.01)
    batches = _batch_lengths(tiny_native_model, monkeypatch)
    tiny_native_model.embed([photo(h, w, i) for i, (h, w) in enumerate(MIXED_SIZES)], batch_size=8)
    assert batches == [[408, 408, 408], [289], [273, 273], [61], [38]]


def test_grouping_yields_full_batches_at_once_and_holds_a_bounded_window(tiny_native_model, tiny_model):
    consumed = []

    def stream(shapes):
        for i, (h, w) in enumerate(shapes):
            consumed.append(i)
            yield i, torch.zeros(3, h, w, dtype=torch.uint8)

    # train mode: every image is 273 tokens, a batch leaves as soon as it is full
    consumed.clear()
    seen = [(list(idx), len(consumed)) for idx, _ in tiny_model._group(stream([(60, 80)] * 10), 4)]
    assert seen == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 8), ([8, 9], 10)]

    # native mode, all sizes different: at most max(4 x batch size, 16) images wait before batches leave
    consumed.clear()
    shapes = [(28 * (4 + i), 28 * 6) for i in range(40)]
    batches = [(list(idx), len(consumed)) for idx, _ in tiny_native_model._group(stream(shapes), 2)]
    assert sorted(i for idx, _ in batches for i in idx) == list(range(40))
    assert batches[0][1] == 16 and all(len(idx) <= 2 for idx, _ in batches)
    lengths = {i: tiny_native_model.prompt.length(6 * (4 + i)) for i in range(40)}
    for idx, _ in batches:
        assert len(idx) * max(lengths[i] for i in idx) <= 1.05 * sum(lengths[i] for i in idx)


def test_input_kinds_agree(tiny_model, tmp_path):
    image = photo(200, 300, 5)
    path = tmp_path / "x.png"
    image.save(path)
    array = np.asarray(image)
    as_uint8 = torch.from_numpy(array.copy()).permute(2, 0, 1)
    as_float = as_uint8.float() / 255
    embeddings = tiny_model.embed([path, str(path), image, array, as_uint8, as_float])
    embeddings = torch.cat([embeddings, tiny_model.embed(as_uint8[None]), tiny_model.embed(array[None])])
    assert (embeddings - embeddings[0]).abs().max() <= 1e-6


def test_score_and_pairwise(tiny_model, photos):
    emb = tiny_model.embed(photos)
    s = tiny_model.score(photos[0], photos[1])
    assert isinstance(s, float) and abs(s - float(emb[0] @ emb[1])) < 1e-6
    scores = tiny_model.score(photos[:2], photos[2:])
    assert scores.shape == (2,) and torch.allclose(scores, (emb[:2] * emb[2:]).sum(-1), atol=1e-6)
    assert abs(tiny_model.score(photos[0], photos[0]) - 1.0) < 1e-6
    matrix = tiny_model.pairwise(photos[:3], photos[3:])
    assert matrix.shape == (3, 1) and torch.allclose(matrix, emb[:3] @ emb[3:].T, atol=1e-6)
    square = tiny_model.pairwise(photos)
    assert square.shape == (4, 4) and torch.allclose(square.diagonal(), torch.ones(4), atol=1e-6)


def test_each_distinct_image_is_embedded_once(tiny_model, photos, tmp_path, monkeypatch):
    paths = []
    for i, image in enumerate(photos):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    seen = []
    original = tiny_model.forward

    def counting(pixel_values, grid_thw):
        seen.append(len(grid_thw))
        return original(pixel_values, grid_thw)

    monkeypatch.setattr(tiny_model, "forward", counting)
    tiny_model.pairwise(paths)
    assert sum(seen) == 4  # not 16
    seen.clear()
    reference = paths[0]
    tiny_model.score(paths[1:], [reference, str(reference), reference])
    assert sum(seen) == 4  # three generated images + one reference
    unique, index = deduplicate([reference, str(reference), photos[0], photos[0]])
    assert len(unique) == 2 and index.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, p: m.embed([]), ImageInputError, "empty"),
        (lambda m, p: m.embed([p, "/no/such/file.jpg"]), ImageInputError, r"image 1 .*/no/such/file.jpg"),
        (lambda m, p: m.embed([p, None]), ImageInputError, r"images\[1\]"),
        (lambda m, p: m.embed(np.zeros((4, 4, 7), np.uint8)), ImageInputError, r"\(4, 4, 7\)"),
        (lambda m, p: m.embed(torch.full((3, 8, 8), 2.0)), ImageInputError, "range|\\[0, 1\\]"),
        (lambda m, p: m.embed(torch.full((3, 8, 8), float("nan"))), ImageInputError, "NaN|finite"),
        (lambda m, p: m.score([p, p], [p]), ValueError, "2 and 1"),
        (lambda m, p: m.embed(p, batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_inputs_name_the_item(tiny_model, photos, call, error, message):
    with pytest.raises(error, match=message):
        call(tiny_model, photos[0])


def test_non_finite_embeddings_raise(tiny_model, photos, monkeypatch):
    monkeypatch.setattr(tiny_model, "forward", lambda pv, grid: torch.full((len(grid), 384), float("nan")))
    with pytest.raises(FloatingPointError, match=r"indices \[0, 1\].*bfloat16"):
        tiny_model.embed(photos[:2])


def test_out_of_memory_batches_are_split(tiny_model, photos, monkeypatch):
    expected = tiny_model.embed(photos, batch_size=4)
    original = tiny_model.forward
    calls = []

    def flaky(pixel_values, grid_thw):
        calls.append(len(grid_thw))
        if len(grid_thw) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(pixel_values, grid_thw)

    monkeypatch.setattr(tiny_model, "forward", flaky)
    assert (tiny_model.embed(photos, batch_size=4) - expected).abs().max() <= 1e-5
    assert calls[0] == 4 and calls.count(1) == 4


def test_gradients_reach_float_tensor_inputs(tiny_model):
    pixels = torch.rand(2, 3, 448, 448, requires_grad=True)
    emb = tiny_model.embed(pixels, output_device=None)
    loss = 1 - (emb[0] * emb[1]).sum()
    loss.backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    # no graph without requires_grad, and no graph under no_grad
    assert not tiny_model.embed(torch.rand(3, 448, 448)).requires_grad
    with torch.no_grad():
        assert not tiny_model.embed(pixels).requires_grad


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_native_model"])
def test_resize_on_device_gives_the_same_embeddings(request, fixture, photos, tmp_path, monkeypatch):
    from relsim import encoder, preprocess

    model = request.getfixturevalue(fixture)
    paths = []
    for i, image in enumerate(photos):
        paths.append(tmp_path / f"{i}.jpg")
        image.save(paths[-1], quality=90)
    items = [*paths[:2], np.asarray(photos[1]), *paths[2:], photos[2], torch.rand(3, 120, 90)]
    assert model.resize_on_device is None and not model.uses_device_resize  # auto: off on the CPU
    expected = model.embed(items, batch_size=8)

    resized, stacks = [], []
    original = preprocess.resize_for_mode

    def spy(image, mode):
        assert isinstance(image, torch.Tensor) and image.ndim == 4  # a stack of equal-sized images
        resized.extend([tuple(image.shape[1:])] * len(image))
        stacks.append(len(image))
        return original(image, mode)

    monkeypatch.setattr(preprocess, "resize_for_mode", spy)
    monkeypatch.setattr(model, "resize_on_device", True)
    got = model.embed(items, batch_size=8, num_workers=2)
    assert torch.equal(got, expected)
    # the workers handed over full-size tensors; every resize ran on the model's side, equal sizes stacked
    expected_shapes = [(3, image.height, image.width) for image in [*photos, photos[1], photos[2]]] + [(3, 120, 90)]
    assert sorted(resized) == sorted(expected_shapes)
    assert max(stacks) > 1  # one batch: the JPEG and the array of photos[1] share a stack

    # stacks are capped by pixel count (int32 memory); one image per stack gives the same result
    stacks.clear()
    monkeypatch.setattr(encoder, "_RESIZE_STACK_PIXELS", 1)
    assert torch.equal(model.embed(items, batch_size=8, num_workers=2), expected)
    assert set(stacks) == {1}


def test_resize_on_device_keeps_gradients(tiny_model, monkeypatch):
    pixels = torch.rand(2, 3, 240, 320, requires_grad=True)
    expected = tiny_model.embed(pixels, output_device=None)
    monkeypatch.setattr(tiny_model, "resize_on_device", True)
    got = tiny_model.embed(pixels, output_device=None)
    assert torch.equal(got, expected) and got.requires_grad
    (1 - (got[0] * got[1]).sum()).backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
