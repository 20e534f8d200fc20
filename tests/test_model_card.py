"""The model card `relsim push-to-hub` writes: its front matter, and its usage example run against a tiny checkpoint
published (as far as the offline HF cache can tell) under a repo id, so the card's example cannot rot."""

from __future__ import annotations

import re

import pytest
import tiny
import torch
from conftest import photo

import relsim
from relsim.publish import convert, write_model_card

REPO = "me/relsim-tiny"


@pytest.fixture
def card_repo(offline_hub, adapter_dir, tmp_path):
    """A relsim checkpoint (with relsim_config.json and its card) filed in the offline HF cache as ``REPO``."""
    checkpoint = convert(adapter_dir, tmp_path / "checkpoint")
    card = write_model_card(checkpoint, repo_id=REPO).read_text()
    tiny.populate_hf_cache(offline_hub["home"] / "hub", REPO, checkpoint)
    return card


def test_card_front_matter_names_library_base_and_tags(card_repo):
    front = card_repo.split("---")[1].splitlines()
    assert "library_name: relsim" in front
    assert f'base_model: "{tiny.BASE_REPO}"' in front and "base_model_relation: adapter" in front
    assert "pipeline_tag: image-feature-extraction" in front
    assert {"- relsim", "- relational-similarity", "- qwen2.5-vl"} <= set(front)
    assert 'pip install "relsim>=0.2"' in card_repo


def test_card_usage_example_runs(card_repo, adapter_dir, base_dir, tmp_path, monkeypatch):
    (code,) = re.findall(r"```python\n(.*?)```", card_repo, flags=re.S)
    assert f'relsim.load("{REPO}")' in code
    photo(64, 96, seed=21).save(tmp_path / "a.jpg")
    photo(80, 60, seed=22).save(tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (model card)", "exec"), namespace)
    assert namespace["embeddings"].shape == (2, 384)
    reference = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32)
    assert abs(namespace["score"] - reference.score("a.jpg", "b.jpg")) < 1e-6
    assert namespace["model"].fingerprint["model"] == REPO
