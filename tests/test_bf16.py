"""bf16 agreement: relsim in bfloat16 (LoRA merged into bf16 weights) and upstream in bfloat16 (peft, the
adapter kept apart in float32) disagree no more than bf16 rounding moves either from the float32 result.

Runs the tiny models in bfloat16 on the CPU, with an adapter whose update is ~10% of the base weights (a
trained adapter's proportion; the default fixture's update is larger than the weights). The figures are in
docs/checkpoints.md; ``benchmarks/gpu.py`` reports the same at the 7B's shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tiny
import torch
from conftest import photo
from reference import UpstreamPipeline, upstream_native_image, upstream_train_image

import relsim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402

UPSTREAM_PREPROCESS = {"train": upstream_train_image, "native": upstream_native_image}
#: Photo sizes (height, width): square, landscape, portrait, small, odd.
SIZES = [(448, 448), (480, 640), (640, 480), (300, 100), (90, 200), (333, 517), (600, 400), (250, 250)]


@pytest.fixture(scope="module")
def trained_like_adapter(fixture_root, base_dir) -> Path:
    return tiny.build_adapter(fixture_root / "adapter-bf16", base_dir, lora_std=0.035)


@pytest.fixture(scope="module")
def upstream_bf16(trained_like_adapter, base_dir) -> UpstreamPipeline:
    return UpstreamPipeline(trained_like_adapter, base_dir, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def images():
    return [photo(h, w, i) for i, (h, w) in enumerate(SIZES)]


def embed_upstream(pipeline: UpstreamPipeline, images, mode: str) -> torch.Tensor:
    return torch.stack([pipeline.embed(UPSTREAM_PREPROCESS[mode](im)) for im in images])


@pytest.mark.parametrize("mode", ["native", "train"])
def test_bf16_relsim_and_upstream_agree_within_their_bf16_spread(
    trained_like_adapter, base_dir, upstream_bf16, images, mode
):
    load = dict(base_model=base_dir, device="cpu", mode=mode)
    float32 = relsim.load(trained_like_adapter, dtype=torch.float32, **load).embed(images)
    ours = relsim.load(trained_like_adapter, dtype=torch.bfloat16, **load).embed(images)
    theirs = embed_upstream(upstream_bf16, images, mode)
    assert next(p for n, p in upstream_bf16.model.named_parameters() if "lora_A" in n).dtype == torch.float32

    figures = common.bf16_agreement(ours, theirs, float32)
    assert figures["upstream_vs_float32"]["score_max"] > 0  # bf16 really ran
    assert figures["within_spread"], figures
    assert figures["relsim_over_upstream"] <= 2.0, figures  # merging into bf16 costs at most 2x upstream's error

    # not vacuous: a pipeline that dropped the adapter fails these same checks, by a wide margin
    with upstream_bf16.model.disable_adapter():
        no_lora = embed_upstream(upstream_bf16, images, mode)
    dropped = common.bf16_agreement(no_lora, theirs, float32)
    assert dropped["relsim_over_upstream"] > 2 * 2.0, dropped


def test_agreement_check_fails_when_the_pipelines_drift_apart():
    """Two pipelines off float32 in opposite directions are twice as far apart as either is from float32: sqrt(2)
    times what two independent roundings of that size would give."""
    generator = torch.Generator().manual_seed(0)
    float32 = torch.nn.functional.normalize(torch.randn(6, 384, generator=generator), dim=-1)
    error = 1e-2 * torch.randn(6, 384, generator=generator)
    up, down = (torch.nn.functional.normalize(float32 + sign * error, dim=-1) for sign in (1, -1))
    apart = common.bf16_agreement(up, down, float32)
    assert not apart["within_spread"] and apart["gap_over_spread"] == pytest.approx(2**0.5, rel=0.05)
    same = common.bf16_agreement(up, up, float32)
    assert same["within_spread"] and same["relsim_vs_upstream"]["score_max"] == 0
    assert same["relsim_over_upstream"] == 1 and same["pairs"] == 15
