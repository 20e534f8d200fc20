"""Embedding (and captioning) many image files into a collection: incremental, resumable, shardable over ranks.

Only new or changed files are embedded (:func:`relsim.files.stale_paths`). Each file is checked with
``os.stat`` before anything opens it (FIFOs, devices and sockets are skipped with their reason); decoding and
batching are the encoder's own pipeline (:meth:`relsim.RelSimModel.embed_stream`), while the files' SHA-256
are computed by a thread pool running ahead. Rows are committed to the collection every ``save_every``
images, so ``kill -9`` loses at most the rows not yet committed; Ctrl-C commits what is embedded first.

Example:
    >>> col = Collection.create("photos.relsim", model.fingerprint, exist_ok=True)   # doctest: +SKIP
    >>> report = embed_files(model, col, collect_images(["photos/"], recursive=True))  # doctest: +SKIP
    >>> report.embedded, report.skipped                                               # doctest: +SKIP
    (200, [('/photos/broken.jpg', 'cannot read image file (...)')])
    >>> caption_collection(model.captioner, col).captioned  # the caption column, once per content  # doctest: +SKIP
    200
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .batching import progress_bar
from .errors import ArgumentError
from .files import FileRecord, check_regular

if TYPE_CHECKING:
    from .caption import Captioner
    from .caption_files import CaptionReport
    from .collection import Collection
    from .encoder import RelSimModel

__all__ = ["EmbedReport", "caption_collection", "embed_files", "embed_into"]


@dataclass
class EmbedReport:
    """What :func:`embed_files` did."""

    embedded: int = 0
    up_to_date: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each file that could not be embedded (also in the collection's failures table)."""
    seconds: float = 0.0
    commits: int = 0

    @property
    def images_per_second(self) -> float:
        """Images embedded per second of the run."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON (``relsim embed --json``)."""
        return {
            "embedded": self.embedded,
            "up_to_date": self.up_to_date,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "commits": self.commits,
        }


def _reason(err: Exception, path: str) -> str:
    """A short reason: the error without the "image 3 (path '...'): " prefix (the log names the path)."""
    if isinstance(err, OSError) and not str(err).startswith("image "):
        return f"cannot read file ({err.strerror or err})"
    text = str(err)
    marker = f"(path '{path}'): "
    return text.split(marker, 1)[1] if marker in text else text


class _Hashes:
    """File records computed by a thread pool ahead of the embedding (hashing reads each file once more)."""

    def __init__(self, paths: Sequence[str], workers: int, window: int) -> None:
        self._paths = paths
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="relsim-hash")
        self._futures: dict[int, Future] = {}
        self._next = 0
        self._window = window
        self._top_up(0)

    def _top_up(self, upto: int) -> None:
        while self._next < len(self._paths) and self._next <= upto + self._window:
            self._futures[self._next] = self._pool.submit(FileRecord.from_path, self._paths[self._next])
            self._next += 1

    def get(self, index: int) -> FileRecord:
        """The record of ``paths[index]`` (an ``OSError`` when it cannot be read)."""
        self._top_up(index)
        return self._futures.pop(index).result()

    def forget(self, index: int) -> None:
        self._top_up(index)
        future = self._futures.pop(index, None)
        if future is not None:
            future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: never wait for a large file's hash


def embed_files(
    model: RelSimModel,
    collection: Collection,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    save_every: int | None = None,
    rank: int = 0,
    log_rank: bool = False,
    progress: bool | None = None,
) -> EmbedReport:
    """Embed the files of ``paths`` that are new or changed for ``collection`` and upsert them into it.

    Rows are committed every ``save_every`` images (default: every batch). Unreadable files and special
    files are skipped, listed in the report and logged in the collection's failures table. On an exception
    (Ctrl-C included) what is embedded so far is committed before it propagates. ``progress`` shows a tqdm
    bar on stderr (default: when stderr is a terminal).

    Example:
        >>> report = embed_files(model, col, ["a.jpg", "b.png"], batch_size=16)  # doctest: +SKIP
        >>> report.embedded, report.skipped                                       # doctest: +SKIP
        (2, [])
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    save_every = save_every or batch_size
    collection.check_compatible(model.fingerprint)
    report = EmbedReport()
    given = [os.fspath(p) for p in paths]
    todo = [os.fspath(p) for p in collection.needs_embedding(given)]
    report.up_to_date = len(set(given)) - len(todo)
    start = time.perf_counter()
    failures: list[tuple[str, str]] = []
    regular = []
    for path in todo:
        try:
            check_regular(path)  # nothing opens a FIFO or a device: it could block for ever
        except OSError as err:
            failures.append((path, _reason(err, path)))
        else:
            regular.append(path)
    records: list[FileRecord] = []
    rows: list[torch.Tensor] = []

    def save() -> None:
        if records:
            collection.add(records, torch.cat(rows), fingerprint=model.fingerprint)
            report.embedded += len(records)
            report.commits += 1
            records.clear()
            rows.clear()
        if failures:
            collection.log_failures(failures, rank=rank if log_rank else None)
            report.skipped.extend(failures)
            failures.clear()

    def failed(index: int, err: Exception) -> None:
        hashes.forget(index)
        failures.append((regular[index], _reason(err, regular[index])))

    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    hashes = _Hashes(regular, max(1, workers // 2), window=2 * batch_size)
    bar = progress_bar(len(todo), progress, "relsim embed")
    if bar is not None:
        bar.update(len(todo) - len(regular))
    try:
        for indices, emb in model.embed_stream(regular, batch_size, num_workers=num_workers, on_error=failed):
            for index, row in zip(indices, emb, strict=True):
                try:
                    records.append(hashes.get(index))
                except OSError as err:  # vanished or replaced by a special file since it was decoded
                    failures.append((regular[index], _reason(err, regular[index])))
                else:
                    rows.append(row.unsqueeze(0))
            if len(records) >= save_every:
                save()
            if bar is not None:
                bar.update(len(indices))
                bar.set_postfix(skipped=len(report.skipped) + len(failures), refresh=False)
    finally:
        hashes.close()
        save()  # keep what was embedded, also when interrupted
        report.skipped.sort(key=lambda item: given.index(item[0]) if item[0] in given else len(given))
        report.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
    return report


def embed_into(
    model: RelSimModel,
    collection: str | os.PathLike | Collection,
    paths: Sequence[str | os.PathLike],
    *,
    dtype: str = "float16",
    **kwargs: Any,
) -> torch.Tensor:
    """Embed ``paths`` into a collection (created if needed; only new or changed files are embedded) and
    return their vectors in the order of ``paths`` (float32): the one call an evaluation needs.

    A file that cannot be embedded is an error naming it (nothing is silently left out).

    Example:
        >>> vectors = embed_into(model, "eval.relsim", ["a.jpg", "b.jpg"])  # doctest: +SKIP
        >>> vectors.shape                                                    # doctest: +SKIP
        torch.Size([2, 384])
    """
    from .collection import Collection, CollectionError

    if not isinstance(collection, Collection):
        collection = Collection.create(
            collection, model.fingerprint, dim=model.embedding_dim, dtype=dtype, exist_ok=True
        )
    report = embed_files(model, collection, paths, **kwargs)
    if report.skipped:
        path, reason = report.skipped[0]
        more = f" (and {len(report.skipped) - 1} more)" if len(report.skipped) > 1 else ""
        raise CollectionError(f"cannot embed {path}: {reason}{more}")
    return collection.vectors(paths)


def caption_collection(
    captioner: Captioner,
    collection: Collection,
    paths: Sequence[str | os.PathLike] | None = None,
    *,
    progress: bool | None = None,
    **options: Any,
) -> CaptionReport:
    """Fill the ``caption`` column: the anonymous caption of every row (or of the rows of ``paths``) without one.

    Each content (SHA-256) is captioned once: byte-identical files share a caption, and a file whose copy
    already has one gets it without the captioner running. Captions are stored batch by batch as they are
    made, so an interrupted run keeps them and a rerun captions only the rest; rows that have a caption are
    never captioned again (whichever captioner wrote it). Files that cannot be read now are skipped and
    reported. ``paths`` not in the collection are ignored. ``options`` go to ``Captioner.stream``
    (``max_new_tokens``, ``batch_size``, ``prompt``, ...; one caption per image).

    Example:
        >>> report = caption_collection(model.captioner, col, max_new_tokens=64)  # doctest: +SKIP
        >>> report.captioned, report.up_to_date, report.skipped                   # doctest: +SKIP
        (180, 20, [])
    """
    from .caption_files import CaptionReport, caption_each
    from .files import path_resolver

    if options.get("num_captions", 1) != 1:
        raise ArgumentError("a collection keeps one caption per image (num_captions=1)")
    columns = ["path", "sha256", "caption"]
    if paths is None:
        rows = collection.scan(columns).to_pylist()
    else:
        resolve = path_resolver()
        rows = collection.rows([resolve(p) for p in paths], columns).to_pylist()
    known = {row["sha256"]: row["caption"] for row in rows if row["caption"] is not None}
    groups: dict[str, list[str]] = {}  # content -> the paths without a caption
    for row in rows:
        if row["caption"] is None:
            groups.setdefault(row["sha256"], []).append(row["path"])
    shared = [(path, known[sha]) for sha, group in groups.items() if sha in known for path in group]
    if shared:
        collection.set_captions([p for p, _ in shared], [c for _, c in shared])
    first = {group[0]: group for sha, group in groups.items() if sha not in known}

    def save(batch: list[tuple[str, Any]]) -> None:
        pairs = [(path, caption.text) for first_path, caption in batch for path in first[first_path]]
        collection.set_captions([p for p, _ in pairs], [c for _, c in pairs])

    report = caption_each(captioner, list(first), save, progress=progress, **options) if first else CaptionReport()
    report.up_to_date = len(rows) - sum(len(g) for g in groups.values())
    return report
