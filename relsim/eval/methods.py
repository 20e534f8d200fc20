"""Retrieval methods: each turns the pool into one L2-normalised vector per image, kept under ``DIR/embeddings``.

=============  ===========================================================================================
``relsim``     any relsim checkpoint, either preprocessing mode; through a relsim collection (resumable)
``clip``       CLIP image features through transformers (default ``openai/clip-vit-large-patch14``)
``dino``       DINOv2 ``[CLS]`` through transformers (default ``facebook/dinov2-large``)
``dreamsim``   DreamSim, when ``pip install dreamsim`` is there (skipped with a message otherwise)
``caption``    the anonymous captioner's caption embedded with all-MiniLM-L6-v2 (:mod:`relsim.eval.captions`)
``student``    a distilled student (``relsim distill``, ``--student DIR``); through its own relsim collection
NAME=FILE      ``--embeddings``: any method's vectors as ``.npy`` / ``.safetensors``, rows in pool order
=============  ===========================================================================================

A method that cannot run here (a missing package, or its model neither cached nor downloadable) raises
:class:`MethodUnavailable` when built; the run reports it and goes on
with the others. Every method keeps what it computed (keyed by what made it), so a rerun embeds nothing.

Example:
    >>> options = MethodOptions(device="cuda")
    >>> method = build_method("clip", options)                         # doctest: +SKIP
    >>> vectors = method.embed(pool, Path("out/embeddings"))           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArgumentError, MissingFileError
from .embeddings import PoolVectors, VectorTable, embed_pool, normalise_rows
from .pool import Pool

__all__ = [
    "BUILTIN_METHODS",
    "DEFAULT_METHODS",
    "Method",
    "MethodOptions",
    "MethodUnavailable",
    "external_method",
    "key_of",
]

BUILTIN_METHODS = ("relsim", "clip", "dino", "dreamsim", "caption", "student")
DEFAULT_METHODS = BUILTIN_METHODS[:-1]  # a student is evaluated when named (it needs --student)


class MethodUnavailable(Exception):
    """A method that cannot run in this installation (a missing package or feature); the message says why."""


@dataclass
class MethodOptions:
    """What the built-in methods need to know. ``relsim`` holds the keyword arguments of :func:`relsim.load`,
    ``caption`` those of :func:`relsim.load_captioner` (``model``, ``revision``, ``base_model``,
    ``base_revision``, ``dtype``)."""

    device: str | None = None
    batch_size: int = 32
    workers: int | None = None
    progress: bool | None = None
    relsim: dict[str, Any] = field(default_factory=dict)
    clip_model: str | None = None
    clip_revision: str | None = None
    dino_model: str | None = None
    dino_revision: str | None = None
    dreamsim_type: str = "ensemble"
    dreamsim_cache: str | None = None
    caption: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    """The student method's :func:`relsim.load` arguments (``model``: the student checkpoint, ``revision``)."""
    caption_max_new_tokens: int = 128
    text_model: str | None = None
    """The caption method's MiniLM (default: sentence-transformers/all-MiniLM-L6-v2)."""
    text_revision: str | None = None


class Method(ABC):
    """One retrieval method: a name and the pool's vectors."""

    name: str

    @abstractmethod
    def embed(self, pool: Pool, workdir: Path) -> PoolVectors:
        """The pool's vectors, computing only what ``workdir`` does not hold yet."""


def key_of(fingerprint: dict[str, Any]) -> str:
    """A short, stable name for what a fingerprint describes (folder names under ``DIR/embeddings``)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]


class EncoderMethod(Method):
    """A method backed by an image encoder (CLIP, DINOv2, DreamSim) and a :class:`VectorTable`."""

    def __init__(self, name: str, encoder: Any, options: MethodOptions) -> None:
        self.name = name
        self.encoder = encoder
        self.options = options

    def embed(self, pool: Pool, workdir: Path) -> PoolVectors:
        fingerprint = self.encoder.fingerprint
        table = VectorTable.open(workdir / f"{self.name}-{key_of(fingerprint)}", fingerprint)
        return embed_pool(
            self.encoder,
            pool,
            table,
            batch_size=self.options.batch_size,
            workers=self.options.workers,
            progress=self.options.progress,
            label=self.name,
        )


class RelSimMethod(Method):
    """relsim's embeddings, filled through a relsim collection (incremental and resumable), read back in pool
    order. The model is loaded only when the collection lacks some image."""

    name = "relsim"

    def __init__(self, options: MethodOptions) -> None:
        self.options = options
        self.load_kwargs = {k: v for k, v in options.relsim.items() if v is not None}

    def _store_dir(self, workdir: Path) -> Path:
        spec = {k: str(v) for k, v in sorted(self.load_kwargs.items()) if k != "device"}
        return workdir / f"{self.name}-{key_of(spec)}"

    def embed(self, pool: Pool, workdir: Path) -> PoolVectors:
        from ..bulk import embed_files
        from ..collection import Collection, is_collection
        from ..files import path_resolver

        root = self._store_dir(workdir)
        collection = Collection.open(root) if is_collection(root) else None
        known_failures = {f["path"] for f in collection.failures()} if collection is not None else set()
        todo = pool.paths if collection is None else collection.needs_embedding(pool.paths)
        todo = [p for p in todo if p not in known_failures]
        computed = 0
        if todo:
            import relsim

            model = relsim.load(**{"device": self.options.device, **self.load_kwargs})
            collection = Collection.create(
                root, model.fingerprint, dim=model.embedding_dim, dtype="float32", exist_ok=True
            )
            report = embed_files(
                model,
                collection,
                todo,
                batch_size=self.options.batch_size,
                num_workers=self.options.workers,
                progress=self.options.progress,
            )
            computed = report.embedded
        assert collection is not None
        failures = {f["path"]: f["reason"] for f in collection.failures()}
        stored = set(collection.paths())
        resolve = path_resolver()
        rows = [i for i, path in enumerate(pool.paths) if resolve(path) in stored]
        vectors = np.zeros((len(pool), collection.dim), dtype=np.float32)
        valid = np.zeros(len(pool), dtype=bool)
        if rows:
            vectors[rows] = collection.vectors([pool.paths[i] for i in rows]).numpy()
            valid[rows] = True
            vectors[valid] = normalise_rows(vectors[valid], str(root))
        missing = {path: failures.get(path, "not embedded") for i, path in enumerate(pool.paths) if not valid[i]}
        return PoolVectors(vectors, valid, dict(collection.fingerprint), missing, computed)


class StudentMethod(RelSimMethod):
    """A distilled student (:mod:`relsim.student`), filled through its own relsim collection like relsim's."""

    name = "student"

    def __init__(self, options: MethodOptions) -> None:
        if not options.student.get("model"):
            raise MethodUnavailable("student skipped: name the student checkpoint with --student DIR")
        self.options = options
        self.load_kwargs = {k: v for k, v in options.student.items() if v is not None}


class ExternalMethod(Method):
    """Vectors computed elsewhere: a ``.npy`` array or a ``.safetensors`` file (one tensor, or one named
    ``embeddings``), one row per pool image in pool order (``DIR/pool.txt``)."""

    def __init__(self, name: str, file: str | os.PathLike) -> None:
        self.name = name
        self.file = Path(file).expanduser()
        if not self.file.is_file():
            raise MissingFileError(f"--embeddings {name}={file}: no such file")
        if self.file.suffix.lower() not in (".npy", ".safetensors"):
            raise ArgumentError(f"--embeddings {name}={file}: expected a .npy or .safetensors file")

    def _read(self) -> np.ndarray:
        if self.file.suffix.lower() == ".npy":
            return np.load(self.file, allow_pickle=False)
        from safetensors.numpy import load_file

        tensors = load_file(str(self.file))
        if "embeddings" in tensors:
            return tensors["embeddings"]
        if len(tensors) != 1:
            raise ArgumentError(f"{self.file}: holds {sorted(tensors)}; name the tensor 'embeddings'")
        return next(iter(tensors.values()))

    def embed(self, pool: Pool, workdir: Path) -> PoolVectors:
        try:
            array = self._read()
        except (OSError, ValueError) as err:
            raise ArgumentError(f"--embeddings {self.name}={self.file}: cannot read it ({err})") from None
        if array.ndim != 2 or array.shape[0] != len(pool):
            raise ArgumentError(
                f"--embeddings {self.name}={self.file}: shape {tuple(array.shape)}, expected ({len(pool)}, D): "
                f"one row per pool image, in the order of {workdir.parent / 'pool.txt'}"
            )
        vectors = normalise_rows(array, f"--embeddings {self.name}={self.file}")
        digest = hashlib.sha256(self.file.read_bytes()).hexdigest()
        fingerprint = {"method": "external", "file": str(self.file.resolve()), "sha256": digest}
        return PoolVectors(vectors, np.ones(len(pool), dtype=bool), fingerprint)


def external_method(spec: str) -> ExternalMethod:
    """Parse ``NAME=FILE`` (the ``--embeddings`` option)."""
    name, sep, file = spec.partition("=")
    name = name.strip()
    if not sep or not name or not file:
        raise ArgumentError(f"--embeddings {spec!r}: expected NAME=FILE (a .npy or .safetensors file)")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ArgumentError(f"--embeddings {spec!r}: the name may hold letters, digits, '-' and '_' only")
    return ExternalMethod(name, file)
