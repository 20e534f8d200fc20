"""Exact-resume trainer state inside a ``checkpoint-{step}`` directory (the model files themselves are written
by :func:`relsim.checkpoint.write_checkpoint`)::

    trainer_state/
        trainable.safetensors   LoRA + head parameters
        optimizer.safetensors   AdamW state tensors (step, exp_avg, exp_avg_sq per parameter)
        optimizer.json          AdamW hyper-parameters (param_groups) and any non-tensor state
        state.json              step, data position, scheduler, counters, config
        rng-{rank}.safetensors / rng-{rank}.json   torch (CPU, CUDA), numpy and Python RNG states

Example:
    >>> save_state("run/checkpoint-100", model, optimizer, scheduler, state, rank=0, main=True)  # doctest: +SKIP
    >>> load_state("run/checkpoint-100", model, optimizer, scheduler, device=device)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import TRAINER_STATE_DIR as STATE_DIR
from ..errors import ArgumentError


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
    save_optimizer(out, optimizer)
    full = {**state, "scheduler": scheduler.state_dict()}
    (out / "state.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")


def load_state(directory: str | Path, model, optimizer, scheduler, *, device: torch.device) -> dict[str, Any]:
    """Restore parameters, optimizer and scheduler from ``directory``; returns state.json (RNG: :func:`load_rng`)."""
    src = Path(directory) / STATE_DIR
    state = json.loads((src / "state.json").read_text())
    load_trainable(directory, model)
    load_optimizer(src, optimizer, device)
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def save_optimizer(directory: Path, optimizer) -> None:
    """The optimizer's state as safetensors (tensors, bit for bit) + JSON (everything else); no pickle."""
    state_dict = optimizer.state_dict()
    tensors, other = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    meta = {"param_groups": state_dict["param_groups"], "state": other, "indices": list(state_dict["state"])}
    (directory / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(directory: Path, optimizer, device: torch.device) -> None:
    if not (directory / "optimizer.safetensors").is_file():  # written by relsim <= 0.1.0
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=device, weights_only=True))
        return
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"), device=str(device))
    state: dict[int, dict[str, Any]] = {int(i): dict(meta["state"].get(str(i), {})) for i in meta["indices"]}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    groups = meta["param_groups"]
    for saved, live in zip(groups, optimizer.param_groups, strict=False):  # JSON made tuples (betas) lists
        for key, value in saved.items():
            if isinstance(live.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_trainable(directory: str | Path, model) -> None:
    """Copy a checkpoint's trained parameters (LoRA + head) into a freshly built model."""
    src = Path(directory) / STATE_DIR / "trainable.safetensors"
    saved = load_file(str(src))
    params = model.trainable()
    if set(saved) != set(params):
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise ArgumentError(f"{src}: trainable parameters differ (missing {missing[:3]}, unexpected {unexpected[:3]})")
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


__all__ = [
    "save_state",
    "load_state",
    "save_optimizer",
    "load_optimizer",
    "load_trainable",
    "save_rng",
    "load_rng",
    "list_checkpoints",
]
