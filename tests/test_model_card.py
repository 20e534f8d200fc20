"""The model card `relsim push-to-hub` writes: its front matter, and its usage example run against a tiny checkpoint
published (as far as the offline HF cache can tell) under a repo id, so the card's example cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny
import torch
from conftest import photo

import relsim
from relsim.publish import convert, model_card, write_model_card
from relsim.registry import DEFAULT_CAPTIONER, DEFAULT_MODEL

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


@pytest.mark.parametrize("kind", [None, "anonymous-captioner"])
def test_card_says_whose_licence_covers_what(kind):
    """relsim's code is MIT; the weights are their publisher's; the authors' published weights are under their
    own terms (CC BY-NC-SA 4.0 since 2025-12-10), named first on a checkpoint converted from them (issue 21)."""
    config = {"base_model": "Qwen/Qwen2.5-VL-7B-Instruct", **({"kind": kind} if kind else {})}
    card = model_card(config, repo_id="me/x", license="apache-2.0")
    section = card.split("## License\n", 1)[1]
    assert "relsim, the code that trained and loads them, is MIT-licensed" in section
    assert "These weights: `apache-2.0`" in section
    assert "`Qwen/Qwen2.5-VL-7B-Instruct` is under its own license" in section
    assert "CC BY-NC-SA 4.0" in section and "2025-12-10" in section and "before any commercial use" in section
    assert "converted from" not in section.split("- The weights the paper")[0]
    authors = DEFAULT_CAPTIONER if kind else DEFAULT_MODEL
    converted = model_card({**config, "converted_from": {"source": authors, "revision": "abc"}}, repo_id="me/x")
    assert f"**This checkpoint was converted from `{authors}`, the authors' weights: their terms apply.**" in converted


def test_readme_and_upgrading_state_the_licences():
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "docs" / "upgrading.md"):
        text = " ".join(doc.read_text().split())
        assert "relsim's code is MIT-licensed" in text, doc
        assert "CC BY-NC-SA 4.0" in text and "check them before commercial use" in text, doc
