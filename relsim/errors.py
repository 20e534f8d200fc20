"""relsim's errors: one base class, so ``except relsim.RelSimError`` catches everything relsim raises on purpose.

Each subclass also derives from the built-in exception it refines (``ValueError``, ``OSError``), so code
written against those keeps working.

Example:
    >>> try:
    ...     relsim.load("/nowhere/adapter")                     # doctest: +SKIP
    ... except relsim.RelSimError as err:
    ...     print(err)
"""

from __future__ import annotations


class RelSimError(Exception):
    """Base class of every error relsim raises on purpose (bad input, missing model, bad checkpoint, ...)."""


class ModelNotFoundError(RelSimError, OSError):
    """A Hub repo or revision could not be found online or in the local cache."""


class CheckpointError(RelSimError, ValueError):
    """A relsim checkpoint is missing a file or holds something we cannot place."""


class ImageInputError(RelSimError, ValueError):
    """Bad image input; the message names the item (index, and path if any) and what was expected."""


class CollectionError(RelSimError, ValueError):
    """A path is not a usable relsim collection (missing, corrupt, wrong format or read-only)."""


class CollectionMismatchError(CollectionError):
    """Embeddings from a different model, revision or preprocessing mode than the collection's."""


class JudgeError(RelSimError, OSError):
    """The evaluation's judge cannot be used at all (refused key, unknown model, unreachable endpoint)."""


class CollectionWriteError(CollectionError):
    """A write to a collection failed (disk full, file-size limit, permissions); what was committed is kept."""


class RowNotFoundError(RelSimError, KeyError):
    """A row id or path that names no row of a collection, or a row whose file cannot be read any more."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutputPathError(RelSimError, ValueError):
    """An output path relsim will not write to: a file where a folder goes, a folder that is not empty (without
    ``overwrite``), or a folder inside a collection."""


class RemoteCodeError(CheckpointError):
    """A model that would need its own code (``trust_remote_code``), which relsim never runs."""


class ArgumentError(RelSimError, ValueError):
    """An argument is out of range, of the wrong type or clashes with another; the message names it."""


class MissingFileError(RelSimError, FileNotFoundError):
    """A file or directory relsim was pointed at does not exist or lacks a file it needs; the message names it."""


class DestinationExistsError(RelSimError, FileExistsError):
    """An output path already holds something relsim would overwrite; the message says how to allow it."""


class WrongTypeError(RelSimError, TypeError):
    """An argument of a type relsim does not take; the message names it and what it takes."""


class NonFiniteError(RelSimError, FloatingPointError):
    """The model produced NaN or infinite values (float16 overflow); the message names the inputs and the fix."""


__all__ = [
    "RelSimError",
    "ModelNotFoundError",
    "CheckpointError",
    "ImageInputError",
    "CollectionError",
    "CollectionMismatchError",
    "JudgeError",
    "CollectionWriteError",
    "RowNotFoundError",
    "OutputPathError",
    "RemoteCodeError",
    "ArgumentError",
    "MissingFileError",
    "DestinationExistsError",
    "WrongTypeError",
    "NonFiniteError",
]
