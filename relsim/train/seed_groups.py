"""Seed groups: the captioner's training data (images that share one anonymous caption).

Three ways to hold them, all read by :func:`load_seed_groups`:

- **upstream's JSON** (``data/seed_group.json`` of the paper's repository): a list of
  ``{"anonymous_caption": ..., "image_urls": [...]}``; every image of a group is a sample with the group's
  caption. ``relsim data download seed_group.json DIR`` fetches the images into ``DIR`` in the layout below.
- **the Hub dataset layout** (``thaoshibe/seed-groups``): ``images/{group}/{i}.png`` next to the JSON. A URL
  ``.../images/{group}/{i}.png`` is stored under that same relative path, so a snapshot of the dataset and a
  download of the JSON are the same folder. Other URLs go to ``{group}/{k}.png`` (``k``: position in
  ``image_urls``); ``group`` is the entry's ``index_group`` (upstream's training file had it), else the group
  number of its Hub URLs, else its position in the list.
- **local folders**: a folder per group holding ``caption.txt`` and the group's images (every file whose
  ending Pillow reads; hidden files are ignored)::

      my-groups/
        fruit-layers/  caption.txt  peach.jpg  egg.png  earth.webp
        queues/        caption.txt  ants.jpg  traffic.png

Captions are kept as written, whitespace stripped (upstream's carry literal quotes; the published captioner
learned to write them).

Example:
    >>> images, image_dir = load_seed_groups("seed-groups/seed_group.json")     # doctest: +SKIP
    >>> train, held_out = split_groups(images, 0.05)                            # doctest: +SKIP
    >>> images[0].file, images[0].caption[:30]                                  # doctest: +SKIP
    ('0/1.png', '"This image represents the geog')
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from ..errors import ArgumentError, MissingFileError
from .data import Record, fingerprint

#: The caption of a local seed-group folder.
CAPTION_FILE = "caption.txt"
#: The name of upstream's seed-group file (a folder holding it is read as that file plus ``images/``).
UPSTREAM_FILE = "seed_group.json"
_HUB_URL = re.compile(r"/images/(?P<group>[^/]+)/(?P<name>[^/]+)$")
#: Group folder and file names: plain names, never a path (they name files on disk).
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SeedImage:
    """One training sample: an image file (relative to the image folder) and its group's caption."""

    file: str
    """``{group}/{name}``, relative to the image folder."""
    caption: str
    group: str
    url: str | None = None

    @property
    def filename(self) -> str:
        """Where the image is stored under the image folder (what ``relsim data download`` writes)."""
        return self.file


def is_seed_group_file(path: str | Path) -> bool:
    """True when ``path`` is a JSON list (upstream's seed groups) rather than a JSONL of captions."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _png_name(name: str) -> str:
    """``3.png`` -> ``3.png``; ``3.jpg`` -> ``3.png`` (downloads are stored as PNG, as upstream's script did)."""
    return PurePosixPath(name).stem + ".png"


def _hub_part(url: str) -> tuple[str, str] | None:
    """``(group, file)`` of a URL in the Hub dataset layout ``.../images/{group}/{i}.png``, else None."""
    match = _HUB_URL.search(unquote(urlparse(url).path))
    if match is None or not SAFE_NAME.match(match["group"]) or not SAFE_NAME.match(match["name"]):
        return None
    return match["group"], _png_name(match["name"])


def read_seed_group_json(path: str | Path) -> list[SeedImage]:
    """Read upstream's seed-group JSON; a malformed entry is a ``ValueError`` naming its index."""
    path = Path(path)
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArgumentError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(groups, list):
        raise ArgumentError(f"{path}: expected a JSON list of seed groups, got a {type(groups).__name__}")
    images: list[SeedImage] = []
    owner: dict[str, int] = {}
    for index, entry in enumerate(groups):
        where = f"{path}: seed group {index}"
        if not isinstance(entry, dict):
            raise ArgumentError(f"{where} is a {type(entry).__name__}, expected an object")
        caption, urls = entry.get("anonymous_caption"), entry.get("image_urls")
        if not isinstance(caption, str) or not caption.strip():
            raise ArgumentError(f"{where}: anonymous_caption must be a non-empty string, got {caption!r}")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise ArgumentError(f"{where}: image_urls must be a non-empty list of URLs, got {urls!r}")
        hub = [_hub_part(u) for u in urls]
        if "index_group" in entry:
            group = str(entry["index_group"])
        elif all(h is not None for h in hub) and len({h[0] for h in hub}) == 1:
            group = hub[0][0]
        else:
            group = str(index)
        if not SAFE_NAME.match(group):
            raise ArgumentError(f"{where}: group name {group!r} is not a safe folder name")
        names = [h[1] if h is not None and h[0] == group else None for h in hub]
        if None in names or len(set(names)) != len(names):
            names = [f"{k}.png" for k in range(len(urls))]
        for url, name in zip(urls, names, strict=True):
            file = f"{group}/{name}"
            if file in owner:
                raise ArgumentError(f"{where}: image {file} is also an image of seed group {owner[file]}")
            owner[file] = index
            images.append(SeedImage(file, caption.strip(), group, url))
    return images


def _image_endings() -> set[str]:
    from PIL import Image

    return {ending.lower() for ending in Image.registered_extensions()}


def read_seed_group_folders(root: str | Path) -> list[SeedImage]:
    """Read a folder of seed-group folders, each with ``caption.txt`` and its images."""
    root = Path(root)
    endings = _image_endings()
    images: list[SeedImage] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        caption_file = folder / CAPTION_FILE
        if not caption_file.is_file():
            raise ArgumentError(f"{folder} has no {CAPTION_FILE}: every seed-group folder needs its caption")
        caption = caption_file.read_text(encoding="utf-8").strip()
        if not caption:
            raise ArgumentError(f"{caption_file} is empty")
        files = sorted(
            f.name
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in endings
        )
        if not files:
            raise ArgumentError(f"{folder} holds no image files (endings Pillow reads, e.g. .jpg .png .webp)")
        images += [SeedImage(f"{folder.name}/{name}", caption, folder.name) for name in files]
    if not images:
        raise ArgumentError(f"{root} holds no seed-group folders (a folder per group with {CAPTION_FILE} and images)")
    return images


def load_seed_groups(source: str | Path, image_dir: str | Path | None = None) -> tuple[list[SeedImage], Path]:
    """The samples of ``source`` and the folder their files are relative to.

    ``source`` is upstream's JSON (images in ``image_dir``, default ``images/`` next to it: the Hub dataset
    layout), a folder holding ``seed_group.json`` (the same), or a folder of local seed-group folders (the
    images are in it; ``image_dir`` must then be unset or the same folder).
    """
    source = Path(source)
    if not source.exists():
        raise MissingFileError(f"seed groups {str(source)!r}: no such file or directory")
    if source.is_dir() and (source / UPSTREAM_FILE).is_file():
        source = source / UPSTREAM_FILE
    if source.is_file():
        if not is_seed_group_file(source):
            raise ArgumentError(f"{source} is not a seed-group JSON list ({{anonymous_caption, image_urls}} objects)")
        return read_seed_group_json(source), Path(image_dir) if image_dir else source.parent / "images"
    if image_dir and Path(image_dir).resolve() != source.resolve():
        raise ArgumentError(f"{source} is a folder of seed-group folders: its images are in it, not in {image_dir}")
    return read_seed_group_folders(source), source


def split_groups(images: list[SeedImage], fraction: float) -> tuple[list[SeedImage], list[SeedImage]]:
    """Hold out whole groups: ``round(fraction x groups)`` of them (at least one when ``fraction > 0``), chosen
    by the SHA-1 of the group name, so the choice depends neither on the seed nor on the order of the file.

    >>> imgs = [SeedImage(f"{g}/{i}.png", f"caption {g}", str(g)) for g in range(10) for i in range(2)]
    >>> train, held = split_groups(imgs, 0.2)
    >>> len(train), len(held), len({i.group for i in held})
    (16, 4, 2)
    """
    if not 0 <= fraction < 1:
        raise ArgumentError(f"the held-out fraction must be in [0, 1), got {fraction}")
    groups = sorted({i.group for i in images}, key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    count = 0 if fraction == 0 else max(1, round(fraction * len(groups)))
    if count >= len(groups):
        raise ArgumentError(f"holding out {count} of {len(groups)} seed groups leaves none to train on")
    held = set(groups[:count])
    return [i for i in images if i.group not in held], [i for i in images if i.group in held]


def data_fingerprint(images: list[SeedImage]) -> str:
    """SHA-256 over files and captions in order: a resumed run checks it trains on the same samples."""
    return fingerprint([Record(i.file, i.caption) for i in images])


__all__ = [
    "CAPTION_FILE",
    "UPSTREAM_FILE",
    "SeedImage",
    "is_seed_group_file",
    "load_seed_groups",
    "data_fingerprint",
    "read_seed_group_folders",
    "read_seed_group_json",
    "split_groups",
]
