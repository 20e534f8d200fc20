"""Top-k matches of each query: cosine over the pool, never the query itself nor a byte-identical copy of it.

Upstream sorts every pool image by cosine and drops the first column, assuming it is the query. Here the
query's whole content group (same SHA-256) is left out, so a copy of the query can never be its match, and
each other content appears once in a list (copies share one vector; the first row of a group stands for it).
Rows a method could not embed are never matched. Ties go to the lower pool row (a stable sort), so a list is
the same on every run and machine.

Example:
    >>> rows, scores = top_matches(vectors, valid, hashes, queries=[3, 7], k=10)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ArgumentError

__all__ = ["top_matches"]


def top_matches(
    vectors: np.ndarray,
    valid: np.ndarray,
    hashes: Sequence[str],
    queries: Sequence[int],
    k: int,
    *,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (len(queries), k): the pool rows of each query's k best matches and their cosines.

    ``vectors`` are L2-normalised rows; ``valid`` marks the rows that may be matched; ``hashes`` are the rows'
    content hashes. Where fewer than k candidates exist the rest is row -1, score NaN.

    Example:
        >>> v = np.eye(3, dtype=np.float32)
        >>> top_matches(v, np.ones(3, bool), ["a", "b", "a"], [0], k=2)[0].tolist()
        [[1, -1]]
    """
    if k < 1:
        raise ArgumentError(f"k must be >= 1, got {k}")
    n = len(hashes)
    group_of: dict[str, int] = {}
    groups = np.array([group_of.setdefault(h, len(group_of)) for h in hashes], dtype=np.int64)
    first_row = np.full(len(group_of), -1, dtype=np.int64)
    for row in range(n - 1, -1, -1):  # the first valid row of each group stands for it
        if valid[row]:
            first_row[groups[row]] = row
    candidates = np.sort(first_row[first_row >= 0])
    pool = torch.from_numpy(np.ascontiguousarray(vectors[candidates], dtype=np.float32))
    candidate_groups = torch.from_numpy(groups[candidates])
    queries = np.asarray(queries, dtype=np.int64)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), np.nan, dtype=np.float32)
    take = min(k, max(len(candidates) - 1, 0) + 1)
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        q = torch.from_numpy(np.ascontiguousarray(vectors[block], dtype=np.float32))
        sims = q @ pool.T
        own = candidate_groups[None, :] == torch.from_numpy(groups[block])[:, None]
        sims[own] = -torch.inf
        ordered, order = torch.sort(sims, dim=1, descending=True, stable=True)
        ordered, order = ordered[:, :take], order[:, :take]
        found = torch.isfinite(ordered)
        picked = torch.from_numpy(candidates)[order]
        rows[start : start + len(block), :take] = torch.where(found, picked, -1).numpy()
        scores[start : start + len(block), :take] = torch.where(found, ordered, torch.nan).numpy()
    return rows, scores
