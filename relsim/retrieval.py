"""Search a collection: the images nearest to an image, a text or an embedding. The home of ``relsim.search``.

Example:
    >>> relsim.search("photos.relsim", image="q.jpg", k=5, exclude_self=True)                   # doctest: +SKIP
    >>> relsim.search("photos.relsim", text="{Animal} peeking out from behind a {Object}", k=5)   # doctest: +SKIP
    >>> relsim.search("photos.relsim", text="{Fruit} cut open", where="path LIKE '%/2024/%'")     # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .collection import Collection
from .neighbours import nearest
from .text import DEFAULT_TEXT_MODEL

if TYPE_CHECKING:
    from .encoder import RelSimModel
    from .text import TextEncoder

__all__ = ["load_collection_model", "search"]


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


def _is_single(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.ndim in (1, 3)
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.ndim in (2, 3)
    return not isinstance(x, list | tuple)


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
    device: str | torch.device | None = None,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """The ``k`` images of ``collection`` nearest to one query: an image, a text, or an embedding.

    Give exactly one of ``image`` (path, PIL image, array or tensor), ``text`` (embedded with the MiniLM
    ``text_model``: relsim images live in its space) or ``embedding`` ((384,) or (Q, 384)). A list of images
    or texts searches each; the result is then one list per query. Hits are dicts ``{rank, score, path,
    sha256, duplicates}`` (plus ``caption`` when one is stored), best first.

    Image queries need the collection's model: a path already in it and unchanged uses its stored row;
    otherwise ``model`` (a loaded :class:`RelSimModel`, or a name loaded with :func:`relsim.load`) or, by
    default, the model recorded in the collection is loaded — pass a loaded model when searching often. A
    model other than the collection's is refused (:class:`relsim.collection.CollectionMismatchError`).
    ``exclude_self`` drops a query file and its byte-identical copies from its own results; ``dedup`` lists
    identical files once. ``where`` is a SQL filter (``"path LIKE '%/2024/%'"``), ``caption_contains`` keeps
    images whose caption has these words. The ANN index (``relsim index``) is used when there is one, unless
    ``exact``.

    Example:
        >>> relsim.search("photos.relsim", image="q.jpg", k=3, exclude_self=True)      # doctest: +SKIP
        [{'rank': 1, 'score': 0.83, 'path': '/photos/x.jpg', 'sha256': '…', 'duplicates': []}, ...]
        >>> relsim.search("photos.relsim", text="{Fruit} cut open to show its layers")  # doctest: +SKIP
    """
    given = [name for name, value in (("image", image), ("text", text), ("embedding", embedding)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of image=, text= or embedding= (got {given or 'none'})")
    if not isinstance(collection, Collection):
        collection = Collection.open(collection)
    single = True
    exclude: list[list[str]] | None = None
    if embedding is not None:
        query = torch.as_tensor(embedding)
        single = query.ndim == 1
    elif text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise ValueError(f"text query {empty[0]} is empty: describe the relation to look for")
        single = isinstance(text, str)
        query = _embed_texts(texts, text_model, text_revision, device)
    else:
        single = _is_single(image)
        images = [image] if single else list(image)
        query = _embed_images(collection, images, model, device)
        if exclude_self:
            exclude = [_self_hashes(collection, x) for x in images]
    if query.shape[-1] != collection.dim:
        raise ValueError(f"the query has {query.shape[-1]} dimensions, the collection {collection.dim}")
    hits = nearest(
        collection,
        query,
        k,
        where=where,
        exact=exact,
        exclude_sha256=exclude,
        dedup=dedup,
        caption_contains=caption_contains,
    )
    results = [[hit.to_dict() for hit in row] for row in hits]
    return results[0] if single else results


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


def _embed_images(collection: Collection, images: list, model: Any, device: Any) -> torch.Tensor:
    """Query embeddings: stored rows for unchanged files of the collection (no model needed), else the model's."""
    if model is None and all(isinstance(x, str | os.PathLike) for x in images):
        if not collection.needs_embedding(images):
            return collection.vectors(images)
    if model is None:
        model = load_collection_model(collection, device=device)
    elif isinstance(model, str | os.PathLike):
        model = load_collection_model(collection, model=model, mode=collection.fingerprint.get("mode"), device=device)
    collection.check_compatible(model.fingerprint)  # before spending time on the query
    return model.embed(images, progress=False)
