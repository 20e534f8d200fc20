"""``relsim.load``: resolve, read and assemble a RelSimModel (the factory, open_clip-style).

Example:
    >>> model = relsim.load()                                       # doctest: +SKIP
    >>> model = relsim.load("path/to/checkpoint", device="cpu")     # doctest: +SKIP
    >>> model.fingerprint["revision"]                               # doctest: +SKIP
    '<commit of thaoshibe/relsim-qwenvl25-lora>'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__, fastpath
from .backbone import ModelCache, canonical_device, load_body, load_tokenizer, parse_dtype, resolve_base
from .checkpoint import QUERY_TOKEN, CheckpointError, merge_lora, read_checkpoint
from .encoder import Prompt, RelSimModel
from .errors import ArgumentError
from .hub import ADAPTER_FILES, resolve
from .preprocess import MODES
from .registry import DEFAULT_BASE_MODEL, DEFAULT_MODEL, PRETRAINED  # noqa: F401  (re-exported)
from .student import is_student, load_student

_CACHE = ModelCache()


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
        raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
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
    key = (adapter.path, adapter.revision, base.path, base.revision, mode, dtype, compile)

    def build(device: torch.device) -> RelSimModel:
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
        return instance

    return _CACHE.get(key, device, build)


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


__all__ = [
    "BaseSource",
    "load",
    "assemble",
]
