"""Search a collection: the images nearest to an image, a text or an embedding. The home of ``relsim.search``.

Example:
    >>> relsim.search("photos.relsim", image="q.jpg", k=5, exclude_self=True)                   # doctest: +SKIP
    >>> relsim.search("photos.relsim", text="{Animal} peeking out from behind a {Object}", k=5)   # doctest: +SKIP
    >>> relsim.search("photos.relsim", text="{Fruit} cut open", where="path LIKE '%/2024/%'")     # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .batching import is_single
from .collection import Collection
from .errors import ArgumentError
from .neighbours import check_query_options, nearest
from .text import DEFAULT_TEXT_MODEL

if TYPE_CHECKING:
    from .caption import Captioner
    from .encoder import RelSimModel
    from .text import TextEncoder

__all__ = ["SearchResults", "load_collection_model", "search"]


def load_collection_model(
    collection: Collection,
    *,
    model: str | os.PathLike | None = None,
    revision: str | None = None,
    base_model: str | os.PathLike | None = None,
    base_revision: str | None = None,
    mode: str | None = None,
    **load_kwargs: Any,
) -> RelSimModel:
    """Load the model that built ``collection`` (its fingerprint), or ``model`` when given.

    Without ``model`` the collection's model, revisions and mode are used and each argument given overrides
    its field; with ``model`` the fingerprint is ignored (check the result with
    ``collection.check_compatible(loaded.fingerprint)``). ``load_kwargs`` go to :func:`relsim.load`.

    Example:
        >>> model = load_collection_model(Collection.open("photos.relsim"), device="cuda")  # doctest: +SKIP
    """
    import relsim

    if model is not None:
        kwargs = {"revision": revision, "base_model": base_model, "base_revision": base_revision}
        return relsim.load(model, mode=mode or "train", **kwargs, **load_kwargs)
    fp = collection.fingerprint
    try:
        return relsim.load(
            fp["model"],
            revision=revision if revision is not None else fp.get("revision"),
            base_model=base_model if base_model is not None else fp.get("base_model"),
            base_revision=base_revision if base_revision is not None else fp.get("base_revision"),
            mode=mode or fp.get("mode", "train"),
            **load_kwargs,
        )
    except (OSError, ValueError) as err:
        raise type(err)(
            f"{err} -- the collection {collection.uri!r} was built with {fp.get('model')!r} "
            f"(base {fp.get('base_model')!r}); pass model= / --model (and base_model= / --base-model) "
            "to load it from elsewhere"
        ) from err


class SearchResults(list):
    """The hits of one query, best first: a list of dicts (see :func:`search`), plus the query's anonymous
    caption when searched with ``explain=True`` (None for a text or embedding query, or without ``explain``).

    >>> SearchResults([{"rank": 1, "path": "/photos/x.jpg"}], query_caption="A {Fruit} cut open").query_caption
    'A {Fruit} cut open'
    """

    def __init__(self, hits: Sequence[dict[str, Any]] = (), query_caption: str | None = None) -> None:
        super().__init__(hits)
        self.query_caption = query_caption


def search(
    collection: Collection | str | os.PathLike,
    *,
    image: Any = None,
    text: str | Sequence[str] | None = None,
    embedding: torch.Tensor | None = None,
    k: int = 10,
    model: RelSimModel | str | os.PathLike | None = None,
    text_model: str | os.PathLike | TextEncoder = DEFAULT_TEXT_MODEL,
    text_revision: str | None = None,
    exclude_self: bool = False,
    dedup: bool = True,
    where: str | None = None,
    caption_contains: str | None = None,
    exact: bool = False,
    nprobes: int | None = None,
    device: str | torch.device | None = None,
    explain: bool = False,
    captioner: Captioner | str | os.PathLike | None = None,
    captioner_revision: str | None = None,
    caption_options: Mapping[str, Any] | None = None,
) -> SearchResults | list[SearchResults]:
    """The ``k`` images of ``collection`` nearest to one query: an image, a text, or an embedding.

    Give exactly one of ``image`` (path, PIL image, array or tensor), ``text`` (embedded with the MiniLM
    ``text_model``: relsim images live in its space) or ``embedding`` ((384,) or (Q, 384)). A list of images
    or texts searches each; the result is then one list per query. Hits are dicts ``{rank, score, path,
    sha256, duplicates}`` (plus ``caption`` when one is stored), best first, in a :class:`SearchResults`.

    Image queries need the collection's model: a path already in it and unchanged uses its stored row;
    otherwise ``model`` (a loaded :class:`RelSimModel`, or a name loaded with :func:`relsim.load`) or, by
    default, the model recorded in the collection is loaded — pass a loaded model when searching often. A
    model other than the collection's is refused (:class:`relsim.collection.CollectionMismatchError`).
    ``exclude_self`` drops a query file and its byte-identical copies from its own results; ``dedup`` lists
    identical files once. ``where`` is a SQL filter (``"path LIKE '%/2024/%'"``), ``caption_contains`` keeps
    images whose caption has these words. The ANN index (``relsim index``) is used when there is one, unless
    ``exact``; ``nprobes`` sets how many of its partitions a query visits (default 16: more is slower and finds
    more).

    ``explain=True`` adds the anonymous captions: every hit gets ``caption`` (None only for a file that
    cannot be read any more) and ``caption_similarity``, the MiniLM cosine of its caption with the query's
    caption (image queries) or with the query text; the image query's own caption is
    ``results.query_caption``. Captions of stored images are kept in the collection's ``caption`` column:
    computed once (each content once), reused by every later search, so a second search runs no captioner.
    A query image that is not in the collection is captioned every time. ``captioner``: a loaded
    :class:`relsim.caption.Captioner`, or a checkpoint (Hub id or directory, with ``captioner_revision``)
    attached to the collection's model; default: ``model.captioner``. ``caption_options`` go to
    ``Captioner.caption`` (``max_new_tokens``, ``batch_size``, ``prompt``, ...). Nothing is loaded when every
    caption needed is stored.

    Example:
        >>> relsim.search("photos.relsim", image="q.jpg", k=3, exclude_self=True)      # doctest: +SKIP
        [{'rank': 1, 'score': 0.83, 'path': '/photos/x.jpg', 'sha256': '…', 'duplicates': []}, ...]
        >>> relsim.search("photos.relsim", text="{Fruit} cut open to show its layers")  # doctest: +SKIP
        >>> hits = relsim.search("photos.relsim", image="q.jpg", k=3, explain=True)     # doctest: +SKIP
        >>> hits.query_caption, hits[0]["caption"], hits[0]["caption_similarity"]      # doctest: +SKIP
        ('A {Fruit} cut open to reveal its layers.', 'A cross-section of {Planet} showing its layers.', 0.61)
    """
    given = [name for name, value in (("image", image), ("text", text), ("embedding", embedding)) if value is not None]
    if len(given) != 1:
        raise ArgumentError(f"give exactly one of image=, text= or embedding= (got {given or 'none'})")
    check_search_arguments(k=k, text=text, nprobes=nprobes, exact=exact)
    if not explain and (captioner is not None or captioner_revision is not None or caption_options):
        raise ArgumentError("captioner=, captioner_revision= and caption_options= go with explain=True")
    if (caption_options or {}).get("num_captions", 1) != 1:
        raise ArgumentError("explain uses one caption per image (num_captions=1)")
    if not isinstance(collection, Collection):
        collection = Collection.open(collection)
    models = _ModelSource(collection, model, device)
    single = True
    exclude: list[list[str]] | None = None
    texts: list[str] | None = None
    images: list | None = None
    if embedding is not None:
        query = torch.as_tensor(embedding)
        single = query.ndim == 1
    elif text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        single = isinstance(text, str)
        query = _embed_texts(texts, text_model, text_revision, device)
    else:
        single = is_single(image)
        images = [image] if single else list(image)
        query = _embed_images(collection, images, models)
        if exclude_self:
            exclude = [_self_hashes(collection, x) for x in images]
    if query.shape[-1] != collection.dim:
        raise ArgumentError(f"the query has {query.shape[-1]} dimensions, the collection {collection.dim}")
    hits = nearest(
        collection,
        query,
        k,
        where=where,
        exact=exact,
        nprobes=nprobes,
        exclude_sha256=exclude,
        dedup=dedup,
        caption_contains=caption_contains,
    )
    results = [SearchResults(hit.to_dict() for hit in row) for row in hits]
    if explain:
        explainer = _Explainer(collection, models, captioner, captioner_revision, dict(caption_options or {}))
        explainer.explain(
            results, images=images, texts=texts, text_model=text_model, text_revision=text_revision, device=device
        )
    return results[0] if single else results


def check_search_arguments(
    *,
    k: int,
    text: str | Sequence[str] | None = None,
    nprobes: int | None = None,
    exact: bool = False,
    spell: Callable[[str], str] = str,
) -> None:
    """The one check of :func:`search`'s query arguments, before anything is opened or loaded (``relsim search``
    runs it on its flags, spelled by ``spell``): :class:`relsim.errors.ArgumentError` naming the argument.

    >>> check_search_arguments(k=3, text=" ")
    Traceback (most recent call last):
    relsim.errors.ArgumentError: text is empty: describe the relation to look for
    """
    check_query_options(k, nprobes=nprobes, exact=exact, spell=spell)
    if text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            where = spell("text") if isinstance(text, str) else f"{spell('text')} query {empty[0]}"
            raise ArgumentError(f"{where} is empty: describe the relation to look for")


class _ModelSource:
    """The model a search needs, loaded at most once and only when needed: the one given, or the collection's."""

    def __init__(self, collection: Collection, model: Any, device: Any) -> None:
        self.collection = collection
        self.model = model
        self.device = device

    @property
    def given(self) -> bool:
        return self.model is not None

    def get(self) -> RelSimModel:
        if self.model is None:
            self.model = load_collection_model(self.collection, device=self.device)
        elif isinstance(self.model, str | os.PathLike):
            mode = self.collection.fingerprint.get("mode")
            self.model = load_collection_model(self.collection, model=self.model, mode=mode, device=self.device)
        return self.model


class _Explainer:
    """Anonymous captions for search results: stored ones read, missing ones made once and stored."""

    def __init__(self, collection: Collection, models: _ModelSource, captioner, revision, options: dict) -> None:
        self.collection = collection
        self.models = models
        self.options = options
        self._captioner = captioner
        self._revision = revision
        self._loaded = None

    def captioner(self) -> Captioner:
        if self._loaded is None:
            chosen = self._captioner
            if chosen is not None and not isinstance(chosen, str | os.PathLike):
                self._loaded = chosen  # a loaded Captioner
            elif chosen is None and self._revision is None:
                self._loaded = self.models.get().captioner
            else:
                self._loaded = self.models.get().load_captioner(chosen, revision=self._revision)
        return self._loaded

    def stored_captions(self, paths: list[str]) -> dict[str, str | None]:
        """The caption of each stored path, captioning (and storing) the ones that have none."""
        from .bulk import caption_collection

        captions = dict(zip(paths, self.collection.captions(paths), strict=True))
        if any(c is None for c in captions.values()):
            report = caption_collection(self.captioner(), self.collection, paths, progress=False, **self.options)
            if report.skipped:
                names = ", ".join(path for path, _ in report.skipped[:3])
                warnings.warn(
                    f"{self.collection.uri}: cannot caption {len(report.skipped)} stored file(s) that cannot be "
                    f"read any more ({names}); `relsim prune {self.collection.uri}` drops rows of deleted files",
                    stacklevel=4,
                )
            captions = dict(zip(paths, self.collection.captions(paths), strict=True))
        return captions

    def stored_queries(self, images: list) -> list[str | None]:
        """The resolved path of each query image that is a file stored unchanged in the collection, else None."""
        from .files import path_resolver

        files = [x for x in images if isinstance(x, str | os.PathLike)]
        changed = {os.fspath(p) for p in self.collection.needs_embedding(files)} if files else set()
        resolve = path_resolver()
        is_stored = [isinstance(x, str | os.PathLike) and os.fspath(x) not in changed for x in images]
        return [resolve(x) if stored else None for x, stored in zip(images, is_stored, strict=True)]

    def explain(self, results: list[SearchResults], *, images, texts, text_model, text_revision, device) -> None:
        """Fill every hit's ``caption`` and ``caption_similarity`` and each result's ``query_caption``."""
        stored = self.stored_queries(images) if images is not None else [None] * len(results)
        hit_paths = [p for hits in results for hit in hits for p in (hit["path"], *hit["duplicates"])]
        paths = list(dict.fromkeys([*hit_paths, *(p for p in stored if p is not None)]))
        captions = self.stored_captions(paths) if paths else {}
        if images is not None:
            others = [i for i, p in enumerate(stored) if p is None]  # not in the collection: captioned every time
            made = self.captioner().caption([images[i] for i in others], **self.options) if others else []
            fresh = {i: caption.text for i, caption in zip(others, made, strict=True)}
            sources = [captions[p] if p is not None else fresh[i] for i, p in enumerate(stored)]
            for result, caption in zip(results, sources, strict=True):
                result.query_caption = caption
        else:
            sources = texts if texts is not None else [None] * len(results)
        wanted = list(dict.fromkeys(t for t in [*sources, *captions.values()] if t is not None))
        if not any(c is not None for c in captions.values()):
            wanted = []  # no hit to compare with: the text model is not needed
        embedded = _embed_texts(wanted, text_model, text_revision, device) if wanted else []
        vectors = dict(zip(wanted, embedded, strict=True))
        for result, source in zip(results, sources, strict=True):
            for hit in result:
                hit["caption"] = captions[hit["path"]]
                both = source is not None and hit["caption"] is not None
                similarity = float(vectors[source] @ vectors[hit["caption"]]) if both else None
                hit["caption_similarity"] = None if similarity is None else min(1.0, max(-1.0, similarity))


def _self_hashes(collection: Collection, image: Any) -> list[str]:
    """The content hash of a query file: its copies in the collection count as itself."""
    from .files import FileRecord

    if not isinstance(image, str | os.PathLike):
        return []
    try:
        return [FileRecord.from_path(image).sha256]
    except OSError:
        return []


def _embed_texts(texts: list[str], text_model: Any, revision: str | None, device: Any) -> torch.Tensor:
    from .text import embed_text

    if isinstance(text_model, str | os.PathLike):
        text_model = os.fspath(text_model)
    return embed_text(texts, model=text_model, revision=revision, device=device)


def _embed_images(collection: Collection, images: list, models: _ModelSource) -> torch.Tensor:
    """Query embeddings: stored rows for unchanged files of the collection (no model needed), else the model's."""
    if not models.given and all(isinstance(x, str | os.PathLike) for x in images):
        if not collection.needs_embedding(images):
            return collection.vectors(images)
    model = models.get()
    collection.check_compatible(model.fingerprint)  # before spending time on the query
    return model.embed(images, progress=False)
