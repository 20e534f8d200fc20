"""Upstream relsim 0.1.0's API (``relsim.relsim_score``): unchanged code runs and computes upstream's numbers.

The snippet below is upstream's README usage, verbatim; it runs in a fresh interpreter against a tiny checkpoint
filed under the real repo ids in a temporary Hugging Face cache (offline), and its score must equal the
upstream pipeline of tests/reference.py to 1e-5 in float32.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from conftest import photo
from PIL import Image
from reference import UpstreamPipeline, upstream_native_image

import relsim as package
from relsim import preprocess_image, relsim
from relsim.errors import ImageInputError
from relsim.relsim_score import UpstreamModel

#: upstream's README ("Given two images, you can compute their relational visual similarity"), verbatim.
UPSTREAM_README = """\
from relsim.relsim_score import relsim
from PIL import Image

# Load model
model, preprocess = relsim(pretrained=True, checkpoint_dir="thaoshibe/relsim-qwenvl25-lora")

img1 = preprocess(Image.open("image_path_1"))
img2 = preprocess(Image.open("image_path_2"))
similarity = model(img1, img2)  # Returns similarity score (higher = more similar)
print(f"relational similarity score: {similarity:.3f}")
"""


def _rotated_jpeg(path: Path) -> None:
    """A JPEG whose EXIF says "rotate 90°": upstream ignores it, relsim.load's preprocessing applies it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(60, 100, seed=3).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def _half_transparent_png(path: Path) -> None:
    """RGBA with varying alpha: preprocess_image drops it (convert("RGB")), relsim.load composites onto white."""
    rgb = np.asarray(photo(84, 70, seed=4))
    alpha = np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (84, 1))[..., None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(path, format="PNG")


def _upstream_score(adapter_dir: Path, base_dir: Path, paths: list[Path]) -> float:
    pipeline = UpstreamPipeline(adapter_dir, base_dir)
    a, b = (pipeline.embed(upstream_native_image(Image.open(p))) for p in paths)
    return float(a @ b)


def test_upstream_readme_runs_verbatim_and_equals_upstream(hf_cache, adapter_dir, base_dir, tmp_path):
    paths = [tmp_path / "image_path_1", tmp_path / "image_path_2"]
    _rotated_jpeg(paths[0])
    _half_transparent_png(paths[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_cache["home"]), HF_HUB_OFFLINE="1")
    script = UPSTREAM_README + "print(json.dumps(similarity))\n"
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed, value = out.stdout.strip().splitlines()[-2:]
    similarity = json.loads(value)
    assert printed == f"relational similarity score: {similarity:.3f}"

    expected = _upstream_score(adapter_dir, base_dir, paths)
    assert abs(similarity - expected) <= 1e-5, (similarity, expected)
    # The test can tell: relsim's own preprocessing (EXIF applied, alpha onto white) gives another number.
    native = package.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")
    assert abs(native.score(*paths) - expected) > 1e-4


@pytest.fixture(scope="module")
def upstream_model(hf_cache):
    env = {"HF_HOME": str(hf_cache["home"]), "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        import huggingface_hub.constants as hub_constants

        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(hub_constants, "HF_HUB_CACHE", str(hf_cache["home"] / "hub"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = relsim(pretrained=True, checkpoint_dir=tiny.ADAPTER_REPO, cache_dir=None, device="cpu")
        assert not [w for w in caught if issubclass(w.category, DeprecationWarning) and "relsim" in w.filename]
    return loaded


def test_both_import_forms_give_the_same_objects():
    import relsim.relsim_score as module

    assert relsim is module.relsim and preprocess_image is module.preprocess_image
    assert package.relsim is relsim and package.relsim_score is module
    assert callable(package.load)  # the upstream name `relsim` shadows nothing


def test_model_contract(upstream_model, tmp_path):
    model, preprocess = upstream_model
    assert isinstance(model, UpstreamModel) and preprocess is preprocess_image
    assert model.model.mode == "native" and model.model.fingerprint["model"] == tiny.ADAPTER_REPO
    assert model.eval() is model
    image = photo(56, 84, seed=5)
    embedding = model.embed(preprocess(image))
    assert embedding.shape == (1, 384) and embedding.dtype == torch.float32 and embedding.device == model.device
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1), atol=1e-6)
    other = photo(70, 56, seed=6)
    score = model(preprocess(image), preprocess(other))
    assert isinstance(score, float)
    both = model.embed([image, other])
    assert both.shape == (2, 384) and abs(score - float(both[0] @ both[1])) < 1e-6
    image.save(tmp_path / "a.png")
    assert torch.allclose(model.embed(str(tmp_path / "a.png")), embedding, atol=1e-6)
    assert torch.allclose(model.embed(f"file://{tmp_path / 'a.png'}"), embedding, atol=1e-6)


def test_rgba_given_straight_to_embed_is_composited_like_qwen_vl_utils(upstream_model):
    model, _ = upstream_model
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 4), dtype=np.uint8), mode="RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    assert torch.allclose(model.embed(rgba), model.embed(white), atol=1e-6)
    assert not torch.allclose(model.embed(rgba), model.embed(rgba.convert("RGB")), atol=1e-4)


def test_preprocess_is_convert_rgb_and_refuses_anything_else():
    for mode in ("RGBA", "L", "P", "CMYK", "RGB"):
        image = Image.new(mode, (5, 3))
        out = preprocess_image(image)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))
    for bad in ("a.jpg", np.zeros((3, 3, 3), np.uint8), [Image.new("RGB", (2, 2)), "b.jpg"], None):
        with pytest.raises(TypeError, match="PIL Image"):
            preprocess_image(bad)


def _forwards(model) -> list[int]:
    """The batch size of every forward pass ``model`` (an UpstreamModel) runs from now on."""
    sizes: list[int] = []
    model.model.register_forward_hook(lambda module, args, out: sizes.append(int(out.shape[0])))
    return sizes


def test_later_upstream_readme_api_equals_the_upstream_pipeline(upstream_model, adapter_dir, base_dir, tmp_path):
    """Upstream's later README (the CVPR 2026 version): ``preprocess_image([...])`` returns a list;
    ``embed(images, max_image_size=None, micro_batch_size=None)`` takes one image or a list, shrinks the longest
    edge with PIL's ``thumbnail`` (LANCZOS), and micro-batches give the same rows; ``model(a, b)`` is one
    batched forward. Checked against tests/reference.py's upstream pipeline on the same pixels, to 1e-5."""
    model, preprocess = upstream_model
    images = [photo(300, 180, seed=11), photo(70, 90, seed=12), photo(64, 240, seed=13)]
    prepared = preprocess(images)
    assert isinstance(prepared, list) and [im.mode for im in prepared] == ["RGB"] * 3
    assert isinstance(preprocess(tuple(images)), list)

    pipeline = UpstreamPipeline(adapter_dir, base_dir)
    expected = []
    for image in prepared:
        shrunk = image.copy()
        if max(shrunk.size) > 128:
            shrunk.thumbnail((128, 128), Image.LANCZOS)
        expected.append(pipeline.embed(upstream_native_image(shrunk)))
    expected = torch.stack(expected)

    sizes = _forwards(model)
    got = model.embed(prepared, max_image_size=128, micro_batch_size=2)
    assert sorted(sizes) == [1, 2] and got.shape == (3, 384) and got.device == model.device
    assert (got - expected).abs().max() <= 1e-5
    for micro_batch_size in (None, 0, 1, 3, 100):
        rows = model.embed(prepared, max_image_size=128, micro_batch_size=micro_batch_size)
        assert (rows - expected).abs().max() <= 1e-5, micro_batch_size
    # the test can tell: unshrunk, the large images embed otherwise; the small one (70x90) is left as it is
    full = model.embed(prepared)
    assert (full[0] - got[0]).abs().max() > 1e-4 and (full[1] - got[1]).abs().max() <= 1e-6
    assert torch.allclose(model.embed(prepared, max_image_size=0), full, atol=1e-6)
    # one image -> (1, 384); a file is shrunk like the PIL image it holds
    prepared[0].save(tmp_path / "a.png")
    one = model.embed(str(tmp_path / "a.png"), max_image_size=128)
    assert one.shape == (1, 384) and (one[0] - expected[0]).abs().max() <= 1e-5

    # model(a, b): one batched forward (relsim batches images of one size together; other sizes run apart,
    # with the same numbers)
    same_size = photo(70, 90, seed=14)
    sizes.clear()
    score = model(prepared[1], same_size)
    assert sizes == [2] and abs(score - float(full[1] @ pipeline.embed(upstream_native_image(same_size)))) <= 1e-5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_image_size": -1}, ValueError, "max_image_size must be positive"),
        ({"micro_batch_size": -2}, ValueError, "micro_batch_size must be positive"),
        ({"max_image_size": 12.5}, TypeError, "max_image_size must be an int"),
        ({"micro_batch_size": True}, TypeError, "micro_batch_size must be an int"),
        ({"micro_batch_size": "4"}, TypeError, "micro_batch_size must be an int"),
    ],
)
def test_later_upstream_options_refuse_bad_values(upstream_model, kwargs, error, match):
    model, _ = upstream_model
    with pytest.raises(error, match=match):
        model.embed(photo(32, 32, seed=1), **kwargs)


def test_max_image_size_names_an_input_it_cannot_shrink(upstream_model):
    model, _ = upstream_model
    images = [photo(32, 32, seed=1), np.zeros((40, 40, 3), np.uint8)]
    with pytest.raises(TypeError, match="image 1: max_image_size shrinks PIL images and image files, not ndarray"):
        model.embed(images, max_image_size=16)


def test_loader_arguments(offline_hub, adapter_dir, base_dir):
    with pytest.raises(ValueError, match="pretrained=True"):
        relsim(pretrained=False, checkpoint_dir=tiny.ADAPTER_REPO)
    with pytest.raises(ValueError, match="native"):
        relsim(checkpoint_dir=tiny.ADAPTER_REPO, mode="train")
    local, _ = relsim(checkpoint_dir=adapter_dir, base_model=base_dir, device="cpu")
    hub, _ = relsim(device="cpu")  # checkpoint_dir defaults to the published model
    image = photo(56, 56, seed=7)
    assert torch.allclose(local.embed(image), hub.embed(image), atol=1e-6)
    with pytest.raises(ImageInputError, match="local files"):
        hub.embed("https://example.com/a.jpg")
    with pytest.raises(ImageInputError, match="missing.png"):
        hub.embed("missing.png")


def test_upgrading_doc_examples_run(offline_hub, tmp_path, monkeypatch):
    """docs/upgrading.md's code blocks, in order, against the offline cache."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "upgrading.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 3 and "relsim.load(" in blocks[2]
    photo(60, 80, seed=8).save(tmp_path / "a.jpg")
    photo(70, 50, seed=9).save(tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/upgrading.md", "exec"), namespace)
    assert -1 <= namespace["similarity"] <= 1 and namespace["embedding"].shape == (1, 384)
    assert namespace["embeddings"].shape == (2, 384)  # upstream's later README: lists and max_image_size
    assert namespace["model"].mode == "native"  # the switch keeps 0.1.0's resolution
