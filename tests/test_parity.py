"""relsim's embeddings equal the upstream procedure (tests/reference.py) to 1e-5 in float32."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import photo
from reference import UpstreamPipeline, rope_index_457, upstream_native_image, upstream_train_image

import relsim
from relsim.encoder import build_inputs

TOLERANCE = 1e-5
UPSTREAM_PREPROCESS = {"train": upstream_train_image, "native": upstream_native_image}


@pytest.fixture(scope="module")
def images():
    # square, landscape, portrait, small (native: min_pixels bump), odd sizes (native: rounding)
    return [photo(448, 448, 0), photo(480, 640, 1), photo(300, 100, 2), photo(40, 60, 3), photo(333, 517, 4)]


@pytest.mark.parametrize("layout", ["v5", "v457", "legacy", "legacy-bare"])
@pytest.mark.parametrize("mode", ["train", "native"])
def test_embeddings_match_upstream(adapter_dirs, base_dir, images, layout, mode):
    model = relsim.load(adapter_dirs[layout], base_model=base_dir, device="cpu", dtype=torch.float32, mode=mode)
    ours = model.embed(images, batch_size=3)
    upstream = UpstreamPipeline(adapter_dirs[layout], base_dir)
    theirs = torch.stack([upstream.embed(UPSTREAM_PREPROCESS[mode](im)) for im in images])
    assert ours.dtype == torch.float32 and ours.shape == (len(images), 384)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


# (height, width): sides under 28 px, a single pixel, aspect ratios up to upstream's limit of 200
THIN_AND_TINY = [(10, 500), (500, 10), (1, 1), (3, 5), (14, 14), (27, 40), (2, 400), (600, 3), (41, 13)]


def test_native_mode_matches_upstream_on_thin_and_tiny_images(tiny_native_model, base_dir, adapter_dir):
    """Every size upstream accepts gives upstream's grid and embedding (qwen-vl-utils raises each side to 28
    before applying the pixel bounds: 500x10 is 504x28 upstream)."""
    from reference import qwen_vl_utils_smart_resize

    from relsim.preprocess import target_size

    images = [photo(h, w, seed=i) for i, (h, w) in enumerate(THIN_AND_TINY)]
    for h, w in THIN_AND_TINY:
        assert target_size(h, w, "native") == qwen_vl_utils_smart_resize(h, w), (h, w)
    assert target_size(500, 10, "native") == (504, 28)
    ours = tiny_native_model.embed(images, batch_size=4)
    upstream = UpstreamPipeline(adapter_dir, base_dir)
    theirs = torch.stack([upstream.embed(upstream_native_image(im)) for im in images])
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_parity_is_sensitive_to_the_adapter(adapter_dirs, base_dir, images):
    """The LoRA factors and the adapter's embedding table both change the result: parity is not vacuous."""
    with_table = relsim.load(adapter_dirs["v457"], base_model=base_dir, device="cpu", dtype=torch.float32)
    without_table = relsim.load(adapter_dirs["v5"], base_model=base_dir, device="cpu", dtype=torch.float32)
    a, b = with_table.embed(images[:2]), without_table.embed(images[:2])
    assert (a - b).abs().max() > 1e-3  # different LoRA weights and query rows

    # Same adapter with the LoRA merge undone: the embedding moves.
    upstream = UpstreamPipeline(adapter_dirs["v5"], base_dir)
    with upstream.model.disable_adapter():
        no_lora = upstream.embed(upstream_train_image(images[0]))
    assert (no_lora - b[0]).abs().max() > 1e-3


def test_positions_are_3d_multimodal_rope(tiny_model):
    """Our positions equal transformers 4.57's get_rope_index and the installed one's (with mm_token_type_ids)."""
    grids = torch.tensor([[1, 32, 32], [1, 12, 20], [1, 6, 4]])
    for grid in grids:
        ids, positions, query = build_inputs(tiny_model.prompt, grid[None])
        config = tiny_model.body.config
        assert torch.equal(positions, rope_index_457(ids, grid[None], config))
        kwargs = {"image_grid_thw": grid[None]}
        if "mm_token_type_ids" in inspect.signature(tiny_model.body.get_rope_index).parameters:  # transformers >= 5.x
            kwargs["mm_token_type_ids"] = (ids == config.image_token_id).int()
        installed, _ = tiny_model.body.get_rope_index(ids, **kwargs)
        assert torch.equal(positions, installed)
        n = int(grid.prod()) // 4
        assert ids[0, query[0]] == tiny_model.prompt.query_token_id and query[0] == n + 16


def test_1d_positions_would_be_wrong(tiny_model, images):
    """Positions matter: 1-D positions (what transformers 5.x silently uses when ``mm_token_type_ids`` is not
    passed) change the embedding, so a wrong position scheme cannot pass the parity tests."""
    from relsim import preprocess

    pixel_values, grid = preprocess.patchify([preprocess.prepare(images[0], 0, "train")])
    ids, _, query = build_inputs(tiny_model.prompt, grid)
    text = tiny_model.body.language_model
    with torch.inference_mode():
        right = tiny_model(pixel_values, grid)
        visual = tiny_model.body.visual(pixel_values, grid_thw=grid)
        image = getattr(visual, "pooler_output", visual)
        embeds = text.embed_tokens(ids).masked_scatter((ids == tiny_model.prompt.image_token_id)[..., None], image)
        flat = torch.arange(ids.shape[1])[None].expand(3, 1, -1)
        hidden = text(inputs_embeds=embeds, position_ids=flat, use_cache=False).last_hidden_state[0, query[0]]
        wrong = torch.nn.functional.normalize(tiny_model.projection(hidden), dim=-1)
        assert (right[0] - wrong).abs().max() > 1e-3
        if "mm_token_type_ids" in inspect.signature(tiny_model.body.forward).parameters:
            # the trap itself: the stock forward without mm_token_type_ids gives the 1-D result
            out = tiny_model.body(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid, use_cache=False)
            stock = torch.nn.functional.normalize(tiny_model.projection(out.last_hidden_state[0, query[0]]), dim=-1)
            assert (stock - wrong).abs().max() < 1e-5


def test_prompt_token_ids_match_design(tiny_model):
    """docs/architecture.md §1, item 3: the exact ids around the image, cut after <|query|>."""
    prompt = tiny_model.prompt
    assert prompt.prefix == (151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652)
    assert prompt.suffix == (151653, 151665)
    assert prompt.image_token_id == 151655 and prompt.query_token_id == 151665
