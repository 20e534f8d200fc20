"""``relsim serve``: a local web app for relational search over a collection (extra ``relsim[serve]``).

:class:`SearchEngine` (one collection, one shared model; no web code) and :func:`create_app` (the FastAPI
app: the page, the JSON API, FastAPI's ``/docs``). See docs/search.md.

Example:
    >>> from relsim.serve import SearchEngine, create_app                        # doctest: +SKIP
    >>> app = create_app(SearchEngine(Collection.open("photos.relsim"), model))  # doctest: +SKIP
"""

from __future__ import annotations

from ..errors import RowNotFoundError
from .app import create_app
from .engine import SearchEngine, row_id

__all__ = ["RowNotFoundError", "SearchEngine", "create_app", "row_id"]
