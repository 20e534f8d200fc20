"""Caption many image files into a JSON-lines file in the anonymous-captions training format.

One record a line, ``{"image_hash": ..., "caption": ..., "path": ...}`` (plus ``"captions"``, all N, with
``num_captions > 1``): what ``relsim data targets`` and ``relsim train`` read (``image_hash`` + ``caption``; the
trainer finds the image as ``{image_hash}.png`` in its image directory, as ``relsim data download`` saves it).
``image_hash`` is the file name without its ending (characters other than letters, digits, ``_ . -`` become
``_``). Records are appended and flushed to disk batch by batch, so a killed job loses at most the batch in
flight; a rerun skips every image whose ``image_hash`` the file already holds (a torn last line is dropped).

Example:
    >>> report = caption_to_jsonl(captioner, paths, "captions.jsonl")          # doctest: +SKIP
    >>> report.captioned, report.up_to_date, report.skipped                     # doctest: +SKIP
    (120, 880, [])
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .batching import progress_bar
from .errors import ArgumentError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def image_hash(path: str | os.PathLike) -> str:
    """The record key of an image file: its name without the ending, made a safe file name stem.

    >>> image_hash("/data/images/3f2a9c.png"), image_hash("my photo (1).jpg")
    ('3f2a9c', 'my_photo__1_')
    """
    stem = _UNSAFE.sub("_", Path(path).stem) or "_"
    return "_" + stem if stem.startswith(".") else stem


@dataclass
class CaptionReport:
    """What a bulk captioning run did."""

    captioned: int = 0
    up_to_date: int = 0
    """Inputs whose ``image_hash`` the file already held."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of unreadable images."""
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    """``(path, image_hash)`` of inputs whose key another input of this run already took."""
    seconds: float = 0.0

    @property
    def captions_per_second(self) -> float:
        """Images captioned per second of the run."""
        return self.captioned / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        data = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        data["duplicates"] = [{"path": p, "image_hash": h} for p, h in self.duplicates]
        data["captions_per_second"] = self.captions_per_second
        return data


def record(path: str | os.PathLike, captions) -> dict[str, Any]:
    """The JSON record of one image: ``captions`` is a Caption or a list of them (the first is the caption)."""
    many = list(captions) if isinstance(captions, (list, tuple)) else [captions]
    out: dict[str, Any] = {"image_hash": image_hash(path), "caption": many[0].text, "path": os.fspath(path)}
    if len(many) > 1:
        out["captions"] = [c.text for c in many]
    return out


def read_keys(output: str | os.PathLike) -> set[str]:
    """The ``image_hash`` values a captions file holds (empty when it does not exist); see :func:`read_records`."""
    return {str(r["image_hash"]) for r in read_records(output)}


def read_records(output: str | os.PathLike, key: str = "image_hash") -> list[dict[str, Any]]:
    """The records of a JSON-lines file that is appended to batch by batch (empty when it does not exist).

    A last line without its newline (a write cut short by a kill) is removed from the file, so appending goes on
    from a clean end; any other line that is not a JSON object with ``key`` is an error naming it.
    """
    path = Path(output)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or key not in record:
            raise ArgumentError(f"{path}:{number}: not a captions record (a JSON object with {key})")
        records.append(record)
    return records


def append_records(f, records: Sequence[dict[str, Any]]) -> None:
    """Append JSON lines to the open file ``f`` and make them durable (flush + fsync): a kill loses none."""
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    f.flush()
    os.fsync(f.fileno())


def caption_each(
    captioner,
    paths: Sequence[str | os.PathLike],
    save: Callable[[list[tuple[str, Any]]], None],
    *,
    progress: bool | None = None,
    **options,
) -> CaptionReport:
    """Caption ``paths`` batch by batch and hand each batch's ``[(path, caption)]`` to ``save`` as soon as it is
    made (a caption is a list of captions with ``num_captions > 1``), so whatever ``save`` writes to (a
    JSON-lines file, a collection's caption column) loses at most the batch in flight. Unreadable images are
    skipped and reported. ``options`` go to ``Captioner.stream``.

    >>> caption_each(captioner, paths, lambda batch: print(len(batch), "captioned"))  # doctest: +SKIP
    """
    started = time.perf_counter()
    report = CaptionReport()
    bar = progress_bar(len(paths), progress, "relsim caption")
    for batch in captioner.stream(list(paths), skip_unreadable=True, **options):
        done = []
        for index, result in batch:
            if isinstance(result, Exception):
                report.skipped.append((os.fspath(paths[index]), str(result)))
            else:
                done.append((os.fspath(paths[index]), result))
        if done:
            save(done)
            report.captioned += len(done)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def caption_to_jsonl(
    captioner,
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    progress: bool | None = None,
    **options,
) -> CaptionReport:
    """Caption the ``paths`` whose ``image_hash`` ``output`` lacks, appending a record per image and flushing to
    disk as each batch finishes. Unreadable images are skipped and reported. ``options`` go to
    ``Captioner.stream``.
    """
    have = read_keys(output)
    todo, taken, up_to_date, duplicates = [], set(), 0, []
    for path in paths:
        key = image_hash(path)
        if key in have:
            up_to_date += 1
        elif key in taken:
            duplicates.append((os.fspath(path), key))
        else:
            taken.add(key)
            todo.append(path)
    report = CaptionReport()
    if todo:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "a", encoding="utf-8") as f:

            def append(batch: list[tuple[str, Any]]) -> None:
                append_records(f, [record(path, captions) for path, captions in batch])

            report = caption_each(captioner, todo, append, progress=progress, **options)
    report.up_to_date, report.duplicates = up_to_date, duplicates
    return report


__all__ = [
    "CaptionReport",
    "append_records",
    "caption_each",
    "caption_to_jsonl",
    "image_hash",
    "read_keys",
    "read_records",
    "record",
]
