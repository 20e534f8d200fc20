"""Summary statistics of judged retrievals: mean with a bootstrap CI, and paired wins against a reference.

For each method the unit is a query: its score is the judge's score of the method's top-1 match (the mean of
the valid samples when a pair is judged several times). The 95% CI is the percentile bootstrap over queries
(10,000 resamples, seeded). The paired comparison uses the queries both methods have a score for: a win is
a strictly higher score than the reference's on the same query.

Example:
    >>> bootstrap_ci(np.array([1.0, 2.0, 3.0]), seed=0)        # doctest: +SKIP
    (1.0, 3.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MethodSummary", "Paired", "bootstrap_ci", "paired", "summarise"]


def bootstrap_ci(
    scores: np.ndarray, *, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None without scores.

    Example:
        >>> bootstrap_ci(np.array([5.0, 5.0]))
        (5.0, 5.0)
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // scores.size)  # bound the index matrix to ~16 MB
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start : start + count] = scores[rng.integers(0, scores.size, (count, scores.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class Paired:
    """A method against the reference on the queries both have a score for."""

    reference: str
    queries: int
    wins: int
    ties: int
    losses: int

    @property
    def win_share(self) -> float | None:
        return self.wins / self.queries if self.queries else None

    def to_dict(self) -> dict:
        return {**asdict(self), "win_share": self.win_share}


def paired(scores: Mapping[int, float], reference: Mapping[int, float], name: str) -> Paired:
    """Wins, ties and losses of ``scores`` against ``reference``, both keyed by query."""
    common = sorted(set(scores) & set(reference))
    wins = sum(scores[q] > reference[q] for q in common)
    ties = sum(scores[q] == reference[q] for q in common)
    return Paired(name, len(common), wins, ties, len(common) - wins - ties)


@dataclass
class MethodSummary:
    """One method's row of the results table."""

    method: str
    queries: int
    """Queries with a top-1 match for this method."""
    judged: int
    """Queries with a score (at least one parsed answer)."""
    unparseable: int
    """Answers that held no number in [0, 10] (counted per answer; a pair may be asked several times)."""
    failed: int
    """Requests that failed after the retries (not cached: a rerun asks them again)."""
    mean: float | None
    ci95: tuple[float, float] | None
    vs_reference: Paired | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        out["vs_reference"] = self.vs_reference.to_dict() if self.vs_reference is not None else None
        return out


def summarise(
    method: str,
    queries: int,
    scores: Mapping[int, float],
    *,
    unparseable: int,
    failed: int,
    reference: tuple[str, Mapping[int, float]] | None = None,
    seed: int = 0,
) -> MethodSummary:
    """The summary of one method from its per-query scores (query -> score)."""
    values = np.array([scores[q] for q in sorted(scores)], dtype=np.float64)
    mean = float(values.mean()) if values.size else None
    versus = paired(scores, reference[1], reference[0]) if reference is not None else None
    return MethodSummary(
        method, queries, len(values), unparseable, failed, mean, bootstrap_ci(values, seed=seed), versus
    )
