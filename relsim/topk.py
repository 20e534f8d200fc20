"""Top-k search by cosine similarity over embedding matrices and stores.

The exact backend multiplies the queries with the embeddings one chunk of rows at a time, in float32
(a float16 matrix is converted chunk by chunk, never as a whole), and merges each chunk's top-k into a
running top-k. The optional FAISS backend (``pip install "relsim[faiss]"``) uses ``IndexFlatIP``, which is
exact too.

Example:
    >>> scores, idx = search(query, store.embeddings(), k=5)       # doctest: +SKIP
    >>> search_store(store, relsim.text.embed_text("a stack of things")[0], k=3)  # doctest: +SKIP
    [{'rank': 1, 'score': 0.61, 'path': '/data/0042.jpg', 'sha256': '…', 'duplicates': []}, ...]
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from relsim.store import EmbeddingStore

__all__ = ["search", "search_store", "dedup_by_hash"]

_Exclude = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | Sequence[torch.Tensor] | None


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            'backend="faiss" needs the faiss package: pip install "relsim[faiss]" (or faiss-cpu / faiss-gpu)'
        ) from err
    return faiss


def _as_index_tensor(ids: Any) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.int64).flatten()


@dataclass
class _Exclusions:
    """Excluded (query, row) pairs sorted by row; ``queries`` is None when they apply to every query."""

    queries: torch.Tensor | None
    rows: torch.Tensor
    counts: list[int]

    @classmethod
    def parse(cls, exclude: _Exclude, q: int, n: int) -> _Exclusions | None:
        if exclude is None:
            return None
        per_query = (
            not isinstance(exclude, torch.Tensor)
            and len(exclude) > 0
            and not any(isinstance(e, numbers.Integral) or getattr(e, "ndim", None) == 0 for e in exclude)
        )
        if isinstance(exclude, torch.Tensor) and exclude.ndim == 2:
            exclude, per_query = list(exclude), True
        if not per_query:
            ids = _in_range(exclude, n)
            return cls(None, ids, [len(ids)] * q)
        if len(exclude) != q:
            raise ValueError(f"exclude has {len(exclude)} lists for {q} queries")
        lists = [_in_range(ids, n) for ids in exclude]
        rows = torch.cat(lists)
        queries = torch.cat([torch.full((len(ids),), i, dtype=torch.int64) for i, ids in enumerate(lists)])
        order = torch.argsort(rows, stable=True)
        return cls(queries[order], rows[order], [len(ids) for ids in lists])

    def for_query(self, i: int) -> torch.Tensor:
        return self.rows if self.queries is None else self.rows[self.queries == i]

    def apply(self, scores_t: torch.Tensor, start: int) -> None:
        """Set excluded entries of a (m, Q) score block for rows start..start+m to -inf, in place."""
        lo, hi = torch.searchsorted(self.rows, torch.tensor([start, start + scores_t.shape[0]])).tolist()
        if hi == lo:
            return
        rows = (self.rows[lo:hi] - start).to(scores_t.device)
        if self.queries is None:
            scores_t[rows] = float("-inf")
        else:
            scores_t[rows, self.queries[lo:hi].to(scores_t.device)] = float("-inf")


def _in_range(ids: Any, n: int) -> torch.Tensor:
    ids = _as_index_tensor(ids)
    return torch.unique(ids[(ids >= 0) & (ids < n)])  # unique() also sorts


def _prepare_query(query: torch.Tensor, dim: int) -> tuple[torch.Tensor, bool]:
    q = torch.as_tensor(query)
    single = q.ndim == 1
    q = q.unsqueeze(0) if single else q
    if q.ndim != 2 or q.shape[1] != dim:
        shape = tuple(torch.as_tensor(query).shape)
        raise ValueError(f"query must have shape ({dim},) or (Q, {dim}), got {shape}")
    q = q.float()
    if not torch.isfinite(q).all() or (q.norm(dim=1) == 0).any():
        raise ValueError("query contains a zero, NaN or infinite vector")
    return F.normalize(q, dim=1), single


def search(
    query: torch.Tensor,
    embeddings: torch.Tensor,
    k: int = 10,
    *,
    chunk_size: int = 8192,
    exclude: _Exclude = None,
    backend: str = "exact",
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows of ``embeddings`` (N, D), assumed L2-normalised, by cosine with each query.

    ``query`` is (D,) or (Q, D) and is normalised here. Returns ``(scores, indices)`` on the CPU, shaped
    (k',) for a 1-D query and (Q, k') otherwise, best first, with k' = min(k, N) (fewer when ``exclude``
    leaves fewer than k candidates for every query). A query with fewer candidates than k' gets index -1
    and score -inf in its last slots. ``exclude`` is a list of row indices applied to every query, or one
    list per query (e.g. the query's own row, for exclude-self). ``device`` moves chunks there (e.g. a
    CPU matrix searched on a GPU); by default the embeddings' device is used.

    Example:
        >>> emb = torch.nn.functional.normalize(torch.randn(1000, 384), dim=1)
        >>> scores, idx = search(emb[3], emb, k=2, exclude=[3])
        >>> idx.shape, bool(scores[0] >= scores[1])
        (torch.Size([2]), True)
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend not in ("exact", "faiss"):
        raise ValueError(f'backend must be "exact" or "faiss", got {backend!r}')
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {tuple(embeddings.shape)}")
    n, dim = embeddings.shape
    q, single = _prepare_query(query, dim)
    excl = _Exclusions.parse(exclude, q.shape[0], n)
    available = n - min(excl.counts) if excl is not None else n
    k_eff = min(k, n, max(available, 0))
    if k_eff == 0:
        scores, idx = torch.empty(q.shape[0], 0), torch.empty(q.shape[0], 0, dtype=torch.int64)
    elif backend == "exact":
        scores, idx = _search_exact(q, embeddings, k_eff, chunk_size, excl, device)
    else:
        scores, idx = _search_faiss(q, embeddings, k_eff, chunk_size, excl)
    return (scores[0], idx[0]) if single else (scores, idx)


def _search_exact(
    q: torch.Tensor,
    embeddings: torch.Tensor,
    k: int,
    chunk_size: int,
    excl: _Exclusions | None,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device) if device is not None else embeddings.device
    q_t = q.to(dev).T.contiguous()  # (D, Q): block @ q_t is a plain GEMM/GEMV on row-major blocks
    n, dim = embeddings.shape
    nq = q_t.shape[1]
    best_s = torch.empty(nq, 0, device=dev)
    best_i = torch.empty(nq, 0, dtype=torch.int64, device=dev)
    convert = embeddings.dtype != torch.float32 or embeddings.device != dev
    with torch.inference_mode():
        # Reused buffers: a fresh multi-MB tensor per chunk costs page faults comparable to the matmul.
        buf = torch.empty(min(chunk_size, n), dim, device=dev) if convert else None
        out = torch.empty(min(chunk_size, n), nq, device=dev)
        for start in range(0, n, chunk_size):
            rows = embeddings[start : start + chunk_size]
            block = buf[: rows.shape[0]].copy_(rows) if buf is not None else rows
            scores_t = torch.mm(block, q_t, out=out[: block.shape[0]])  # (m, Q)
            if excl is not None:
                excl.apply(scores_t, start)
            top_s, top_i = scores_t.topk(min(k, block.shape[0]), dim=0)
            merged_s = torch.cat([best_s, top_s.T], dim=1)
            merged_i = torch.cat([best_i, top_i.T + start], dim=1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
    best_i = best_i.masked_fill(torch.isneginf(best_s), -1)
    return best_s.cpu(), best_i.cpu()


def _search_faiss(
    q: torch.Tensor,
    embeddings: torch.Tensor,
    k: int,
    chunk_size: int,
    excl: _Exclusions | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    faiss = _import_faiss()
    index = faiss.IndexFlatIP(embeddings.shape[1])
    for start in range(0, embeddings.shape[0], chunk_size):
        block = embeddings[start : start + chunk_size].detach().to("cpu", torch.float32)
        index.add(np.ascontiguousarray(block.numpy()))
    queries = np.ascontiguousarray(q.cpu().numpy())

    def run(rows: np.ndarray, ids: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        if ids is None or len(ids) == 0:
            return index.search(rows, k)
        inner = faiss.IDSelectorBatch(ids.numpy())
        params = faiss.SearchParameters(sel=faiss.IDSelectorNot(inner))
        return index.search(rows, k, params=params)

    if excl is None or excl.queries is None:
        dist, ids = run(queries, None if excl is None else excl.rows)
    else:
        parts = [run(queries[i : i + 1], excl.for_query(i)) for i in range(len(queries))]
        dist, ids = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    scores = torch.from_numpy(dist).float()
    idx = torch.from_numpy(ids).long()
    scores = scores.masked_fill(idx < 0, float("-inf"))
    return scores, idx


def dedup_by_hash(
    indices: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float],
    hashes: Sequence[str],
) -> tuple[list[int], list[float]]:
    """Drop results whose content hash was already seen (keep the first, i.e. best-ranked, of each).

    ``indices``/``scores`` are one query's ranked results; ``hashes[i]`` is row i's content hash.
    Negative indices (empty slots) are dropped.

    Example:
        >>> hashes = ["h0", "h1", "h2", "h3", "h1"]  # rows 1 and 4 are the same file content
        >>> dedup_by_hash([4, 1, 2], [0.9, 0.9, 0.5], hashes)
        ([4, 2], [0.9, 0.5])
    """
    idx_list = torch.as_tensor(indices).flatten().tolist()
    score_list = torch.as_tensor(scores, dtype=torch.float64).flatten().tolist()
    if len(idx_list) != len(score_list):
        raise ValueError(f"{len(idx_list)} indices but {len(score_list)} scores")
    seen: set[str] = set()
    keep_i, keep_s = [], []
    for i, s in zip(idx_list, score_list, strict=True):
        if i < 0 or hashes[i] in seen:
            continue
        seen.add(hashes[i])
        keep_i.append(i)
        keep_s.append(s)
    return keep_i, keep_s


def _self_rows(store: EmbeddingStore, path: str | os.PathLike) -> list[int]:
    """Rows of ``path`` and of every row with the same content (its copies are 'self' too)."""
    from relsim.store import file_sha256

    row = store.index_of(path)
    if row is not None:
        return store.rows_with_hash(store.record(row).sha256)
    try:
        return store.rows_with_hash(file_sha256(path))
    except OSError:
        return []


def search_store(
    store: EmbeddingStore,
    query: torch.Tensor,
    k: int = 10,
    *,
    exclude_self_path: str | os.PathLike | Sequence[str | os.PathLike | None] | None = None,
    dedup: bool = True,
    fingerprint: dict[str, Any] | None = None,
    chunk_size: int = 8192,
    backend: str = "exact",
    device: str | torch.device | None = None,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """Search a store; results as dicts ``{rank, score, path, sha256, duplicates}``, best first.

    A 1-D query gives one list of results, a (Q, D) query a list of Q lists. ``exclude_self_path`` drops
    that image and any byte-identical copy (one path, or one per query). With ``dedup`` identical files
    appear once, the first in store order, their other paths listed under ``duplicates``. ``fingerprint``
    (the query model's) is checked against the store's: pass it for image queries; text queries live in
    the shared MiniLM space and need none.

    Example:
        >>> q = model.embed(["q.jpg"])[0]                                         # doctest: +SKIP
        >>> hits = search_store(store, q, k=5, exclude_self_path="q.jpg")          # doctest: +SKIP
        >>> hits[0]["path"], round(hits[0]["score"], 3)                           # doctest: +SKIP
    """
    if fingerprint is not None:
        store.check_compatible(fingerprint)
    q = torch.as_tensor(query)
    single = q.ndim == 1
    nq = 1 if single else q.shape[0]
    repeats, groups = store.duplicate_rows() if dedup else ([], {})

    self_paths: list[Any]
    if exclude_self_path is None or isinstance(exclude_self_path, str | os.PathLike):
        self_paths = [exclude_self_path] * nq
    else:
        self_paths = list(exclude_self_path)
        if len(self_paths) != nq:
            raise ValueError(f"exclude_self_path has {len(self_paths)} entries for {nq} queries")
    per_query = [
        torch.tensor(repeats + (_self_rows(store, p) if p is not None else []), dtype=torch.int64) for p in self_paths
    ]
    exclude: Any = None
    if any(len(e) for e in per_query):
        same = all(p == self_paths[0] for p in self_paths)
        exclude = per_query[0] if same else per_query

    scores, idx = search(
        q, store.embeddings(), k, chunk_size=chunk_size, exclude=exclude, backend=backend, device=device
    )
    scores, idx = scores.reshape(nq, -1), idx.reshape(nq, -1)
    results = []
    for row_s, row_i in zip(scores.tolist(), idx.tolist(), strict=True):
        hits = []
        for s, i in zip(row_s, row_i, strict=True):
            if i < 0:
                continue
            rec = store.record(i)
            dupes = [store.record(j).path for j in groups.get(rec.sha256, []) if j != i]
            hit = {"rank": len(hits) + 1, "score": s, "path": rec.path, "sha256": rec.sha256}
            hits.append({**hit, "duplicates": dupes})
        results.append(hits)
    return results[0] if single else results
