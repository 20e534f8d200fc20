"""``relsim.load``: resolve, read and assemble a RelSimModel (the factory, open_clip-style).

Example:
    >>> model = relsim.load()                                       # doctest: +SKIP
    >>> model = relsim.load("path/to/checkpoint", device="cpu")     # doctest: +SKIP
    >>> model.fingerprint["revision"]                               # doctest: +SKIP
    '<commit of thaoshibe/relsim-qwenvl25-lora>'
"""

from __future__ import annotations

import importlib.util
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from . import __version__, fastpath
from .checkpoint import QUERY_TOKEN, CheckpointError, merge_lora, open_safetensors, read_checkpoint, read_json
from .encoder import Prompt, RelSimModel
from .errors import ModelNotFoundError
from .hub import ADAPTER_FILES, BASE_FILES, ResolvedRepo, resolve
from .preprocess import MODES
from .quiet import quiet_transformers
from .registry import DEFAULT_BASE_MODEL, DEFAULT_MODEL, PRETRAINED  # noqa: F401  (re-exported)
from .student import is_student, load_student

_CACHE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_CACHE_LOCK = threading.Lock()


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def canonical_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> the default; ``"cuda"`` -> ``cuda:<current>`` so equal devices compare equal."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``None`` -> the device's default; ``"bf16"``, ``"float16"``, ... -> the torch dtype (float32/bf16/fp16 only)."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str):
        names = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "half": torch.float16,
        }
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attention 2 when it is installed and usable, else PyTorch SDPA."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


@dataclass(frozen=True)
class BaseSource:
    """Where a loaded model's base weights came from and what relsim changed in them: what a second adapter on
    the same base (the captioner) needs to run on the body already in memory."""

    name: str
    """The base model's Hub repo id, or its directory."""
    path: Path
    """The directory holding its safetensors shards."""
    merged_modules: tuple[str, ...]
    """Modules of the body whose weights hold the adapter's merged LoRA (no longer the base's)."""
    embedding_rows: int
    """Leading rows of the input embedding replaced by the adapter's table (0: none)."""
    adapter_base: str | None = None
    """The base the adapter names (``base_model_name_or_path``): what it was trained on."""
    cache_dir: str | Path | None = None
    local_files_only: bool | None = None


def _device_map(device: torch.device) -> dict | None:
    """Load straight onto an accelerator when transformers can (it needs ``accelerate`` for that);
    otherwise the weights pass through host memory once and are then moved."""
    if device.type == "cpu" or importlib.util.find_spec("accelerate") is None:
        return None
    return {"": device}


def load(
    model: str | Path = DEFAULT_MODEL,
    *,
    base_model: str | Path | None = None,
    revision: str | None = None,
    base_revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    mode: str = "train",
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    compile: bool = False,
) -> RelSimModel:
    """Load a relsim model: a Hub repo id or local directory of a relsim adapter on its base model.

    ``base_model=None`` takes the base named in the adapter's ``adapter_config.json``. ``device`` defaults
    to CUDA when available; ``dtype`` to bfloat16 on CUDA and float32 elsewhere. ``mode`` is ``"train"``
    (448x448 centre crop, what the model was trained on) or ``"native"`` (upstream inference resolution).
    ``compile=True`` wraps the vision blocks and decoder layers in ``torch.compile`` (worth it for the fixed
    shapes of ``train`` mode on a GPU; the first batch pays the compilation). Loading the same model twice in
    one process returns the same instance.

    >>> model = relsim.load()                                       # doctest: +SKIP
    >>> model.score("a.jpg", "b.jpg")                               # doctest: +SKIP
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = canonical_device(device)
    dtype = parse_dtype(dtype, device)
    pinned = PRETRAINED.get(str(model), {})
    revision = revision if revision is not None else pinned.get("revision")
    hub = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}

    if is_student(Path(model).expanduser()):  # a distilled student (relsim.student): its own, small loader
        return load_student(model, revision=revision, device=device, dtype=dtype, **hub)
    adapter = resolve(model, revision=revision, allow_patterns=ADAPTER_FILES, **hub)
    if is_student(adapter.path):
        return load_student(model, revision=revision, device=device, dtype=dtype, **hub)
    checkpoint = read_checkpoint(adapter.path)
    base_name = base_model if base_model is not None else checkpoint.base_model or pinned.get("base_model")
    if base_name is None:
        raise CheckpointError(f"{adapter.name!r} names no base model; pass base_model=")
    if base_revision is None and base_model is None:
        base_revision = checkpoint.config.get("base_revision") or pinned.get("base_revision")
    base = resolve_base(base_name, base_revision, named_by=None if base_model is not None else adapter.name, **hub)

    # revisions identify content (Hub commits, or content hashes of local directories)
    key = (adapter.path, adapter.revision, base.path, base.revision, mode, dtype, str(device), compile)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        # a shared instance that someone moved elsewhere (e.g. a metric's .to()) is not what was asked for
        if cached is not None and cached.device == device:
            return cached
        fingerprint = {
            "model": adapter.name,
            "revision": adapter.revision,
            "base_model": base.name,
            "base_revision": base.revision,
            "mode": mode,
            "dtype": str(dtype).removeprefix("torch."),
            "relsim_version": __version__,
        }
        instance = assemble(
            adapter.path, base.path, checkpoint, device=device, dtype=dtype, mode=mode, fingerprint=fingerprint
        )
        if compile:
            fastpath.compile_body(instance.body)
        table = checkpoint.embedding_table
        instance.base_source = BaseSource(
            name=base.name,
            path=base.path,
            merged_modules=tuple(checkpoint.lora.factors),
            embedding_rows=0 if table is None else int(table.shape[0]),
            adapter_base=checkpoint.base_model,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        _CACHE[key] = instance
        return instance


def resolve_base(name: str | Path, revision: str | None, *, named_by: str | None = None, **hub) -> ResolvedRepo:
    """The base model's files. ``named_by``: the adapter that named this base (rather than the caller); a base
    that cannot be found then suggests ``base_model=`` (``--base-model``)."""
    try:
        return resolve(name, revision=revision, allow_patterns=BASE_FILES, **hub)
    except (ModelNotFoundError, FileNotFoundError) as err:
        if named_by is None:
            raise
        raise ModelNotFoundError(
            f"{err} -- {named_by!r} names the base model {name!r}; pass base_model= (--base-model) "
            "to load the base from elsewhere"
        ) from err


def load_tokenizer(path: Path):
    """The tokenizer a checkpoint ships, never running code it names (``auto_map``): a tokenizer that needs its
    own code, or files that are missing or broken, are a :class:`CheckpointError` naming the directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError, TypeError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"the tokenizer in {str(path)!r} cannot be loaded (relsim needs tokenizer.json or vocab.json + "
            f"merges.txt, and never runs a checkpoint's own code): {reason}"
        ) from None


def check_base_files(path: Path) -> None:
    """Fail early, naming the file, on a base directory that transformers would misread: no or a broken
    ``config.json`` (transformers then builds a default config of a much larger model), another architecture,
    pickled weights, a missing or truncated shard."""
    config = read_json(path / "config.json")
    if config.get("model_type") not in ("qwen2_5_vl",):
        raise CheckpointError(
            f"{str(path / 'config.json')!r} describes model_type {config.get('model_type')!r}, not Qwen2.5-VL"
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{str(index)!r} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
    elif (path / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    elif any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(
            f"{str(path)!r} holds only pickled weights (*.bin); relsim loads safetensors only "
            "(convert them with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    else:
        raise CheckpointError(f"{str(path)!r} has no weights (model.safetensors or model.safetensors.index.json)")
    for shard in shards:
        if not (path / shard).is_file():
            raise CheckpointError(f"{shard} is listed in {str(index)!r} but missing from {str(path)!r}")
        with open_safetensors(path / shard):  # the header check catches truncated and garbage files
            pass


def load_body(path: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The Qwen2.5-VL vision tower + language model, without the LM head (never read from disk)."""
    from transformers import Qwen2_5_VLModel

    check_base_files(path)

    try:
        with quiet_transformers():  # the load report lists lm_head as unexpected: that is the point
            body, info = Qwen2_5_VLModel.from_pretrained(
                path,
                dtype=dtype,
                attn_implementation=attn_implementation(device, dtype),
                device_map=_device_map(device),
                output_loading_info=True,
                trust_remote_code=False,
            )
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"the base model in {str(path)!r} cannot be loaded: {reason}") from None
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.startswith("lm_head")]
    if info.get("missing_keys") or unexpected or info.get("mismatched_keys"):
        raise CheckpointError(
            f"the base model in {str(path)!r} does not fit Qwen2.5-VL: missing {sorted(info['missing_keys'])[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}, mismatched {sorted(info.get('mismatched_keys', []))[:5]}"
        )
    return body.to(device)


def assemble(
    adapter_path: Path,
    base_path: Path,
    checkpoint,
    *,
    device: torch.device,
    dtype: torch.dtype,
    mode: str,
    fingerprint: dict,
) -> RelSimModel:
    """Base body + merged LoRA + ``<|query|>`` row + projection -> RelSimModel."""
    tokenizer = load_tokenizer(adapter_path)  # small and cheap: checked before the base's weights are read
    query_token_id = tokenizer.convert_tokens_to_ids(QUERY_TOKEN)
    if query_token_id is None or query_token_id == tokenizer.unk_token_id:
        raise CheckpointError(f"the tokenizer in {str(adapter_path)!r} has no {QUERY_TOKEN} token")
    if checkpoint.query_token_id is not None and query_token_id != checkpoint.query_token_id:
        raise CheckpointError(
            f"the tokenizer in {str(adapter_path)!r} maps {QUERY_TOKEN} to {query_token_id}, "
            f"the checkpoint says {checkpoint.query_token_id}"
        )
    body = load_body(base_path, device, dtype)
    merge_lora(body, checkpoint.lora)
    fastpath.optimize(body)  # one batched SDPA call per vision layer instead of one per window (exact)
    embed = body.language_model.embed_tokens
    if query_token_id >= embed.num_embeddings:
        raise CheckpointError(
            f"{QUERY_TOKEN} is token {query_token_id}, the base model has {embed.num_embeddings} embeddings"
        )
    table = checkpoint.embedding_table
    if table is not None:
        if table.shape[0] > embed.num_embeddings or table.shape[1] != embed.embedding_dim:
            raise CheckpointError(
                f"the adapter's embedding table is {tuple(table.shape)}, "
                f"the base model's is {tuple(embed.weight.shape)}"
            )
        with torch.no_grad():
            embed.weight[: table.shape[0]] = table.to(embed.weight)
    hidden = body.config.text_config.hidden_size
    weight = checkpoint.projection_weight
    if weight.shape[1] != hidden:
        raise CheckpointError(f"the projection takes {weight.shape[1]} inputs, the base model gives {hidden}")
    projection = nn.Linear(hidden, weight.shape[0], device=device, dtype=torch.float32)
    with torch.no_grad():
        projection.weight.copy_(weight.float())
        projection.bias.copy_(checkpoint.projection_bias.float())

    prompt = Prompt.from_tokenizer(tokenizer, QUERY_TOKEN, body.config.image_token_id)
    return RelSimModel(body, projection, prompt, mode=mode, fingerprint=fingerprint)
