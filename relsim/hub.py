"""Resolve a Hub repo id or a local directory to files on disk, with the exact revision used.

Everything goes through ``huggingface_hub``: its cache, ``HF_HUB_OFFLINE``, tokens and progress bars.

Example:
    >>> repo = resolve("thaoshibe/relsim-qwenvl25-lora")          # doctest: +SKIP
    >>> repo.path, repo.revision                                     # doctest: +SKIP
    (PosixPath('~/.cache/huggingface/hub/models--thaoshibe--.../snapshots/<sha>'), '<sha>')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: Files a relsim adapter repo needs (no README images, no training logs).
ADAPTER_FILES = [
    "*.json",
    "*.jinja",
    "*.txt",
    "*.model",
    "adapter_model.safetensors",
    "projection.safetensors",
    "projection_and_config.pt",
]
#: Files a base model repo needs: config, weights, tokenizer.
BASE_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]


class ModelNotFoundError(OSError):
    """A Hub repo or revision could not be found online or in the local cache."""


@dataclass(frozen=True)
class ResolvedRepo:
    """A model directory on disk and where it came from."""

    name: str
    """A Hub repo id, or the absolute path of a local directory."""
    path: Path
    """The directory holding the files."""
    revision: str | None
    """The commit hash of a Hub snapshot, ``None`` for a local directory."""

    @property
    def is_local(self) -> bool:
        return self.revision is None


def resolve(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
) -> ResolvedRepo:
    """Find ``name_or_path`` locally or download it (once, into the HF cache) and report its commit.

    A path that exists is used as it is. Anything else is a Hub repo id: ``revision`` is a branch, tag or
    commit hash; ``local_files_only=None`` follows ``HF_HUB_OFFLINE``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} was given for the local directory {str(path)!r}")
        return ResolvedRepo(str(path.resolve()), path.resolve(), None)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name!r} is neither a model directory nor a Hub repo id ('owner/name')")
    if local_files_only is None and constants.HF_HUB_OFFLINE:
        # huggingface_hub 1.3x lists the repo tree online for a commit-hash revision even when offline,
        # unless told to stay local.
        local_files_only = True
    kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        snapshot = Path(
            snapshot_download(
                name,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=allow_patterns,
                **kwargs,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, ValueError) as err:
        offline = constants.HF_HUB_OFFLINE or local_files_only
        hint = (
            " Offline mode is on (HF_HUB_OFFLINE / local_files_only): fetch it once online with "
            "`relsim download` or pass a local directory."
            if offline
            else ""
        )
        where = f"{name!r} at revision {revision!r}" if revision else repr(name)
        message = f"could not get {where} from the Hugging Face Hub or its cache.{hint} ({err})"
        raise ModelNotFoundError(message) from err
    commit = snapshot.name if _COMMIT.match(snapshot.name) else None
    return ResolvedRepo(name, snapshot, commit)
