"""The Hub's read side: resolve a repo id or local directory to files on disk (with the exact revision used),
and the content revision of a local directory. Publishing (convert, model cards, push) is relsim.publish.

Everything goes through ``huggingface_hub``: its cache, ``HF_HUB_OFFLINE``, tokens and progress bars; every
call identifies itself as ``library_name="relsim"`` with relsim's version.

Example:
    >>> repo = resolve("thaoshibe/relsim-qwenvl25-lora")          # doctest: +SKIP
    >>> repo.path, repo.revision                                     # doctest: +SKIP
    (PosixPath('~/.cache/huggingface/hub/models--thaoshibe--.../snapshots/<sha>'), '<sha>')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from . import __version__
from .errors import ArgumentError, MissingFileError, ModelNotFoundError
from .registry import DOWNLOADS

#: How relsim identifies itself to the Hub (as open_clip and timm do).
LIBRARY = {"library_name": "relsim", "library_version": __version__}

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


@dataclass(frozen=True)
class ResolvedRepo:
    """A model directory on disk and where it came from."""

    name: str
    """A Hub repo id, or the absolute path of a local directory."""
    path: Path
    """The directory holding the files."""
    revision: str | None
    """The commit hash of a Hub snapshot; for a local directory its content hash (``sha256:...``, see
    :func:`content_revision`), so a checkpoint rewritten in place is a new revision."""
    is_local: bool = False
    """A local directory rather than a Hub snapshot."""


#: Files larger than this are identified by size and their first and last MiB rather than hashed whole
#: (a 16 GB base shard would take a minute); every relsim adapter file is far smaller.
_FULL_HASH_LIMIT = 1 << 30
_SAMPLE = 1 << 20


def _file_digest(path: Path, size: int) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            digest.update(f.read(_SAMPLE))
    return digest.digest()


def _hash_cache_file() -> Path:
    root = os.environ.get("RELSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "relsim"
    )
    return Path(root) / "content-revisions.json"


def _read_hash_cache() -> dict:
    try:
        cache = json.loads(_hash_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_hash_cache(key: str, entry: dict) -> None:
    """Best effort (a read-only home only costs a re-hash next time); atomic, last writer wins."""
    file = _hash_cache_file()
    try:
        cache = _read_hash_cache()
        cache[key] = entry
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        os.replace(tmp, file)
    except OSError:
        pass


def content_revision(path: str | Path, patterns: list[str] | None = None) -> str:
    """``sha256:<40 hex>`` over the names and contents of the files of ``path`` that match ``patterns``.

    The revision of a local checkpoint: retraining into the same folder changes it, so embeddings computed
    before and after are never mixed. Cached by (name, size, mtime) of each file, so a reload costs nothing.

    >>> content_revision("run/final", ADAPTER_FILES)                 # doctest: +SKIP
    'sha256:6f1c...'
    """
    path = Path(path).resolve()
    files = sorted(
        f for f in path.iterdir() if f.is_file() and (patterns is None or any(fnmatch(f.name, p) for p in patterns))
    )
    stamp = [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]
    key = f"{path}|{','.join(patterns or ['*'])}"
    cached = _read_hash_cache().get(key)
    if isinstance(cached, dict) and cached.get("stamp") == stamp:
        return str(cached["revision"])
    digest = hashlib.sha256()
    for f, (name, size, _) in zip(files, stamp, strict=True):
        digest.update(f"{name}\0{size}\0".encode())
        digest.update(_file_digest(f, size))
    revision = "sha256:" + digest.hexdigest()[:40]
    _write_hash_cache(key, {"stamp": stamp, "revision": revision})
    return revision


#: What to do about a repo missing from the cache in offline mode when nothing says which model it is
#: (``relsim download`` says something else).
OFFLINE_ADVICE = "fetch it once online with `relsim download` (see `relsim download --help`) or pass a local directory."


def download_command(what: str, name: str | Path | None = None, revision: str | None = None) -> str:
    """The ``relsim download`` command line that fetches ``name`` (at ``revision``) as ``what`` (a key of
    :data:`relsim.registry.DOWNLOADS`); the options are left out where they are the defaults.

    >>> download_command("captioner")
    'relsim download captioner'
    >>> download_command("clip", "me/my-clip", "v2")
    'relsim download clip --clip-model me/my-clip --clip-revision v2'
    """
    name_option, revision_option, default = DOWNLOADS[what]
    words = ["relsim", "download", what]
    if name is not None and str(name) != default:
        words += [name_option, str(name)]
    if revision is not None:
        words += [revision_option, revision]
    return shlex.join(words)


def download_advice(what: str, name: str | Path | None = None, revision: str | None = None) -> str:
    """What to do about ``name`` missing from the cache offline: the exact :func:`download_command` to run online.

    >>> download_advice("text")
    'fetch it once online with `relsim download text` or pass a local directory.'
    """
    return f"fetch it once online with `{download_command(what, name, revision)}` or pass a local directory."


def resolve(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
    offline_advice: str | None = None,
) -> ResolvedRepo:
    """Find ``name_or_path`` locally or download it (once, into the HF cache) and report its commit.

    A path that exists is used as it is; its revision is its content hash (:func:`content_revision` over
    the files ``allow_patterns`` selects), and a ``revision`` given for it must be that hash. Anything else
    is a Hub repo id: ``revision`` is a branch, tag or commit hash; ``local_files_only=None`` follows
    ``HF_HUB_OFFLINE``. A repo that is neither cached nor downloadable is a :class:`ModelNotFoundError`; in
    offline mode its message ends with ``offline_advice`` (default: the ``relsim download`` command that fetches
    it, for an embedder adapter or a base model, known by ``allow_patterns``; else :data:`OFFLINE_ADVICE`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None and not revision.startswith("sha256:"):
            raise ArgumentError(f"revision={revision!r} was given for the local directory {str(path)!r}")
        found = content_revision(path, allow_patterns)
        if revision is not None and revision != found:
            raise ModelNotFoundError(
                f"{str(path.resolve())!r} has changed: its content is {found}, not {revision} "
                "(the checkpoint was rewritten in place)"
            )
        return ResolvedRepo(str(path.resolve()), path.resolve(), found, is_local=True)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MissingFileError(f"{name!r} is neither a model directory nor a Hub repo id ('owner/name')")
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
                **LIBRARY,
                **kwargs,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, ValueError) as err:
        where = f"{name!r} at revision {revision!r}" if revision else repr(name)
        message = f"could not get {where} from the Hugging Face Hub or its cache."
        if constants.HF_HUB_OFFLINE or local_files_only:
            # huggingface_hub's own text only adds "pass 'local_files_only=False'", which is no advice here
            if offline_advice is None:
                known = {"embedder": ADAPTER_FILES, "base": BASE_FILES}
                what = next((key for key, files in known.items() if allow_patterns is files), None)
                offline_advice = OFFLINE_ADVICE if what is None else download_advice(what, name, revision)
            message += f" Offline mode is on (HF_HUB_OFFLINE / local_files_only): {offline_advice}"
        else:
            message += f" ({err})"
        raise ModelNotFoundError(message) from err
    commit = snapshot.name if _COMMIT.match(snapshot.name) else None
    return ResolvedRepo(name, snapshot, commit)


__all__ = [
    "LIBRARY",
    "ADAPTER_FILES",
    "BASE_FILES",
    "ResolvedRepo",
    "content_revision",
    "OFFLINE_ADVICE",
    "resolve",
]
