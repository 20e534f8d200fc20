"""Embedding stores: resumable, append-only, multi-writer collections of image embeddings.

A store is a directory::

    meta.json                          format version, model fingerprint, dim, dtype, created_by
    shard-{rank:03d}-{seq:06d}.safetensors   append-only shards, one per ``add`` call
    failures.log                       JSON lines: images that could not be embedded (path, reason)

Each shard is one self-contained safetensors file (there is no sidecar): the tensor ``embeddings``
(n, dim) in the store dtype, and the per-row file records as tensors ``size`` (n,) int64, ``mtime_ns``
(n,) int64, ``sha256`` (n, 32) uint8 and the UTF-8 paths packed in ``path_bytes`` (m,) uint8 with
``path_offsets`` (n + 1,) int64. The header metadata repeats the model fingerprint, rank and seq. A shard
is written to a temporary file in the same directory, fsynced, then published under its final name
without ever overwriting one (``os.link``, else ``os.replace``), so it appears complete or not at all.
Leftover temporary files (``.tmp.*``) are ignored by readers and removed by :meth:`EmbeddingStore.cleanup`.

Rows are read in the order of the shards' ``(seq, rank)`` and, inside a shard, in row order; a later row
for the same path supersedes an earlier one. Ranks (``--shard I/N`` or torchrun's RANK/WORLD_SIZE) write
their own shard files, so N processes can fill one store at once; readers see all shards as one store.

A store can also be a single safetensors file (:meth:`EmbeddingStore.export`), read-only, with the same
tensors plus the store's ``meta.json`` in its header metadata.

Example:
    >>> store = EmbeddingStore.create("embeddings/", model.fingerprint)          # doctest: +SKIP
    >>> todo = store.needs_embedding(paths)                                      # doctest: +SKIP
    >>> store.add([FileRecord.from_path(p) for p in todo], model.embed(todo))    # doctest: +SKIP
    >>> len(store), store.embeddings().shape                                     # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CollectionError, CollectionMismatchError

__all__ = [
    "FORMAT_VERSION",
    "EmbeddingStore",
    "FileRecord",
    "StoreError",
    "StoreMismatchError",
    "file_sha256",
    "parse_shard",
    "shard_from_env",
    "shard_of",
]

FORMAT_VERSION = 1
META_FILE = "meta.json"
FAILURES_FILE = "failures.log"
# Fingerprint keys that must agree for two sets of embeddings to be comparable.
COMPAT_KEYS = ("model", "revision", "base_model", "base_revision", "mode")
_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.safetensors$")
_TMP_PREFIX = ".tmp."
_TMP_SUFFIX = ".part"
_STALE_TMP_SECONDS = 24 * 3600
_NORM_TOLERANCE = 1e-2  # float16 rounding keeps norms within ~1e-3 of 1


StoreError = CollectionError
StoreMismatchError = CollectionMismatchError


def _version() -> str:
    from relsim import __version__

    return __version__


def _norm_path(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _path_resolver() -> Callable[[str | os.PathLike], str]:
    """``os.path.realpath`` for many files: each directory is resolved once (realpath lstat's every
    component, ~25 us a path, which dominates checking a million files)."""
    dirs: dict[str, str] = {}

    def resolve(path: str | os.PathLike) -> str:
        head, tail = os.path.split(os.path.join(os.getcwd(), os.fspath(path)))
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        real_head = dirs.get(head)
        if real_head is None:
            real_head = dirs[head] = os.path.realpath(head)
        full = os.path.join(real_head, tail)
        return os.path.realpath(full) if os.path.islink(full) else full

    return resolve


def file_sha256(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in blocks (constant memory).

    Example:
        >>> file_sha256("cat.jpg")  # doctest: +SKIP
        '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """What the store remembers of an image file: resolved path, size, mtime and content hash."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> FileRecord:
        """Stat and hash a file. Stat comes first: a file changed while hashing looks changed next run.

        Example:
            >>> FileRecord.from_path("cat.jpg").size  # doctest: +SKIP
            48213
        """
        resolved = _norm_path(path)
        st = os.stat(resolved)
        return cls(resolved, int(st.st_size), int(st.st_mtime_ns), file_sha256(resolved))

    @classmethod
    def coerce(cls, item: FileRecord | Mapping[str, Any], index: int = 0) -> FileRecord:
        """Validate a record given as a FileRecord or a mapping with the same keys."""
        if not isinstance(item, FileRecord):
            if not isinstance(item, Mapping):
                raise ValueError(f"records[{index}] is {type(item).__name__}, expected FileRecord or dict")
            missing = [key for key in ("path", "size", "mtime_ns", "sha256") if key not in item]
            if missing:
                raise ValueError(f"records[{index}] lacks {', '.join(missing)}")
            path, sha = _norm_path(item["path"]), str(item["sha256"])
            item = cls(path, int(item["size"]), int(item["mtime_ns"]), sha)
        if not re.fullmatch(r"[0-9a-f]{64}", item.sha256):
            raise ValueError(f"records[{index}].sha256 is not a hex SHA-256: {item.sha256!r}")
        if not os.path.isabs(item.path):
            raise ValueError(f"records[{index}].path is not absolute: {item.path!r}")
        return item

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- sharding


def shard_of(items: Iterable[Any], index: int, count: int) -> list[Any]:
    """The ``index``-th of ``count`` disjoint parts of ``items``: sorted by ``str``, every count-th one.

    The split depends only on the set of items, not on their order, so processes that list the same
    files in a different order still agree.

    Example:
        >>> shard_of(["c", "a", "b", "d"], 1, 2)
        ['b', 'd']
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    ordered = sorted(items, key=str)
    return ordered[index::count]


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based I) into ``(I, N)``.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {spec!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ValueError(f"shard {spec!r}: need 0 <= I < N")
    return index, count


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or ``(0, 1)`` when unset.

    Example:
        >>> shard_from_env({"RANK": "2", "WORLD_SIZE": "4"})
        (2, 4)
    """
    env = os.environ if environ is None else environ
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"RANK/WORLD_SIZE must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return rank, world


# ------------------------------------------------------------------------------------------ fingerprints


def _describe(fp: Mapping[str, Any]) -> str:
    base = f"{fp.get('base_model')}@{fp.get('base_revision')}"
    return f"model {fp.get('model')}@{fp.get('revision')} (base {base}, mode {fp.get('mode')})"


def _compatible(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in COMPAT_KEYS)


# ------------------------------------------------------------------------------------------ file helpers


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(directory: Path) -> Path:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return directory / f"{_TMP_PREFIX}{host}.{os.getpid()}.{secrets.token_hex(6)}{_TMP_SUFFIX}"


def _publish(tmp: Path, final: Path) -> bool:
    """Move a fully written tmp file to ``final`` unless ``final`` exists. True when published."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError as err:  # filesystems without hard links
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if final.exists():
            return False
        os.replace(tmp, final)
        return True
    tmp.unlink()
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission: someone else's live process
        return True
    return True


# ------------------------------------------------------------------------------------------------ shards


@dataclass
class _Shard:
    """One shard's records (its embeddings stay on disk until asked for)."""

    file: Path
    rank: int
    seq: int
    paths: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    sha256: list[str]
    dim: int
    dtype: torch.dtype

    def __len__(self) -> int:
        return len(self.paths)


def _pack_records(records: Sequence[FileRecord]) -> dict[str, torch.Tensor]:
    encoded = [r.path.encode("utf-8") for r in records]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    sha = np.frombuffer(b"".join(bytes.fromhex(r.sha256) for r in records), dtype=np.uint8).copy()
    return {
        "path_bytes": torch.from_numpy(blob),
        "path_offsets": torch.from_numpy(offsets),
        "size": torch.tensor([r.size for r in records], dtype=torch.int64),
        "mtime_ns": torch.tensor([r.mtime_ns for r in records], dtype=torch.int64),
        "sha256": torch.from_numpy(sha.reshape(len(records), 32)),
    }


def _read_shard(file: Path, rank: int, seq: int) -> tuple[_Shard, dict[str, str]]:
    with safe_open(file, framework="pt") as f:
        meta = f.metadata() or {}
        blob = f.get_tensor("path_bytes").numpy().tobytes()
        offsets = f.get_tensor("path_offsets").tolist()
        size = f.get_tensor("size").numpy()
        mtime = f.get_tensor("mtime_ns").numpy()
        sha = f.get_tensor("sha256").numpy()
        emb = f.get_slice("embeddings")
        shape, dtype = emb.get_shape(), emb.get_dtype()
    n = len(offsets) - 1
    if len(shape) != 2 or shape[0] != n or len(size) != n or len(mtime) != n or sha.shape != (n, 32):
        raise StoreError(f"{file.name}: inconsistent row counts")
    # Slicing one decoded string is much faster than decoding 1M slices; byte and char offsets agree for ASCII.
    text = blob.decode("ascii") if blob.isascii() else None
    if text is not None:
        paths = [text[offsets[i] : offsets[i + 1]] for i in range(n)]
    else:
        paths = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    hex_all = sha.tobytes().hex()
    hashes = [hex_all[64 * i : 64 * (i + 1)] for i in range(n)]
    torch_dtype = {"F16": torch.float16, "F32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise StoreError(f"{file.name}: unsupported embeddings dtype {dtype}")
    shard = _Shard(file, rank, seq, paths, size, mtime, hashes, int(shape[1]), torch_dtype)
    return shard, meta


@dataclass
class _View:
    """The live rows: the last entry of every path, in shard order."""

    paths: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    sha256: list[str]
    index: dict[str, int]
    keep: list[tuple[_Shard, np.ndarray]]  # per shard, the row numbers still live
    num_rows: int


def _build_view(shards: Sequence[_Shard]) -> _View:
    total = sum(len(shard) for shard in shards)
    # dict(zip(...)) keeps the last row of each path, in C: no Python-level loop over a million rows.
    latest = dict(zip(itertools.chain.from_iterable(s.paths for s in shards), itertools.count()))
    empty = np.zeros(0, dtype=np.int64)
    if len(latest) == total:  # nothing superseded: every row is live
        keep = [(shard, np.arange(len(shard))) for shard in shards if len(shard)]
        return _View(
            paths=list(latest),
            size=np.concatenate([s.size for s in shards]) if shards else empty,
            mtime_ns=np.concatenate([s.mtime_ns for s in shards]) if shards else empty,
            sha256=list(itertools.chain.from_iterable(s.sha256 for s in shards)),
            index=latest,
            keep=keep,
            num_rows=total,
        )
    live = np.zeros(total, dtype=bool)
    live[np.fromiter(latest.values(), dtype=np.int64, count=len(latest))] = True
    paths: list[str] = []
    sha: list[str] = []
    sizes, mtimes, keep = [], [], []
    offset = 0
    for shard in shards:
        rows = np.flatnonzero(live[offset : offset + len(shard)])
        offset += len(shard)
        if len(rows) == 0:
            continue
        keep.append((shard, rows))
        paths.extend(shard.paths[r] for r in rows)
        sha.extend(shard.sha256[r] for r in rows)
        sizes.append(shard.size[rows])
        mtimes.append(shard.mtime_ns[rows])
    return _View(
        paths=paths,
        size=np.concatenate(sizes) if sizes else empty,
        mtime_ns=np.concatenate(mtimes) if mtimes else empty,
        sha256=sha,
        index=dict(zip(paths, itertools.count())),
        keep=keep,
        num_rows=total,
    )


# ------------------------------------------------------------------------------------------------- store


class EmbeddingStore:
    """Image embeddings plus the records of the files they came from. See the module docstring.

    Use :meth:`create` or :meth:`open`; the constructor is internal.

    Example:
        >>> store = EmbeddingStore.open("embeddings/")   # doctest: +SKIP
        >>> store.check_compatible(model.fingerprint)    # doctest: +SKIP
        >>> emb, recs = store.embeddings(), store.records()  # doctest: +SKIP
    """

    def __init__(self, path: Path, meta: dict[str, Any], *, single_file: bool = False) -> None:
        self.path = path
        self.meta = meta
        self.single_file = single_file
        self._shards: dict[str, _Shard] = {}
        self._skipped: dict[str, str] = {}
        self._view: _View | None = None
        self._next_seq: dict[int, int] = {}
        self._cleaned = False
        self._hash_cache: tuple[dict[str, int], dict[str, list[int]]] | None = None

    # ------------------------------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        fingerprint: Mapping[str, Any],
        dim: int = 384,
        dtype: str = "float16",
        *,
        exist_ok: bool = False,
    ) -> EmbeddingStore:
        """Create an empty store directory (its parent must exist or be creatable).

        With ``exist_ok=True`` an existing store is opened instead, after checking it was built with the
        same model, dim and dtype; this is how every rank of a multi-process run should get the store.

        Example:
            >>> store = EmbeddingStore.create("emb/", model.fingerprint, dtype="float32")  # doctest: +SKIP
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not isinstance(fingerprint, Mapping):
            raise TypeError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise StoreError(f"cannot create a store at {str(root)!r}: it is a file")
        if (root / META_FILE).exists():
            if not exist_ok:
                raise FileExistsError(f"a store already exists at {str(root)!r} (exist_ok=True reuses it)")
            return cls._reuse(root, fingerprint, int(dim), dtype)
        if root.is_dir() and any(not p.name.startswith(_TMP_PREFIX) for p in root.iterdir()):
            if (root / META_FILE).exists() and exist_ok:  # another rank created it meanwhile
                return cls._reuse(root, fingerprint, int(dim), dtype)
            raise StoreError(f"cannot create a store in {str(root)!r}: directory is not empty")
        root.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "relsim-store",
            "format_version": FORMAT_VERSION,
            "fingerprint": json.loads(json.dumps(dict(fingerprint))),  # JSON-able copy
            "dim": int(dim),
            "dtype": dtype,
            "created_by": f"relsim {_version()}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = _tmp_path(root)
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _fsync_file(tmp)
        if not _publish(tmp, root / META_FILE):  # another rank created it first
            tmp.unlink(missing_ok=True)
            if not exist_ok:
                raise FileExistsError(f"a store already exists at {str(root)!r}")
            return cls._reuse(root, fingerprint, int(dim), dtype)
        _fsync_dir(root)
        return cls.open(root)

    @classmethod
    def _reuse(cls, root: Path, fingerprint: Mapping[str, Any], dim: int, dtype: str) -> EmbeddingStore:
        store = cls.open(root)
        store.check_compatible(fingerprint)
        if store.dim != dim or store.dtype != dtype:
            raise StoreError(f"store {str(root)!r} holds dim={store.dim} {store.dtype}, asked for dim={dim} {dtype}")
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> EmbeddingStore:
        """Open a store directory or single-file store.

        Example:
            >>> len(EmbeddingStore.open("emb/"))  # doctest: +SKIP
            10000
        """
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no store at {str(root)!r}")
        if root.is_file():
            return cls._open_file(root)
        meta_file = root / META_FILE
        if not meta_file.is_file():
            raise StoreError(f"{str(root)!r} is not a relsim store (no {META_FILE})")
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{str(meta_file)!r} is unreadable: {err}") from None
        cls._check_meta(meta, str(meta_file))
        store = cls(root, meta)
        store.refresh()
        return store

    @classmethod
    def _open_file(cls, file: Path) -> EmbeddingStore:
        try:
            with safe_open(file, framework="pt") as f:
                header = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types
            raise StoreError(f"{str(file)!r} is not a relsim store: {err}") from None
        if header.get("relsim_format") != "store-file":
            raise StoreError(f"{str(file)!r} is not a relsim store file")
        try:
            meta = json.loads(header["meta"])
            cls._check_meta(meta, str(file))
            shard, _ = _read_shard(file, 0, 0)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError(f"{str(file)!r} is a damaged relsim store file: {err}") from None
        store = cls(file, meta, single_file=True)
        store._shards = {file.name: shard}
        return store

    @staticmethod
    def _check_meta(meta: Any, where: str) -> None:
        if not isinstance(meta, dict) or meta.get("format") != "relsim-store":
            raise StoreError(f"{where!r} is not a relsim store meta file")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(f"{where!r} has store format {version!r}; relsim reads up to {FORMAT_VERSION}")
        if meta.get("dtype") not in _DTYPES or not isinstance(meta.get("dim"), int):
            raise StoreError(f"{where!r}: bad dim/dtype {meta.get('dim')!r}/{meta.get('dtype')!r}")

    # ----------------------------------------------------------------------------------- properties

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.meta["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def dtype(self) -> str:
        """``"float16"`` or ``"float32"``."""
        return str(self.meta["dtype"])

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def __len__(self) -> int:
        return len(self._get_view().paths)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, n={len(self)}, dim={self.dim}, dtype={self.dtype})"

    def check_compatible(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise :class:`StoreMismatchError` unless ``fingerprint`` has the store's model, revisions, mode.

        Example:
            >>> store.check_compatible(model.fingerprint)  # doctest: +SKIP
        """
        if not _compatible(self.meta["fingerprint"], fingerprint):
            raise StoreMismatchError(
                f"store {str(self.path)!r} was built with {_describe(self.meta['fingerprint'])}, "
                f"but the embeddings come from {_describe(fingerprint)}; "
                "embeddings of different models or modes are not comparable: use another store"
            )

    # ---------------------------------------------------------------------------------------- reads

    def refresh(self) -> None:
        """Pick up shards written (or removed) since the store was opened, e.g. by other ranks."""
        if self.single_file:
            return
        present: dict[str, tuple[int, int]] = {}
        for entry in os.scandir(self.path):
            match = _SHARD_RE.match(entry.name)
            if match:
                present[entry.name] = (int(match[1]), int(match[2]))
        changed = False
        for name in list(self._shards):
            if name not in present:
                del self._shards[name]
                changed = True
        for name, (rank, seq) in present.items():
            if name in self._shards or name in self._skipped:
                continue
            self._load_shard(name, rank, seq)
            changed = True
        if changed:
            self._invalidate()

    def _load_shard(self, name: str, rank: int, seq: int) -> None:
        try:
            shard, meta = _read_shard(self.path / name, rank, seq)
        except StoreError as err:
            reason = str(err)
        except Exception as err:  # truncated or foreign files: report, never crash the whole store
            reason = f"{type(err).__name__}: {err}"
        else:
            shard_fp = json.loads(meta.get("fingerprint", "{}"))
            if not _compatible(self.meta["fingerprint"], shard_fp):
                raise StoreMismatchError(
                    f"shard {name} in {str(self.path)!r} was written by {_describe(shard_fp)}, "
                    f"the store by {_describe(self.meta['fingerprint'])}"
                )
            if shard.dim != self.dim:
                raise StoreError(f"shard {name} has dim {shard.dim}, the store {self.dim}")
            self._shards[name] = shard
            return
        self._skipped[name] = reason
        warnings.warn(f"store {str(self.path)!r}: skipping unreadable shard {name}: {reason}", stacklevel=3)

    def _invalidate(self) -> None:
        self._view = None
        self._hash_cache = None

    def _get_view(self) -> _View:
        if self._view is None:
            ordered = sorted(self._shards.values(), key=lambda s: (s.seq, s.rank))
            self._view = _build_view(ordered)
        return self._view

    def records(self) -> list[FileRecord]:
        """The live file records, row-aligned with :meth:`embeddings`.

        Example:
            >>> store.records()[0].path  # doctest: +SKIP
            '/data/img/0001.jpg'
        """
        v = self._get_view()
        rows = zip(v.paths, v.size, v.mtime_ns, v.sha256, strict=True)
        return [FileRecord(p, int(s), int(m), h) for p, s, m, h in rows]

    def paths(self) -> list[str]:
        """Resolved paths of the live rows (cheaper than :meth:`records`)."""
        return list(self._get_view().paths)

    def hashes(self) -> list[str]:
        """Content SHA-256 of the live rows."""
        return list(self._get_view().sha256)

    def record(self, row: int) -> FileRecord:
        """The record of one live row."""
        v = self._get_view()
        return FileRecord(v.paths[row], int(v.size[row]), int(v.mtime_ns[row]), v.sha256[row])

    def rows_with_hash(self, sha256: str) -> list[int]:
        """Live rows whose file content has this SHA-256 (several when files are byte-identical)."""
        first, groups = self._hash_groups()
        if sha256 in groups:
            return list(groups[sha256])
        return [first[sha256]] if sha256 in first else []

    def duplicate_rows(self) -> tuple[list[int], dict[str, list[int]]]:
        """(rows repeating an earlier row's content, hash -> all its rows for repeated hashes).

        Example:
            >>> repeats, groups = store.duplicate_rows()  # doctest: +SKIP
        """
        first, groups = self._hash_groups()
        repeats = sorted(row for rows in groups.values() for row in rows[1:])
        return repeats, {h: list(rows) for h, rows in groups.items()}

    def _hash_groups(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        if self._hash_cache is None:
            first: dict[str, int] = {}
            groups: dict[str, list[int]] = {}
            for row, digest in enumerate(self._get_view().sha256):
                if digest in first:
                    groups.setdefault(digest, [first[digest]]).append(row)
                else:
                    first[digest] = row
            self._hash_cache = (first, groups)
        return self._hash_cache

    def index_of(self, path: str | os.PathLike) -> int | None:
        """Row of ``path`` (resolved) in :meth:`embeddings`, or None."""
        return self._get_view().index.get(_norm_path(path))

    def embeddings(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All live embeddings as one (N, dim) tensor in the store dtype (or ``dtype``).

        The result is allocated once and filled shard by shard: peak memory is the result plus one shard.

        Example:
            >>> store.embeddings(torch.float32).shape  # doctest: +SKIP
            torch.Size([10000, 384])
        """
        view = self._get_view()
        out = torch.empty(len(view.paths), self.dim, dtype=dtype or self.torch_dtype)
        offset = 0
        for shard, rows in view.keep:
            with safe_open(shard.file, framework="pt") as f:
                block = f.get_tensor("embeddings")
            if len(rows) != len(shard):
                block = block[torch.from_numpy(rows)]
            out[offset : offset + len(rows)] = block
            offset += len(rows)
        return out

    def needs_embedding(self, paths: Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
        """The paths (as given, first occurrence of each) that are new or whose content changed.

        Same size and mtime: unchanged. Same size, other mtime: hashed, changed only if the hash differs.
        Paths that cannot be stat'ed are returned too, so the embedding step reports them.

        Example:
            >>> store.needs_embedding(["a.jpg", "b.jpg"])  # doctest: +SKIP
            ['b.jpg']
        """
        view = self._get_view()
        resolve = _path_resolver()
        todo: list[str | os.PathLike] = []
        seen: set[str] = set()
        for item in paths:
            path = resolve(item)
            if path in seen:
                continue
            seen.add(path)
            if self._changed(view, path):
                todo.append(item)
        return todo

    @staticmethod
    def _changed(view: _View, path: str) -> bool:
        row = view.index.get(path)
        if row is None:
            return True
        try:
            st = os.stat(path)
            if st.st_size != view.size[row]:
                return True
            if st.st_mtime_ns == view.mtime_ns[row]:
                return False
            return file_sha256(path) != view.sha256[row]
        except OSError:
            return True

    def info(self) -> dict[str, Any]:
        """A summary: counts, sizes, fingerprint, skipped shards.

        Example:
            >>> store.info()["num_embeddings"]  # doctest: +SKIP
            10000
        """
        view = self._get_view()
        shards = list(self._shards.values())
        return {
            "path": str(self.path),
            "kind": "file" if self.single_file else "directory",
            "format_version": self.meta["format_version"],
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "created_by": self.meta.get("created_by"),
            "created_at": self.meta.get("created_at"),
            "num_embeddings": len(view.paths),
            "num_rows": view.num_rows,
            "num_shards": len(shards),
            "ranks": sorted({s.rank for s in shards}),
            "bytes": sum(s.file.stat().st_size for s in shards),
            "num_failures": len(self.failures()),
            "skipped_shards": dict(self._skipped),
        }

    # --------------------------------------------------------------------------------------- writes

    def _require_writable(self) -> None:
        if self.single_file:
            raise StoreError(f"{str(self.path)!r} is a single-file store: read-only")

    def add(
        self,
        records: Sequence[FileRecord | Mapping[str, Any]],
        embeddings: torch.Tensor,
        rank: int = 0,
    ) -> Path | None:
        """Append one shard holding ``records`` and their (n, dim) L2-normalised ``embeddings``.

        Returns the shard file, or None when there was nothing to add. Later rows for a path supersede
        earlier ones; the store is never rewritten.

        Example:
            >>> store.add([FileRecord.from_path("a.jpg")], model.embed(["a.jpg"]), rank=0)  # doctest: +SKIP
        """
        self._require_writable()
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        recs = [FileRecord.coerce(r, i) for i, r in enumerate(records)]
        emb = self._check_embeddings(embeddings, len(recs))
        if not recs:
            return None
        if not self._cleaned:
            self.cleanup()
            self._cleaned = True
        tensors = {"embeddings": emb.to(self.torch_dtype).contiguous(), **_pack_records(recs)}
        file = self._write_shard(tensors, rank)
        self._shards[file.name] = _Shard(
            file=file,
            rank=rank,
            seq=int(_SHARD_RE.match(file.name)[2]),
            paths=[r.path for r in recs],
            size=np.array([r.size for r in recs], dtype=np.int64),
            mtime_ns=np.array([r.mtime_ns for r in recs], dtype=np.int64),
            sha256=[r.sha256 for r in recs],
            dim=self.dim,
            dtype=self.torch_dtype,
        )
        self._invalidate()
        return file

    def _check_embeddings(self, embeddings: torch.Tensor, n: int) -> torch.Tensor:
        emb = torch.as_tensor(embeddings).detach().cpu()
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (n, {self.dim}), got {tuple(emb.shape)}")
        if emb.shape[0] != n:
            raise ValueError(f"{n} records but {emb.shape[0]} embedding rows")
        if not emb.is_floating_point():
            raise ValueError(f"embeddings must be floating point, got {emb.dtype}")
        if n:
            norms = emb.float().norm(dim=1)
            bad = torch.nonzero(~((norms - 1).abs() <= _NORM_TOLERANCE)).flatten()
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"embeddings must be L2-normalised: row {i} has norm {float(norms[i]):.4g}")
        return emb

    def _write_shard(self, tensors: dict[str, torch.Tensor], rank: int) -> Path:
        meta = {
            "relsim_format": "shard",
            "format_version": str(FORMAT_VERSION),
            "fingerprint": json.dumps(self.meta["fingerprint"], sort_keys=True),
            "rank": str(rank),
            "created_by": f"relsim {_version()}",
        }
        if rank not in self._next_seq:
            self._next_seq[rank] = self._max_seq_on_disk() + 1
        tmp = _tmp_path(self.path)
        try:
            save_file(tensors, str(tmp), metadata=meta)
            _fsync_file(tmp)
            while True:
                seq = self._next_seq[rank]
                self._next_seq[rank] = seq + 1
                final = self.path / f"shard-{rank:03d}-{seq:06d}.safetensors"
                if _publish(tmp, final):
                    break
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path)
        return final

    def _max_seq_on_disk(self) -> int:
        seqs = [int(m[2]) for e in os.scandir(self.path) if (m := _SHARD_RE.match(e.name))]
        return max(seqs, default=-1)

    def cleanup(self) -> list[Path]:
        """Remove temporary files left by crashed writers; returns what was removed.

        A tmp file is stale when its writer (same host) is dead, or when it is over a day old.
        """
        self._require_writable()
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
        removed = []
        for entry in os.scandir(self.path):
            name = entry.name
            if not (name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)):
                continue
            parts = name[len(_TMP_PREFIX) : -len(_TMP_SUFFIX)].rsplit(".", 2)
            try:
                stale = time.time() - entry.stat().st_mtime > _STALE_TMP_SECONDS
                if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                    pid = int(parts[1])
                    stale = stale or (pid != os.getpid() and not _pid_alive(pid))
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                continue
        return removed

    def compact(self) -> Path | None:
        """Rewrite all live rows as one shard and delete the old shards. No writer may run meanwhile.

        Crash-safe: the new shard is published first and supersedes the old ones with the same rows.
        """
        self._require_writable()
        self.refresh()
        if not self._shards:
            return None
        old = [s.file for s in self._shards.values()]
        tensors = {"embeddings": self.embeddings(), **_pack_records(self.records())}
        self._next_seq[0] = self._max_seq_on_disk() + 1
        file = self._write_shard(tensors, 0)
        for path in old:
            path.unlink(missing_ok=True)
        _fsync_dir(self.path)
        self._shards = {}
        self.refresh()
        return file

    def export(self, file: str | os.PathLike) -> Path:
        """Write the live rows as a single-file, read-only store (atomically).

        Example:
            >>> EmbeddingStore.open(store.export("emb.safetensors")).info()["kind"]  # doctest: +SKIP
            'file'
        """
        target = Path(file)
        tensors = {"embeddings": self.embeddings(), **_pack_records(self.records())}
        header = {"relsim_format": "store-file", "meta": json.dumps(self.meta, sort_keys=True)}
        tmp = _tmp_path(target.parent)
        try:
            save_file(tensors, str(tmp), metadata=header)
            _fsync_file(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return target

    # ------------------------------------------------------------------------------------- failures

    def log_failure(self, path: str | os.PathLike, reason: str, rank: int | None = None) -> None:
        """Append an image that could not be embedded to ``failures.log`` (one JSON object a line).

        Example:
            >>> store.log_failure("broken.jpg", "cannot identify image file")  # doctest: +SKIP
        """
        self._require_writable()
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "path": os.fspath(path), "reason": str(reason)}
        if rank is not None:
            entry["rank"] = rank
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        # One O_APPEND write per line keeps lines whole when several ranks log at once.
        fd = os.open(self.path / FAILURES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def failures(self) -> list[dict[str, Any]]:
        """Entries of ``failures.log`` (oldest first); a torn last line is skipped."""
        if self.single_file:
            return []
        log = self.path / FAILURES_FILE
        if not log.is_file():
            return []
        out = []
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
