"""``relsim convert``: turn an upstream checkpoint into relsim's layout.

Adds ``projection.safetensors`` (the head, read from the pickle with ``weights_only=True``, same dtype)
and ``relsim_config.json`` (base id and revision, query token, dims, version). Everything else is
copied unchanged, so upstream tools still read the result. The checkpoint is validated first (every
adapter key must land on a Qwen2.5-VL module).

Example:
    >>> convert("thaoshibe/relsim-qwenvl25-lora", "relsim-converted")      # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import __version__
from ..checkpoint import read_checkpoint, write_projection, write_relsim_config
from ..hub import ADAPTER_FILES, resolve


def convert(
    source: str | Path,
    destination: str | Path | None = None,
    *,
    revision: str | None = None,
    base_model: str | None = None,
    base_revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the relsim layout of ``source`` (a local directory or Hub repo id) to ``destination``.

    Without ``destination`` a local ``source`` is converted in place.
    """
    repo = resolve(source, revision=revision, allow_patterns=ADAPTER_FILES)
    if destination is None:
        if not repo.is_local:
            raise ValueError("a Hub checkpoint needs a destination directory")
        out = repo.path
    else:
        out = Path(destination)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    checkpoint = read_checkpoint(repo.path)
    if out != repo.path:
        out.mkdir(parents=True, exist_ok=True)
        for file in repo.path.iterdir():
            if file.is_file():
                shutil.copy(file, out / file.name)
    write_projection(out, checkpoint.projection_weight, checkpoint.projection_bias)
    previous = checkpoint.config
    write_relsim_config(
        out,
        {
            **previous,
            "base_model": base_model or checkpoint.base_model,
            "base_revision": base_revision if base_model or base_revision else previous.get("base_revision"),
            "query_token_id": checkpoint.query_token_id,
            "hidden_size": int(checkpoint.projection_weight.shape[1]),
            "projection_dim": int(checkpoint.projection_weight.shape[0]),
            "mode": "train",
            "converted_from": {"source": str(source), "revision": repo.revision},
            "relsim_version": __version__,
        },
    )
    return out
