"""Nearest-neighbour queries on a collection: query vectors in, :class:`Hit` lists out.

Flat exact search (cosine = dot of unit vectors) until the collection has an ANN index: LanceDB's brute-force
scan for a one-off query, the vectors held in memory (:mod:`relsim.exact`) from the second query on or for
several queries at once. Then the index (IVF_SQ probes :data:`DEFAULT_NPROBES` partitions; HNSW gets an exact
re-rank). SQL filters (``where``) apply before the top-k; ``caption_contains`` goes through the full-text
index on ``caption`` and scores its rows exactly. Byte-identical files (same SHA-256) appear once, the others listed
under :attr:`Hit.duplicates`, and stored rows that are not finite unit vectors are never returned.

:meth:`relsim.collection.Collection.nearest` is this module's :func:`nearest`; :func:`relsim.search` builds
the query vectors from an image or a text first.

Example:
    >>> hits = nearest(Collection.open("photos.relsim"), model.embed(["q.jpg"]), k=5)  # doctest: +SKIP
    >>> hits[0][0].path, hits[0][0].score                                               # doctest: +SKIP
    ('/photos/q.jpg', 1.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .collection import bad_rows, one_line, sql_literal, vector_matrix
from .errors import ArgumentError, CollectionError
from .exact import VectorMemory

if TYPE_CHECKING:
    import pyarrow as pa

    from .collection import Collection

__all__ = ["DEFAULT_NPROBES", "Hit", "nearest"]

#: Partitions probed per query when nprobes is not given (of ~sqrt(rows)/2): recall@10 0.997 on 1M clustered
#: vectors with IVF_SQ, as at 4 and 8 there; kept higher for embeddings that cluster less (docs/search.md#scale).
DEFAULT_NPROBES = 16
#: The exact re-rank HNSW over 8-bit vectors needs to reach recall@10 0.95 (docs/search.md#scale).
HNSW_REFINE_FACTOR = 5
_COLUMNS = ["path", "sha256", "caption", "vector"]


@dataclass
class Hit:
    """One search result: rank (from 1), cosine score in [-1, 1], the file, and what else the row holds."""

    rank: int
    score: float
    path: str
    sha256: str
    duplicates: list[str] = field(default_factory=list)
    """Other files with the same content (same SHA-256), listed once under the first."""
    caption: str | None = None
    """The stored anonymous caption, if any."""

    def to_dict(self) -> dict[str, Any]:
        """``{rank, score, path, sha256, duplicates}`` plus ``caption`` when one is stored: what
        :func:`relsim.search` returns.

        >>> Hit(1, 0.83, "/photos/x.jpg", "ab12").to_dict()
        {'rank': 1, 'score': 0.83, 'path': '/photos/x.jpg', 'sha256': 'ab12', 'duplicates': []}
        """
        out = {"rank": self.rank, "score": self.score, "path": self.path, "sha256": self.sha256}
        out["duplicates"] = list(self.duplicates)
        if self.caption is not None:
            out["caption"] = self.caption
        return out


@dataclass
class _Search:
    """One query's settings, shared by the flat, ANN and caption paths."""

    collection: Collection
    k: int
    predicate: str | None
    dedup: bool
    use_index: bool
    nprobes: int | None
    refine_factor: int | None
    memory: VectorMemory | None = None
    """Flat search over the vectors in memory (no SQL filter: ``excluded`` is applied here instead)."""
    excluded: frozenset[str] = frozenset()
    prefetched: np.ndarray | None = None
    """This query's best row ids, computed with the other queries' in one pass."""


def check_query_options(
    k: int,
    *,
    nprobes: int | None = None,
    refine_factor: int | None = None,
    exact: bool = False,
    spell: Callable[[str], str] = str,
) -> None:
    """The one check of the nearest-neighbour options (:func:`nearest`, ``relsim.search``, ``relsim search``):
    :class:`relsim.errors.ArgumentError` naming the option, spelled by ``spell`` (the CLI passes its flags).

    >>> check_query_options(0)
    Traceback (most recent call last):
    relsim.errors.ArgumentError: k must be an int >= 1, got 0
    """
    for name, value in (("k", k), ("nprobes", nprobes), ("refine_factor", refine_factor)):
        if (value is not None or name == "k") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ArgumentError(f"{spell(name)} must be an int >= 1, got {value!r}")
    if exact and (nprobes is not None or refine_factor is not None):
        tuned = spell("nprobes" if nprobes is not None else "refine_factor")
        raise ArgumentError(f"{tuned} tunes the ANN index: not with {spell('exact')}")


def nearest(
    collection: Collection,
    queries: torch.Tensor | np.ndarray,
    k: int = 10,
    *,
    where: str | None = None,
    exact: bool = False,
    exclude_sha256: Sequence[Sequence[str]] | None = None,
    dedup: bool = True,
    caption_contains: str | None = None,
    nprobes: int | None = None,
    refine_factor: int | None = None,
) -> list[list[Hit]]:
    """The ``k`` nearest rows of ``collection`` to each query (Q, dim), best first, by cosine.

    Uses the ANN index when there is one, unless ``exact`` (a flat scan). ``where`` is a Lance SQL
    predicate over the columns (``"path LIKE '%/2024/%'"``). ``exclude_sha256`` gives per query the contents
    to leave out (its own file and copies). With ``dedup`` byte-identical files (same SHA-256) among the
    nearest appear once, the others under ``duplicates``. ``caption_contains`` keeps rows whose caption
    matches these words through the full-text index on ``caption`` (built on first use; case-insensitive,
    stemmed), scored exactly. ``nprobes`` / ``refine_factor`` tune the ANN index. Rows that are not finite
    unit vectors are never returned (a warning names them).

    Example:
        >>> nearest(col, model.embed(["q.jpg"]), k=5)[0][0].path  # doctest: +SKIP
        '/photos/q.jpg'
    """
    check_query_options(k, nprobes=nprobes, refine_factor=refine_factor, exact=exact)
    dim = collection.dim
    q = torch.as_tensor(queries).detach().cpu().float()
    q = q.unsqueeze(0) if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise ArgumentError(f"queries must have shape ({dim},) or (Q, {dim}), got {tuple(q.shape)}")
    if not torch.isfinite(q).all() or (q.norm(dim=1) == 0).any():
        raise ArgumentError("a query is a zero, NaN or infinite vector")
    q = torch.nn.functional.normalize(q, dim=1).numpy()
    kind = None if exact else collection.vector_index_kind()
    if kind is not None and nprobes is None:
        nprobes = DEFAULT_NPROBES
    if kind is not None and "HNSW" in kind.upper() and refine_factor is None:
        refine_factor = HNSW_REFINE_FACTOR
    excluded = [frozenset(exclude_sha256[i]) if exclude_sha256 is not None else frozenset() for i in range(len(q))]
    memory = None
    if kind is None and where is None and caption_contains is None:
        memory = VectorMemory.of(collection)
        memory = memory if memory.wanted(len(q)) else None
    prefetched: list[np.ndarray | None] = [None] * len(q)
    if memory is not None:
        memory.load()
        prefetched = memory.top(q, _first_limit(k, dedup) + max(map(len, excluded)))
    results = []
    for i, vec in enumerate(q):
        clauses = [f"({where})"] if where else []
        if excluded[i] and memory is None:
            clauses.append(f"sha256 NOT IN ({', '.join(sql_literal(h) for h in sorted(excluded[i]))})")
        search = _Search(collection, k, " AND ".join(clauses) or None, dedup, kind is not None, nprobes, refine_factor)
        if memory is not None:
            search.memory, search.excluded, search.prefetched = memory, excluded[i], prefetched[i]
        candidates = _caption_rows(search, caption_contains) if caption_contains is not None else None
        results.append(_hits(search, vec, candidates))
    return results


def _first_limit(k: int, dedup: bool) -> int:
    """Rows fetched for k hits at first: more than k, as duplicates and damaged rows are dropped."""
    return 2 * k + 8 if dedup else k + 4


def _caption_rows(search: _Search, words: str) -> pa.Table:
    """Rows whose caption matches ``words`` (full-text index), with their vectors."""
    collection, table = search.collection, search.collection.table
    if not words.strip():
        raise ArgumentError("caption_contains is empty")
    if not any(getattr(ix, "columns", None) == ["caption"] for ix in table.list_indices()):
        if not collection.create_caption_index():
            return collection.scan(_COLUMNS, "false")
    query = table.search(words, query_type="fts", fts_columns="caption").select([*_COLUMNS, "_score"]).limit(None)
    if search.predicate:
        query = query.where(search.predicate, prefilter=True)
    try:
        return query.to_arrow()
    except (OSError, RuntimeError, ValueError) as err:
        raise CollectionError(f"cannot search the captions of {collection.uri!r}: {one_line(err)}") from err


def _ranked(candidates: pa.Table, vec: np.ndarray, limit: int, dim: int) -> pa.Table:
    """The ``limit`` best of ``candidates`` scored exactly, with a ``_distance`` column as LanceDB gives it."""
    import pyarrow as pa

    with np.errstate(invalid="ignore", over="ignore"):  # damaged rows: reported by the caller
        scores = vector_matrix(candidates, dim) @ vec if candidates.num_rows else np.zeros(0, np.float32)
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:limit]
    return candidates.take(pa.array(order)).append_column("_distance", pa.array(1.0 - scores[order], pa.float32()))


def _hits(search: _Search, vec: np.ndarray, candidates: pa.Table | None = None) -> list[Hit]:
    """Top-k hits; ``candidates`` (rows with vectors) are scored exactly instead of querying the table.

    Fetches more rows than ``k`` (duplicates and damaged rows are dropped) and more again until k are found or
    the table has no more.
    """
    dim, uri = search.collection.dim, search.collection.uri
    limit = _first_limit(search.k, search.dedup)
    while True:
        if candidates is not None:
            rows = _ranked(candidates, vec, limit, dim)
        elif search.memory is not None:
            rows = _memory_query(search, vec, limit)
        else:  # LanceDB scores float16 in float16, an index from quantized vectors: rescore what it found
            rows = _ranked(_query(search, vec, limit).drop_columns(["_distance"]), vec, limit, dim)
        hits: list[Hit] = []
        by_hash: dict[str, Hit] = {}
        bad_paths: list[str] = []
        bad = set(bad_rows(vector_matrix(rows, dim)).tolist())
        for j, row in enumerate(rows.select(["path", "sha256", "caption", "_distance"]).to_pylist()):
            score = 1.0 - float(row["_distance"])
            if j in bad or not math.isfinite(score):
                bad_paths.append(row["path"])
                continue
            if search.dedup and row["sha256"] in by_hash:
                by_hash[row["sha256"]].duplicates.append(row["path"])
                continue
            hit = Hit(len(hits) + 1, min(1.0, max(-1.0, score)), row["path"], row["sha256"], [], row["caption"])
            by_hash[row["sha256"]] = hit
            hits.append(hit)
        if len(hits) > search.k or rows.num_rows < limit:  # enough, or nothing more to fetch
            break
        limit *= 4
    if bad_paths:
        warnings.warn(
            f"{uri}: skipped {len(bad_paths)} stored row(s) that are not finite unit vectors "
            f"({', '.join(bad_paths[:3])}); run `relsim repair {uri}`",
            stacklevel=4,
        )
    return hits[: search.k]


def _memory_query(search: _Search, vec: np.ndarray, limit: int) -> pa.Table:
    """The ``limit`` best rows from the vectors in memory, excluded contents left out, scored as stored."""
    import pyarrow as pa
    import pyarrow.compute as pc

    memory, total = search.memory, len(search.memory.row_ids)
    fetch = limit + len(search.excluded)
    while True:
        ids = search.prefetched
        if ids is None or len(ids) < min(fetch, total):
            ids = memory.top(vec[None], fetch)[0]
        rows = memory.rows(ids[:fetch], _COLUMNS)
        if search.excluded:
            rows = rows.filter(pc.invert(pc.is_in(rows.column("sha256"), pa.array(sorted(search.excluded)))))
        if rows.num_rows >= limit or fetch >= total:
            return _ranked(rows, vec, limit, search.collection.dim)
        fetch *= 4


def _query(search: _Search, vec: np.ndarray, limit: int) -> pa.Table:
    """One LanceDB vector query: dot distance, the filter applied first, the index or a flat scan."""
    uri = search.collection.uri
    query = search.collection.table.search(vec, vector_column_name="vector").distance_type("dot").limit(limit)
    query = query.select([*_COLUMNS, "_distance"])
    if search.predicate:
        query = query.where(search.predicate, prefilter=True)
    if not search.use_index:
        query = query.bypass_vector_index()
    else:
        if search.nprobes is not None:
            query = query.nprobes(search.nprobes)
        if search.refine_factor is not None:
            query = query.refine_factor(search.refine_factor)
    try:
        return query.to_arrow()
    except (OSError, RuntimeError, ValueError) as err:
        message = one_line(err)
        predicate = search.predicate
        if predicate and ("parse" in message.lower() or "sql" in message.lower() or "schema" in message.lower()):
            raise ArgumentError(f"invalid filter {predicate!r}: {message}") from err
        raise CollectionError(f"cannot search the collection {uri!r}: {message} -- run `relsim repair {uri}`") from err
