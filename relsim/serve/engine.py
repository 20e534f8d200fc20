"""The search engine behind ``relsim serve``: one collection, one model, rows addressed by id (no web code here).

A row id is the first 16 hex digits of the SHA-256 of the row's stored path: stable while the row exists (a
shared ``/?row=ID`` keeps working after re-embedding or compaction), and no path is ever taken from a request.
Every query sees the collection's latest version (:meth:`relsim.collection.Collection.refresh`). The model
and the collection are used by one query at a time (one lock); thumbnails are made outside it and cached.

Example:
    >>> engine = SearchEngine(Collection.open("photos.relsim"), relsim.load())   # doctest: +SKIP
    >>> hits = engine.search(text="{Fruit} cut open to show its layers", k=5)     # doctest: +SKIP
    >>> engine.thumbnail(hits[0]["row"])[:2]                                      # doctest: +SKIP
    b'\\xff\\xd8'
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentError, ImageInputError, RowNotFoundError
from ..registry import DEFAULT_TEXT_MODEL

if TYPE_CHECKING:
    from PIL import Image

    from ..caption import Captioner
    from ..collection import Collection
    from ..encoder import RelSimModel
    from ..retrieval import SearchResults

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "MAX_K", "SearchEngine", "decode_upload", "row_id"]

#: Uploads larger than this are refused (20 MB: a large phone photo is 5-10 MB).
DEFAULT_MAX_UPLOAD_BYTES = 20_000_000
MAX_K = 200
#: Heatmaps are sent at most this many pixels wide and high.
HEATMAP_SIZE = 768


def row_id(path: str) -> str:
    """The id of the row stored under ``path``: 16 hex digits of the SHA-256 of the path's bytes.

    >>> row_id("/photos/peach.jpg")
    '8eb2e8dcf059d6f0'
    """
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:16]


def decode_upload(data: bytes, name: str = "upload", max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> Image.Image:
    """An uploaded file as an RGB PIL image, checked as relsim checks every image file (empty, truncated, not an
    image, over PIL's decompression-bomb limit; EXIF orientation applied); ``max_bytes`` limits its size.

    >>> decode_upload(open("q.jpg", "rb").read(), "q.jpg").mode   # doctest: +SKIP
    'RGB'
    """
    from ..preprocess import decode

    if len(data) > max_bytes:
        raise ImageInputError(f"{name}: {len(data)} bytes, more than the upload limit of {max_bytes} bytes")
    if not data:
        raise ImageInputError(f"{name}: the upload is empty")
    # Written to a private file so that preprocess.decode's path checks (the ones every embedded file passes)
    # apply unchanged; its messages name that file, so only their reason is kept.
    with tempfile.TemporaryDirectory(prefix="relsim-upload-") as folder:
        path = os.path.join(folder, "upload")
        with open(path, "wb") as f:
            f.write(data)
        try:
            image = decode(path, 0)
        except ImageInputError as err:
            reason = str(err).split("): ", 1)[-1]
            raise ImageInputError(f"{name}: {reason}") from err
    return image  # type: ignore[return-value]  # a path never decodes to a tensor


class SearchEngine:
    """Search one collection with one shared model, by image, text or row id; thumbnails and heatmaps by row id.

    ``model``: a loaded :class:`relsim.encoder.RelSimModel` (it must have made the collection); None loads the
    collection's own on first need. ``captioner``: a loaded :class:`relsim.caption.Captioner` or a checkpoint
    (with ``captioner_revision``) for ``explain=True``; default: the model's. A captioner that cannot be loaded
    turns explanations off (:attr:`explain_error` says why) instead of failing searches.

    Example:
        >>> engine = SearchEngine(Collection.open("photos.relsim"), model)   # doctest: +SKIP
        >>> engine.search(row=engine.rows()[0], k=5, explain=True)          # doctest: +SKIP
    """

    def __init__(
        self,
        collection: Collection,
        model: RelSimModel | None = None,
        *,
        text_model: str | os.PathLike = DEFAULT_TEXT_MODEL,
        text_revision: str | None = None,
        captioner: Captioner | str | os.PathLike | None = None,
        captioner_revision: str | None = None,
        caption_options: Mapping[str, Any] | None = None,
        thumb_size: int = 256,
        cache_size: int = 2048,
        device: str | None = None,
    ) -> None:
        self.collection = collection
        self.text_model = os.fspath(text_model)
        self.text_revision = text_revision
        self.caption_options = dict(caption_options or {})
        self.thumb_size = thumb_size
        self.device = device
        self._model = model
        if model is not None:
            collection.check_compatible(model.fingerprint)
        self._captioner_choice = (captioner, captioner_revision)
        self._captioner: Captioner | None = None
        self.explain_error: str | None = None
        self._lock = threading.RLock()  # the model, the captioner and the collection: one query at a time
        self._rows: dict[str, str] = {}
        self._rows_version: Any = None
        self._thumbs: OrderedDict[tuple, bytes | None] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._cache_size = cache_size

    # ----------------------------------------------------------------------------------------- rows

    def refresh(self) -> None:
        """See the collection's latest version; the row ids are read again when it changed."""
        with self._lock:
            self.collection.refresh()
            version = self.collection.table.version
            if version != self._rows_version:
                self._rows = {row_id(p): p for p in self.collection.paths()}
                self._rows_version = version

    def rows(self) -> list[str]:
        """The row ids of the collection's latest version, in path order."""
        self.refresh()
        return list(self._rows)

    def __len__(self) -> int:
        self.refresh()
        return len(self._rows)

    def path(self, row: str) -> str:
        """The stored path of ``row`` (:class:`RowNotFoundError` when the collection has no such row)."""
        self.refresh()
        found = self._rows.get(str(row))
        if found is None:
            raise RowNotFoundError(f"row {str(row)[:40]!r} is not in the collection {self.collection.uri!r}")
        return found

    # -------------------------------------------------------------------------------------- queries

    @property
    def model(self) -> RelSimModel:
        """The shared model (the collection's own, loaded on first need, when none was given)."""
        with self._lock:
            if self._model is None:
                from ..retrieval import load_collection_model

                self._model = load_collection_model(self.collection, device=self.device)
            return self._model

    def search(
        self,
        *,
        image: Image.Image | None = None,
        text: str | None = None,
        row: str | None = None,
        k: int = 12,
        explain: bool = False,
    ) -> SearchResults:
        """The ``k`` rows nearest to an image, a text (the collection's model's text space) or a stored row.

        A row query leaves that row and its byte-identical copies out. Each hit is ``relsim.search``'s dict
        plus its ``row`` id and ``caption`` (None when none is stored). ``explain=True`` adds both anonymous
        captions (``results.query_caption``, each hit's ``caption`` and ``caption_similarity``) when a captioner
        is available (else :attr:`explain_error` is set and the results come without).
        """
        from ..retrieval import search

        given = [name for name, value in (("image", image), ("text", text), ("row", row)) if value is not None]
        if len(given) != 1:
            raise ArgumentError(f"give exactly one of image, text or row (got {given or 'none'})")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ArgumentError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        with self._lock:
            self.refresh()
            options: dict[str, Any] = {"k": k, "text_model": self.text_model, "text_revision": self.text_revision}
            options["device"] = self.device
            captioner = self._loaded_captioner() if explain else None
            if captioner is not None:
                options.update(explain=True, captioner=captioner, caption_options=self.caption_options or None)
            if text is not None:
                hits = search(self.collection, text=text, **options)
            elif row is not None:
                path = self.path(row)
                if "://" not in path and not os.path.exists(path):
                    raise RowNotFoundError(
                        f"row {row}: its file {path} is gone (`relsim prune {self.collection.uri}` drops such rows)"
                    )
                # An unchanged file is looked up (no forward pass); a changed one is embedded with the shared model.
                model = self.model if self.collection.needs_embedding([path]) else None
                hits = search(self.collection, image=path, model=model, exclude_self=True, **options)
            else:
                hits = search(self.collection, image=image, model=self.model, **options)
        for hit in hits:
            hit["row"] = row_id(hit["path"])
            hit.setdefault("caption", None)
        return hits

    def _loaded_captioner(self) -> Captioner | None:
        if self._captioner is None and self.explain_error is None:
            chosen, revision = self._captioner_choice
            try:
                if chosen is not None and not isinstance(chosen, str | os.PathLike):
                    self._captioner = chosen
                elif chosen is None and revision is None:
                    self._captioner = self.model.captioner
                else:
                    self._captioner = self.model.load_captioner(chosen, revision=revision)
            except (OSError, ValueError) as err:
                self.explain_error = f"no captioner available: {' '.join(str(err).split())}"
        return self._captioner

    # ------------------------------------------------------------------------------------- pictures

    def thumbnail(self, row: str, size: int | None = None) -> bytes:
        """A JPEG thumbnail of ``row``'s file (cached while the file is unchanged)."""
        from ..render import thumbnail_jpeg

        size = size or self.thumb_size
        path = self.path(row)
        try:
            st = os.stat(path)
        except OSError as err:
            raise RowNotFoundError(f"row {row}: its file cannot be read any more ({err.strerror})") from err
        key = (path, st.st_size, st.st_mtime_ns, size)
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                data = self._thumbs[key]
            else:
                data = thumbnail_jpeg(path, size)
                self._thumbs[key] = data
                while len(self._thumbs) > self._cache_size:
                    self._thumbs.popitem(last=False)
        if data is None:
            raise RowNotFoundError(f"row {row}: its file cannot be read as an image any more")
        return data

    def heatmap(self, a: str, b: str) -> bytes:
        """A PNG: row ``a``'s image with the map of where its similarity to row ``b`` comes from, shrunk to fit
        :data:`HEATMAP_SIZE` (``model.heatmap(a, b).overlay()``)."""
        path_a, path_b = self.path(a), self.path(b)
        with self._lock:
            model = self.model
            if not hasattr(model, "heatmap"):
                raise NotImplementedError("this relsim has no pair heatmaps (RelSimModel.heatmap)")
            overlay = model.heatmap(path_a, path_b).overlay()
        overlay = overlay.convert("RGB")
        overlay.thumbnail((HEATMAP_SIZE, HEATMAP_SIZE))  # a 12-megapixel photo's overlay would be a 20 MB PNG
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        return buffer.getvalue()
