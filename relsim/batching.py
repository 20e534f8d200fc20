"""Batch plumbing shared by the embedder, the captioner and the bulk jobs: "is this one input or many",
deduplication, decoding ahead in threads, and the one progress-bar rule.

Example:
    >>> is_single("a.jpg"), is_single(["a.jpg", "b.jpg"])
    (True, False)
    >>> deduplicate(["a.jpg", "b.jpg", "a.jpg"])
    (['a.jpg', 'b.jpg'], tensor([0, 1, 0]))
    >>> list(decode_ahead(lambda i: i * i, 4, num_workers=2, ahead=2))
    [0, 1, 4, 9]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

#: Seconds between progress lines when stderr is not a terminal (a SLURM or CI log).
LOG_INTERVAL_S = 60.0


def is_single(x: Any) -> bool:
    """Whether ``x`` is one image (a path, a PIL image, an HW/HWC array, a CHW tensor, or a 1-D tensor: one
    embedding) rather than a list, tuple or batch of them."""
    if isinstance(x, torch.Tensor):
        return x.ndim in (1, 3)
    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    return not isinstance(x, (list, tuple))


def deduplicate(items: list) -> tuple[list, torch.Tensor]:
    """Distinct images (same path or same object) and the index of each item among them."""
    keys: dict = {}
    unique, index = [], []
    for item in items:
        key = ("path", os.fspath(item)) if isinstance(item, (str, os.PathLike)) else ("obj", id(item))
        if key not in keys:
            keys[key] = len(unique)
            unique.append(item)
        index.append(keys[key])
    return unique, torch.tensor(index, dtype=torch.long)


def worker_count(num_workers: int | None) -> int:
    """Decoding threads: ``num_workers``, or by default one per core up to 8."""
    return min(8, os.cpu_count() or 1) if num_workers is None else num_workers


def decode_ahead(prepare: Callable[[int], T], n: int, *, num_workers: int | None, ahead: int) -> Iterator[T]:
    """``prepare(0), ..., prepare(n - 1)`` in order, run ahead in worker threads: at most ``max(ahead, workers)``
    results wait or run at a time, so memory stays bounded however long the input. With no workers (or one
    item) everything runs in this thread. An exception from ``prepare`` is raised when its turn comes."""
    workers = worker_count(num_workers)
    if workers <= 0 or n == 1:
        yield from (prepare(i) for i in range(n))
        return
    with ThreadPoolExecutor(workers) as pool:
        window = max(ahead, workers)
        futures = {i: pool.submit(prepare, i) for i in range(min(window, n))}
        for i in range(n):
            result = futures.pop(i).result()  # popped: the result is let go once the caller is done with it
            if i + window < n:
                futures[i + window] = pool.submit(prepare, i + window)
            yield result


def progress_bar(total: int, progress: bool | None, desc: str, *, unit: str = "img", initial: int = 0):
    """The one progress-bar rule: ``progress=None`` shows one when stderr is a terminal, ``True`` always,
    ``False`` never (nor for an empty job). On a terminal it is a live tqdm bar; elsewhere (a log file) the
    same bar as a line every ``LOG_INTERVAL_S`` seconds instead of a carriage-return storm. None when hidden.

    >>> progress_bar(10, False, "relsim embed") is None
    True
    """
    interactive = sys.stderr.isatty()
    if total == 0 or not (interactive if progress is None else progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        desc=desc,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else LOG_INTERVAL_S,
        file=sys.stderr,
    )


__all__ = ["LOG_INTERVAL_S", "decode_ahead", "deduplicate", "is_single", "progress_bar", "worker_count"]
