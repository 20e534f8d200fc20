"""relsim.batching: the one copy of each batch rule (issue 22)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from relsim.batching import LOG_INTERVAL_S, decode_ahead, deduplicate, is_single, progress_bar, worker_count


@pytest.mark.parametrize(
    ("value", "single"),
    [
        ("a.jpg", True),
        (["a.jpg"], False),
        (("a.jpg", "b.jpg"), False),
        (np.zeros((4, 4), np.uint8), True),
        (np.zeros((4, 4, 3), np.uint8), True),
        (np.zeros((2, 4, 4, 3), np.uint8), False),
        (torch.zeros(3, 4, 4), True),
        (torch.zeros(2, 3, 4, 4), False),
        (torch.zeros(384), True),  # one embedding (relsim.search)
        (torch.zeros(2, 384), False),
    ],
)
def test_is_single(value, single) -> None:
    assert is_single(value) is single


def test_deduplicate_by_path_and_by_object() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    unique, index = deduplicate(["a.jpg", image, "a.jpg", image, np.zeros((4, 4, 3), np.uint8)])
    assert len(unique) == 3 and index.tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("workers", [0, 1, 3, None])
def test_decode_ahead_keeps_order_and_bounds_the_window(workers) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def prepare(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    window = max(4, worker_count(workers))
    for i, value in enumerate(decode_ahead(prepare, 20, num_workers=workers, ahead=4)):
        assert value == i * i
        with lock:
            assert max(started) <= i + window  # never more than the window ahead of the consumer
    assert sorted(started) == list(range(20))


def test_decode_ahead_raises_at_the_failing_item() -> None:
    def prepare(i: int) -> int:
        if i == 3:
            raise ValueError("bad item 3")
        return i

    out = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in decode_ahead(prepare, 10, num_workers=2, ahead=2):
            out.append(value)
    assert out == [0, 1, 2]


def test_progress_bar_rule(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(10, None, "x") is None  # not a terminal: off by default
    assert progress_bar(0, True, "x") is None  # nothing to do
    assert progress_bar(10, False, "x") is None
    log_bar = progress_bar(10, True, "x")  # forced on in a log: a line a minute
    assert log_bar is not None and log_bar.mininterval == LOG_INTERVAL_S
    log_bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(10, None, "relsim embed", initial=2)
    assert bar is not None and bar.mininterval < 1 and bar.n == 2 and bar.desc == "relsim embed"
    bar.close()
