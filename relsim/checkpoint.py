"""Read (and write) relsim checkpoints: LoRA adapter, projection head, query token, relsim_config.

The upstream layout (``thaoshibe/relsim-qwenvl25-lora``) is a PEFT LoRA adapter plus a pickled
``projection_and_config.pt``. The pickle is only ever read with ``torch.load(weights_only=True)``;
what relsim writes is safetensors (``projection.safetensors``) and a small ``relsim_config.json``.

LoRA is merged into the base weights here, without peft: ``W' = W + (alpha / r) * B @ A``. Every adapter
key must land on a module of the base model: a key we cannot place is an error, never a warning.

Example:
    >>> ckpt = read_checkpoint("path/to/relsim-adapter")          # doctest: +SKIP
    >>> merge_lora(base_model, ckpt.lora)                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

QUERY_TOKEN = "<|query|>"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PROJECTION_SAFETENSORS = "projection.safetensors"
PROJECTION_PICKLE = "projection_and_config.pt"
RELSIM_CONFIG = "relsim_config.json"

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


class CheckpointError(ValueError):
    """A relsim checkpoint is missing a file or holds something we cannot place."""


@dataclass
class LoraWeights:
    """LoRA factors per module path of ``Qwen2_5_VLModel`` (e.g. ``language_model.layers.0.self_attn.q_proj``)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    rank: int


@dataclass
class RelSimCheckpoint:
    """Everything relsim adds to the base model."""

    path: Path
    base_model: str | None
    lora: LoraWeights
    projection_weight: torch.Tensor
    projection_bias: torch.Tensor
    query_token_id: int | None
    """From ``relsim_config.json`` or the upstream pickle; ``None``: ask the tokenizer."""
    embedding_table: torch.Tensor | None
    """The input-embedding table when the adapter file carries one (transformers 4.57 + peft saved it
    because the vocabulary was resized); it replaces the base rows it covers, ``<|query|>`` included."""
    config: dict[str, Any] = field(default_factory=dict)
    """``relsim_config.json`` when present (checkpoints written by relsim)."""


def module_path(key: str) -> str:
    """Map a PEFT/Hub parameter name to a module path inside ``Qwen2_5_VLModel``.

    Accepts the transformers >= 4.52 names (``model.language_model.layers...``) and the older ones
    (``model.layers...``), with or without PEFT's ``base_model.model.`` prefix.

    >>> module_path("base_model.model.model.layers.3.self_attn.q_proj")
    'language_model.layers.3.self_attn.q_proj'
    """
    name = key.removeprefix("base_model.model.")
    for old, new in (
        ("model.language_model.", "language_model."),
        ("model.visual.", "visual."),
        ("visual.", "visual."),
        ("model.", "language_model."),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    raise CheckpointError(f"adapter key {key!r} does not name a module of Qwen2.5-VL")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {str(path.parent)!r}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from None


def read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``, checked for the LoRA features we merge correctly."""
    config = _read_json(path / ADAPTER_CONFIG)
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: peft_type {config['peft_type']!r} is not LORA")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "bias": config.get("bias", "none") != "none",
    }
    bad = [name for name, used in unsupported.items() if used]
    if bad:
        raise CheckpointError(f"{path / ADAPTER_CONFIG} uses LoRA features relsim does not merge: {bad}")
    return config


def read_lora(path: Path, config: dict[str, Any]) -> tuple[LoraWeights, torch.Tensor | None]:
    """Read the LoRA factors and, when the file carries one, the input-embedding table.

    ``lm_head`` (~1 GB in the published file) is never read.
    """
    file = path / ADAPTER_WEIGHTS
    if not file.is_file():
        if (path / "adapter_model.bin").is_file():
            raise CheckpointError(
                f"{str(path)!r} holds adapter_model.bin (a pickle); relsim reads only safetensors. "
                "Convert it with peft (`PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`)."
            )
        raise CheckpointError(f"{ADAPTER_WEIGHTS} is missing from {str(path)!r}")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    table = None
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            if key.endswith("lm_head.weight"):
                continue
            if key.endswith("embed_tokens.weight"):
                if module_path(key.removesuffix(".weight")) != "language_model.embed_tokens":
                    raise CheckpointError(f"adapter key {key!r} in {str(file)!r} is not the text embedding table")
                table = f.get_tensor(key)
                continue
            match = _LORA_KEY.match(key)
            if match is None:
                raise CheckpointError(f"adapter key {key!r} in {str(file)!r} is neither a LoRA factor nor a table")
            halves.setdefault(module_path(match["module"]), {})[match["part"]] = f.get_tensor(key)
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    factors = {}
    for module, parts in halves.items():
        if set(parts) != {"A", "B"}:
            raise CheckpointError(f"{str(file)!r}: module {module!r} has lora_{''.join(parts)} but not both A and B")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(
                f"{str(file)!r}: {module!r} has LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)}, expected rank {rank}"
            )
        factors[module] = (a, b)
    if not factors:
        raise CheckpointError(f"{str(file)!r} holds no LoRA factors")
    return LoraWeights(factors, scale, rank), table


def read_projection(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The projection head: ``projection.safetensors`` when present, else the upstream pickle (safely)."""
    safetensors_file = path / PROJECTION_SAFETENSORS
    if safetensors_file.is_file():
        with safe_open(str(safetensors_file), framework="pt") as f:
            missing = {"weight", "bias"} - set(f.keys())
            if missing:
                raise CheckpointError(f"{str(safetensors_file)!r} lacks {sorted(missing)}")
            return f.get_tensor("weight"), f.get_tensor("bias"), {}
    pickle_file = path / PROJECTION_PICKLE
    if not pickle_file.is_file():
        raise CheckpointError(f"neither {PROJECTION_SAFETENSORS} nor {PROJECTION_PICKLE} is in {str(path)!r}")
    try:
        blob = torch.load(pickle_file, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or corrupt pickle: say which file, never fall back to full unpickling
        reason = next((line for line in str(err).splitlines() if "GLOBAL" in line), str(err).splitlines()[0])
        raise CheckpointError(
            f"{str(pickle_file)!r} could not be read safely (torch.load weights_only=True); relsim never unpickles "
            f"arbitrary objects: {reason}"
        ) from err
    projection = blob.get("projection") if isinstance(blob, dict) else None
    if not isinstance(projection, dict) or not {"weight", "bias"} <= set(projection):
        raise CheckpointError(f"{str(pickle_file)!r} has no projection weight and bias")
    extras = {k: v for k, v in blob.items() if k != "projection"}
    return projection["weight"], projection["bias"], extras


def read_checkpoint(path: str | Path) -> RelSimCheckpoint:
    """Read a relsim adapter directory (upstream layout, or what relsim writes)."""
    path = Path(path)
    adapter_config = read_adapter_config(path)
    relsim_config = _read_json(path / RELSIM_CONFIG) if (path / RELSIM_CONFIG).is_file() else {}
    weight, bias, extras = read_projection(path)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{str(path)!r}: projection weight {tuple(weight.shape)} and bias {tuple(bias.shape)}")
    query_token_id = relsim_config.get("query_token_id", extras.get("query_token_id"))
    query_token_id = None if query_token_id is None else int(query_token_id)
    lora, embedding_table = read_lora(path, adapter_config)
    base_model = relsim_config.get("base_model") or adapter_config.get("base_model_name_or_path")
    return RelSimCheckpoint(
        path=path,
        base_model=base_model,
        lora=lora,
        projection_weight=weight,
        projection_bias=bias,
        query_token_id=query_token_id,
        embedding_table=embedding_table,
        config=relsim_config,
    )


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoraWeights) -> int:
    """Merge LoRA into ``model``'s linear layers in place (``W += scale * B @ A``, computed in float32).

    ``model`` is a ``Qwen2_5_VLModel``. Returns the number of merged modules.
    """
    modules = dict(model.named_modules())
    for name, (a, b) in lora.factors.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            found = "nothing" if module is None else type(module).__name__
            raise CheckpointError(f"LoRA weights for {name!r} match {found} in the base model, not a Linear layer")
        expected = (module.out_features, module.in_features)
        if (b.shape[0], a.shape[1]) != expected:
            raise CheckpointError(
                f"LoRA for {name!r} is {b.shape[0]}x{a.shape[1]}, the base layer is {expected[0]}x{expected[1]}"
            )
        weight = module.weight
        delta = (b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)) * lora.scale
        weight.copy_((weight.float() + delta).to(weight.dtype))
    return len(lora.factors)


def write_projection(path: str | Path, weight: torch.Tensor, bias: torch.Tensor) -> Path:
    """Write the projection head as ``projection.safetensors``."""
    out = Path(path) / PROJECTION_SAFETENSORS
    save_file({"weight": weight.detach().contiguous().cpu(), "bias": bias.detach().contiguous().cpu()}, str(out))
    return out


def write_relsim_config(path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``relsim_config.json`` (base model id and revision, query token, dims, preprocessing, version)."""
    out = Path(path) / RELSIM_CONFIG
    out.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
