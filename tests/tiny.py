"""Tiny random relsim checkpoints, built in code, in the exact layouts found on the Hub.

The base model is a Qwen2.5-VL with a few small layers and the real vocabulary, saved the way
``Qwen/Qwen2.5-VL-7B-Instruct`` is (legacy flat ``config.json``, ``model.*`` / ``visual.*`` /
``lm_head.*`` safetensors keys, tokenizer files). The adapters mimic ``thaoshibe/relsim-qwenvl25-lora``
in each realistic key layout (see docs/architecture.md, §3). Benchmarks import this module too.

Example:
    >>> base = build_base(tmp / "base")
    >>> adapter = build_adapter(tmp / "adapter", layout="v457")
    >>> captioner = build_captioner_adapter(tmp / "captioner", base)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

QUERY_TOKEN = "<|query|>"
QUERY_TOKEN_ID = 151665
VOCAB_SIZE = 152064
BASE_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
ADAPTER_REPO = "thaoshibe/relsim-qwenvl25-lora"
CAPTIONER_REPO = "thaoshibe/relsim-anonymous-caption-qwen25vl-lora"
#: ``generation_config.json`` of Qwen/Qwen2.5-VL-7B-Instruct (what ``generate()`` merges in).
GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 1e-06,
}
STOP_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
#: Test data kept in the repository (only the repository reaches CI, the GPU machine and users).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The real Qwen2.5-VL tokenizer and processor files (no weights).
PROCESSOR_FIXTURE = FIXTURES / "qwen2_5_vl_processor"
if not PROCESSOR_FIXTURE.is_dir():
    raise FileNotFoundError(f"the processor fixture {PROCESSOR_FIXTURE} is missing from the repository")

#: Key layouts of the published adapter: (LoRA module prefix, embed_tokens key or None, with lm_head table).
ADAPTER_LAYOUTS = {
    # transformers 5 + peft 0.21: new module paths, no tables
    "v5": ("base_model.model.model.language_model.layers", None, False),
    # transformers 4.57 + peft (what upstream used): new paths, embed_tokens and lm_head tables saved
    "v457": (
        "base_model.model.model.language_model.layers",
        "base_model.model.model.language_model.embed_tokens.weight",
        True,
    ),
    # transformers < 4.52: old module paths, with tables
    "legacy": ("base_model.model.model.layers", "base_model.model.model.embed_tokens.weight", True),
    # transformers < 4.52 without tables
    "legacy-bare": ("base_model.model.model.layers", None, False),
}

TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    fullatt_block_indexes=[1],
)


def base_config(text: dict | None = None, vision: dict | None = None, initializer_range: float = 0.1) -> dict:
    """A ``config.json`` in the flat pre-4.52 layout of the real Qwen2.5-VL-7B-Instruct repo."""
    text = {**TINY_TEXT, **(text or {})}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 7B: [16, 24, 24] for head_dim 128
    vision = {
        "hidden_size": 32,
        "out_hidden_size": text["hidden_size"],
        "in_chans": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "tokens_per_second": 2,
        "hidden_act": "silu",
        **TINY_VISION,
        **(vision or {}),
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "initializer_range": initializer_range,
        "max_position_embeddings": 128000,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "vision_config": vision,
        **text,
    }


def build_base(
    path: str | Path,
    *,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
    dtype: torch.dtype = torch.float32,
    stop_rows: float | None = None,
) -> Path:
    """Write a random tiny base model directory laid out like ``Qwen/Qwen2.5-VL-7B-Instruct``.

    ``stop_rows``: make the LM head rows of the stop tokens ``stop_rows`` x a random row, so that greedy
    generation ends after input-dependent lengths (a random model otherwise never stops).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = base_config(text, vision)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).to(dtype)
    if stop_rows is not None:
        with torch.no_grad():
            head = model.lm_head.weight
            for i, token in enumerate(STOP_TOKEN_IDS):
                head[token] = head[1000 + i] * stop_rows
    # Hub layout: transformers 5 module names mapped back to the checkpoint names of the real repo.
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        state[key] = value.contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    for f in PROCESSOR_FIXTURE.iterdir():
        shutil.copy(f, path / f.name)
    return path


def _base_tensors(base: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(base / "model.safetensors"))


def _write_lora_adapter(
    path: Path,
    base: Path,
    layout: str,
    gen: torch.Generator,
    rank: int,
    alpha: int,
    base_name: str,
    changed_row: int,
    lora_std: float = 0.2,
) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` of a q_proj/v_proj LoRA in key ``layout``; the
    layouts with tables carry the base's first 151666 rows (bf16), ``changed_row`` of the input table redrawn.
    ``lora_std``: standard deviation of the factors (0.2: an update larger than the base weights)."""
    prefix, embed_key, with_lm_head = ADAPTER_LAYOUTS[layout]
    config = json.loads((base / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv_dim = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    tensors: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for name, out_dim in (("q_proj", hidden), ("v_proj", kv_dim)):
            key = f"{prefix}.{i}.self_attn.{name}"
            # B is non-zero (peft starts it at zero) so the adapter changes the function.
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * lora_std
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * lora_std
    if embed_key is not None:
        base_tensors = _base_tensors(base)
        table = base_tensors["model.embed_tokens.weight"][: QUERY_TOKEN_ID + 1].clone()
        table[changed_row] = torch.randn(hidden, generator=gen)
        tensors[embed_key] = table.to(torch.bfloat16)
        if with_lm_head:
            head = base_tensors["lm_head.weight"][: QUERY_TOKEN_ID + 1]
            tensors["base_model.model.lm_head.weight"] = head.to(torch.bfloat16).contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    (path / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))


def build_adapter(
    path: str | Path,
    base: str | Path,
    *,
    layout: str = "v457",
    seed: int = 1,
    rank: int = 16,
    alpha: int = 32,
    projection_format: str = "pickle",
    base_model_name_or_path: str = BASE_REPO,
    lora_std: float = 0.2,
) -> Path:
    """Write a relsim adapter directory in the upstream layout (see ``ADAPTER_LAYOUTS``).

    ``lora_std``: standard deviation of the LoRA factors. The default makes the update larger than the base
    weights (every test sees the adapter); 0.035 gives an update ~10% of the base weights, like a trained one.

    ``projection_format``: "pickle" (upstream ``projection_and_config.pt``), "safetensors" (what relsim
    writes) or "both" (the safetensors file then holds a different projection, to prove which one wins).
    """
    from transformers import AutoTokenizer

    path, base = Path(path), Path(base)
    path.mkdir(parents=True, exist_ok=True)
    hidden = json.loads((base / "config.json").read_text())["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    # A query row unlike the base padding row, so tests can tell which one the loader used.
    _write_lora_adapter(
        path, base, layout, gen, rank, alpha, base_model_name_or_path, changed_row=QUERY_TOKEN_ID, lora_std=lora_std
    )

    weight = (torch.randn(384, hidden, generator=gen) / hidden**0.5).to(torch.bfloat16)
    bias = (torch.randn(384, generator=gen) * 0.1).to(torch.bfloat16)
    if projection_format in ("pickle", "both"):
        blob = {
            "projection": {"weight": weight, "bias": bias},
            "query_token_id": QUERY_TOKEN_ID,
            "hidden_size": hidden,
            "projection_dim": 384,
        }
        torch.save(blob, path / "projection_and_config.pt")
    if projection_format in ("safetensors", "both"):
        if projection_format == "both":
            weight, bias = -weight, -bias
        save_file({"weight": weight, "bias": bias}, str(path / "projection.safetensors"))

    tokenizer = AutoTokenizer.from_pretrained(PROCESSOR_FIXTURE)
    tokenizer.add_special_tokens({"additional_special_tokens": [QUERY_TOKEN]})
    assert tokenizer.convert_tokens_to_ids(QUERY_TOKEN) == QUERY_TOKEN_ID
    tokenizer.save_pretrained(path)
    for name in ("preprocessor_config.json", "chat_template.jinja"):
        shutil.copy(PROCESSOR_FIXTURE / name, path / name)
    (path / "README.md").write_text("---\nlibrary_name: peft\nbase_model: Qwen/Qwen2.5-VL-7B-Instruct\n---\n")
    return path


#: Trainer state upstream's captioner checkpoint folder holds beside the adapter (pickles: never to be read).
TRAINER_STATE_FILES = ("optimizer.pt", "rng_state.pth", "scheduler.pt", "scaler.pt", "training_args.bin")


class _Tripwire:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_captioner_adapter(
    path: str | Path,
    base: str | Path,
    *,
    layout: str = "v5",
    seed: int = 2,
    rank: int = 16,
    alpha: int = 32,
    base_model_name_or_path: str = BASE_REPO,
    tripwire: str | Path | None = None,
) -> Path:
    """Write an anonymous-captioner checkpoint folder as upstream's trainer leaves it: the LoRA adapter in key
    ``layout`` (the layouts with tables redraw the input row of "\\n", id 198, which every prompt holds) and
    the trainer-state pickles, which create ``tripwire`` (default ``path/UNPICKLED``) if anything unpickles them.
    """
    import pickle

    path, base = Path(path), Path(base)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    _write_lora_adapter(path, base, layout, gen, rank, alpha, base_model_name_or_path, changed_row=198)
    trap = pickle.dumps(_Tripwire(Path(tripwire) if tripwire else path / "UNPICKLED"))
    for name in TRAINER_STATE_FILES:
        (path / name).write_bytes(trap)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 1000, "epoch": 50.0}))
    (path / "README.md").write_text("---\nlibrary_name: peft\nbase_model: Qwen/Qwen2.5-VL-7B-Instruct\n---\n")
    return path


def populate_hf_cache(cache_dir: str | Path, repo_id: str, source: str | Path, *, commit: str | None = None) -> str:
    """Lay ``source``'s files into a huggingface_hub cache as ``hf download`` leaves them.

    ``cache_dir`` is the hub cache (``$HF_HOME/hub``). Returns the commit hash the snapshot is filed under.
    """
    cache_dir, source = Path(cache_dir), Path(source)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if commit is None:
        digest = hashlib.sha1(repo_id.encode())
        for f in files:
            digest.update(f.relative_to(source).as_posix().encode())
            digest.update(str(f.stat().st_size).encode())
        commit = digest.hexdigest()
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for f in files:
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copy(f, blob)
        link = snapshot / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit
