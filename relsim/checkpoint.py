"""The relsim checkpoint format: read, write and convert (LoRA adapter, projection head, query token, config).

The upstream layout (``thaoshibe/relsim-qwenvl25-lora``) is a PEFT LoRA adapter plus a pickled
``projection_and_config.pt``. The pickle is only ever read with ``torch.load(weights_only=True)``;
what relsim writes is the same layout (so upstream tools read it) plus safetensors
(``projection.safetensors``) and a small ``relsim_config.json``::

    adapter_config.json, adapter_model.safetensors   LoRA only (safetensors; no embedding tables)
    projection.safetensors                           the head, float32 (what relsim reads)
    projection_and_config.pt                         the head for upstream tools (plain tensors and ints)
    tokenizer files with <|query|>, preprocessor_config.json, chat_template.jinja
    relsim_config.json                               base id + revision, query token, dims, recipe, version
    trainer_state/                                   only in training's checkpoint-* dirs (relsim.train)

LoRA is merged into the base weights here, without peft: ``W' = W + (alpha / r) * B @ A``. Every adapter
key must land on a module of the base model: a key we cannot place is an error, never a warning.

Example:
    >>> ckpt = read_checkpoint("path/to/relsim-adapter")          # doctest: +SKIP
    >>> merge_lora(base_model, ckpt.lora)                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError

QUERY_TOKEN = "<|query|>"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PROJECTION_SAFETENSORS = "projection.safetensors"
PROJECTION_PICKLE = "projection_and_config.pt"
RELSIM_CONFIG = "relsim_config.json"
#: What training adds to a ``checkpoint-*`` directory to resume; never uploaded, never read for inference.
TRAINER_STATE_DIR = "trainer_state"
#: Processor files copied from the base model next to the tokenizer, so upstream's processor loads.
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; a missing, unreadable or non-object file is a CheckpointError."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {str(path.parent)!r}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} cannot be read: {err}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{str(path)!r} is not a usable JSON file: it is nested too deeply") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(path)!r} holds a JSON {type(value).__name__}, not an object")
    return value


def read_relsim_config(path: Path) -> dict[str, Any]:
    """``relsim_config.json`` of a checkpoint directory (``{}`` when there is none), its texts checked."""
    file = path / RELSIM_CONFIG
    if not file.is_file():
        return {}
    config = read_json(file)
    for name in ("base_model", "base_revision", "kind", "prompt"):
        if config.get(name) is not None and not isinstance(config[name], str):
            raise CheckpointError(f"{str(file)!r}: {name} must be a string, got {config[name]!r}")
    return config


def open_safetensors(file: Path):
    """``safe_open`` with a clear error: a truncated or garbage file names itself (the header check is cheap)."""
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, RuntimeError) as err:  # RuntimeError: a mapping the file cannot back
        raise CheckpointError(f"{str(file)!r} is not a readable safetensors file ({err})") from None


def check_finite(tensor: torch.Tensor, what: str, file: Path) -> torch.Tensor:
    """Refuse NaN or infinite weights at load time, naming the tensor (they would surface much later as a
    confusing overflow in the forward pass)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{what} in {str(file)!r} holds NaN or infinite values: the checkpoint is corrupt")
    return tensor


def read_adapter_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json``, checked for the LoRA features we merge correctly."""
    config = read_json(path / ADAPTER_CONFIG)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: r must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path must be a string, got {base!r}")
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
    with open_safetensors(file) as f:
        for key in f.keys():
            if key.endswith("lm_head.weight"):
                continue
            if key.endswith("embed_tokens.weight"):
                if module_path(key.removesuffix(".weight")) != "language_model.embed_tokens":
                    raise CheckpointError(f"adapter key {key!r} in {str(file)!r} is not the text embedding table")
                table = check_finite(f.get_tensor(key), f"the embedding table {key!r}", file)
                continue
            match = _LORA_KEY.match(key)
            if match is None:
                raise CheckpointError(f"adapter key {key!r} in {str(file)!r} is neither a LoRA factor nor a table")
            tensor = check_finite(f.get_tensor(key), f"the LoRA factor {key!r}", file)
            halves.setdefault(module_path(match["module"]), {})[match["part"]] = tensor
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


def read_lm_head(path: Path) -> torch.Tensor | None:
    """The ``lm_head`` table an adapter file carries (transformers 4.57 + peft after a vocabulary resize), or None.

    Only the captioner needs it: its logits then cover exactly the rows of this table, as upstream's resized model.
    """
    file = path / ADAPTER_WEIGHTS
    with open_safetensors(file) as f:
        keys = [k for k in f.keys() if k.endswith("lm_head.weight")]
        if len(keys) > 1:
            raise CheckpointError(f"{str(file)!r} holds several lm_head tables: {keys}")
        return check_finite(f.get_tensor(keys[0]), "the lm_head table", file) if keys else None


#: Where a module of ``Qwen2_5_VLModel`` (or the LM head) is stored in a base checkpoint: the Hub layout of the
#: published base (pre-4.52 names) first, then the names transformers >= 4.52 saves.
_BASE_PREFIXES = (("language_model.", ("model.", "model.language_model.")), ("visual.", ("visual.", "model.visual.")))


def base_keys(name: str) -> tuple[str, ...]:
    """Checkpoint keys that may hold parameter ``name`` of ``Qwen2_5_VLModel`` (``lm_head.weight``: itself).

    >>> base_keys("language_model.layers.0.self_attn.q_proj.weight")
    ('model.layers.0.self_attn.q_proj.weight', 'model.language_model.layers.0.self_attn.q_proj.weight')
    """
    for prefix, stored in _BASE_PREFIXES:
        if name.startswith(prefix):
            return tuple(s + name[len(prefix) :] for s in stored)
    return (name,)


class BaseShards:
    """Read single tensors (or row ranges) of a base model's safetensors shards without loading the model.

    >>> shards = BaseShards(base_path)                                       # doctest: +SKIP
    >>> shards.tensor("lm_head.weight").shape                                # doctest: +SKIP
    torch.Size([152064, 3584])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map", {})
            self.files = {key: self.path / file for key, file in weight_map.items()}
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no safetensors weights in the base model directory {str(self.path)!r}")
            self.files = {}
            for file in files:
                with open_safetensors(file) as f:
                    self.files.update(dict.fromkeys(f.keys(), file))

    def key(self, name: str) -> str | None:
        """The stored key of parameter ``name`` (see :func:`base_keys`), or None when the checkpoint lacks it."""
        return next((k for k in base_keys(name) if k in self.files), None)

    def tensor(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Parameter ``name`` as stored (its dtype), or rows ``[start, stop)`` of it."""
        key = self.key(name)
        if key is None:
            raise CheckpointError(f"the base model in {str(self.path)!r} has no weight for {name!r}")
        with open_safetensors(self.files[key]) as f:
            tensor = f.get_tensor(key) if rows is None else f.get_slice(key)[rows[0] : rows[1]]
        return check_finite(tensor, f"the base weight {key!r}", self.files[key])


def read_projection(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The projection head: ``projection.safetensors`` when present, else the upstream pickle (safely)."""
    safetensors_file = path / PROJECTION_SAFETENSORS
    if safetensors_file.is_file():
        with open_safetensors(safetensors_file) as f:
            missing = {"weight", "bias"} - set(f.keys())
            if missing:
                raise CheckpointError(f"{str(safetensors_file)!r} lacks {sorted(missing)}")
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        return (
            check_finite(weight, "the projection weight", safetensors_file),
            check_finite(bias, "the projection bias", safetensors_file),
            {},
        )
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
    weight, bias = projection["weight"], projection["bias"]
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise CheckpointError(f"{str(pickle_file)!r}: the projection weight and bias are not tensors")
    return (
        check_finite(weight, "the projection weight", pickle_file),
        check_finite(bias, "the projection bias", pickle_file),
        extras,
    )


def read_checkpoint(path: str | Path) -> RelSimCheckpoint:
    """Read a relsim adapter directory (upstream layout, or what relsim writes)."""
    path = Path(path)
    adapter_config = read_adapter_config(path)
    relsim_config = read_relsim_config(path)
    if relsim_config.get("kind") == CAPTIONER_KIND:
        raise CheckpointError(
            f"{str(path)!r} is an anonymous captioner, not a relsim embedder: load it with relsim.load_captioner()"
        )
    weight, bias, extras = read_projection(path)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{str(path)!r}: projection weight {tuple(weight.shape)} and bias {tuple(bias.shape)}")
    query_token_id = relsim_config.get("query_token_id", extras.get("query_token_id"))
    if query_token_id is not None and (isinstance(query_token_id, bool) or not isinstance(query_token_id, int)):
        raise CheckpointError(f"{str(path)!r}: query_token_id must be an integer, got {query_token_id!r}")
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


def write_upstream_projection(path: str | Path, weight: torch.Tensor, bias: torch.Tensor, query_token_id: int) -> Path:
    """Write ``projection_and_config.pt`` as upstream reads it: plain tensors and ints (``weights_only``-safe)."""
    out = Path(path) / PROJECTION_PICKLE
    blob = {
        "projection": {"weight": weight.detach().cpu().contiguous(), "bias": bias.detach().cpu().contiguous()},
        "query_token_id": int(query_token_id),
        "hidden_size": int(weight.shape[1]),
        "projection_dim": int(weight.shape[0]),
    }
    torch.save(blob, out)
    return out


def write_adapter(path: str | Path, peft_model, *, base_model: str, base_revision: str | None) -> Path:
    """Write a peft LoRA adapter as upstream's checkpoints hold it (safetensors, no embedding tables) with
    ``adapter_config.json`` naming ``base_model``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
    config_path = path / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text())
    # As upstream's adapter_config.json: the base repo id and a causal-LM task, no custom-class mapping.
    adapter_config.update(
        base_model_name_or_path=base_model, revision=base_revision, task_type="CAUSAL_LM", auto_mapping=None
    )
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    (path / "README.md").unlink(missing_ok=True)  # peft's empty template; relsim.publish.write_model_card writes ours
    return path


def copy_processor_files(base_path: str | Path, path: str | Path) -> None:
    """Copy the base model's processor files (:data:`PROCESSOR_FILES`) that ``path`` does not have yet."""
    for name in PROCESSOR_FILES:
        source, target = Path(base_path) / name, Path(path) / name
        if source.is_file() and not target.exists():
            shutil.copy(source, target)


def write_adapter_files(path: str | Path, *, peft_model, tokenizer, base) -> str:
    """The files an embedder and a captioner checkpoint share: the LoRA adapter naming the base, the tokenizer and
    the base's processor files. Returns the base's name as recorded (a Hub id, or a local base's absolute path).

    ``base`` is the :class:`relsim.hub.ResolvedRepo` of the base model.
    """
    path = Path(path)
    base_name = str(base.path) if base.is_local else base.name
    # upstream's peft code reads `revision` as a Hub revision: a local base's content hash stays out of it
    write_adapter(path, peft_model, base_model=base_name, base_revision=None if base.is_local else base.revision)
    tokenizer.save_pretrained(str(path))
    copy_processor_files(base.path, path)
    return base_name


def write_checkpoint(
    path: str | Path,
    *,
    peft_model,
    projection: nn.Linear,
    query_token_id: int,
    tokenizer,
    base,
    recipe: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a complete relsim checkpoint (the layout above) that ``relsim.load(path)`` and upstream both read.

    ``base`` is the :class:`relsim.hub.ResolvedRepo` of the base model.

    >>> write_checkpoint("run/final", peft_model=m.peft, projection=m.projection,           # doctest: +SKIP
    ...                  query_token_id=151665, tokenizer=tok, base=base, recipe=cfg.to_dict())
    """
    from . import __version__

    path = Path(path)
    base_name = write_adapter_files(path, peft_model=peft_model, tokenizer=tokenizer, base=base)
    weight = projection.weight.detach().float().cpu().contiguous()
    bias = projection.bias.detach().float().cpu().contiguous()
    write_projection(path, weight, bias)
    write_upstream_projection(path, weight, bias, query_token_id)
    write_relsim_config(
        path,
        {
            "base_model": base_name,
            "base_revision": base.revision,
            "query_token_id": int(query_token_id),
            "hidden_size": int(weight.shape[1]),
            "projection_dim": int(weight.shape[0]),
            "mode": "train",
            "recipe": recipe,
            "relsim_version": __version__,
            **(extra or {}),
        },
    )
    return path


#: ``relsim_config.json``'s ``kind`` of an anonymous-captioner checkpoint (an embedder's has none).
CAPTIONER_KIND = "anonymous-captioner"
#: ``relsim_config.json``'s ``kind`` of a distilled student (:mod:`relsim.student`).
STUDENT_KIND = "student"


def write_captioner_checkpoint(
    path: str | Path,
    *,
    peft_model,
    tokenizer,
    base,
    recipe: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an anonymous-captioner checkpoint in the published captioner's layout (``adapter_config.json``,
    ``adapter_model.safetensors`` with LoRA factors only, tokenizer and processor files; no pickles), which
    ``relsim.load_captioner(path)`` and upstream's peft code read, plus ``relsim_config.json`` (``kind``, base id
    and revision, prompt, recipe, evaluation, version) for the model card and ``relsim push-to-hub``.

    >>> write_captioner_checkpoint("run/final", peft_model=m.peft, tokenizer=tok, base=base,  # doctest: +SKIP
    ...                            recipe=cfg.to_dict())
    """
    from . import __version__

    path = Path(path)
    base_name = write_adapter_files(path, peft_model=peft_model, tokenizer=tokenizer, base=base)
    config = {"kind": CAPTIONER_KIND, "base_model": base_name, "base_revision": base.revision, "recipe": recipe}
    write_relsim_config(path, {**config, "relsim_version": __version__, **(extra or {})})
    return path


__all__ = [
    "QUERY_TOKEN",
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
    "PROJECTION_SAFETENSORS",
    "PROJECTION_PICKLE",
    "RELSIM_CONFIG",
    "TRAINER_STATE_DIR",
    "PROCESSOR_FILES",
    "LoraWeights",
    "RelSimCheckpoint",
    "module_path",
    "read_json",
    "open_safetensors",
    "check_finite",
    "read_adapter_config",
    "read_lora",
    "read_lm_head",
    "base_keys",
    "BaseShards",
    "read_projection",
    "read_checkpoint",
    "merge_lora",
    "write_projection",
    "write_relsim_config",
    "write_upstream_projection",
    "write_adapter",
    "copy_processor_files",
    "write_adapter_files",
    "write_checkpoint",
    "CAPTIONER_KIND",
    "write_captioner_checkpoint",
]
