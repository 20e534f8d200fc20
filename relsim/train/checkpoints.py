"""Write trained checkpoints (the upstream layout plus relsim's files) and exact-resume trainer state.

A checkpoint directory::

    adapter_config.json, adapter_model.safetensors   LoRA only (peft, safetensors; no embedding tables)
    projection.safetensors                           the head, float32 (what relsim reads)
    projection_and_config.pt                         the head for upstream tools (plain tensors and ints)
    tokenizer files with <|query|>, preprocessor_config.json, chat_template.jinja
    relsim_config.json                               base id + revision, query token, dims, recipe, version
    trainer_state/                                   only in checkpoint-* dirs: what resuming needs
        trainable.safetensors   LoRA + head parameters
        optimizer.pt            AdamW state (tensors and numbers only: loaded with weights_only=True)
        state.json              step, data position, scheduler, counters, config
        rng-{rank}.safetensors / rng-{rank}.json   torch (CPU, CUDA), numpy and Python RNG states

Example:
    >>> save_model(model, "run/final", tokenizer=tok, base=base, recipe=cfg.to_dict())   # doctest: +SKIP
    >>> relsim.load("run/final")                                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..checkpoint import ADAPTER_CONFIG, PROJECTION_PICKLE, write_projection, write_relsim_config
from ..hub import ResolvedRepo

STATE_DIR = "trainer_state"
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja")


def save_model(
    model,
    directory: str | Path,
    *,
    tokenizer,
    base: ResolvedRepo,
    recipe: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the inference checkpoint of ``model`` (a :class:`relsim.train.model.TrainModel`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base_name = base.name if base.revision is not None else str(base.path)
    model.peft.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    config_path = directory / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text())
    # As upstream's adapter_config.json: the base repo id and a causal-LM task, no custom-class mapping.
    adapter_config.update(
        base_model_name_or_path=base_name, revision=base.revision, task_type="CAUSAL_LM", auto_mapping=None
    )
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    (directory / "README.md").unlink(missing_ok=True)  # peft's empty template; hub.model_card writes ours

    weight = model.projection.weight.detach().float().cpu().contiguous()
    bias = model.projection.bias.detach().float().cpu().contiguous()
    write_projection(directory, weight, bias)
    query_id = model.prompt.query_token_id
    hidden = weight.shape[1]
    blob = {
        "projection": {"weight": weight, "bias": bias},
        "query_token_id": query_id,
        "hidden_size": hidden,
        "projection_dim": weight.shape[0],
    }
    torch.save(blob, directory / PROJECTION_PICKLE)

    tokenizer.save_pretrained(str(directory))
    for name in PROCESSOR_FILES:
        if (base.path / name).is_file() and not (directory / name).exists():
            shutil.copy(base.path / name, directory / name)
    write_relsim_config(
        directory,
        {
            "base_model": base_name,
            "base_revision": base.revision,
            "query_token_id": query_id,
            "hidden_size": hidden,
            "projection_dim": weight.shape[0],
            "mode": "train",
            "recipe": recipe,
            "relsim_version": __version__,
            **(extra or {}),
        },
    )
    return directory


# -- trainer state ------------------------------------------------------------------------------------


def save_state(
    directory: str | Path, model, optimizer, scheduler, state: dict[str, Any], *, rank: int, main: bool
) -> None:
    """Write what an exact resume needs. Every rank writes its RNG states; the main rank the rest."""
    out = Path(directory) / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_rng(out, rank)
    if not main:
        return
    trainable = {k: v.detach().cpu().contiguous() for k, v in model.trainable().items()}
    save_file(trainable, str(out / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), out / "optimizer.pt")
    full = {**state, "scheduler": scheduler.state_dict()}
    (out / "state.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")


def load_state(directory: str | Path, model, optimizer, scheduler, *, device: torch.device) -> dict[str, Any]:
    """Restore parameters, optimizer and scheduler from ``directory``; returns state.json (RNG: :func:`load_rng`)."""
    src = Path(directory) / STATE_DIR
    state = json.loads((src / "state.json").read_text())
    load_trainable(directory, model)
    optimizer.load_state_dict(torch.load(src / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def load_trainable(directory: str | Path, model) -> None:
    """Copy a checkpoint's trained parameters (LoRA + head) into a freshly built model."""
    src = Path(directory) / STATE_DIR / "trainable.safetensors"
    saved = load_file(str(src))
    params = model.trainable()
    if set(saved) != set(params):
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise ValueError(f"{src}: trainable parameters differ (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


def save_rng(directory: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    save_file(tensors, str(directory / f"rng-{rank}.safetensors"))
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    info = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    (directory / f"rng-{rank}.json").write_text(json.dumps(info))


def load_rng(directory: str | Path, rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for this rank."""
    src = Path(directory) / STATE_DIR
    if not (src / f"rng-{rank}.safetensors").is_file():
        return False
    tensors = load_file(str(src / f"rng-{rank}.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    info = json.loads((src / f"rng-{rank}.json").read_text())
    kind, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    return True


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-{step}`` directories, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / STATE_DIR / "state.json").is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]
