"""Image files on disk: collecting them, what a collection remembers of each, and the changed-file rule.

Nothing here knows about the database: :mod:`relsim.collection` stores :class:`FileRecord` rows and
:func:`stale_paths` decides, from what is stored, which files must be embedded again.

Example:
    >>> paths = collect_images(["photos/", "more.txt"], recursive=True)     # doctest: +SKIP
    >>> FileRecord.from_path(paths[0]).sha256                               # doctest: +SKIP
    '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ArgumentError, MissingFileError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "FileRecord",
    "NotARegularFileError",
    "collect_images",
    "file_sha256",
    "output_folder",
    "parse_shard",
    "path_resolver",
    "shard_from_env",
    "shard_of",
    "stale_paths",
]

#: File name endings collected from folders (case-insensitive). Files named explicitly are taken as they are.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
)
#: Inputs with these endings are lists of image paths, one a line, relative to the list file.
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
_HASH_BLOCK = 1 << 20


class NotARegularFileError(OSError):
    """A FIFO, device, socket or directory where an image file was expected: never opened for reading."""


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
    elif os.path.exists(item):  # a FIFO or device named on the command line: embedding skips and logs it
        yield os.path.abspath(item)
    else:
        raise MissingFileError(f"{item}: no such file or directory")


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


# ----------------------------------------------------------------------------------------------- records


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), refusing anything but a regular file without opening it.

    Example:
        >>> check_regular("/dev/zero")  # doctest: +SKIP
        NotARegularFileError: /dev/zero: not a regular file (a character device)
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        detail = kind if kind == "not a regular file" else f"not a regular file ({kind})"
        raise NotARegularFileError(errno.EINVAL, detail, os.fspath(path))
    return st


def output_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder to write into, refused (:class:`~relsim.errors.OutputPathError`, one line) when
    something other than a folder is there already.

    Example:
        >>> output_folder("/etc/hostname", "output_dir")  # doctest: +SKIP
        OutputPathError: output_dir /etc/hostname is a file, not a folder: name a folder (new or existing)
    """
    from .errors import OutputPathError

    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{what} {os.fspath(path)} is a file, not a folder: name a folder (new or existing)")
    return Path(path)


def file_sha256(path: str | os.PathLike, block_size: int = _HASH_BLOCK) -> str:
    """Hex SHA-256 of a regular file's content, read in blocks (constant memory).

    The file is opened non-blocking and checked with ``fstat`` before the first read, so a FIFO or a device
    swapped in after the ``stat`` is refused instead of blocking for ever.

    Example:
        >>> file_sha256("cat.jpg")  # doctest: +SKIP
        '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(errno.EINVAL, f"not a regular file ({_kind(mode)})", os.fspath(path))
        digest = hashlib.sha256()
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """What a collection remembers of an image file: resolved path, size, mtime and content hash."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> FileRecord:
        """Stat and hash a regular file. Stat comes first: a file changed while hashing looks changed next run.

        Example:
            >>> FileRecord.from_path("cat.jpg").size  # doctest: +SKIP
            48213
        """
        resolved = os.path.realpath(os.fspath(path))
        st = check_regular(resolved)
        return cls(resolved, int(st.st_size), int(st.st_mtime_ns), file_sha256(resolved))

    @classmethod
    def coerce(cls, item: FileRecord | Mapping[str, Any], index: int = 0) -> FileRecord:
        """Validate a record given as a FileRecord or a mapping with the same keys."""
        if not isinstance(item, FileRecord):
            if not isinstance(item, Mapping):
                raise ArgumentError(f"records[{index}] is {type(item).__name__}, expected FileRecord or dict")
            missing = [key for key in ("path", "size", "mtime_ns", "sha256") if key not in item]
            if missing:
                raise ArgumentError(f"records[{index}] lacks {', '.join(missing)}")
            path = os.path.realpath(os.fspath(item["path"])) if "://" not in str(item["path"]) else item["path"]
            item = cls(path, int(item["size"]), int(item["mtime_ns"]), str(item["sha256"]))
        if not re.fullmatch(r"[0-9a-f]{64}", item.sha256):
            raise ArgumentError(f"records[{index}].sha256 is not a hex SHA-256: {item.sha256!r}")
        if not os.path.isabs(item.path) and "://" not in item.path:
            raise ArgumentError(f"records[{index}].path is not absolute: {item.path!r}")
        return item

    def to_dict(self) -> dict[str, Any]:
        """``{path, size, mtime_ns, sha256}``."""
        return asdict(self)


def path_resolver() -> Callable[[str | os.PathLike], str]:
    """``os.path.realpath`` for many files: each directory is resolved once (realpath lstat's every
    component, ~25 us a path, which dominates checking a million files)."""
    dirs: dict[str, str] = {}

    def resolve(path: str | os.PathLike) -> str:
        head, tail = os.path.split(os.path.join(os.getcwd(), os.fspath(path)))
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        real_head = dirs.get(head)
        if real_head is None:
            real_head = dirs[head] = os.path.realpath(head)
        full = os.path.join(real_head, tail)
        return os.path.realpath(full) if os.path.islink(full) else full

    return resolve


def stale_paths(
    known: Mapping[str, tuple[int, int, str]], paths: Iterable[str | os.PathLike]
) -> list[str | os.PathLike]:
    """The paths (as given, first occurrence of each) that are new or changed against ``known``.

    ``known`` maps a resolved path to its stored ``(size, mtime_ns, sha256)``. Same size and mtime: unchanged.
    Same size, other mtime: hashed, changed only if the hash differs. Paths that cannot be stat'ed, and
    special files, are returned too, so the embedding step reports them.

    Example:
        >>> stale_paths({"/d/a.jpg": (10, 5, "ab" * 32)}, ["/d/a.jpg", "/d/b.jpg"])  # doctest: +SKIP
        ['/d/b.jpg']
    """
    resolve = path_resolver()
    todo: list[str | os.PathLike] = []
    seen: set[str] = set()
    for item in paths:
        path = resolve(item)
        if path in seen:
            continue
        seen.add(path)
        if _changed(known.get(path), path):
            todo.append(item)
    return todo


def _changed(stored: tuple[int, int, str] | None, path: str) -> bool:
    if stored is None:
        return True
    size, mtime_ns, sha256 = stored
    try:
        st = check_regular(path)
        if st.st_size != size:
            return True
        if st.st_mtime_ns == mtime_ns:
            return False
        return file_sha256(path) != sha256
    except OSError:
        return True


# --------------------------------------------------------------------------------------------- sharding


def shard_of(items: Iterable[Any], index: int, count: int) -> list[Any]:
    """The ``index``-th of ``count`` disjoint parts of ``items``: sorted by ``str``, every count-th one.

    The split depends only on the set of items, not on their order, so processes that list the same
    files in a different order still agree.

    Example:
        >>> shard_of(["c", "a", "b", "d"], 1, 2)
        ['b', 'd']
    """
    if count < 1 or not 0 <= index < count:
        raise ArgumentError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
    ordered = sorted(items, key=str)
    return ordered[index::count]


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based I) into ``(I, N)``.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match:
        raise ArgumentError(f"shard must look like I/N (e.g. 0/4), got {spec!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ArgumentError(f"shard {spec!r}: need 0 <= I < N")
    return index, count


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or ``(0, 1)`` when unset.

    Example:
        >>> shard_from_env({"RANK": "2", "WORLD_SIZE": "4"})
        (2, 4)
    """
    env = os.environ if environ is None else environ
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ArgumentError(f"RANK/WORLD_SIZE must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ArgumentError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return rank, world
