"""Search your collection: fill an embedding store from image files, query it, and show the answers.

This is the layer under ``relsim embed`` / ``relsim search`` and the home of ``relsim.search(...)``:

- :func:`collect_images` turns files, folders and list files into image paths;
- :func:`embed_files` embeds the new or changed ones into a store, in chunks, skipping unreadable images;
- :func:`search` finds the images nearest to an image, a text or an embedding;
- :func:`write_html` / :func:`write_grid` show the results as a self-contained web page or a PNG contact sheet.

Example:
    >>> model = relsim.load()                                                    # doctest: +SKIP
    >>> store = EmbeddingStore.create("emb/", model.fingerprint, exist_ok=True)  # doctest: +SKIP
    >>> embed_files(model, store, collect_images(["photos/"], recursive=True))   # doctest: +SKIP
    >>> hits = relsim.search("emb/", text="{Animal} peeking out from behind a {Object}", k=5)  # doctest: +SKIP
    >>> write_grid("results.png", hits, text="{Animal} peeking out from behind a {Object}")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
import textwrap
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .preprocess import ImageInputError
from .store import EmbeddingStore, FileRecord
from .text import DEFAULT_TEXT_MODEL

if TYPE_CHECKING:
    from PIL import Image

    from .encoder import RelSimModel
    from .text import TextEncoder

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "EmbedReport",
    "collect_images",
    "embed_files",
    "load_store_model",
    "search",
    "write_grid",
    "write_html",
]

#: File name endings collected from folders (case-insensitive). Files named explicitly are taken as they are.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
)
#: Inputs with these endings are lists of image paths, one a line, relative to the list file.
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})


# ------------------------------------------------------------------------------------------------ inputs


def collect_images(
    inputs: Iterable[str | os.PathLike],
    *,
    recursive: bool = False,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> list[str]:
    """Absolute paths of the images named by ``inputs``, in order, each once.

    An input is an image file (taken whatever its ending), a folder (its files with an image ending; with
    ``recursive`` its subfolders too; hidden entries skipped), a list file (``.txt``/``.lst``/``.list``: one
    path a line, relative to the list file, ``#`` comments) or ``"-"`` (such a list on stdin, relative to the
    working directory). A missing input is a ``FileNotFoundError``; a missing path inside a list is kept, so
    embedding reports it.

    Example:
        >>> collect_images(["photos/", "extra.txt"], recursive=True)  # doctest: +SKIP
        ['/data/photos/a.jpg', '/data/photos/sub/b.png', '/data/more/c.jpg']
    """
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    seen: dict[str, None] = {}
    for item in inputs:
        for path in _expand(os.fspath(item), recursive, exts):
            seen.setdefault(path, None)
    return list(seen)


def _expand(item: str, recursive: bool, exts: set[str]) -> Iterator[str]:
    item = os.path.expanduser(item)
    if item == "-":
        yield from _expand_list(sys.stdin.read().splitlines(), os.getcwd(), recursive, exts)
    elif os.path.isdir(item):
        yield from _scan_folder(item, recursive, exts)
    elif os.path.isfile(item):
        if Path(item).suffix.lower() in LIST_EXTENSIONS:
            lines = Path(item).read_text(encoding="utf-8").splitlines()
            yield from _expand_list(lines, os.path.dirname(os.path.abspath(item)), recursive, exts)
        else:
            yield os.path.abspath(item)
    else:
        raise FileNotFoundError(f"{item}: no such file or directory")


def _expand_list(lines: Sequence[str], root: str, recursive: bool, exts: set[str]) -> Iterator[str]:
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(root, os.path.expanduser(entry)))
        if os.path.isdir(path):
            yield from _scan_folder(path, recursive, exts)
        else:
            yield path


def _scan_folder(folder: str, recursive: bool, exts: set[str]) -> Iterator[str]:
    root = os.path.abspath(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                yield os.path.join(dirpath, name)


# ------------------------------------------------------------------------------------------------- embed


@dataclass
class EmbedReport:
    """What :func:`embed_files` did."""

    embedded: int = 0
    up_to_date: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each image that could not be embedded (also in the store's failures.log)."""
    seconds: float = 0.0
    shards: list[Path] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedded": self.embedded,
            "up_to_date": self.up_to_date,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "shards_written": len(self.shards),
        }


@dataclass
class _Loaded:
    """One file after the reading step: its record and decoded image, or why it failed."""

    path: str
    record: FileRecord | None = None
    image: Image.Image | None = None
    error: str | None = None


def _read(path: str, index: int, mode: str, resize: bool) -> _Loaded:
    """Hash, decode and (unless the model resizes on its device) resize one file, ahead of time. The model's
    own preprocessing then finds the image at its size already (``resize_for_mode`` is idempotent)."""
    from . import preprocess

    try:
        record = FileRecord.from_path(path)  # stat before reading: a file changed meanwhile looks changed next run
    except OSError as err:
        return _Loaded(path, error=f"cannot read file ({err.strerror or err})")
    try:
        image = preprocess.decode(path, index)
        if resize:
            image = preprocess.resize_for_mode(image, mode)
        else:
            preprocess.target_size(image.height, image.width, mode)  # refuse what the model would refuse
    except (ImageInputError, ValueError) as err:  # ValueError: native mode refuses aspect ratios over 200
        return _Loaded(path, error=_reason(err, index, path))
    return _Loaded(path, record=record, image=image)


def _reason(err: Exception, index: int, path: str) -> str:
    """The error message without the "image 3 (path '...'): " prefix: the log names the path already."""
    return str(err).removeprefix(f"image {index} (path '{path}'): ")


def _read_ahead(
    paths: Sequence[str], batch_size: int, workers: int, mode: str, resize: bool
) -> Iterator[list[_Loaded]]:
    """Batches of read files; the next two batches are read in threads while the caller embeds this one."""
    pool = ThreadPoolExecutor(max(1, workers))
    pending: deque = deque()
    feed = iter(enumerate(paths))

    def top_up() -> None:
        while len(pending) < 2 * batch_size and (nxt := next(feed, None)) is not None:
            pending.append(pool.submit(_read, nxt[1], nxt[0], mode, resize))

    try:
        top_up()
        while pending:
            batch = []
            while pending and len(batch) < batch_size:
                batch.append(pending.popleft().result())
                top_up()
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: drop the reads not started yet


def _embed_decoded(
    model: RelSimModel, items: list[_Loaded], batch_size: int, workers: int
) -> list[torch.Tensor | None]:
    """Embed decoded images. ``_read`` already catches every refusal we know of; should the model still refuse
    one, the batch is embedded one image at a time so only the culprit is skipped (``error`` set, ``None``)."""
    if not items:
        return []
    try:
        emb = model.embed([it.image for it in items], batch_size=batch_size, num_workers=workers, progress=False)
    except ImageInputError as err:
        if len(items) == 1:
            items[0].error = str(err)
            return [None]
        return [e for it in items for e in _embed_decoded(model, [it], batch_size, workers)]
    return list(emb)


def embed_files(
    model: RelSimModel,
    store: EmbeddingStore,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    save_every: int | None = None,
    rank: int = 0,
    log_rank: bool = False,
    progress: bool | None = None,
) -> EmbedReport:
    """Embed the files of ``paths`` that are new or changed for ``store`` and append them to it.

    Embeddings are saved every ``save_every`` images (default 8 batches) as one shard, so a crash loses at
    most that many; on an exception (Ctrl-C included) what is embedded so far is saved before it propagates.
    Unreadable images are logged to the store's failures.log, listed in the report and skipped. ``progress``
    shows a tqdm bar with images/s and ETA on stderr (default: when stderr is a terminal).

    Example:
        >>> report = embed_files(model, store, ["a.jpg", "b.png"], batch_size=16)  # doctest: +SKIP
        >>> report.embedded, report.skipped                                         # doctest: +SKIP
        (2, [])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    save_every = save_every or 8 * batch_size
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    report = EmbedReport()
    todo = [os.fspath(p) for p in store.needs_embedding(paths)]
    report.up_to_date = len({os.fspath(p) for p in paths}) - len(todo)
    records: list[FileRecord] = []
    rows: list[torch.Tensor] = []

    def save() -> None:
        if records:
            report.shards.append(store.add(records, torch.stack(rows), rank=rank))
            report.embedded += len(records)
            records.clear()
            rows.clear()

    bar = _progress_bar(len(todo), progress)
    start = time.perf_counter()
    batches = _read_ahead(todo, batch_size, workers, model.mode, resize=not model.uses_device_resize)
    try:
        for batch in batches:
            good = [it for it in batch if it.error is None]
            for item, emb in zip(good, _embed_decoded(model, good, batch_size, workers), strict=True):
                if emb is not None:
                    records.append(item.record)  # type: ignore[arg-type]
                    rows.append(emb)
                item.image = None
            for item in batch:
                if item.error is not None:
                    store.log_failure(item.path, item.error, rank=rank if log_rank else None)
                    report.skipped.append((item.path, item.error))
            if len(records) >= save_every:
                save()
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(skipped=len(report.skipped), refresh=False)
    finally:
        batches.close()
        save()  # keep what was embedded, also when interrupted
        report.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
    return report


def _progress_bar(total: int, progress: bool | None):
    interactive = sys.stderr.isatty()
    if not (interactive if progress is None else progress) or total == 0:
        return None
    from tqdm.auto import tqdm

    # Not a terminal (a SLURM log): a line a minute instead of a carriage-return storm.
    return tqdm(
        total=total,
        unit="img",
        desc="relsim embed",
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 60,
        file=sys.stderr,
    )


# ------------------------------------------------------------------------------------------------ search


def load_store_model(
    store: EmbeddingStore,
    *,
    model: str | os.PathLike | None = None,
    revision: str | None = None,
    base_model: str | os.PathLike | None = None,
    base_revision: str | None = None,
    mode: str | None = None,
    **load_kwargs: Any,
) -> RelSimModel:
    """Load the model that built ``store`` (its fingerprint), or ``model`` when given.

    Without ``model`` the store's model, revisions and mode are used and each argument given overrides
    its field; with ``model`` the store's fingerprint is ignored (check the result with
    ``store.check_compatible(loaded.fingerprint)``). ``load_kwargs`` go to :func:`relsim.load`.

    Example:
        >>> model = load_store_model(EmbeddingStore.open("emb/"), device="cuda")  # doctest: +SKIP
    """
    import relsim

    if model is not None:
        kwargs = {"revision": revision, "base_model": base_model, "base_revision": base_revision}
        return relsim.load(model, mode=mode or "train", **kwargs, **load_kwargs)
    fp = store.fingerprint
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
            f"{err} -- the store {str(store.path)!r} was built with {fp.get('model')!r} "
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


def _stored_rows(store: EmbeddingStore, images: list) -> list[int] | None:
    """Rows of the store holding the query images, when all are unchanged files in it (no model needed)."""
    if not all(isinstance(x, str | os.PathLike) for x in images):
        return None
    if store.needs_embedding(images):
        return None
    rows = [store.index_of(x) for x in images]
    return None if any(r is None for r in rows) else rows  # type: ignore[return-value]


def search(
    store: EmbeddingStore | str | os.PathLike,
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
    backend: str = "exact",
    device: str | torch.device | None = None,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """The ``k`` images of ``store`` nearest to one query: an image, a text, or an embedding.

    Give exactly one of ``image`` (path, PIL image, array or tensor), ``text`` (embedded with the MiniLM
    ``text_model``: relsim images live in its space) or ``embedding`` ((384,) or (Q, 384)). A list of images
    or texts searches each; the result is then one list per query. Hits are dicts ``{rank, score, path,
    sha256, duplicates}``, best first. ``text_revision`` pins the text model's commit.

    Image queries need the store's model: a path already in the store and unchanged uses its stored row;
    otherwise ``model`` (a loaded :class:`RelSimModel`, or a name loaded with :func:`relsim.load`) or, by
    default, the model recorded in the store is loaded — pass a loaded model to avoid reloading it on every
    call. A model other than the store's is refused (:class:`relsim.store.StoreMismatchError`).
    ``exclude_self`` drops a query path and its byte-identical copies from its own results; ``dedup`` lists
    identical files once. ``backend="faiss"`` uses FAISS (``pip install "relsim[faiss]"``).

    Example:
        >>> relsim.search("emb/", image="q.jpg", k=3, exclude_self=True)      # doctest: +SKIP
        [{'rank': 1, 'score': 0.83, 'path': '/photos/x.jpg', 'sha256': '…', 'duplicates': []}, ...]
        >>> relsim.search("emb/", text="{Fruit} cut open to show its layers")  # doctest: +SKIP
    """
    from .topk import search_store

    given = [name for name, value in (("image", image), ("text", text), ("embedding", embedding)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of image=, text= or embedding= (got {given or 'none'})")
    if not isinstance(store, EmbeddingStore):
        store = EmbeddingStore.open(store)
    fingerprint = None
    self_paths: Any = None
    if embedding is not None:
        query = torch.as_tensor(embedding)
    elif text is not None:
        query = _embed_texts(text, text_model, text_revision, device)
        query = query[0] if isinstance(text, str) else query
    else:
        single = _is_single(image)
        images = [image] if single else list(image)
        query, fingerprint = _embed_images(store, images, model, device)
        query = query[0] if single else query
        if exclude_self:
            paths = [os.fspath(x) if isinstance(x, str | os.PathLike) else None for x in images]
            self_paths = paths[0] if single else paths
    if query.shape[-1] != store.dim:
        raise ValueError(f"the query has {query.shape[-1]} dimensions, the store {store.dim}")
    return search_store(
        store, query, k, exclude_self_path=self_paths, dedup=dedup, fingerprint=fingerprint, backend=backend
    )


def _embed_texts(text: str | Sequence[str], text_model: Any, revision: str | None, device: Any) -> torch.Tensor:
    from .text import embed_text

    if isinstance(text_model, str | os.PathLike):
        text_model = os.fspath(text_model)
    return embed_text(text, model=text_model, revision=revision, device=device)


def _embed_images(
    store: EmbeddingStore, images: list, model: Any, device: Any
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Query embeddings and the fingerprint to check them against (None: they come from the store)."""
    if model is None:
        rows = _stored_rows(store, images)
        if rows is not None:
            return store.embeddings(torch.float32)[rows], None
        model = load_store_model(store, device=device)
    elif isinstance(model, str | os.PathLike):
        model = load_store_model(store, model=model, mode=store.fingerprint.get("mode"), device=device)
    store.check_compatible(model.fingerprint)  # before spending time on the query
    return model.embed(images, progress=False), model.fingerprint


# ------------------------------------------------------------------------------------------------ visual

_PLACEHOLDER = (224, 224, 224)


def _thumbnail(source: Any, size: int) -> Image.Image | None:
    """An RGB thumbnail (EXIF orientation applied) fitting in size x size, or None when unreadable."""
    from . import preprocess

    try:
        image = preprocess.decode(source, 0)
    except (ImageInputError, OSError):
        return None
    if isinstance(image, torch.Tensor):  # a float tensor that requires grad
        from PIL import Image

        array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array)
    from PIL import ImageOps

    return ImageOps.contain(image, (size, size))  # small images are scaled up too: tiles of one size


def _data_uri(image: Image.Image | None) -> str | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
) -> Path:
    """Write a self-contained HTML page: the query and each hit's thumbnail, rank, score and path.

    Thumbnails are embedded as base64 JPEG data URIs, so the page can be mailed or archived on its own.

    Example:
        >>> write_html("results.html", relsim.search("emb/", image="q.jpg"), image="q.jpg")  # doctest: +SKIP
    """
    esc = html.escape
    if image is not None:
        uri = _data_uri(_thumbnail(image, thumb_size))
        body = f'<img src="{uri}" alt="query">' if uri else '<div class="missing">unreadable</div>'
        query = f"<figure>{body}<figcaption>{esc(_query_label(image))}</figcaption></figure>"
    else:
        query = f'<p class="text">{esc(text if text is not None else "(an embedding)")}</p>'
    cards = []
    for hit in hits:
        uri = _data_uri(_thumbnail(hit["path"], thumb_size))
        body = f'<img src="{uri}" alt="#{hit["rank"]}">' if uri else '<div class="missing">file unavailable</div>'
        dupes = len(hit.get("duplicates") or [])
        extra = f' <span class="dupes">+{dupes} identical</span>' if dupes else ""
        href = Path(hit["path"]).as_uri() if os.path.isabs(hit["path"]) else hit["path"]
        cards.append(
            f'<figure class="hit">{body}<figcaption><b>#{hit["rank"]}</b> '
            f'<span class="score">{hit["score"]:.4f}</span>{extra}<br>'
            f'<a href="{esc(href)}" title="{esc(hit["path"])}">{esc(os.path.basename(hit["path"]))}</a>'
            f"</figcaption></figure>"
        )
    sub = f'<p class="meta">{esc(subtitle)}</p>' if subtitle else ""
    page = _HTML.format(title=esc(title), sub=sub, query=query, n=len(hits), cards="\n".join(cards), size=thumb_size)
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


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
.text {{ font-size: 1.2rem; font-style: italic; }}
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


def write_grid(
    path: str | os.PathLike,
    hits: Sequence[dict[str, Any]],
    *,
    image: Any = None,
    text: str | None = None,
    columns: int | None = None,
    thumb_size: int = 192,
) -> Path:
    """Write a PNG contact sheet (PIL only): the query tile (framed) and each hit with rank, score, file name.

    Example:
        >>> write_grid("results.png", hits, text="{Animal} peeking out from behind a {Object}")  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    pad, caption = 8, 36
    tiles = [("query", _thumbnail(image, thumb_size) if image is not None else None, True)]
    for hit in hits:
        label = f"#{hit['rank']}  {hit['score']:.4f}"
        tiles.append((label + "\n" + os.path.basename(hit["path"]), _thumbnail(hit["path"], thumb_size), False))
    cols = max(1, min(columns or 6, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = thumb_size + pad, thumb_size + caption + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(12)
    for i, (label, thumb, is_query) in enumerate(tiles):
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
    out = Path(path)
    sheet.save(out, format="PNG", optimize=True)
    return out
