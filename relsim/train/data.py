"""The anonymous-captions data: JSONL records, a held-out split, and a dataset that skips bad images.

A missing or undecodable image is skipped and counted, never replaced by a placeholder (upstream trained
on black squares wherever a file was broken).

Example:
    >>> records = read_jsonl("anonymous_captions_train.jsonl")          # doctest: +SKIP
    >>> train, held_out = split_eval(records, 1000)                     # doctest: +SKIP
    >>> ds = CaptionImages(train, "images/")                            # doctest: +SKIP
    >>> ds[0].pixels.shape                                              # doctest: +SKIP
    torch.Size([3, 448, 448])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ArgumentError
from ..preprocess import ImageInputError, prepare

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Record:
    image_hash: str
    caption: str | None
    """``None`` only in lists read with ``require_caption=False`` (image lists such as upstream's retrieval pool)."""
    url: str | None = None
    path: str | None = None
    """Where the image was when it was captioned (``relsim caption -o`` records it): read from there when
    ``{image_dir}/{image_hash}.png`` does not exist."""

    @property
    def filename(self) -> str:
        return f"{self.image_hash}.png"


def read_jsonl(path: str | Path, *, require_caption: bool = True) -> list[Record]:
    """Read a captions JSONL. Blank lines are ignored; a repeated ``image_hash`` keeps its first record.

    ``image_hash`` must be a plain file name stem (letters, digits, ``_ . -``): it names a file on disk.
    With ``require_caption=False`` the ``caption`` key may be absent (upstream's ``random_images_14k.jsonl``
    has only ``image_hash`` and ``url_link``); its records then have ``caption=None``. An optional ``path``
    (what ``relsim caption -o`` writes) says where the image is when the image folder has no
    ``{image_hash}.png``; a relative path is relative to the current directory, as ``relsim caption`` wrote it.
    """
    path = Path(path)
    records: dict[str, Record] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image_hash = obj["image_hash"]
                caption = obj["caption"] if require_caption else obj.get("caption")
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                keys = "image_hash and caption" if require_caption else "image_hash"
                message = f"{path}:{number}: expected a JSON object with {keys} ({err})"
                raise ArgumentError(message) from None
            if not isinstance(image_hash, str) or not _SAFE_NAME.match(image_hash):
                raise ArgumentError(f"{path}:{number}: image_hash {image_hash!r} is not a safe file name")
            if not isinstance(caption, str) and (require_caption or caption is not None):
                raise ArgumentError(f"{path}:{number}: caption must be a string")
            if not isinstance(obj.get("path"), (str, type(None))):
                raise ArgumentError(f"{path}:{number}: path must be a string")
            records.setdefault(image_hash, Record(image_hash, caption, obj.get("url_link"), obj.get("path")))
    return list(records.values())


def split_eval(records: list[Record], eval_size: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``eval_size`` records, chosen by the SHA-1 of their image_hash.

    The choice depends neither on the seed nor on the file's order, so it stays put across runs and
    when records are added.
    """
    if eval_size <= 0:
        return list(records), []
    if eval_size >= len(records):
        raise ArgumentError(
            f"eval_size {eval_size} leaves no training data out of {len(records)} records: lower it "
            f"(--eval-size N, or eval_size in the config) below {len(records)}, or give --eval-jsonl"
        )
    order = sorted(records, key=lambda r: hashlib.sha1(r.image_hash.encode()).hexdigest())
    held = {r.image_hash for r in order[:eval_size]}
    return [r for r in records if r.image_hash not in held], [r for r in records if r.image_hash in held]


def locate(record, image_dir: str | Path | None) -> Path | None:
    """The image file of ``record``: ``{image_dir}/{filename}`` when it exists, else the record's own ``path``
    when that exists, else None."""
    if image_dir:
        file = Path(image_dir) / record.filename
        if file.is_file():
            return file
    own = getattr(record, "path", None)
    return Path(own) if own and Path(own).is_file() else None


def present(records: list, image_dir: str | Path | None) -> tuple[list, list]:
    """Split records into those whose image file exists (see :func:`locate`) and those whose file is missing."""
    have, missing = [], []
    for r in records:
        (have if locate(r, image_dir) is not None else missing).append(r)
    return have, missing


def fingerprint(records: list[Record]) -> str:
    """SHA-256 over image hashes and captions in order: a resumed run checks it trains on the same data."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(r.image_hash.encode() + b"\0" + r.caption.encode() + b"\0")
    return digest.hexdigest()


@dataclass
class Sample:
    index: int
    pixels: torch.Tensor | None
    error: str | None = None


@dataclass
class Batch:
    """The good images of a micro-batch and what was skipped."""

    indices: list[int]
    pixels: list[torch.Tensor]
    skipped: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-locked pixels copy to the GPU faster."""
        return Batch(self.indices, [p.pin_memory() for p in self.pixels], self.skipped)


class CaptionImages(Dataset):
    """``records[i]`` -> ``Sample(i, uint8 (3, 448, 448))``, prepared exactly like inference in train mode
    (or by ``prepare_fn(path, index)``, e.g. the captioner's squash, :func:`relsim.caption_inputs.prepare_image`).

    A file that cannot be read gives ``Sample(i, None, reason)``; :func:`collate` drops it into
    ``Batch.skipped``.
    """

    def __init__(
        self,
        records: list[Record],
        image_dir: str | Path | None,
        mode: str = "train",
        prepare_fn: Callable[[Path, int], torch.Tensor] | None = None,
    ) -> None:
        self.records = records
        self.image_dir = image_dir
        self.mode = mode
        self.prepare_fn = prepare_fn

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        path = locate(record, self.image_dir) or Path(self.image_dir or ".") / record.filename
        try:
            if self.prepare_fn is not None:
                return Sample(index, self.prepare_fn(path, index))
            return Sample(index, prepare(path, index, self.mode))
        except ImageInputError as err:
            return Sample(index, None, str(err))


def collate(samples: list[Sample]) -> Batch:
    good = [s for s in samples if s.pixels is not None]
    return Batch(
        indices=[s.index for s in good],
        pixels=[s.pixels for s in good],
        skipped=[(s.index, s.error or "unreadable") for s in samples if s.pixels is None],
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled record order of one epoch: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class MicroBatches:
    """Index lists of this process's micro-batches for one epoch, from batch ``start`` on.

    Global batch ``b`` of the epoch is ``order[b * batch_size : (b + 1) * batch_size]`` (the last partial
    batch is dropped); it is cut into ``accumulation`` chunks of ``micro * world`` images, and rank ``r``
    takes the ``r``-th slice of ``micro`` from each chunk. So the data a step sees does not depend on the
    number of processes or on where a run was resumed.
    """

    def __init__(
        self, n: int, *, batch_size: int, micro: int, world: int, rank: int, seed: int, epoch: int, start: int = 0
    ) -> None:
        if batch_size % (micro * world):
            raise ArgumentError(
                f"batch_size {batch_size} is not a multiple of micro_batch_size x world = {micro * world}"
            )
        self.order = epoch_order(n, seed, epoch)
        self.batch_size, self.micro, self.world, self.rank = batch_size, micro, world, rank
        self.accumulation = batch_size // (micro * world)
        self.start = start
        self.steps = n // batch_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.accumulation

    def __iter__(self):
        for b in range(self.start, self.steps):
            batch = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            for j in range(self.accumulation):
                chunk = batch[j * self.micro * self.world : (j + 1) * self.micro * self.world]
                yield chunk[self.rank * self.micro : (self.rank + 1) * self.micro].tolist()


__all__ = [
    "Record",
    "read_jsonl",
    "split_eval",
    "locate",
    "present",
    "fingerprint",
    "Sample",
    "Batch",
    "CaptionImages",
    "collate",
    "epoch_order",
    "MicroBatches",
]
