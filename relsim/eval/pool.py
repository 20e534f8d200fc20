"""The retrieval pool and its queries: which images, in which order, with which content hashes.

A pool is read from folders, ``.txt`` lists of paths, or upstream's JSONL files (``image_hash``, ``url_link``:
``data/anonymous_captions_test.jsonl`` and ``data/random_images_14k.jsonl``, downloaded with
``relsim data download`` into ``{image_hash}.png`` files). Its order is the order of the sources, and inside a
source the order of :func:`relsim.files.collect_images` (folders: sorted names) or of the list's lines.
External embeddings (``--embeddings``) must follow that order; it is written to ``DIR/pool.txt``.

Every image is identified by the SHA-256 of its bytes: byte-identical copies share one hash, so a query's
copies are never its own "match", and the judge cache knows an image wherever it lies. Hashes are kept in
``DIR/pool.json`` with each file's size and modification time, so a rerun reads no image again.

Queries are a seeded sample, exactly as upstream draws them (``np.random.choice(N, n, replace=False)`` after
``np.random.seed(seed)``), so a seed names the same queries for every method and every rerun.

Example:
    >>> pool = load_pool(["images/"], cache_file="out/pool.json")  # doctest: +SKIP
    >>> queries = sample_queries(len(pool), 1000, seed=0)           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ArgumentError, MissingFileError

__all__ = ["PoolImage", "Pool", "load_pool", "sample_queries", "JSONL_EXTENSIONS"]

#: Pool sources with these endings are upstream-style JSONL image lists.
JSONL_EXTENSIONS = frozenset({".jsonl"})


@dataclass(frozen=True)
class PoolImage:
    """One image of the pool."""

    path: str
    """Absolute path."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""
    label: str
    """A short name for tables and pages: upstream's ``image_hash`` for JSONL pools, else the file name."""


@dataclass
class Pool:
    """The images a retrieval runs over, in a fixed order (see the module docstring)."""

    images: list[PoolImage]
    sources: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Paths named by a source that do not exist (e.g. images whose download failed); not in the pool."""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> list[str]:
        return [im.path for im in self.images]

    @property
    def hashes(self) -> list[str]:
        return [im.sha256 for im in self.images]

    @property
    def digest(self) -> str:
        """SHA-256 over the ordered content hashes: two pools with the same digest hold the same images."""
        h = hashlib.sha256()
        for im in self.images:
            h.update(bytes.fromhex(im.sha256))
        return h.hexdigest()

    def copies(self) -> dict[str, list[int]]:
        """Rows of every content hash (a hash with several rows has byte-identical copies)."""
        groups: dict[str, list[int]] = {}
        for row, im in enumerate(self.images):
            groups.setdefault(im.sha256, []).append(row)
        return groups

    def describe(self) -> dict:
        distinct = len(self.copies())
        return {
            "sources": self.sources,
            "images": len(self),
            "distinct_images": distinct,
            "missing": len(self.missing),
            "digest": self.digest,
        }


def _jsonl_paths(path: Path, image_dir: Path) -> list[tuple[str, str]]:
    from ..train.data import read_jsonl

    return [(str(image_dir / r.filename), r.image_hash) for r in read_jsonl(path, require_caption=False)]


def _default_image_dir(jsonl: Path) -> Path:
    """Upstream keeps ``data/X.jsonl``'s images in ``data/X_images/``."""
    return jsonl.with_name(jsonl.stem + "_images")


def _entries(source: str, image_dir: str | os.PathLike | None, recursive: bool) -> list[tuple[str, str]]:
    from ..files import collect_images

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in JSONL_EXTENSIONS:
        folder = Path(image_dir).expanduser() if image_dir is not None else _default_image_dir(path)
        if not folder.is_dir():
            raise MissingFileError(
                f"{source}: its images are expected in {str(folder)!r}, which is not a folder "
                f"(download them with `relsim data download {source} {folder}` or pass --image-dir)"
            )
        return [(os.path.abspath(p), label) for p, label in _jsonl_paths(path, folder)]
    return [(p, os.path.basename(p)) for p in collect_images([source], recursive=recursive)]


def _read_hash_cache(cache_file: Path | None) -> dict[str, tuple[int, int, str]]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text())
        return {e["path"]: (int(e["size"]), int(e["mtime_ns"]), str(e["sha256"])) for e in data["images"]}
    except (ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs hashing again


def _hash_file(path: str) -> tuple[int, int, str]:
    st = os.stat(path)  # before reading: a file changed while hashing looks changed next run
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return int(st.st_size), int(st.st_mtime_ns), digest.hexdigest()


def _stat_matches(path: str, cached: tuple[int, int, str] | None) -> bool:
    if cached is None:
        return False
    st = os.stat(path)
    return (int(st.st_size), int(st.st_mtime_ns)) == cached[:2]


def load_pool(
    sources: Sequence[str | os.PathLike],
    *,
    image_dir: str | os.PathLike | None = None,
    recursive: bool = True,
    cache_file: str | os.PathLike | None = None,
    workers: int = 8,
) -> Pool:
    """Read a pool from ``sources`` (folders, ``.txt`` lists, upstream JSONL files) and hash its images.

    A JSONL's images are read from ``image_dir`` (default: ``X_images/`` beside ``X.jsonl``, upstream's
    layout). Paths that do not exist are left out and listed in ``Pool.missing`` (a few of upstream's URLs
    are dead); a path named twice is kept once. ``cache_file`` keeps the hashes for the next run.

    Example:
        >>> pool = load_pool(["data/anonymous_captions_test.jsonl", "data/random_images_14k.jsonl"],
        ...                  image_dir="data/images")  # doctest: +SKIP
    """
    if not sources:
        raise ArgumentError("no pool given: name a folder, a .txt list of images or a JSONL file")
    entries: dict[str, str] = {}
    for source in sources:
        for path, label in _entries(os.fspath(source), image_dir, recursive):
            entries.setdefault(path, label)
    present = [p for p in entries if os.path.isfile(p)]
    missing = [p for p in entries if not os.path.isfile(p)]
    cache_path = Path(cache_file) if cache_file is not None else None
    cached = _read_hash_cache(cache_path)
    todo = [p for p in present if not _stat_matches(p, cached.get(p))]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, record in zip(todo, pool.map(_hash_file, todo), strict=True):
            cached[path] = record
    images = [PoolImage(p, cached[p][2], entries[p]) for p in present]
    result = Pool(images, sources=[os.fspath(s) for s in sources], missing=missing)
    if len(result.copies()) < 2:
        raise ArgumentError(f"the pool holds {len(result.copies())} distinct image(s); retrieval needs at least 2")
    if cache_path is not None:
        _write_pool_files(result, cached, cache_path)
    return result


def _write_pool_files(pool: Pool, stats: dict[str, tuple[int, int, str]], cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    images = [
        {"path": im.path, "label": im.label, "size": stats[im.path][0], "mtime_ns": stats[im.path][1],
         "sha256": im.sha256}
        for im in pool.images
    ]  # fmt: skip
    payload = {**pool.describe(), "images": images, "missing": pool.missing}
    _write_text(cache_file, json.dumps(payload, indent=1) + "\n")
    _write_text(cache_file.with_name("pool.txt"), "".join(im.path + "\n" for im in pool.images))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sample_queries(pool_size: int, n: int, seed: int) -> np.ndarray:
    """Rows of ``n`` queries drawn without replacement, as upstream: ``np.random.seed(seed)`` then
    ``np.random.choice(pool_size, min(n, pool_size), replace=False)``.

    Example:
        >>> sample_queries(10, 3, seed=0).tolist()
        [2, 8, 4]
    """
    if n < 1:
        raise ArgumentError(f"the number of queries must be >= 1, got {n}")
    if pool_size < 1:
        raise ArgumentError("the pool is empty")
    return np.random.RandomState(seed).choice(pool_size, min(n, pool_size), replace=False)
