"""Agreement of a student with its teacher on the same images: the numbers a distilled student is judged by.

On ``n`` held-out images with student embeddings ``S`` and teacher embeddings ``T`` (rows L2-normalised):

- ``spearman`` / ``kendall``: rank correlation (Spearman's rho with average ranks for ties; Kendall's tau-b)
  between the student's and the teacher's scores of every pair ``i < j`` (``n (n - 1) / 2`` pairs);
- ``knn_overlap@k``: for each image, the share of the teacher's ``k`` nearest neighbours (itself excluded) that
  are also among the student's ``k`` nearest, averaged over images;
- ``top1_in_top{k}``: how often the teacher's nearest neighbour is among the student's ``k`` nearest.

Kendall's tau-b is computed in ``O(m log m)`` for ``m`` pairs (Knight's algorithm, vectorised merge counting).

Example:
    >>> s = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    >>> agreement(s, s)["spearman"]
    1.0
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ArgumentError

__all__ = ["agreement", "kendall_tau", "spearman_rho", "pair_scores"]


def pair_scores(embeddings: torch.Tensor) -> np.ndarray:
    """Cosines of every pair ``i < j`` (rows assumed L2-normalised), float64."""
    e = embeddings.detach().double().cpu()
    rows, cols = torch.triu_indices(e.shape[0], e.shape[0], offset=1)
    return (e @ e.T)[rows, cols].numpy()


def _average_ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant.

    >>> spearman_rho(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 9.0]))
    1.0
    """
    rx, ry = _average_ranks(np.asarray(x)), _average_ranks(np.asarray(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _tied_pairs(*columns: np.ndarray) -> int:
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _inversions(values: np.ndarray) -> int:
    """Pairs ``i < j`` with ``values[i] > values[j]`` (bottom-up merge counting, one stable sort per level)."""
    a = np.asarray(values, dtype=np.int64)
    n = len(a)
    position = np.arange(n, dtype=np.int64)
    total, width = 0, 1
    while width < n:
        block = position // width
        pair, right = block // 2, (block % 2).astype(np.int64)
        # within a pair: by value, left elements before right ones of equal value (those are not inversions)
        order = np.argsort((pair * (n + 1) + a) * 2 + right, kind="stable")
        sorted_right = right[order]
        left_before = np.cumsum(1 - sorted_right)
        sorted_pair = pair[order]
        pair_start = np.searchsorted(sorted_pair, sorted_pair, side="left")
        left_in_pair_before = left_before - np.where(pair_start > 0, left_before[pair_start - 1], 0)
        left_total = np.bincount(pair, weights=1 - right).astype(np.int64)
        is_right = sorted_right == 1
        total += int((left_total[sorted_pair[is_right]] - left_in_pair_before[is_right]).sum())
        a = a[order]
        width *= 2
    return total


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties in either variable accounted for, as ``scipy.stats.kendalltau``); NaN when constant.

    >>> kendall_tau(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    0.6666666666666666
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    n0 = n * (n - 1) // 2
    n1, n2, n3 = _tied_pairs(x), _tied_pairs(y), _tied_pairs(x, y)
    y_ranks = np.unique(y, return_inverse=True)[1]
    discordant = _inversions(y_ranks)
    denominator = np.sqrt(float(n0 - n1) * float(n0 - n2))
    if denominator == 0:
        return float("nan")
    return float((n0 - n1 - n2 + n3 - 2 * discordant) / denominator)


def agreement(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> dict[str, float]:
    """The agreement metrics (module docstring) of ``student`` and ``teacher`` embeddings of the same images.

    ``k`` shrinks to ``n - 1`` for fewer than ``k + 1`` images; the keys name the ``k`` used (``knn_overlap@10``).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ArgumentError(f"{student.shape[0]} student rows but {teacher.shape[0]} teacher rows")
    n = student.shape[0]
    if n < 3:
        raise ArgumentError(f"agreement needs at least 3 images, got {n}")
    k = min(k, n - 1)
    s_pairs, t_pairs = pair_scores(student), pair_scores(teacher)
    s_sim = student.detach().double().cpu() @ student.detach().double().cpu().T
    t_sim = teacher.detach().double().cpu() @ teacher.detach().double().cpu().T
    s_sim.fill_diagonal_(-float("inf"))
    t_sim.fill_diagonal_(-float("inf"))
    s_top = s_sim.topk(k, dim=1).indices
    t_top = t_sim.topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(s_top, t_top, strict=True)]
    t_first = t_sim.argmax(dim=1, keepdim=True)
    hit = (s_top == t_first).any(dim=1).double().mean()
    return {
        "spearman": spearman_rho(s_pairs, t_pairs),
        "kendall": kendall_tau(s_pairs, t_pairs),
        f"knn_overlap@{k}": float(np.mean(overlap)),
        f"top1_in_top{k}": float(hit),
        "images": float(n),
    }
