"""relsim.load: the Hub path (offline cache), local directories, pinning, and every broken checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file

import relsim
from relsim.checkpoint import CheckpointError, module_path, read_checkpoint


def _offline_env(hf_cache) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_cache["home"]), HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).parent))
    return env


def test_quick_start_against_offline_cache(hf_cache, tmp_path):
    """The README quick start, verbatim but for device, in a fresh interpreter with only the HF cache."""
    from conftest import photo

    for name, (h, w, seed) in {"a.jpg": (480, 640, 0), "b.jpg": (448, 448, 1), "c.jpg": (300, 500, 2)}.items():
        photo(h, w, seed).save(tmp_path / name)
    script = textwrap.dedent(
        """
        import json, relsim
        model = relsim.load(device="cpu")
        emb = model.embed(["a.jpg", "b.jpg"])
        s = model.score("a.jpg", "b.jpg")
        m = model.pairwise(["a.jpg", "b.jpg"], ["c.jpg"])
        print(json.dumps({"shape": list(emb.shape), "dtype": str(emb.dtype), "device": str(emb.device),
                          "score": s, "pairwise": list(m.shape), "fingerprint": model.fingerprint,
                          "same": abs(s - float(emb[0] @ emb[1])) < 1e-6}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_offline_env(hf_cache), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 384] and result["dtype"] == "torch.float32" and result["device"] == "cpu"
    assert -1 <= result["score"] <= 1 and result["same"] and result["pairwise"] == [2, 1]
    fingerprint = result["fingerprint"]
    assert fingerprint["model"] == tiny.ADAPTER_REPO and fingerprint["revision"] == hf_cache["adapter_commit"]
    assert fingerprint["base_model"] == tiny.BASE_REPO and fingerprint["base_revision"] == hf_cache["base_commit"]


def test_hub_load_pins_revisions(offline_hub, adapter_dir, base_dir):
    pinned = relsim.load(revision=offline_hub["adapter_commit"], base_revision=offline_hub["base_commit"], device="cpu")
    assert pinned.fingerprint["revision"] == offline_hub["adapter_commit"]
    local = relsim.load(adapter_dir, base_model=base_dir, device="cpu")
    assert local.fingerprint["revision"].startswith("sha256:") and local.fingerprint["model"] == str(adapter_dir)
    image = tiny_image()
    assert torch.allclose(pinned.embed(image), local.embed(image), atol=1e-6)
    with pytest.raises(Exception, match="revision|not found|cache|offline|snapshot"):
        relsim.load(revision="0" * 40, device="cpu")


def test_unknown_repo_offline_is_a_clear_error(offline_hub):
    with pytest.raises(Exception, match="nobody/nothing"):
        relsim.load("nobody/nothing", device="cpu")


def test_path_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a Hub repo id"):
        relsim.load(str(tmp_path / "missing" / "dir"), device="cpu")
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        relsim.load(tmp_path, base_model=tmp_path, device="cpu")


def test_same_load_returns_the_cached_instance(adapter_dir, base_dir):
    a = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype="float32")
    b = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32)
    c = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")
    assert a is b and c is not a and c.mode == "native"


def test_model_has_no_lm_head_and_merged_lora(tiny_model):
    names = [n for n, _ in tiny_model.named_parameters()]
    assert not any("lm_head" in n or "lora" in n for n in names)
    assert not tiny_model.training and not any(p.requires_grad for p in tiny_model.parameters())
    assert tiny_model.train().training is False


def test_bad_arguments(adapter_dir, base_dir):
    with pytest.raises(ValueError, match="mode must be one of"):
        relsim.load(adapter_dir, base_model=base_dir, mode="fast")
    with pytest.raises(ValueError, match="dtype must be"):
        relsim.load(adapter_dir, base_model=base_dir, dtype="int8")
    with pytest.raises(ValueError, match="revision="):
        relsim.load(adapter_dir, base_model=base_dir, revision="main")


def test_float16_and_bfloat16_return_float32(adapter_dir, base_dir):
    for dtype in ("bfloat16", torch.float16):
        model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=dtype)
        assert model.dtype in (torch.bfloat16, torch.float16)
        emb = model.embed(tiny_image())
        assert emb.dtype == torch.float32 and torch.isfinite(emb).all()


def test_module_paths_of_both_layouts():
    assert module_path("base_model.model.model.layers.3.self_attn.q_proj") == "language_model.layers.3.self_attn.q_proj"
    assert (
        module_path("base_model.model.model.language_model.layers.3.self_attn.v_proj")
        == "language_model.layers.3.self_attn.v_proj"
    )
    assert module_path("base_model.model.visual.blocks.0.attn.qkv") == "visual.blocks.0.attn.qkv"
    with pytest.raises(CheckpointError, match="lm_head"):
        module_path("base_model.model.lm_head")


def test_safetensors_projection_wins_over_pickle(fixture_root, base_dir):
    both = tiny.build_adapter(fixture_root / "adapter-both", base_dir, layout="v5", projection_format="both")
    pickle_only = tiny.build_adapter(fixture_root / "adapter-pickle", base_dir, layout="v5")
    a = read_checkpoint(both).projection_weight
    b = read_checkpoint(pickle_only).projection_weight
    assert torch.equal(a, -b)  # the fixture writes the negated head into projection.safetensors


# -- broken checkpoints: each must fail loudly, naming what is wrong ---------------------------------------


def _copy(adapter_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "adapter"
    shutil.copytree(adapter_dir, out)
    return out


def _edit_weights(path: Path, edit) -> None:
    file = path / "adapter_model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def _edit_config(path: Path, **changes) -> None:
    file = path / "adapter_config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def _break_unknown_key(t):
    t["base_model.model.model.language_model.layers.0.self_attn.q_proj.magnitude"] = torch.zeros(1)


def _break_missing_module(t):
    key = "base_model.model.model.language_model.layers.99.self_attn.q_proj.lora_{}.weight"
    t[key.format("A")], t[key.format("B")] = torch.zeros(16, 64), torch.zeros(64, 16)


def _break_half_pair(t):
    t.pop("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight")


def _break_shape(t):
    t["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(63, 16)


def _break_rank(t):
    t["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(8, 64)


def _break_target(t):
    key = "base_model.model.model.language_model.layers.0.input_layernorm.lora_{}.weight"
    t[key.format("A")], t[key.format("B")] = torch.zeros(16, 64), torch.zeros(64, 16)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_break_unknown_key, "neither a LoRA factor nor a table"),
        (_break_missing_module, "layers.99.self_attn.q_proj.*match nothing"),
        (_break_half_pair, "lora_A but not both"),
        (_break_shape, "63x64"),
        (_break_rank, "expected rank 16"),
        (_break_target, "RMSNorm in the base model, not a Linear"),
    ],
)
def test_adapter_keys_that_cannot_be_placed_are_errors(adapter_dirs, base_dir, tmp_path, edit, message):
    path = _copy(adapter_dirs["v5"], tmp_path)
    _edit_weights(path, edit)
    with pytest.raises(CheckpointError, match=message):
        relsim.load(path, base_model=base_dir, device="cpu")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"bias": "all"}, "bias"),
        ({"peft_type": "IA3"}, "not LORA"),
    ],
)
def test_unsupported_adapter_configs(adapter_dir, base_dir, tmp_path, changes, message):
    path = _copy(adapter_dir, tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(CheckpointError, match=message):
        relsim.load(path, base_model=base_dir, device="cpu")


def test_missing_and_unsafe_files(adapter_dir, base_dir, tmp_path):
    path = _copy(adapter_dir, tmp_path)
    (path / "projection_and_config.pt").unlink()
    with pytest.raises(CheckpointError, match="neither projection.safetensors nor projection_and_config.pt"):
        relsim.load(path, base_model=base_dir, device="cpu")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"projection": Payload()}, path / "projection_and_config.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        relsim.load(path, base_model=base_dir, device="cpu")

    fresh = _copy(adapter_dir, tmp_path / "fresh")
    (fresh / "adapter_model.safetensors").rename(fresh / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="adapter_model.bin"):
        read_checkpoint(fresh)


def test_query_token_must_match_tokenizer(adapter_dir, base_dir, tmp_path):
    path = _copy(adapter_dir, tmp_path)
    blob = torch.load(path / "projection_and_config.pt", weights_only=True)
    blob["query_token_id"] = 151664
    torch.save(blob, path / "projection_and_config.pt")
    with pytest.raises(CheckpointError, match="151664"):
        relsim.load(path, base_model=base_dir, device="cpu")


def test_wrong_base_model(adapter_dir, fixture_root, tmp_path):
    other = tiny.build_base(tmp_path / "wide-base", text={"hidden_size": 96, "num_attention_heads": 4})
    with pytest.raises(CheckpointError, match="96x96|projection takes"):
        relsim.load(adapter_dir, base_model=other, device="cpu")


def tiny_image():
    from conftest import photo

    return photo(120, 160, 7)
