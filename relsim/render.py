"""Showing search results: a self-contained HTML page and a PNG contact sheet (PIL only).

Each thumbnail is made on its own: one unreadable or degenerate image (a 1000x2 strip) shows as
"unavailable" and never loses the page. A hit's anonymous caption (``hit["caption"]``, with
``caption_similarity`` from ``relsim.search(..., explain=True)``) and the query's (``query_caption``) are shown
when given.

Example:
    >>> hits = relsim.search("photos.relsim", image="q.jpg", k=8)                 # doctest: +SKIP
    >>> write_html("results.html", hits, image="q.jpg")                           # doctest: +SKIP
    >>> write_grid("results.png", hits, text="{Fruit} cut open to show its layers")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArgumentError
from .preprocess import ImageInputError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["thumbnail_jpeg", "thumbnail_size", "write_grid", "write_html", "write_pair"]

_PLACEHOLDER = (224, 224, 224)


def thumbnail_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size of an image scaled to fit in size x size, at least 1 px per side (a 1000x2 strip stays visible).

    >>> thumbnail_size(1000, 2, 224)
    (224, 1)
    """
    scale = size / max(width, height, 1)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def _thumbnail(source: Any, size: int) -> Image.Image | None:
    """An RGB thumbnail (EXIF orientation applied) fitting in size x size, or None when it cannot be made."""
    from PIL import Image

    from . import preprocess

    if isinstance(source, str | os.PathLike):
        from .files import check_regular

        try:
            check_regular(source)  # a FIFO in place of a photo must not hang the page
        except OSError:
            return None
    try:
        image = preprocess.decode(source, 0)
        if not isinstance(image, Image.Image):  # a float tensor that requires grad
            array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            image = Image.fromarray(array)
        # Small images are scaled up too: tiles of one size.
        return image.convert("RGB").resize(thumbnail_size(image.width, image.height, size), Image.Resampling.LANCZOS)
    except (ImageInputError, OSError, ValueError, MemoryError):
        return None


def _jpeg(image: Image.Image | None) -> bytes | None:
    if image is None:
        return None
    try:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return buffer.getvalue()


def thumbnail_jpeg(source: Any, size: int = 224) -> bytes | None:
    """A JPEG thumbnail of ``source`` (a path, PIL image, array or tensor) fitting in size x size, made as the
    pages' thumbnails are (EXIF orientation applied; special files refused), or None when it cannot be made.

    >>> thumbnail_jpeg(np.zeros((4, 6, 3), np.uint8), 64)[:2]  # doctest: +SKIP
    b'\\xff\\xd8'
    """
    return _jpeg(_thumbnail(source, size))


def _data_uri(image: Image.Image | None) -> str | None:
    data = _jpeg(image)
    if data is None:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _query_label(image: Any) -> str:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else "query image"


def write_html(
    path: str | os.PathLike,
    hits: Sequence[dict[str, Any]],
    *,
    image: Any = None,
    text: str | None = None,
    title: str = "relsim search",
    subtitle: str | None = None,
    thumb_size: int = 224,
    query_caption: str | None = None,
    heatmaps: Sequence[Image.Image | None] | None = None,
) -> Path:
    """Write a self-contained HTML page: the query and each hit's thumbnail, rank, score and path.

    Thumbnails are embedded as base64 JPEG data URIs, so the page can be mailed or archived on its own.
    Captions are shown under their image: each hit's stored one, and ``query_caption`` under the query.
    ``heatmaps``: one image per hit (its heatmap overlay, ``relsim.heatmap``; None: none), shown under its thumbnail.

    Example:
        >>> write_html("results.html", relsim.search("emb/", image="q.jpg"), image="q.jpg")  # doctest: +SKIP
    """
    esc = html.escape
    if image is not None:
        uri = _data_uri(_thumbnail(image, thumb_size))
        body = f'<img src="{uri}" alt="query">' if uri else '<div class="missing">unreadable</div>'
        label = esc(_query_label(image)) + _caption_html(query_caption)
        query = f"<figure>{body}<figcaption>{label}</figcaption></figure>"
    else:
        query = f'<p class="text">{esc(text if text is not None else "(an embedding)")}</p>'
    if heatmaps is not None and len(heatmaps) != len(hits):
        raise ArgumentError(f"write_html needs one heatmap per hit: {len(heatmaps)} for {len(hits)} hits")
    cards = []
    for n, hit in enumerate(hits):
        uri = _data_uri(_thumbnail(hit["path"], thumb_size))
        body = f'<img src="{uri}" alt="#{hit["rank"]}">' if uri else '<div class="missing">file unavailable</div>'
        if heatmaps is not None:
            overlay = _data_uri(_thumbnail(heatmaps[n], thumb_size)) if heatmaps[n] is not None else None
            tip = "where in this image its similarity to the query comes from (relsim heatmap)"
            if overlay:
                body += f'<img class="heatmap" src="{overlay}" alt="heatmap #{hit["rank"]}" title="{tip}">'
        dupes = len(hit.get("duplicates") or [])
        extra = f' <span class="dupes">+{dupes} identical</span>' if dupes else ""
        href = Path(hit["path"]).as_uri() if os.path.isabs(hit["path"]) else hit["path"]
        cards.append(
            f'<figure class="hit">{body}<figcaption><b>#{hit["rank"]}</b> '
            f'<span class="score">{hit["score"]:.4f}</span>{extra}<br>'
            f'<a href="{esc(href)}" title="{esc(hit["path"])}">{esc(os.path.basename(hit["path"]))}</a>'
            f"{_caption_html(hit.get('caption'), hit.get('caption_similarity'))}</figcaption></figure>"
        )
    sub = f'<p class="meta">{esc(subtitle)}</p>' if subtitle else ""
    page = _HTML.format(title=esc(title), sub=sub, query=query, n=len(hits), cards="\n".join(cards), size=thumb_size)
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


def _caption_html(caption: str | None, similarity: float | None = None) -> str:
    if caption is None:
        return ""
    score = ""
    if similarity is not None:
        tip = "MiniLM cosine of this caption and the query's"
        score = f' <span class="capsim" title="{tip}">caption similarity {similarity:.4f}</span>'
    return f'<br><q class="caption">{html.escape(caption)}</q>{score}'


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
.meta {{ color: #666; font-size: .9rem; }}
.query figure, .hit {{ display: inline-block; vertical-align: top; margin: 0 .6rem .9rem 0; width: {size}px; }}
.query figure {{ outline: 3px solid #2b6cb0; }}
img, .missing {{ display: block; width: {size}px; height: {size}px; object-fit: contain; background: #eee; }}
.missing {{ line-height: {size}px; text-align: center; color: #888; }}
figcaption {{ font-size: .8rem; overflow-wrap: anywhere; padding: .2rem; }}
.score {{ font-variant-numeric: tabular-nums; color: #2b6cb0; }}
.dupes {{ color: #888; }}
.caption {{ display: block; margin-top: .2rem; font-style: italic; color: #444; }}
.capsim {{ font-variant-numeric: tabular-nums; color: #888; }}
.text {{ font-size: 1.2rem; font-style: italic; }}
.heatmap {{ margin-top: .3rem; }}
</style></head>
<body>
<h1>{title}</h1>{sub}
<section class="query"><h2>Query</h2>{query}</section>
<section class="results"><h2>Top {n}</h2>
{cards}
</section>
</body></html>
"""


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` shortened with a leading ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    """``text`` broken into at most ``lines`` lines of ``width`` pixels; an ellipsis ends it when cut."""
    words, out = " ".join(text.split()).split(" "), []
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(line + " " + words[0], font=font) <= width:
            line += " " + words.pop(0)
        out.append(line)
    if words or (out and draw.textlength(out[-1], font=font) > width):
        last = out[-1] + " " + " ".join(words) if words else out[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        out[-1] = last.rstrip() + "…"
    return out


def write_grid(
    path: str | os.PathLike,
    hits: Sequence[dict[str, Any]],
    *,
    image: Any = None,
    text: str | None = None,
    columns: int | None = None,
    thumb_size: int = 192,
    query_caption: str | None = None,
    caption_lines: int = 4,
) -> Path:
    """Write a PNG contact sheet (PIL only): the query tile (framed) and each hit with rank, score, file name.

    When the hits carry captions (or ``query_caption`` is given), each tile shows its caption below, in up to
    ``caption_lines`` lines.

    Example:
        >>> write_grid("results.png", hits, text="{Animal} peeking out from behind a {Object}")  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    pad, caption, line_height = 8, 36, 15
    tiles = [("query", _thumbnail(image, thumb_size) if image is not None else None, True, query_caption)]
    for hit in hits:
        label = f"#{hit['rank']}  {hit['score']:.4f}"
        thumb = _thumbnail(hit["path"], thumb_size)
        tiles.append((label + "\n" + os.path.basename(hit["path"]), thumb, False, hit.get("caption")))
    with_captions = any(tile[3] is not None for tile in tiles)
    if with_captions:
        caption += caption_lines * line_height + 4
    cols = max(1, min(columns or 6, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = thumb_size + pad, thumb_size + caption + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(12)
    for i, (label, thumb, is_query, described) in enumerate(tiles):
        x, y = pad + (i % cols) * cell_w, pad + (i // cols) * cell_h
        draw.rectangle([x, y, x + thumb_size - 1, y + thumb_size - 1], fill=_PLACEHOLDER)
        if thumb is not None:
            sheet.paste(thumb, (x + (thumb_size - thumb.width) // 2, y + (thumb_size - thumb.height) // 2))
        elif is_query and image is None:
            words = text if text is not None else "(embedding)"
            wrapped = textwrap.fill(words, width=max(8, thumb_size // 8))
            draw.multiline_text((x + 6, y + 6), wrapped, fill="black", font=font, spacing=3)
        else:
            draw.text((x + 6, y + thumb_size // 2 - 7), "unavailable", fill="gray", font=small)
        if is_query:
            draw.rectangle([x - 3, y - 3, x + thumb_size + 2, y + thumb_size + 2], outline=(43, 108, 176), width=3)
            if text is not None or image is None:
                label = "text query" if text is not None else "embedding query"
            else:
                label = "query\n" + os.path.basename(_query_label(image))
        first, _, second = label.partition("\n")
        draw.text((x, y + thumb_size + 4), first, fill="black", font=font)
        if second:
            draw.text((x, y + thumb_size + 20), _fit(draw, second, small, thumb_size), fill="dimgray", font=small)
        for n, line in enumerate(_wrap(draw, described or "", small, thumb_size, caption_lines)):
            draw.text((x, y + thumb_size + 40 + n * line_height), line, fill=(60, 60, 60), font=small)
    out = Path(path)
    sheet.save(out, format="PNG", optimize=True)
    return out


def write_pair(
    path: str | os.PathLike,
    images: Sequence[Image.Image],
    overlays: Sequence[Image.Image],
    labels: Sequence[str],
    *,
    title: str = "",
    panel: int = 320,
) -> Path:
    """Write a PNG of images side by side (one column each), the originals above and their ``overlays`` below,
    each fitted in ``panel`` x ``panel``, a ``labels`` line under each column and ``title`` on top.

    The size is fixed by the count: ``(8 + n * (panel + 8), 8 + 24 + 2 * (panel + 8) + 24)``.

    Example:
        >>> write_pair("pair.png", [a, b], [hm_a.overlay(), hm_b.overlay()], ["a.jpg", "b.jpg"])  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    if not len(images) == len(overlays) == len(labels):
        counts = f"{len(images)}, {len(overlays)}, {len(labels)}"
        raise ArgumentError(f"write_pair needs as many overlays and labels as images, got {counts}")
    pad, header, footer = 8, 24, 24
    sheet = Image.new("RGB", (pad + len(images) * (panel + pad), pad + header + 2 * (panel + pad) + footer), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), _fit(draw, title, _font(14), sheet.width - 2 * pad), fill="black", font=_font(14))
    for column, (image, overlay, label) in enumerate(zip(images, overlays, labels, strict=True)):
        x = pad + column * (panel + pad)
        for row, picture in enumerate((image, overlay)):
            y = pad + header + row * (panel + pad)
            draw.rectangle([x, y, x + panel - 1, y + panel - 1], fill=_PLACEHOLDER)
            fitted = picture.convert("RGB").resize(thumbnail_size(*picture.size, panel), Image.Resampling.LANCZOS)
            sheet.paste(fitted, (x + (panel - fitted.width) // 2, y + (panel - fitted.height) // 2))
        y = pad + header + 2 * (panel + pad)
        draw.text((x, y), _fit(draw, label, _font(12), panel), fill="dimgray", font=_font(12))
    out = Path(path)
    sheet.save(out, format="PNG", optimize=True)
    return out
