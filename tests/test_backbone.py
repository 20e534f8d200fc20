"""relsim.backbone: the one model-cache rule (issue 21 item 15) and the one 3-D RoPE builder (issue 22)."""

from __future__ import annotations

import gc

import pytest
import torch

from relsim import text
from relsim.backbone import ModelCache, rope_positions
from relsim.text import TextEncoder, embed_text


class FakeModel:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        return torch.ones(len(texts), 4)


@pytest.fixture
def cuda_present(monkeypatch):
    """canonical_device as on a machine with one GPU (no tensor is ever put there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_model_cache_normalises_the_device_and_frees_unused_models(cuda_present) -> None:
    loads = []

    def load(device):
        loads.append(device)
        return FakeModel(device)

    cache = ModelCache()
    a = cache.get(("m",), "cuda", load)
    b = cache.get(("m",), "cuda:0", load)
    c = cache.get(("m",), torch.device("cuda", 0), load)
    assert a is b is c and loads == [torch.device("cuda", 0)]
    assert cache.get(("m",), "cpu", load) is not a and len(loads) == 2
    del a, b, c
    gc.collect()
    assert len(cache) == 0  # nobody holds them: freed, not kept for ever
    cache.get(("m",), "cuda", load)
    assert len(loads) == 3


def test_model_cache_reloads_a_model_moved_elsewhere() -> None:
    cache = ModelCache()
    first = cache.get("m", "cpu", FakeModel)
    first.device = torch.device("meta")  # someone moved the shared instance (a metric's .to())
    second = cache.get("m", "cpu", FakeModel)
    assert second is not first and second.device == torch.device("cpu")


def test_model_cache_keep_last_holds_only_the_last_model() -> None:
    cache = ModelCache(keep_last=True)
    cache.get("a", "cpu", FakeModel)
    gc.collect()
    assert len(cache) == 1  # kept although the caller let it go
    cache.get("b", "cpu", FakeModel)
    gc.collect()
    assert len(cache) == 1  # "a" was let go when "b" became the last one
    cache.clear()
    assert len(cache) == 0


def test_embed_text_loads_one_encoder_for_cuda_and_cuda0(cuda_present, monkeypatch) -> None:
    loads = []

    def from_pretrained(cls, model, *, revision=None, device=None, **kwargs):
        loads.append((model, device))
        return FakeModel(device)

    monkeypatch.setattr(TextEncoder, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(text, "_CACHE", ModelCache(keep_last=True))
    embed_text("a cat", model="minilm", device="cuda")
    embed_text("a dog", model="minilm", device="cuda:0")
    assert loads == [("minilm", torch.device("cuda", 0))]
    embed_text("a cat", model="other", device="cuda:0")
    gc.collect()
    assert len(text._CACHE) == 1  # the first encoder is freed once another one is the last used


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 8, 2), (1, 2, 2)])
def test_rope_positions_follow_get_rope_index(grid) -> None:
    """Text counts up on all axes; the image starts at len(prefix); text resumes at start + max(gh, gw)."""
    t, h, w = grid
    gh, gw = h // 2, w // 2
    prefix, suffix = 3, 2
    pos = rope_positions(prefix, grid, suffix)
    assert pos.shape == (3, prefix + t * gh * gw + suffix)
    assert pos[:, :prefix].tolist() == [list(range(prefix))] * 3
    image = pos[:, prefix : prefix + gh * gw]
    assert image[0].tolist() == [prefix] * (gh * gw)
    assert image[1].tolist() == [prefix + r for r in range(gh) for _ in range(gw)]
    assert image[2].tolist() == [prefix + c for _ in range(gh) for c in range(gw)]
    assert pos[:, -suffix:].tolist() == [[prefix + max(gh, gw) + k for k in range(suffix)]] * 3
