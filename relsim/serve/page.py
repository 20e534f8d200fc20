"""The page of ``relsim serve``, rendered on the server: query forms, the query, the results grid, "why" panels.

Everything works without JavaScript (forms and links; every text or row query has its own URL);
``static/app.js`` only adds dropping an image on the page and showing heatmaps in place. Every value from
the collection or the request is HTML-escaped.

Example:
    >>> "&lt;b&gt;" in render_page(title="<b>", count=0, k=5, hits=[])
    True
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

__all__ = ["query_url", "render_page"]


def query_url(k: int, explain: bool = False, **query: str) -> str:
    """The shareable URL of a query: ``/?row=ID&k=12`` or ``/?text=...&k=12`` (``&explain=1`` with captions).

    >>> query_url(5, text="{Fruit} cut open")
    '/?text=%7BFruit%7D+cut+open&k=5'
    """
    params = {**query, "k": str(k)}
    if explain:
        params["explain"] = "1"
    return "/?" + urlencode(params)


def _attr(value: Any) -> str:
    return escape(str(value), quote=True)


def _forms(k: int, text: str, explain: bool, max_upload_bytes: int) -> str:
    checked = " checked" if explain else ""
    limit_mb = max_upload_bytes / 1e6
    return f"""
<section class="forms" aria-label="New query">
  <form class="drop" id="upload-form" method="post" action="/" enctype="multipart/form-data">
    <h2>Search by image</h2>
    <label for="image">Image file (up to {limit_mb:g} MB)</label>
    <input type="file" id="image" name="image" accept="image/*" required>
    <p class="hint" id="drop-hint">…or drop an image anywhere on this box.</p>
    <input type="hidden" name="k" value="{k}">
    <label class="check"><input type="checkbox" name="explain" value="1"{checked}> with anonymous captions</label>
    <button type="submit">Search by image</button>
  </form>
  <form class="text" method="get" action="/" role="search">
    <h2>Search by description</h2>
    <label for="text">Relational description</label>
    <input type="search" id="text" name="text" value="{_attr(text)}"
      placeholder="{{Animal}} peeking out from behind a {{Object}}">
    <label for="k">Results</label>
    <input type="number" id="k" name="k" min="1" max="200" value="{k}">
    <label class="check"><input type="checkbox" name="explain" value="1"{checked}> with anonymous captions</label>
    <button type="submit">Search by description</button>
  </form>
</section>"""


def _query_html(query: dict[str, Any] | None, query_caption: str | None) -> str:
    if not query:
        return ""
    caption = f'<q class="caption">{escape(query_caption)}</q>' if query_caption else ""
    if "text" in query:
        body = f'<p class="query-text">{escape(query["text"])}</p>'
    elif "row" in query:
        name = os.path.basename(query["path"])
        body = (
            f'<figure><img src="/api/thumb/{_attr(query["row"])}" alt="{_attr(name)}">'
            f'<figcaption title="{_attr(query["path"])}">{escape(name)}</figcaption></figure>'
        )
    else:
        thumb = query.get("thumbnail")
        uri = f"data:image/jpeg;base64,{base64.b64encode(thumb).decode()}" if thumb else ""
        image = f'<img src="{uri}" alt="the uploaded image">'
        body = f"<figure>{image if thumb else ''}<figcaption>{escape(query['upload'])} (uploaded)</figcaption></figure>"
    return f'<section class="query" aria-labelledby="query-h"><h2 id="query-h">Query</h2>{body}{caption}</section>'


@dataclass
class _Results:
    """What every result card of one page needs to know about the query."""

    query: dict[str, Any]
    k: int
    explained: bool
    heatmaps: bool
    note: str | None
    query_caption: str | None

    def why(self, hit: dict[str, Any]) -> str:
        """The "Why?" panel of one hit: both captions (or how to get them), the heatmap link."""
        query, parts = self.query, []
        if self.explained:
            similarity = hit.get("caption_similarity")
            value = f"{similarity:.4f}" if similarity is not None else "–"
            source = self.query_caption if self.query_caption is not None else query.get("text")
            label = "The query" if self.query_caption is not None or "text" not in query else "The query text"
            parts.append(
                f"<dl><dt>{label}</dt><dd>{escape(source or '(no caption)')}</dd>"
                f"<dt>This image</dt><dd>{escape(hit.get('caption') or '(no caption: the file cannot be read)')}</dd>"
                f"<dt>Caption similarity to the query</dt><dd>{value}</dd></dl>"
            )
        elif self.note:
            parts.append(f'<p class="note">{escape(self.note)}</p>')
        elif "upload" in query:
            parts.append("<p>Upload again with captions ticked to compare the anonymous captions.</p>")
        else:
            again = query_url(self.k, True, **{key: query[key] for key in ("text", "row") if key in query})
            parts.append(
                f'<p><a href="{_attr(again)}">Search again with captions</a> to compare the anonymous captions.</p>'
            )
        if self.heatmaps and "row" in query:
            href = "/api/heatmap?" + urlencode({"a": hit["row"], "b": query["row"]})
            parts.append(
                f'<p><a class="heatmap-link button" href="{_attr(href)}">Show heatmap</a> where in this image '
                "the similarity to the query comes from</p>"
            )
        elif self.heatmaps:
            parts.append("<p>Heatmaps compare two images of the collection: open this result to query with it.</p>")
        return f'<details class="why"><summary>Why?</summary>{"".join(parts)}</details>'

    def html(self, hits: Sequence[dict[str, Any]]) -> str:
        """The results section: one card per hit, each linking to the query by its row."""
        cards = []
        for hit in hits:
            name = os.path.basename(hit["path"])
            href = query_url(self.k, self.explained, row=hit["row"])
            dupes = len(hit.get("duplicates") or [])
            extra = f' <span class="dupes">+{dupes} identical</span>' if dupes else ""
            caption = f'<q class="caption">{escape(hit["caption"])}</q>' if hit.get("caption") else ""
            cards.append(
                f'<li class="hit"><a class="thumb" href="{_attr(href)}" aria-label="Search with #{hit["rank"]}, '
                f'{_attr(name)}"><img src="/api/thumb/{_attr(hit["row"])}" alt="{_attr(name)}" loading="lazy"></a>'
                f'<p><span class="rank">#{hit["rank"]}</span> <span class="score">{hit["score"]:.4f}</span>{extra}</p>'
                f'<p class="name" title="{_attr(hit["path"])}">{escape(name)}</p>{caption}{self.why(hit)}</li>'
            )
        return (
            f'<section class="results" aria-labelledby="results-h"><h2 id="results-h">Top {len(hits)}</h2>'
            f'<ol class="grid">{"".join(cards)}</ol></section>'
        )


def render_page(
    *,
    title: str,
    count: int,
    k: int,
    hits: Sequence[dict[str, Any]] | None = None,
    query: dict[str, Any] | None = None,
    query_caption: str | None = None,
    explain: bool = False,
    explained: bool = False,
    explain_note: str | None = None,
    heatmaps: bool = False,
    error: str | None = None,
    max_upload_bytes: int = 20_000_000,
) -> str:
    """The whole page: forms, then (when a query was made) the query and its results, or the error.

    ``query``: ``{"text": ...}``, ``{"row": ID, "path": ...}`` or ``{"upload": NAME, "thumbnail": JPEG}``.
    """
    text = query.get("text", "") if query else ""
    parts = [_forms(k, text, explain, max_upload_bytes)]
    if error:
        parts.append(f'<p class="error" role="alert">{escape(error)}</p>')
    elif query is not None:
        parts.append(_query_html(query, query_caption))
        results = _Results(query, k, explained, heatmaps, explain_note, query_caption)
        parts.append(results.html(hits or []))
    else:
        parts.append('<p class="intro">Upload or drop an image, or describe a relation, to search.</p>')
    return _PAGE.format(title=escape(title), count=count, body="\n".join(parts))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>relsim · {title}</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head><body>
<header><h1><a href="/">relsim</a></h1><p class="meta">{title} · {count} images ·
<a href="/docs">API</a></p></header>
<main>
{body}
</main>
</body></html>
"""
