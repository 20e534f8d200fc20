"""Embedding with Ray Data on many GPUs or nodes (extra ``relsim[ray]``), written into a relsim collection.

:class:`RelSimEmbedder` is a callable class for ``ray.data.Dataset.map_batches``: each actor loads the model
once, then turns batches of image bytes (``read_binary_files``), decoded images (``read_images``) or local
paths into rows with a ``vector`` column. :func:`write_to_collection` upserts the result into a collection,
with the same records (path, size, mtime, SHA-256) ``relsim embed`` writes, so later ``relsim embed`` runs
see those files as up to date.

Example:
    >>> import ray                                                                      # doctest: +SKIP
    >>> ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)      # doctest: +SKIP
    >>> ds = ds.map_batches(RelSimEmbedder, fn_constructor_kwargs={"device": "cuda"},
    ...                     num_gpus=1, concurrency=8, batch_size=64)                   # doctest: +SKIP
    >>> write_to_collection(ds, "photos.relsim")                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..pretrained import DEFAULT_MODEL

__all__ = ["RelSimEmbedder", "write_to_collection"]


def _local(path: str) -> bool:
    return "://" not in path and os.path.isabs(path)


class RelSimEmbedder:
    """``map_batches`` callable: a batch with ``bytes``, ``image`` or ``path`` in, the same rows with
    ``vector`` (float32, (n, dim)), ``sha256``, ``size``, ``mtime_ns``, ``fingerprint`` and ``error`` out.

    Rows whose image cannot be read keep a zero vector and say why in ``error`` (empty when fine); the
    ``bytes`` / ``image`` columns are dropped so the output stays small. ``load_kwargs`` go to
    :func:`relsim.load` (``base_model``, ``revision``, ``device``, ``dtype``, ``mode``, ...).

    Example:
        >>> ds.map_batches(RelSimEmbedder, fn_constructor_kwargs={"model": "me/relsim-ft"}, num_gpus=1,
        ...                concurrency=4, batch_size=64)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        **load_kwargs: Any,
    ) -> None:
        import json

        import relsim

        self.model = relsim.load(model, **load_kwargs)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._fingerprint = json.dumps(self.model.fingerprint, sort_keys=True)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        from ..files import FileRecord

        n = len(next(iter(batch.values())))
        paths = [str(p) for p in batch["path"]] if "path" in batch else [""] * n
        errors = [""] * n
        sha = [""] * n
        size = np.zeros(n, np.int64)
        mtime = np.zeros(n, np.int64)
        images: list[Any] = [None] * n
        for i in range(n):
            try:
                if "bytes" in batch:
                    data = bytes(batch["bytes"][i])
                    images[i] = _decode_bytes(data)
                    sha[i], size[i] = hashlib.sha256(data).hexdigest(), len(data)
                    if _local(paths[i]):
                        paths[i] = os.path.realpath(paths[i])
                        mtime[i] = os.stat(paths[i]).st_mtime_ns
                elif "image" in batch:
                    images[i] = np.asarray(batch["image"][i])
                else:
                    record = FileRecord.from_path(paths[i])
                    paths[i], sha[i], size[i], mtime[i] = record.path, record.sha256, record.size, record.mtime_ns
                    images[i] = record.path
            except Exception as err:  # noqa: BLE001 - one bad file must not kill the actor
                errors[i] = f"cannot read image ({type(err).__name__}: {err})"
        good = [i for i in range(n) if not errors[i]]
        vectors = np.zeros((n, self.model.embedding_dim), np.float32)

        def failed(index: int, err: Exception) -> None:
            errors[good[index]] = str(err).split("): ", 1)[-1]

        stream = self.model.embed_stream(
            [images[i] for i in good], self.batch_size, num_workers=self.num_workers, on_error=failed
        )
        for indices, emb in stream:
            vectors[[good[j] for j in indices]] = emb.numpy()
        out = {k: v for k, v in batch.items() if k not in ("bytes", "image")}
        out.update(path=np.array(paths, dtype=object), vector=vectors, sha256=np.array(sha, dtype=object))
        out.update(size=size, mtime_ns=mtime, error=np.array(errors, dtype=object))
        out["fingerprint"] = np.array([self._fingerprint] * n, dtype=object)
        return out


def _decode_bytes(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()


def write_to_collection(
    dataset: Any,
    collection: Any,
    *,
    dtype: str = "float16",
    rows_per_commit: int = 4096,
) -> dict[str, int]:
    """Upsert the rows :class:`RelSimEmbedder` made into a collection (created from their fingerprint if needed).

    ``dataset`` is a Ray ``Dataset`` (or any iterable of such numpy batches). Rows with an ``error`` are logged
    in the collection's failures table. Returns ``{"embedded": n, "skipped": m}``.

    Example:
        >>> write_to_collection(ds.map_batches(RelSimEmbedder, ...), "photos.relsim")  # doctest: +SKIP
        {'embedded': 10000, 'skipped': 2}
    """
    import json

    from ..collection import Collection
    from ..files import FileRecord

    batches: Iterable[Mapping[str, Any]] = (
        dataset.iter_batches(batch_size=rows_per_commit, batch_format="numpy")
        if hasattr(dataset, "iter_batches")
        else dataset
    )
    counts = {"embedded": 0, "skipped": 0}
    for batch in batches:
        n = len(batch["path"])
        if n == 0:
            continue
        fingerprint = json.loads(str(batch["fingerprint"][0]))
        if not isinstance(collection, Collection):
            dim = int(np.asarray(batch["vector"]).shape[1])
            collection = Collection.create(collection, fingerprint, dim=dim, dtype=dtype, exist_ok=True)
        ok = [i for i in range(n) if not batch["error"][i]]
        failures = [(str(batch["path"][i]), str(batch["error"][i])) for i in range(n) if batch["error"][i]]
        records = [
            FileRecord(str(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i]), str(batch["sha256"][i]))
            for i in ok
        ]
        collection.add(records, np.asarray(batch["vector"])[ok], fingerprint=fingerprint)
        collection.log_failures(failures)
        counts["embedded"] += len(ok)
        counts["skipped"] += len(failures)
    return counts
