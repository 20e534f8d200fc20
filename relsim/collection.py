"""A collection of image embeddings: one LanceDB table (extra ``relsim[search]``).

A collection is a LanceDB database (a local folder or an object-store URI such as ``s3://bucket/photos``)
holding two tables:

- ``embeddings``: one row per image file, upserted by ``path`` (the resolved path): ``path``, ``size``,
  ``mtime_ns``, ``sha256`` (what the changed-file rule reads, see :mod:`relsim.files`), ``vector`` (a
  fixed-size list of float16 by default, float32 optional; L2-normalised), ``caption`` (nullable: the
  anonymous caption, written by :meth:`Collection.set_captions`) and ``embedded_at`` (UTC).
- ``failures``: files that could not be embedded (``path``, ``reason``, ``rank``, ``time``).

The schema metadata key ``relsim`` holds a JSON object: format version, the model fingerprint, dim, dtype
and the relsim version that created it. It is checked on every open and before every write: embeddings of
another model, revision or mode are not comparable and are refused (:class:`CollectionMismatchError`).

Durability comes from Lance: every write is an atomic, versioned commit (a crash leaves the previous version
intact), concurrent writers from several processes are merged by Lance's commit protocol, and old versions
stay readable until cleaned up (:meth:`Collection.repair` can roll back to one).

Example:
    >>> col = Collection.create("photos.relsim", model.fingerprint, exist_ok=True)        # doctest: +SKIP
    >>> emb = model.embed(["a.jpg"])                                                        # doctest: +SKIP
    >>> col.add([FileRecord.from_path("a.jpg")], emb, fingerprint=model.fingerprint)       # doctest: +SKIP
    >>> col.vectors(["a.jpg"]).shape                                                       # doctest: +SKIP
    torch.Size([1, 384])
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import (
    ArgumentError,
    CollectionError,
    CollectionMismatchError,
    CollectionWriteError,
    DestinationExistsError,
    MissingFileError,
    RowNotFoundError,
)
from .files import FileRecord, path_resolver, stale_paths

if TYPE_CHECKING:
    import pyarrow as pa

    from .neighbours import Hit

__all__ = [
    "FORMAT_VERSION",
    "Collection",
    "CollectionError",
    "CollectionMismatchError",
    "CollectionWriteError",
    "Problem",
    "is_collection",
]

FORMAT_VERSION = 2  # 1 was the relsim 0.1 safetensors-shard store (relsim migrate converts it)
TABLE = "embeddings"
FAILURES = "failures"
META_KEY = b"relsim"
#: Fingerprint keys that must agree for two sets of embeddings to be comparable.
COMPAT_KEYS = ("model", "revision", "base_model", "base_revision", "mode")
_DTYPES = {"float16": np.float16, "float32": np.float32}
NORM_TOLERANCE = 1e-2  # float16 rounding keeps norms within ~1e-3 of 1
_RECORD_COLUMNS = ["path", "size", "mtime_ns", "sha256"]
#: ANN index kinds ``relsim index`` builds; the first is the default (see docs/search.md for the measurements).
INDEX_KINDS = ("IVF_SQ", "IVF_HNSW_SQ", "IVF_PQ")


def require_lancedb():
    try:
        import lancedb
    except ImportError as err:
        raise ImportError('collections need LanceDB: pip install "relsim[search]"') from err
    return lancedb


def connect(uri: str) -> Any:
    """A LanceDB connection whose reads always see the latest commit (other processes' writes included)."""
    from datetime import timedelta

    return require_lancedb().connect(uri, read_consistency_interval=timedelta(0))


def _version() -> str:
    from relsim import __version__

    return __version__


def _describe(fp: Mapping[str, Any]) -> str:
    base = f"{fp.get('base_model')}@{fp.get('base_revision')}"
    return f"model {fp.get('model')}@{fp.get('revision')} (base {base}, mode {fp.get('mode')})"


def _compatible(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in COMPAT_KEYS)


def one_line(err: BaseException) -> str:
    """Lance's message without its Rust source location and backtrace noise."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text)


def sql_literal(value: str) -> str:
    """A string as a SQL literal for Lance predicates.

    >>> sql_literal("it's.jpg")
    "'it''s.jpg'"
    """
    return "'" + value.replace("'", "''") + "'"


def is_collection(uri: str | os.PathLike) -> bool:
    """True when ``uri`` is a local folder holding a relsim collection (remote URIs: try :meth:`Collection.open`)."""
    return (Path(uri) / f"{TABLE}.lance").is_dir()


def validate_meta(meta: Any, where: str) -> dict[str, Any]:
    """The ``relsim`` schema metadata, checked field by field; a clear :class:`CollectionError` otherwise."""
    if not isinstance(meta, dict):
        raise CollectionError(f"{where}: the relsim metadata is not a JSON object")
    version = meta.get("format_version")
    if type(version) is not int:
        raise CollectionError(f"{where}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CollectionError(f"{where}: format {version} is newer than this relsim reads ({FORMAT_VERSION})")
    fp = meta.get("fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("model"), str) or not fp["model"]:
        raise CollectionError(f"{where}: the fingerprint must be an object naming the model, got {fp!r}")
    if fp.get("mode") not in ("train", "native"):
        raise CollectionError(f"{where}: the fingerprint's mode must be train or native, got {fp.get('mode')!r}")
    dim = meta.get("dim")
    if type(dim) is not int or dim < 1:
        raise CollectionError(f"{where}: dim must be a positive integer, got {dim!r}")
    if meta.get("dtype") not in _DTYPES:
        raise CollectionError(f"{where}: dtype must be float16 or float32, got {meta.get('dtype')!r}")
    return meta


@dataclass
class Problem:
    """Something :meth:`Collection.check` found: what is wrong, and what to do about it."""

    what: str
    fix: str
    paths: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.what} -- {self.fix}"


class Collection:
    """A relsim collection on LanceDB: file records, embeddings and captions, upserted by path.

    Use :meth:`create` / :meth:`open`; see the module docstring for the layout.
    """

    def __init__(self, uri: str, db: Any, table: Any, meta: dict[str, Any]) -> None:
        self.uri = uri
        self._db = db
        self._table = table
        self.meta = meta

    # ------------------------------------------------------------------------------------ opening

    @staticmethod
    def normalize_uri(uri: str | os.PathLike) -> str:
        """A local path made absolute; a URI (``s3://...``) as it is.

        >>> Collection.normalize_uri("s3://bucket/photos.relsim")
        's3://bucket/photos.relsim'
        """
        text = os.fspath(uri)
        return text if "://" in text else os.path.abspath(text)

    @classmethod
    def schema_for(cls, meta: dict[str, Any]) -> pa.Schema:
        """The Arrow schema of the ``embeddings`` table for ``meta`` (its dim and dtype), ``meta`` in its metadata."""
        import pyarrow as pa

        value = pa.float16() if meta["dtype"] == "float16" else pa.float32()
        fields = [
            pa.field("path", pa.string(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("mtime_ns", pa.int64(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("vector", pa.list_(value, meta["dim"]), nullable=False),
            pa.field("caption", pa.string(), nullable=True),
            pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
        return pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True)})

    @classmethod
    def create(
        cls,
        uri: str | os.PathLike,
        fingerprint: Mapping[str, Any],
        *,
        dim: int = 384,
        dtype: str = "float16",
        exist_ok: bool = False,
        reembed: bool = False,
    ) -> Collection:
        """Create a collection for embeddings of the model with ``fingerprint`` (or open it, with ``exist_ok``).

        An existing collection of another model is refused, unless ``reembed``: then it is emptied (a new
        table version; old versions stay until cleaned up) and takes the new fingerprint.

        Example:
            >>> col = Collection.create("photos.relsim", model.fingerprint, exist_ok=True)  # doctest: +SKIP
        """
        if dtype not in _DTYPES:
            raise ArgumentError(f"dtype must be float16 or float32, got {dtype!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ArgumentError(f"dim must be a positive int, got {dim!r}")
        uri = cls.normalize_uri(uri)
        meta = {
            "format": "relsim-collection",
            "format_version": FORMAT_VERSION,
            "fingerprint": dict(fingerprint),
            "dim": dim,
            "dtype": dtype,
            "created_by": f"relsim {_version()}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        validate_meta(meta, uri)
        _refuse_old_store(uri)
        if "://" not in uri and os.path.exists(uri) and not os.path.isdir(uri):
            raise CollectionError(f"{uri!r} is a file, not a relsim collection (a collection is a folder)")
        if "://" not in uri and os.path.isdir(uri) and not is_collection(uri) and any(os.scandir(uri)):
            raise CollectionError(f"{uri!r} exists, is not empty and is not a relsim collection")
        db = connect(uri)
        try:
            table = db.create_table(TABLE, schema=cls.schema_for(meta), exist_ok=False)
        except Exception as err:  # it exists (perhaps another rank just created it)
            if not _exists_error(err):
                raise CollectionWriteError(f"cannot create the collection {uri!r}: {one_line(err)}") from err
            if not exist_ok and not reembed:
                raise DestinationExistsError(f"{uri!r} already holds a relsim collection") from None
            existing = cls.open(uri)
            if reembed and not _compatible(existing.fingerprint, fingerprint):
                return existing._reset(meta)
            if existing.dim != dim:
                raise CollectionError(
                    f"{uri!r} holds {existing.dim}-d embeddings, the model makes {dim}-d ones"
                ) from None
            existing.check_compatible(fingerprint)
            return existing
        return cls(uri, db, table, meta)

    @classmethod
    def open(cls, uri: str | os.PathLike) -> Collection:
        """Open an existing collection; its metadata is checked (:class:`CollectionError` names what is wrong).

        Example:
            >>> len(Collection.open("photos.relsim"))  # doctest: +SKIP
            10000
        """
        uri = cls.normalize_uri(uri)
        if "://" not in uri and not os.path.exists(uri):
            raise MissingFileError(f"{uri}: no such collection")
        _refuse_old_store(uri)
        if "://" not in uri and not os.path.isdir(uri):
            raise CollectionError(f"{uri!r} is a file, not a relsim collection (a collection is a folder)")
        db = connect(uri)
        try:
            table = db.open_table(TABLE)
        except Exception as err:
            raise CollectionError(f"{uri!r} is not a relsim collection (no {TABLE} table: {one_line(err)})") from err
        return cls(uri, db, table, _read_meta(table, uri))

    def _reset(self, meta: dict[str, Any]) -> Collection:
        """Empty the table and give it new metadata (``--reembed`` with another model)."""
        import pyarrow as pa

        schema = self.schema_for(meta)
        try:
            table = self._db.create_table(TABLE, schema.empty_table(), mode="overwrite", schema=schema)
        except (OSError, RuntimeError, ValueError, pa.ArrowException) as err:
            raise CollectionWriteError(f"cannot reset the collection {self.uri!r}: {one_line(err)}") from err
        return Collection(self.uri, self._db, table, meta)

    def refresh(self) -> None:
        """See the latest version (other processes' writes) and re-check the metadata."""
        self._table.checkout_latest()
        self.meta = _read_meta(self._table, self.uri)

    # --------------------------------------------------------------------------------- properties

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the model that made the embeddings (model, revisions, mode, ...)."""
        return dict(self.meta["fingerprint"])

    @property
    def dim(self) -> int:
        """The embedding width (384 for relsim's models)."""
        return int(self.meta["dim"])

    @property
    def dtype(self) -> str:
        """How vectors are stored: ``"float16"`` or ``"float32"``."""
        return str(self.meta["dtype"])

    @property
    def table(self) -> Any:
        """The LanceDB table itself, for SQL, pandas / Polars / DuckDB (see docs/search.md)."""
        return self._table

    def __len__(self) -> int:
        return int(self._table.count_rows())

    def __repr__(self) -> str:
        return f"Collection({self.uri!r}, {len(self)} x {self.dim} {self.dtype}, {_describe(self.meta['fingerprint'])})"

    def check_compatible(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise :class:`CollectionMismatchError` unless ``fingerprint`` makes comparable embeddings.

        Example:
            >>> col.check_compatible(model.fingerprint)  # doctest: +SKIP
        """
        if not _compatible(self.meta["fingerprint"], fingerprint):
            raise CollectionMismatchError(
                f"embeddings of {_describe(fingerprint)} are not comparable with the collection {self.uri!r}, "
                f"which was built with {_describe(self.meta['fingerprint'])}; use the same model or "
                "re-embed everything (relsim embed --reembed)"
            )

    # -------------------------------------------------------------------------------------- reads

    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        """The ``columns`` of every row (or of the rows matching the SQL filter ``where``) as an Arrow table.

        Example:
            >>> col.scan(["path", "caption"], "caption IS NOT NULL").num_rows  # doctest: +SKIP
            120
        """
        query = self._table.search().select(list(columns)).limit(None)
        if where:
            query = query.where(where)
        with self.reading():
            return query.to_arrow()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """LanceDB's read errors inside (a lost or damaged data file) as one CollectionError naming the fix.

        Example:
            >>> with col.reading():                                   # doctest: +SKIP
            ...     table = col.table.search().limit(None).to_arrow()
        """
        try:
            yield
        except (OSError, RuntimeError) as err:
            raise CollectionError(
                f"cannot read the collection {self.uri!r}: {one_line(err)} -- run `relsim repair {self.uri}`"
            ) from err

    def known(self) -> dict[str, tuple[int, int, str]]:
        """``{path: (size, mtime_ns, sha256)}`` of every row: what the changed-file rule compares against."""
        t = self.scan(_RECORD_COLUMNS)
        cols = [t.column(c).to_pylist() for c in _RECORD_COLUMNS]
        return {p: (s, m, h) for p, s, m, h in zip(*cols, strict=True)}

    def needs_embedding(self, paths: Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
        """The paths (as given) that are new or whose content changed (see :func:`relsim.files.stale_paths`).

        Example:
            >>> col.needs_embedding(["a.jpg", "b.jpg"])  # doctest: +SKIP
            ['b.jpg']
        """
        return stale_paths(self.known(), paths)

    def paths(self) -> list[str]:
        """The paths of all rows, sorted."""
        return sorted(self.scan(["path"]).column("path").to_pylist())

    def records(self) -> list[FileRecord]:
        """The file records of all rows, sorted by path."""
        t = self.scan(_RECORD_COLUMNS).sort_by("path")
        return [FileRecord(**row) for row in t.to_pylist()]

    def vectors(
        self, paths: Sequence[str | os.PathLike] | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Embeddings (N, dim) in the order of ``paths`` (resolved like the stored ones; default: all, by path).

        A path not in the collection is a ``KeyError`` naming it; a stored row that is not finite and unit-norm
        is a :class:`CollectionError` naming its file (``relsim repair`` drops such rows).

        Example:
            >>> col.vectors(["photos/a.jpg", "photos/b.jpg"]).shape  # doctest: +SKIP
            torch.Size([2, 384])
        """
        if paths is None:
            wanted = None
            t = self.scan(["path", "vector"]).sort_by("path")
        else:
            resolve = path_resolver()
            wanted = [resolve(p) if "://" not in os.fspath(p) else os.fspath(p) for p in paths]
            t = self.rows(wanted, ["path", "vector"])
        matrix = vector_matrix(t, self.dim)
        bad = bad_rows(matrix)
        if len(bad):
            names = [t.column("path")[int(i)].as_py() for i in bad[:5]]
            raise CollectionError(
                f"{len(bad)} stored embedding(s) of {self.uri!r} are not finite unit vectors: "
                f"{', '.join(names)} -- run `relsim repair {self.uri}` to drop them, then embed again"
            )
        out = torch.from_numpy(matrix)
        if wanted is not None:
            index = {p: i for i, p in enumerate(t.column("path").to_pylist())}
            missing = [p for p in wanted if p not in index]
            if missing:
                raise RowNotFoundError(f"{len(missing)} path(s) not in {self.uri!r}, e.g. {missing[0]!r}")
            out = out[torch.tensor([index[p] for p in wanted], dtype=torch.long)]
        return out.to(dtype)

    def rows(self, paths: Sequence[str], columns: Sequence[str]) -> pa.Table:
        """The ``columns`` of the rows of these (resolved) ``paths``, in no particular order; absent paths are left
        out."""
        import pyarrow as pa

        parts = []
        unique = list(dict.fromkeys(paths))
        for start in range(0, len(unique), 1000):  # keep the IN lists of a predicate short
            chunk = unique[start : start + 1000]
            parts.append(self.scan(columns, f"path IN ({', '.join(sql_literal(p) for p in chunk)})"))
        if not parts:
            return self.scan(columns, "false")
        return pa.concat_tables(parts)

    def iter_vectors(self, batch_rows: int = 65536, columns: Sequence[str] = ("path",)) -> Iterator[tuple[Any, Any]]:
        """``(records batch, (n, dim) float32 numpy)`` over all rows, a batch at a time (constant memory)."""
        query = self._table.search().select([*columns, "vector"]).limit(None)
        with self.reading():
            for batch in query.to_batches(batch_rows):
                if batch.num_rows:
                    yield batch, vector_matrix(batch, self.dim)

    def captions(self, paths: Sequence[str | os.PathLike]) -> list[str | None]:
        """The stored caption of each path (None where none is stored or the path is not in the collection).

        Example:
            >>> col.captions(["photos/peach.jpg"])  # doctest: +SKIP
            ['{Fruit} cut open to show its layers']
        """
        resolve = path_resolver()
        wanted = [resolve(p) for p in paths]
        t = self.rows(wanted, ["path", "caption"])
        found = dict(zip(t.column("path").to_pylist(), t.column("caption").to_pylist(), strict=True))
        return [found.get(p) for p in wanted]

    def count_uncaptioned(self, paths: Sequence[str | os.PathLike] | None = None) -> int:
        """How many rows (of these ``paths``; default: all) have no caption.

        Example:
            >>> col.count_uncaptioned()  # doctest: +SKIP
            20
        """
        if paths is None:
            return int(self._table.count_rows("caption IS NULL"))
        resolve = path_resolver()
        return self.rows([resolve(p) for p in paths], ["caption"]).column("caption").null_count

    # ------------------------------------------------------------------------------------- writes

    def _refresh_for_write(self, fingerprint: Mapping[str, Any] | None) -> None:
        self.refresh()
        if fingerprint is not None:
            self.check_compatible(fingerprint)

    def _write(self, what: str, action) -> Any:
        import pyarrow as pa

        try:
            return action()
        except (OSError, RuntimeError, pa.ArrowException) as err:
            raise CollectionWriteError(f"cannot write to the collection {self.uri!r}: {one_line(err)}") from err
        except ValueError as err:  # lancedb wraps Lance's IO errors in ValueError
            raise CollectionWriteError(f"cannot {what} in the collection {self.uri!r}: {one_line(err)}") from err

    def add(
        self,
        records: Sequence[FileRecord | Mapping[str, Any]],
        embeddings: torch.Tensor | np.ndarray,
        *,
        fingerprint: Mapping[str, Any] | None = None,
        captions: Sequence[str | None] | None = None,
    ) -> int:
        """Upsert rows by path (one atomic commit); returns the number of rows written.

        ``embeddings`` are (n, dim), finite and L2-normalised (checked). ``fingerprint`` (the model's) is
        checked against the collection's first. A row replacing an older one of the same path drops its
        caption unless ``captions`` are given (the content changed).

        Example:
            >>> col.add([FileRecord.from_path("a.jpg")], emb, fingerprint=model.fingerprint)  # doctest: +SKIP
            1
        """
        import pyarrow as pa

        recs = [FileRecord.coerce(r, i) for i, r in enumerate(records)]
        emb = self._check_embeddings(embeddings, len(recs))
        if captions is not None and len(captions) != len(recs):
            raise ArgumentError(f"{len(recs)} records but {len(captions)} captions")
        if not recs:
            return 0
        self._refresh_for_write(fingerprint)
        last = {r.path: i for i, r in enumerate(recs)}  # inside one call the last row for a path wins
        keep = sorted(last.values())
        recs = [recs[i] for i in keep]
        emb = emb[keep]
        schema = self.schema_for(self.meta)
        value_type = schema.field("vector").type.value_type
        now = datetime.now(timezone.utc)
        data = pa.table(
            {
                "path": [r.path for r in recs],
                "size": pa.array([r.size for r in recs], pa.int64()),
                "mtime_ns": pa.array([r.mtime_ns for r in recs], pa.int64()),
                "sha256": [r.sha256 for r in recs],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(emb.astype(_DTYPES[self.dtype]).ravel(), value_type), self.dim
                ),
                "caption": pa.nulls(len(recs), pa.string())
                if captions is None
                else pa.array([captions[i] for i in keep], pa.string()),
                "embedded_at": pa.array([now] * len(recs), pa.timestamp("us", tz="UTC")),
            },
            schema=schema,
        )
        self._write("add embeddings", lambda: self._upsert(data))
        return len(recs)

    def _upsert(self, data: pa.Table) -> None:
        merge = self._table.merge_insert("path").when_matched_update_all().when_not_matched_insert_all()
        merge.execute(data)

    def _check_embeddings(self, embeddings: Any, n: int) -> np.ndarray:
        emb = embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else torch.as_tensor(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ArgumentError(f"embeddings must have shape (n, {self.dim}), got {tuple(emb.shape)}")
        if emb.shape[0] != n:
            raise ArgumentError(f"{n} records but {emb.shape[0]} embedding rows")
        if not emb.is_floating_point():
            raise ArgumentError(f"embeddings must be floating point, got {emb.dtype}")
        matrix = emb.float().numpy()
        bad = bad_rows(matrix)
        if len(bad):
            i = int(bad[0])
            norm = float(np.linalg.norm(matrix[i]))
            raise ArgumentError(f"embeddings must be finite and L2-normalised: row {i} has norm {norm:.4g}")
        return matrix

    def set_captions(self, paths: Sequence[str | os.PathLike], captions: Sequence[str | None]) -> int:
        """Store a caption per path (None clears it); paths not in the collection are a ``KeyError``.

        Returns the number of rows updated. ``relsim index`` then builds the full-text index that
        ``search(caption_contains=...)`` uses (without it the filter scans).

        Example:
            >>> col.set_captions(["photos/peach.jpg"], ["{Fruit} cut open to show its layers"])  # doctest: +SKIP
            1
        """
        import pyarrow as pa

        if len(paths) != len(captions):
            raise ArgumentError(f"{len(paths)} paths but {len(captions)} captions")
        for i, c in enumerate(captions):
            if c is not None and not isinstance(c, str):
                raise ArgumentError(f"captions[{i}] is {type(c).__name__}, expected str or None")
        resolve = path_resolver()
        resolved = [resolve(p) for p in paths]
        present = set(self.rows(resolved, ["path"]).column("path").to_pylist())
        missing = [p for p in resolved if p not in present]
        if missing:
            raise RowNotFoundError(f"{len(missing)} path(s) not in {self.uri!r}, e.g. {missing[0]!r}")
        if not resolved:
            return 0
        latest = dict(zip(resolved, captions, strict=True))
        data = pa.table({"path": list(latest), "caption": pa.array(list(latest.values()), pa.string())})
        merge = self._table.merge_insert("path").when_matched_update_all()
        self._write("set captions", lambda: merge.execute(data))
        return len(latest)

    def delete(self, paths: Sequence[str]) -> int:
        """Drop the rows of these (resolved) paths; returns how many there were."""
        before = len(self)
        for start in range(0, len(paths), 1000):
            chunk = paths[start : start + 1000]
            predicate = f"path IN ({', '.join(sql_literal(p) for p in chunk)})"
            self._write("delete rows", lambda p=predicate: self._table.delete(p))
        return before - len(self)

    def prune(self, exists=os.path.exists) -> list[str]:
        """Drop rows whose file is gone (deleted or renamed); returns their paths.

        Example:
            >>> col.prune()  # doctest: +SKIP
            ['/photos/deleted.jpg']
        """
        gone = [p for p in self.paths() if "://" not in p and not exists(p)]
        self.delete(gone)
        return gone

    # ------------------------------------------------------------------------------------ failures

    def _failures_table(self, create: bool) -> Any:
        import pyarrow as pa

        try:
            return self._db.open_table(FAILURES)
        except Exception:
            if not create:
                return None
        schema = pa.schema(
            [
                pa.field("path", pa.string()),
                pa.field("reason", pa.string()),
                pa.field("rank", pa.int32()),
                pa.field("time", pa.timestamp("us", tz="UTC")),
            ]
        )
        try:
            return self._db.create_table(FAILURES, schema=schema, exist_ok=True)
        except Exception:  # another rank created it meanwhile
            return self._db.open_table(FAILURES)

    def log_failure(self, path: str | os.PathLike, reason: str, rank: int | None = None) -> None:
        """Record a file that could not be embedded (several ranks may log at once).

        Example:
            >>> col.log_failure("broken.jpg", "cannot identify image file")  # doctest: +SKIP
        """
        self.log_failures([(os.fspath(path), str(reason))], rank=rank)

    def log_failures(self, entries: Sequence[tuple[str, str]], rank: int | None = None) -> None:
        """Record several failures in one commit."""
        import pyarrow as pa

        if not entries:
            return
        table = self._write("log failures", lambda: self._failures_table(create=True))
        now = datetime.now(timezone.utc)
        data = pa.table(
            {
                "path": [p for p, _ in entries],
                "reason": [r for _, r in entries],
                "rank": pa.array([rank] * len(entries), pa.int32()),
                "time": pa.array([now] * len(entries), pa.timestamp("us", tz="UTC")),
            }
        )
        self._write("log failures", lambda: table.add(data))

    def failures(self) -> list[dict[str, Any]]:
        """Logged failures, oldest first: ``{path, reason, rank, time}``."""
        table = self._failures_table(create=False)
        if table is None:
            return []
        rows = table.to_arrow().sort_by("time").to_pylist()
        for row in rows:
            row["time"] = row["time"].isoformat() if row["time"] is not None else None
            if row["rank"] is None:
                del row["rank"]
        return rows

    # -------------------------------------------------------------------------------------- search

    def vector_index_kind(self) -> str | None:
        """The ANN index on ``vector`` (``"IVF_SQ"``, ...), or None when search is flat."""
        for ix in self._table.list_indices():
            if getattr(ix, "columns", None) == ["vector"]:
                return str(ix.index_type)
        return None

    def has_vector_index(self) -> bool:
        """True when ``relsim index`` built an ANN index on ``vector``."""
        return self.vector_index_kind() is not None

    def nearest(self, queries: torch.Tensor | np.ndarray, k: int = 10, **options: Any) -> list[list[Hit]]:
        """The ``k`` nearest rows to each query (Q, dim), best first: :func:`relsim.neighbours.nearest` (``where``,
        ``exact``, ``exclude_sha256``, ``dedup``, ``caption_contains``, ``nprobes``, ``refine_factor``).

        Example:
            >>> col.nearest(model.embed(["q.jpg"]), k=5, where="path LIKE '%/2024/%'")[0][0].path  # doctest: +SKIP
            '/photos/2024/q.jpg'
        """
        from .neighbours import nearest

        return nearest(self, queries, k, **options)

    # ------------------------------------------------------------------------------------- indexes

    def create_vector_index(self, kind: str = INDEX_KINDS[0], **options: Any) -> None:
        """Build (or rebuild) the ANN index on ``vector`` (``IVF_SQ``, ``IVF_HNSW_SQ`` or ``IVF_PQ``), dot distance.

        ``options`` go to LanceDB's ``IvfSq`` / ``HnswSq`` / ``IvfPq`` (``num_partitions``: ~sqrt(rows) / 2).
        IVF_SQ is the default by measurement (docs/search.md#scale): on 1M vectors it builds in 60% of
        IVF_HNSW_SQ's time, takes 30% less disk and reaches recall@10 0.95 without a refine step.

        Example:
            >>> col.create_vector_index("IVF_HNSW_SQ", num_partitions=64)  # doctest: +SKIP
        """
        from lancedb.index import HnswSq, IvfPq, IvfSq

        if kind not in INDEX_KINDS:
            raise ArgumentError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        n = len(self)
        if n < 256:
            raise CollectionError(f"{self.uri!r} has {n} rows: an ANN index needs at least 256 (flat search is exact)")
        options.setdefault("num_partitions", max(1, min(4096, round(math.sqrt(n) / 2))))
        options.setdefault("max_iterations", 20)  # k-means converges well before LanceDB's 50 on embeddings
        if kind == "IVF_HNSW_SQ":  # half the build time of LanceDB's m=20, ef_construction=300; recall kept
            options.setdefault("m", 16)
            options.setdefault("ef_construction", 100)
        if kind == "IVF_PQ":
            options.setdefault("num_sub_vectors", self.dim // 8 if self.dim % 8 == 0 else 1)
            config = IvfPq(distance_type="dot", **options)
        elif kind == "IVF_SQ":
            config = IvfSq(distance_type="dot", **options)
        else:
            config = HnswSq(distance_type="dot", **options)
        self._write(
            "build the index",
            lambda: self._table.create_index("vector", config=config, replace=True),
        )

    def create_caption_index(self) -> bool:
        """Build the full-text index on ``caption``; False when no row has a caption."""
        from lancedb.index import FTS

        if self._table.count_rows("caption IS NOT NULL") == 0:
            return False
        self._write(
            "build the caption index",
            lambda: self._table.create_index("caption", config=FTS(), replace=True),
        )
        return True

    def optimize(self) -> None:
        """Merge small fragments, fold new rows into the indexes and drop versions older than a week."""
        self._write("optimize", lambda: self._table.optimize())

    # ---------------------------------------------------------------------------------- inspection

    def info(self) -> dict[str, Any]:
        """A summary: counts, sizes, fingerprint, indexes, versions.

        Example:
            >>> col.info()["num_embeddings"]  # doctest: +SKIP
            10000
        """
        indexes = [
            {"name": ix.name, "type": str(ix.index_type), "columns": list(ix.columns)}
            for ix in self._table.list_indices()
        ]
        size = None
        if "://" not in self.uri:
            size = sum(f.stat().st_size for f in Path(self.uri).rglob("*") if f.is_file())
        return {
            "path": self.uri,
            "format_version": self.meta["format_version"],
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "created_by": self.meta.get("created_by"),
            "created_at": self.meta.get("created_at"),
            "num_embeddings": len(self),
            "num_captions": int(self._table.count_rows("caption IS NOT NULL")),
            "version": int(self._table.version),
            "indexes": indexes,
            "bytes": size,
            "num_failures": len({f["path"] for f in self.failures()}),
        }


# ------------------------------------------------------------------------------------------ helpers


def bad_rows(matrix: np.ndarray) -> np.ndarray:
    """Indices of rows that are not finite unit vectors."""
    if not len(matrix):
        return np.zeros(0, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(matrix.astype(np.float32), axis=1)
        good = np.isfinite(matrix).all(axis=1) & (np.abs(norms - 1) <= NORM_TOLERANCE)
    return np.flatnonzero(~good)


def vector_matrix(rows: pa.Table | pa.RecordBatch, dim: int) -> np.ndarray:
    """The ``vector`` column of ``rows`` as a float32 (n, dim) numpy array."""
    if not len(rows):
        return np.zeros((0, dim), np.float32)
    column = rows.column("vector")
    if hasattr(column, "combine_chunks"):  # a Table's ChunkedArray; a RecordBatch holds an Array
        column = column.combine_chunks()
    return vector_values(column).reshape(len(rows), dim).astype(np.float32)


def vector_values(column: Any) -> np.ndarray:
    """The flat values of a fixed-size-list column of floats (an Arrow Array), in their stored dtype, read in
    place: no per-element conversion (``to_numpy`` of a float16 list column is slow on a million rows)."""
    size = column.type.list_size
    values = column.values.slice(column.offset * size, len(column) * size)  # the child holds the whole buffer
    dtype = np.dtype(values.type.to_pandas_dtype())
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


def _exists_error(err: BaseException) -> bool:
    return "already exists" in str(err).lower() or isinstance(err, FileExistsError)


def _read_meta(table: Any, uri: str) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CollectionError(
            f"{uri!r}: the {TABLE} table has no relsim metadata (not made by relsim, or damaged) "
            f"-- run `relsim repair {uri}` to restore it from an earlier version"
        )
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise CollectionError(
            f"{uri!r}: the relsim metadata is not valid JSON ({err}) -- run `relsim repair`"
        ) from None
    meta = validate_meta(meta, repr(uri))
    vector = table.schema.field("vector").type
    if getattr(vector, "list_size", None) != meta["dim"]:
        raise CollectionError(f"{uri!r}: the vector column has {vector}, the metadata says dim {meta['dim']}")
    return meta


def _refuse_old_store(uri: str) -> None:
    if "://" not in uri and (os.path.isfile(os.path.join(uri, "meta.json")) or uri.endswith(".safetensors")):
        raise CollectionError(
            f"{uri!r} is an embedding store of relsim 0.1; convert it with `relsim migrate {uri} NEW`"
        )
