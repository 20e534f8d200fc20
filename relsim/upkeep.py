"""Keeping a collection healthy and moving it around: check, repair, export, migrate from relsim 0.1.

- :func:`check` says exactly what is wrong with a collection and what to do (``relsim info --check``);
- :func:`repair` does it (``relsim repair``): restores damaged metadata or unreadable data from the latest
  good version, drops rows that are not finite unit vectors and duplicate rows of a path;
- :func:`export` writes the embeddings + metadata as ``.npy`` or Parquet files that FAISS / autofaiss read;
- :func:`migrate` converts a relsim 0.1 store (safetensors shards and ``meta.json``) into a collection.

Example:
    >>> for problem in check("photos.relsim"): print(problem)    # doctest: +SKIP
    >>> repair("photos.relsim")                                   # doctest: +SKIP
    >>> export("photos.relsim", "photos-export/", format="npy")   # doctest: +SKIP
    >>> migrate("old.relsim", "photos.relsim")                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .collection import (
    META_KEY,
    TABLE,
    Collection,
    CollectionError,
    Problem,
    bad_rows,
    connect,
    is_collection,
    one_line,
    validate_meta,
)
from .errors import ArgumentError, MissingFileError, OutputPathError
from .files import FileRecord, output_folder

__all__ = ["check", "export", "measure_recall", "migrate", "repair"]

_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.safetensors$")
_EXPORT_PARQUET = re.compile(r"^embeddings_\d{4,}\.parquet$")


# ------------------------------------------------------------------------------------------- check


def _open_table(uri: str) -> Any:
    if "://" not in uri and not os.path.exists(uri):
        raise MissingFileError(f"{uri}: no such collection")
    try:
        return connect(uri).open_table(TABLE)
    except Exception as err:
        raise CollectionError(f"{uri!r} is not a relsim collection (no {TABLE} table: {one_line(err)})") from err


def _meta_at(table: Any, version: int, uri: str) -> dict[str, Any] | None:
    try:
        table.checkout(version)
        raw = (table.schema.metadata or {}).get(META_KEY)
        return validate_meta(json.loads(raw), uri) if raw is not None else None
    except (CollectionError, ValueError, TypeError, OSError, RuntimeError):
        return None
    finally:
        table.checkout_latest()


def _good_meta_version(table: Any, uri: str) -> tuple[int, dict[str, Any]] | None:
    """The latest version whose relsim metadata is valid."""
    for version in sorted((v["version"] for v in table.list_versions()), reverse=True):
        meta = _meta_at(table, version, uri)
        if meta is not None:
            return version, meta
    return None


def _readable(table: Any) -> str | None:
    """None when every row of the checked-out version reads, else the error."""
    try:
        for _ in table.search().select(["path", "vector"]).limit(None).to_batches(65536):
            pass
    except (OSError, RuntimeError, ValueError) as err:
        return one_line(err)
    return None


def _readable_version(table: Any) -> int | None:
    latest = table.version
    for version in sorted((v["version"] for v in table.list_versions()), reverse=True):
        if version == latest:
            continue
        table.checkout(version)
        try:
            if _readable(table) is None:
                return version
        finally:
            table.checkout_latest()
    return None


def check(uri: str | os.PathLike, *, exists: Callable[[str], bool] = os.path.exists) -> list[Problem]:
    """Everything wrong with a collection, each with what to do; an empty list when it is healthy.

    Example:
        >>> [str(p) for p in check("photos.relsim")]  # doctest: +SKIP
        ["2 row(s) are not finite unit vectors: /p/a.jpg, /p/b.jpg -- relsim repair drops them; ..."]
    """
    uri = Collection.normalize_uri(uri)
    table = _open_table(uri)
    try:
        collection = Collection.open(uri)
    except CollectionError as err:
        good = _good_meta_version(table, uri)
        fix = (
            f"`relsim repair {uri}` restores the metadata of version {good[0]}"
            if good
            else "no version has valid metadata: embed into a new collection"
        )
        return [Problem(str(err), fix)]
    problems = []
    unreadable = _readable(table)
    if unreadable is not None:
        good = _readable_version(table)
        fix = (
            f"`relsim repair {uri}` rolls back to version {good}, the latest that reads whole; the next "
            "`relsim embed` re-embeds what was added since"
            if good is not None
            else "no earlier version reads whole: restore the folder from a backup or embed into a new collection"
        )
        return [Problem(f"data cannot be read: {unreadable}", fix)]
    bad: list[str] = []
    for batch, matrix in collection.iter_vectors():
        bad.extend(batch.column("path")[int(i)].as_py() for i in bad_rows(matrix))
    if bad:
        problems.append(
            Problem(
                f"{len(bad)} row(s) are not finite unit vectors: {', '.join(bad[:5])}",
                f"`relsim repair {uri}` drops them; the next `relsim embed` embeds those files again",
                bad,
            )
        )
    paths = collection.scan(["path"]).column("path").to_pylist()
    seen: set[str] = set()
    dupes = sorted({p for p in paths if p in seen or seen.add(p)})
    if dupes:
        problems.append(
            Problem(
                f"{len(dupes)} path(s) have more than one row: {', '.join(dupes[:5])}",
                f"`relsim repair {uri}` keeps the newest row of each",
                dupes,
            )
        )
    gone = sorted(p for p in seen if "://" not in p and not exists(p))
    if gone:
        problems.append(
            Problem(
                f"{len(gone)} file(s) are gone (deleted or renamed): {', '.join(gone[:5])}",
                f"`relsim prune {uri}` drops their rows",
                gone,
            )
        )
    return problems


# ------------------------------------------------------------------------------------------ repair


def repair(uri: str | os.PathLike) -> list[str]:
    """Fix what :func:`check` reports (except files that are gone: :meth:`Collection.prune`); returns what
    was done, one line per action. Old versions are kept, so a repair can itself be rolled back.

    Example:
        >>> repair("photos.relsim")  # doctest: +SKIP
        ['dropped 2 row(s) that were not finite unit vectors: /p/a.jpg, /p/b.jpg']
    """
    uri = Collection.normalize_uri(uri)
    table = _open_table(uri)
    done = []
    try:
        Collection.open(uri)
    except CollectionError as err:
        good = _good_meta_version(table, uri)
        if good is None:
            raise CollectionError(f"{err}; no version of {uri!r} has valid metadata: nothing to restore") from err
        version, meta = good
        data = table.to_arrow()
        schema = Collection.schema_for(meta)
        connect(uri).create_table(TABLE, data.select(schema.names).cast(schema), mode="overwrite")
        table = _open_table(uri)
        done.append(f"restored the relsim metadata of version {version}")
    if _readable(table) is not None:
        version = _readable_version(table)
        if version is None:
            raise CollectionError(f"{uri!r}: no version reads whole; restore it from a backup")
        table.checkout(version)
        table.restore()
        done.append(f"rolled back to version {version}; run `relsim embed` again to embed what was added since")
    collection = Collection.open(uri)
    problems = check(uri, exists=lambda _: True)
    bad = [p for problem in problems if "unit vectors" in problem.what for p in problem.paths]
    if bad:
        collection.delete(bad)
        done.append(f"dropped {len(bad)} row(s) that were not finite unit vectors: {', '.join(bad[:5])}")
    dupes = [
        p for problem in check(uri, exists=lambda _: True) if "more than one row" in problem.what for p in problem.paths
    ]
    if dupes:
        rows = collection.rows(dupes, collection.schema_for(collection.meta).names)
        newest = rows.sort_by([("path", "ascending"), ("embedded_at", "descending")]).to_pylist()
        keep: dict[str, dict[str, Any]] = {}
        for row in newest:
            keep.setdefault(row["path"], row)
        collection.delete(dupes)
        records = [FileRecord(r["path"], r["size"], r["mtime_ns"], r["sha256"]) for r in keep.values()]
        vectors = np.array([r["vector"] for r in keep.values()], dtype=np.float32)
        collection.add(records, vectors, captions=[r["caption"] for r in keep.values()])
        done.append(f"kept the newest row of {len(dupes)} path(s) with several: {', '.join(dupes[:5])}")
    return done


# ------------------------------------------------------------------------------------------- recall


def measure_recall(collection: Collection, *, queries: int = 100, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """Recall@k of the ANN index against exact search, with ``queries`` of the collection's own rows as queries.

    ``ann_ms`` is per query, one at a time; ``exact_ms`` per query of one exact pass over all of them.

    Example:
        >>> measure_recall(col, queries=100)  # doctest: +SKIP
        {'recall_at_10': 0.97, 'queries': 100, 'ann_ms': 3.1, 'exact_ms': 85.0}
    """
    import time

    paths = collection.scan(["path"]).column("path").to_pylist()
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in rng.choice(len(paths), size=min(queries, len(paths)), replace=False)]
    vectors = collection.vectors(chosen)
    hits, ann_s = 0, 0.0
    start = time.perf_counter()
    exact = collection.nearest(vectors, k, dedup=False, exact=True) if len(vectors) else []  # one pass for all
    exact_s = time.perf_counter() - start
    for q, truth in zip(vectors, exact, strict=True):
        start = time.perf_counter()
        approx = collection.nearest(q, k, dedup=False)[0]
        ann_s += time.perf_counter() - start
        hits += len({h.path for h in approx} & {h.path for h in truth})
    n = max(1, len(chosen))
    key = f"recall_at_{k}"
    return {key: hits / (n * k), "queries": len(chosen), "ann_ms": 1000 * ann_s / n, "exact_ms": 1000 * exact_s / n}


# ------------------------------------------------------------------------------------------ export


def export(
    uri: str | os.PathLike | Collection,
    out: str | os.PathLike,
    *,
    format: str = "npy",
    rows_per_file: int = 1 << 20,
    overwrite: bool = False,
) -> list[Path]:
    """Write the embeddings and their metadata where FAISS tools read them; returns the files written.

    ``npy``: ``OUT/img_emb/img_emb_0000.npy`` (float32, (n, dim)) and ``OUT/metadata/metadata_0000.parquet``
    (path, size, mtime_ns, sha256, caption), row-aligned, a pair per million rows: the layout autofaiss
    reads (``autofaiss build_index --embeddings OUT/img_emb``). ``parquet``: ``OUT/embeddings_0000.parquet``
    with every column and ``vector`` as a list of float32 (``--file_format parquet
    --embedding_column_name vector``). ``OUT/relsim.json`` holds the collection's metadata.

    ``OUT`` must be new or empty, so that two exports never mix: ``overwrite=True`` first removes an earlier
    export there (only an export: a folder holding anything else is refused). ``OUT`` is never inside a
    collection. Both are :class:`~relsim.errors.OutputPathError`.

    Example:
        >>> export("photos.relsim", "photos-export/", format="parquet")  # doctest: +SKIP
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if format not in ("npy", "parquet"):
        raise ArgumentError(f"format must be npy or parquet, got {format!r}")
    collection = uri if isinstance(uri, Collection) else Collection.open(uri)
    root = _export_target(out, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    columns = ("path", "size", "mtime_ns", "sha256", "caption")
    pending: list[tuple[Any, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        part = len(written) // (2 if format == "npy" else 1)
        meta = pa.Table.from_batches([b for b, _ in pending]).select(list(columns))
        matrix = np.concatenate([m for _, m in pending])
        pending.clear()
        if format == "npy":
            (root / "img_emb").mkdir(exist_ok=True)
            (root / "metadata").mkdir(exist_ok=True)
            files = [root / "img_emb" / f"img_emb_{part:04d}.npy", root / "metadata" / f"metadata_{part:04d}.parquet"]
            np.save(files[0], matrix)
            pq.write_table(meta, files[1])
        else:
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), collection.dim)
            files = [root / f"embeddings_{part:04d}.parquet"]
            pq.write_table(meta.append_column("vector", vectors), files[0])
        written.extend(files)

    for batch, matrix in collection.iter_vectors(65536, columns):
        bad = bad_rows(matrix)
        if len(bad):
            raise CollectionError(
                f"{collection.uri!r} holds rows that are not finite unit vectors "
                f"({batch.column('path')[int(bad[0])].as_py()}, ...): run `relsim repair {collection.uri}` first"
            )
        pending.append((batch, matrix))
        if sum(len(m) for _, m in pending) >= rows_per_file:
            flush()
    flush()
    info = root / "relsim.json"
    info.write_text(json.dumps(collection.meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [*written, info]


def _is_export_entry(entry: Path) -> bool:
    """A file or folder :func:`export` writes (what ``overwrite=True`` may remove)."""
    if entry.name in ("img_emb", "metadata"):
        return entry.is_dir() and not entry.is_symlink()
    return entry.is_file() and (entry.name == "relsim.json" or _EXPORT_PARQUET.match(entry.name) is not None)


def _export_target(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out``, checked (and emptied of an earlier export with ``overwrite``) before anything is written."""
    root = output_folder(out, "the export target")
    resolved = root.resolve()
    inside = next((p for p in (resolved, *resolved.parents) if is_collection(p)), None)
    if inside is not None:
        raise OutputPathError(f"{os.fspath(out)} is inside the collection {inside}: export to a folder outside it")
    entries = sorted(root.iterdir()) if root.is_dir() else []
    if entries and not overwrite:
        raise OutputPathError(
            f"{os.fspath(out)} is not empty: export into a new or empty folder, or pass --overwrite "
            "(overwrite=True) to replace the export it holds"
        )
    foreign = [e for e in entries if not _is_export_entry(e)]
    if foreign:
        raise OutputPathError(
            f"{os.fspath(out)} holds {foreign[0].name!r}, which is not part of a relsim export: "
            "--overwrite replaces only an export; choose another folder"
        )
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return root


# ----------------------------------------------------------------------------------------- migrate


def _read_v01(path: Path) -> tuple[dict[str, Any], list[FileRecord], np.ndarray, list[dict[str, Any]]]:
    """Meta, live records, embeddings and failures of a relsim 0.1 store (a folder of shards or one file)."""
    from safetensors import SafetensorError
    from safetensors.numpy import safe_open

    def read(file: Path) -> tuple[dict[str, str], list[FileRecord], np.ndarray]:
        try:
            with safe_open(file, framework="np") as f:
                header = f.metadata() or {}
                blob = f.get_tensor("path_bytes").tobytes()
                offsets = f.get_tensor("path_offsets").tolist()
                size, mtime = f.get_tensor("size"), f.get_tensor("mtime_ns")
                sha = f.get_tensor("sha256").tobytes().hex()
                emb = f.get_tensor("embeddings")
        except (SafetensorError, OSError, KeyError) as err:
            raise CollectionError(f"{file}: not a readable relsim 0.1 shard ({err})") from err
        n = len(offsets) - 1
        records = [
            FileRecord(
                blob[offsets[i] : offsets[i + 1]].decode("utf-8"),
                int(size[i]),
                int(mtime[i]),
                sha[64 * i : 64 * (i + 1)],
            )
            for i in range(n)
        ]
        return header, records, emb

    failures: list[dict[str, Any]] = []
    if path.is_file():
        header, records, emb = read(path)
        if header.get("relsim_format") != "store-file":
            raise CollectionError(f"{path}: not a relsim 0.1 store file")
        meta = json.loads(header["meta"])
        return meta, records, emb, failures
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CollectionError(f"{path}: no meta.json, not a relsim 0.1 store")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    shards = sorted(
        ((int(m[2]), int(m[1]), e) for e in path.iterdir() if (m := _SHARD_RE.match(e.name))),
        key=lambda t: t[:2],
    )
    latest: dict[str, tuple[FileRecord, np.ndarray]] = {}
    for _seq, _rank, file in shards:  # read in (seq, rank) order: a later row for a path supersedes
        _, records, emb = read(file)
        for record, row in zip(records, emb, strict=True):
            latest.pop(record.path, None)
            latest[record.path] = (record, row)
    log = path / "failures.log"
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                failures.append(json.loads(line))
            except ValueError:
                continue
    dim = int(meta.get("dim", 384))
    rows = np.stack([row for _, row in latest.values()]) if latest else np.zeros((0, dim), np.float16)
    return meta, [record for record, _ in latest.values()], rows, failures


def migrate(old: str | os.PathLike, new: str | os.PathLike) -> Collection:
    """Convert a relsim 0.1 store (a folder with ``meta.json`` and shards, or an exported single file) into a
    new collection at ``new``: same records, embeddings, dtype, model fingerprint and failures.

    Example:
        >>> migrate("photos.relsim", "photos.lancedb").info()["num_embeddings"]  # doctest: +SKIP
        10000
    """
    old_path = Path(old)
    if not old_path.exists():
        raise MissingFileError(f"{old}: no such store")
    meta, records, emb, failures = _read_v01(old_path)
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, dict):
        raise CollectionError(f"{old}: its meta.json has no model fingerprint")
    collection = Collection.create(
        new,
        fingerprint,
        dim=int(meta.get("dim", emb.shape[1] if emb.ndim == 2 else 384)),
        dtype=meta.get("dtype", "float16"),
    )
    for start in range(0, len(records), 100_000):
        collection.add(records[start : start + 100_000], np.asarray(emb[start : start + 100_000], np.float32))
    entries = [(str(f.get("path")), str(f.get("reason"))) for f in failures if f.get("path")]
    collection.log_failures(entries)
    return collection
