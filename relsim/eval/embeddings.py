"""Per-method embeddings of the pool, computed once and kept under the output directory.

A :class:`VectorTable` is a folder keyed by image *content* (SHA-256), so byte-identical copies are embedded
once, reordering or growing the pool reuses every vector already there, and an interrupted run resumes::

    meta.json                  what made the vectors (model ids, revisions, preprocessing)
    part-000000.safetensors    sha256 (n, 32) uint8, vectors (n, d) float32; one file per saved chunk
    failures.jsonl             images that could not be read: {"sha256", "path", "reason"}

Parts are written to a temporary name and renamed, so a part appears complete or not at all.
:func:`embed_pool` fills a table from any :class:`ImageEncoder` (CLIP, DINOv2, DreamSim, ...).

Example:
    >>> table = VectorTable.open("out/embeddings/clip-1a2b3c", {"model": "openai/clip-vit-large-patch14"})
    >>> vectors = embed_pool(encoder, pool, table)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..batching import progress_bar
from ..errors import ArgumentError
from ..preprocess import ImageInputError, decode
from .pool import Pool

__all__ = ["ImageEncoder", "PoolVectors", "VectorTable", "embed_pool", "normalise_rows", "open_keyed_dir"]

_META = "meta.json"
_FAILURES = "failures.jsonl"


class ImageEncoder(Protocol):
    """What :func:`embed_pool` needs of a model: a description and a batched ``encode`` of RGB PIL images."""

    @property
    def fingerprint(self) -> dict[str, Any]: ...

    def encode(self, images: list) -> torch.Tensor:
        """(B, D) embeddings of ``B`` RGB PIL images (normalised or not: rows are L2-normalised afterwards)."""
        ...


@dataclass
class PoolVectors:
    """One method's embeddings of the whole pool, in pool order."""

    vectors: np.ndarray
    """(N, D) float32, L2-normalised; rows of unreadable images are zero."""
    valid: np.ndarray
    """(N,) bool: False where the image could not be embedded."""
    fingerprint: dict[str, Any]
    failures: dict[str, str] = field(default_factory=dict)
    """path -> reason, for each invalid row."""
    computed: int = 0
    """Images embedded by this run (0 when everything was reused)."""


def normalise_rows(vectors: np.ndarray, where: str) -> np.ndarray:
    """float32 rows of unit length; a non-finite or zero row is an error that names it."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ArgumentError(f"{where}: expected a 2-D array (images, dims), got shape {tuple(vectors.shape)}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ArgumentError(f"{where}: row {int(np.argmin(finite))} is not finite")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ArgumentError(f"{where}: row {int(np.argmin(norms[:, 0]))} is all zeros (no direction to compare)")
    return vectors / norms


class VectorTable:
    """Content-addressed vectors of one method; see the module docstring. Use :meth:`open`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._vectors: dict[str, np.ndarray] = {}
        self._failures: dict[str, str] = {}
        self._parts = 0
        self._load()

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: dict[str, Any]) -> VectorTable:
        """Open the table at ``path``, creating it for ``fingerprint``; refuse one made by something else."""
        return cls(Path(path), open_keyed_dir(path, fingerprint, "embeddings"))

    def _load(self) -> None:
        for part in sorted(self.path.glob("part-*.safetensors")):
            tensors = load_file(part)
            for digest, vector in zip(tensors["sha256"], tensors["vectors"], strict=True):
                self._vectors[bytes(digest).hex()] = vector
            self._parts += 1
        failures = self.path / _FAILURES
        if failures.is_file():
            for line in failures.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                self._failures[entry["sha256"]] = entry["reason"]

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._vectors or sha256 in self._failures

    def missing(self, hashes: Sequence[str]) -> list[str]:
        """The distinct hashes of ``hashes`` with neither a vector nor a recorded failure, in first-seen order."""
        return [h for h in dict.fromkeys(hashes) if h not in self]

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Save one chunk of vectors as a new part file."""
        if not len(hashes):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        digests = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(-1, 32)
        part = self.path / f"part-{self._parts:06d}.safetensors"
        while part.exists():  # another run wrote parts meanwhile: never overwrite one
            self._parts += 1
            part = self.path / f"part-{self._parts:06d}.safetensors"
        tmp = part.with_name(f".{part.name}.{os.getpid()}.tmp")
        save_file({"sha256": digests, "vectors": vectors}, str(tmp))
        os.replace(tmp, part)
        self._parts += 1
        for h, v in zip(hashes, vectors, strict=True):
            self._vectors[h] = v

    def add_failure(self, sha256: str, path: str, reason: str) -> None:
        with open(self.path / _FAILURES, "a", encoding="utf-8") as f:
            f.write(json.dumps({"sha256": sha256, "path": path, "reason": reason}) + "\n")
        self._failures[sha256] = reason

    def gather(self, pool: Pool, *, computed: int = 0) -> PoolVectors:
        """The pool's vectors in pool order (every hash must be known: call after filling the table)."""
        dim = next(iter(self._vectors.values())).shape[0] if self._vectors else 1
        vectors = np.zeros((len(pool), dim), dtype=np.float32)
        valid = np.zeros(len(pool), dtype=bool)
        failures: dict[str, str] = {}
        for row, image in enumerate(pool.images):
            vector = self._vectors.get(image.sha256)
            if vector is None:
                failures[image.path] = self._failures.get(image.sha256, "not embedded")
            else:
                vectors[row], valid[row] = vector, True
        if valid.any():
            vectors[valid] = normalise_rows(vectors[valid], str(self.path))
        return PoolVectors(vectors, valid, dict(self.meta), failures, computed)


def open_keyed_dir(path: str | os.PathLike, fingerprint: dict[str, Any], what: str) -> dict[str, Any]:
    """Create the folder ``path`` for results of ``fingerprint`` (written to its ``meta.json``), or check that the
    folder holds results of exactly that; returns the fingerprint as JSON reads it back."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    meta_file = root / _META
    wanted = json.loads(json.dumps(fingerprint))
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta != wanted:
            raise ArgumentError(
                f"{root} holds {what} of {meta}, not of {wanted}: use another --out directory or delete it"
            )
    else:
        _atomic_write(meta_file, (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode())
    return wanted


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _decode(path: str, index: int) -> tuple[Any, str | None]:
    try:
        return decode(path, index), None
    except (ImageInputError, OSError) as err:
        return None, str(err)


def _decoded_batches(paths: Sequence[str], batch_size: int, workers: int) -> Iterator[list[tuple[int, Any, str]]]:
    """Batches of (index, image or None, error); the next two batches decode in threads meanwhile."""
    starts = list(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max(1, workers)) as threads:

        def submit(start: int) -> tuple[int, list]:
            chunk = paths[start : start + batch_size]
            return start, [threads.submit(_decode, path, start + i) for i, path in enumerate(chunk)]

        ahead = deque(submit(start) for start in starts[:2])
        rest = iter(starts[2:])
        while ahead:
            first, futures = ahead.popleft()
            if (start := next(rest, None)) is not None:
                ahead.append(submit(start))
            yield [(first + i, *future.result()) for i, future in enumerate(futures)]


def embed_pool(
    encoder: ImageEncoder,
    pool: Pool,
    table: VectorTable,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    save_every: int = 1024,
    progress: bool | None = None,
    label: str = "embed",
) -> PoolVectors:
    """Embed the pool images that ``table`` does not know yet (each distinct content once) and return the
    pool's vectors. Images are decoded as relsim decodes them (EXIF orientation applied, transparency on
    white), so every method sees the same pixels. Vectors are saved every ``save_every`` images."""
    first_path = {}
    for image in pool.images:
        first_path.setdefault(image.sha256, image.path)
    todo = table.missing(pool.hashes)
    paths = [first_path[h] for h in todo]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    bar = progress_bar(len(paths), progress, label)
    pending_hashes: list[str] = []
    pending_vectors: list[np.ndarray] = []
    computed = 0
    try:
        for batch in _decoded_batches(paths, batch_size, workers):
            for index, _image, error in batch:
                if error is not None:
                    table.add_failure(todo[index], paths[index], error)
            good = [(index, image) for index, image, error in batch if error is None]
            if good:
                with torch.inference_mode():
                    out = encoder.encode([image for _, image in good]).float().cpu().numpy()
                pending_hashes += [todo[index] for index, _ in good]
                pending_vectors.append(out)
                computed += len(good)
            if len(pending_hashes) >= save_every:
                table.add(pending_hashes, np.concatenate(pending_vectors))
                pending_hashes, pending_vectors = [], []
            if bar is not None:
                bar.update(len(batch))
    finally:
        if pending_hashes:  # keep what was embedded, also when interrupted
            table.add(pending_hashes, np.concatenate(pending_vectors))
        if bar is not None:
            bar.close()
    return table.gather(pool, computed=computed)
