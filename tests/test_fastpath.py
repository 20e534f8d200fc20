"""relsim.fastpath: the batched vision attention computes exactly what transformers' per-chunk loop does.

Also: the FLOP arithmetic of the benchmarks agrees with torch's FLOP counter (the GPU benchmark's ``--tiny``
run is in tests/test_benchmarks.py).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import photo

from relsim import fastpath, preprocess
from relsim.fastpath import _batched_attention, _make_plan

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def pair(model):
    """(transformers' loop, fastpath) copies of a loaded model, whatever the loader already did."""
    return fastpath.restore(copy.deepcopy(model)), fastpath.optimize(copy.deepcopy(model))


@pytest.fixture(scope="module")
def images():
    """Mixed sizes and aspect ratios: native mode gets ragged edge windows and several chunk lengths."""
    return [photo(448, 448, 0), photo(480, 640, 1), photo(300, 100, 2), photo(90, 200, 3), photo(350, 530, 4)]


def test_optimize_patches_each_vision_attention_idempotently_and_restore_undoes_it(tiny_model):
    plain, fast = pair(tiny_model)
    attentions = [blk.attn for blk in fast.body.visual.blocks]
    assert fastpath.is_optimized(fast.body) and not fastpath.is_optimized(plain.body)
    assert all(type(a).__name__ == "BatchedQwen2_5_VLVisionAttention" for a in attentions)
    assert len({id(a._relsim_plans) for a in attentions}) == 1  # one plan cache per body
    assert fastpath.optimize(fast.body) is fast.body
    assert type(type(attentions[0]).__mro__[1]).__name__ != "BatchedQwen2_5_VLVisionAttention"  # no double wrap
    fastpath.restore(fast.body)
    assert type(attentions[0]).__name__ == "Qwen2_5_VLVisionAttention"
    assert not hasattr(attentions[0], "_relsim_plans")


def test_optimize_refuses_a_module_without_vision_attention():
    with pytest.raises(ValueError, match="no Qwen2.5-VL vision attention"):
        fastpath.optimize(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "lengths",
    [[64] * 6, [1024], [4, 2, 4, 2, 4], [12, 64, 64, 16, 48, 64, 12, 3]],
    ids=["windows", "one-image", "alternating", "ragged"],
)
def test_batched_attention_equals_one_call_per_chunk(lengths):
    torch.manual_seed(0)
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    q, k, v = torch.randn(3, int(cu[-1]), 4, 16).unbind(0)
    expected = torch.cat(
        [
            F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=0.25).transpose(0, 1)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
        ]
    ).reshape(len(q), -1)
    plan = _make_plan(cu)
    assert sum(n for n, _ in plan.segments) == len(lengths)
    assert (plan.perm is None) == (len(set(lengths)) == 1)
    torch.testing.assert_close(_batched_attention(q, k, v, plan, 0.25, 0.0), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["train", "native"])
def test_vision_tower_matches_transformers(tiny_model, tiny_native_model, images, mode):
    model = tiny_model if mode == "train" else tiny_native_model
    plain, fast = pair(model)
    pixel_values, grid = preprocess.patchify([preprocess.prepare(x, i, mode) for i, x in enumerate(images)])
    with torch.inference_mode():
        a = plain.body.visual(pixel_values, grid_thw=grid)
        b = fast.body.visual(pixel_values, grid_thw=grid)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, atol=TOL, rtol=0)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=TOL, rtol=0)
    plans = [plan for _, plan in fast.body.visual.blocks[0].attn._relsim_plans.entries]
    window_plans = [p for p in plans if len(p.segments) > 1 or p.segments[0][1] == 64]
    if mode == "native":  # the edge windows are smaller: several lengths, the permuted path ran
        assert any(p.perm is not None and len(p.segments) > 2 for p in window_plans)
    else:  # 16 full windows per image and one 1024-patch chunk per image: one call per layer
        assert {p.segments for p in plans} == {((16 * len(images), 64),), ((len(images), 1024),)}


@pytest.mark.parametrize("mode", ["train", "native"])
@pytest.mark.parametrize("sizes", [[(448, 448)], [(480, 640), (300, 100), (90, 200), (448, 448), (350, 530)]])
def test_embeddings_match_transformers(tiny_model, tiny_native_model, mode, sizes):
    model = tiny_model if mode == "train" else tiny_native_model
    plain, fast = pair(model)
    batch = [photo(h, w, i) for i, (h, w) in enumerate(sizes)]
    torch.testing.assert_close(fast.embed(batch), plain.embed(batch), atol=TOL, rtol=0)


def test_gradients_match_transformers(tiny_model):
    plain, fast = pair(tiny_model)
    grads = []
    for model in (plain, fast):
        x = torch.rand(2, 3, 448, 448, generator=torch.Generator().manual_seed(0), requires_grad=True)
        model.embed(x).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=TOL, rtol=0)


def test_other_attention_implementations_use_the_original_forward(tiny_model, images):
    plain, fast = pair(tiny_model)
    for model in (plain, fast):
        model.body.set_attn_implementation("eager")
    assert fast.body.visual.config._attn_implementation == "eager"
    torch.testing.assert_close(fast.embed(images), plain.embed(images), atol=TOL, rtol=0)
    assert not fast.body.visual.blocks[0].attn._relsim_plans.entries  # the batched path never ran


@pytest.mark.parametrize("mode, size", [("train", (640, 480)), ("native", (1024, 768)), ("native", (200, 90))])
def test_flop_formula_matches_torch_flop_counter(tiny_model, mode, size):
    """benchmarks/common.image_flops (used for MFU) counts the same matmuls as torch (dense causal attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    model = copy.deepcopy(tiny_model)
    model.body.set_attn_implementation("eager")  # torch counts eager attention's matmuls, not CPU SDPA
    width, height = size
    pixels = preprocess.prepare(photo(height, width, 0), 0, mode)
    pixel_values, grid = preprocess.patchify([pixels])
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(pixel_values, grid)
    expected = common.image_flops(model.body.config, width, height, mode, causal=False)
    # exact on transformers 5.24; 5.0 adds a few kFLOP of bookkeeping matmuls (rotary tables): < 1e-4 relative
    assert counter.get_total_flops() == pytest.approx(expected, rel=2e-4)


def test_load_with_compile_gives_the_same_embeddings(adapter_dir, base_dir, tiny_model):
    """``relsim.load(compile=True)``: torch.compile around the blocks, same function (train-mode shapes)."""
    import relsim

    compiled = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, compile=True)
    assert compiled is not tiny_model
    image = photo(300, 400, 5)
    torch.testing.assert_close(compiled.embed([image]), tiny_model.embed([image]), atol=1e-5, rtol=0)
