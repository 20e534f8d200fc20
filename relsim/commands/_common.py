"""What every ``relsim`` command shares: exit codes, the one-line error convention, model flags, JSON output.

Exit codes (docs/cli.md):

==== =====================================================================================================
0    success
1    the command was valid but failed while running (model not found, bad checkpoint, unreadable image,
     a collection built by another model, ...): one line on stderr
2    usage error: bad flags or values, an input path that does not exist, no images found
3    finished, but some inputs were skipped (listed on stderr and logged)
130  interrupted (Ctrl-C); what was saved is kept
==== =====================================================================================================

This module imports nothing heavy: ``relsim --help`` must stay fast.

Example:
    >>> @command
    ... def _run(args):
    ...     raise UsageError("-k must be >= 1")      # printed as "relsim search: error: -k must be >= 1", exit 2
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from ..registry import DEFAULT_MODEL

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

#: Optional dependencies and the extra that installs each.
EXTRAS = {"peft": "train", "lancedb": "search", "ray": "ray", "openai": "eval", "matplotlib": "plot"}
EXTRAS.update(fastapi="serve", uvicorn="serve", multipart="serve")
MODEL_FLAGS = ("model", "revision", "base_model", "base_revision", "mode", "dtype")


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2); the message says what."""


def command_name(args: argparse.Namespace) -> str:
    """``relsim score``, ``relsim data download``, ... for messages."""
    parts = ["relsim", getattr(args, "command", None), getattr(args, "subcommand", None)]
    return " ".join(p for p in parts if p)


def error(args: argparse.Namespace, message: str) -> None:
    """Print ``relsim <command>: error: <message>`` on stderr (one line per error; control characters escaped)."""
    print(f"{command_name(args)}: error: {_escape_controls(message)}", file=sys.stderr)


def warn(args: argparse.Namespace, message: str) -> None:
    print(f"{command_name(args)}: warning: {_escape_controls(message)}", file=sys.stderr)


def missing_extra(err: ImportError) -> str | None:
    """``pip install "relsim[x]"`` advice when ``err`` is a missing optional dependency, else None."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(name)
    return f'{name} is not installed: pip install "relsim[{extra}]"' if extra else None


def command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with the shared convention: errors a user can act on become one line and an exit code.

    :class:`UsageError` -> 2; relsim's own errors and ``ValueError`` / ``OSError`` -> 1; a missing optional
    dependency -> 1 with the extra to install; Ctrl-C -> 130. Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except UsageError as err:
            error(args, str(err))
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"\n{command_name(args)}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except ImportError as err:
            error(args, missing_extra(err) or str(err))
            return EXIT_ERROR
        except (ValueError, OSError) as err:  # RelSimError subclasses are ValueError or OSError too
            error(args, _one_line(str(err) or type(err).__name__))
            return EXIT_ERROR

    return wrapper


def _one_line(message: str) -> str:
    return single_line(message) if "\n" in message else message


def single_line(text: str) -> str:
    """``text`` on one line, runs of whitespace (newlines included) made one space: a caption in a table."""
    return " ".join(text.split())


#: C0 and C1 control characters: a terminal acts on them (ESC starts a sequence that can recolour, retitle or
#: rewrite the screen), so text from files, collections or models never reaches it raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def printable(text: str) -> str:
    r"""Stored text (a path, a caption) for a terminal, on one line: text with control characters (a newline, an
    ESC) is shown quoted and escaped, as JSON writes it; other text as it is.

    Example:
        >>> printable("a.jpg"), printable("a\x1b[2J.jpg")
        ('a.jpg', '"a\\u001b[2J.jpg"')
    """
    if _CONTROL.search(text) is None:
        return text
    return _escape_controls(json.dumps(text, ensure_ascii=False))


def bounded(kind: type, low: float | None = None, high: float | None = None, *, above: bool = False):
    """An argparse ``type`` for a number in a range, checked at parse time (exit 2, one line naming the flag).

    ``above=True`` makes ``low`` exclusive (``> low``); NaN and infinities are refused.

    Example:
        >>> parser.add_argument("-k", type=bounded(int, 1, 1_000_000), default=10)   # doctest: +SKIP
    """
    what = "an integer" if kind is int else "a number"
    limits = [f"> {low:g}" if above else f">= {low}"] if low is not None else []
    limits += [f"<= {high}"] if high is not None else []
    rule = f"{what} {' and '.join(limits)}".strip()

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        inside = math.isfinite(value) and (low is None or (value > low if above else value >= low))
        if not inside or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


#: Ranges several commands share (docs/cli.md lists every option's range).
BATCH_SIZE = bounded(int, 1, 4096)
WORKERS = bounded(int, 0, 256)
MAX_NEW_TOKENS = bounded(int, 1, 8192)
SEED = bounded(int, 0, 2**32 - 1)


def require_inputs(*paths: str) -> None:
    """A path named on the command line that does not exist is a usage error (exit 2)."""
    for path in paths:
        if path is not None and not os.path.exists(path):
            raise UsageError(f"{path}: no such file or directory")


def collect_image_paths(args: argparse.Namespace) -> list[str]:
    """The images named by ``args.inputs`` (``--recursive``, ``--extensions``); none found is a usage error."""
    from ..files import IMAGE_EXTENSIONS, collect_images

    try:
        extensions = args.extensions.split(",") if args.extensions else IMAGE_EXTENSIONS
        paths = collect_images(args.inputs, recursive=args.recursive, extensions=extensions)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    if not paths:
        hint = "" if args.recursive else " (add --recursive for subfolders)"
        raise UsageError(f"no images found in {' '.join(args.inputs)}{hint}")
    return paths


# ------------------------------------------------------------------------------------------------- the model


def add_model_flags(parser: argparse.ArgumentParser, *, from_collection: bool = False) -> None:
    """``--model --revision --base-model --base-revision --mode --device --dtype`` (as :func:`relsim.load`)."""
    group = parser.add_argument_group("model")
    default = "the model recorded in the collection" if from_collection else DEFAULT_MODEL
    group.add_argument("--model", help=f"relsim checkpoint: Hub repo id or local directory (default: {default})")
    group.add_argument("--revision", help="branch, tag or commit of --model (default: the repo's main branch)")
    group.add_argument("--base-model", help="base Qwen2.5-VL: Hub repo id or directory (default: the adapter's)")
    group.add_argument("--base-revision", help="branch, tag or commit of the base model")
    group.add_argument(
        "--mode", choices=("train", "native"), help="preprocessing: train (448x448 centre crop, default) or native"
    )
    group.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available; cuda:$LOCAL_RANK under torchrun)"
    )
    group.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: bfloat16 on GPU, float32 on CPU"
    )


def device_from_args(args: argparse.Namespace) -> str | None:
    """``--device`` (checked: see :func:`available_device`); under torchrun each process takes its own GPU
    (``cuda:$LOCAL_RANK``)."""
    if getattr(args, "device", None):
        return available_device(args.device)
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(local_rank)}"
    return None


def available_device(name: str) -> str:
    """``name`` when this torch has that device; else a :class:`UsageError` listing the devices it has.

    Example:
        >>> available_device("cuda:1")   # on a CPU-only torch: UsageError "... available: cpu"  # doctest: +SKIP
    """
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available.append("mps")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device name; available: {', '.join(available)}") from None
    exists = device.type == "cpu" or f"{device.type}:{0 if device.index is None else device.index}" in available
    if device.type == "mps" and device.index in (None, 0):
        exists = "mps" in available
    if not exists:
        raise UsageError(f"--device {name} is not available in this torch; available: {', '.join(available)}")
    return name


def model_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in MODEL_FLAGS)


def load_model_from_args(args: argparse.Namespace, collection=None):
    """The model named by the flags; with a collection and no ``--model``, the collection's model (flags override)."""
    import relsim

    common = {"device": device_from_args(args), "dtype": args.dtype}
    model_args = {
        "revision": args.revision,
        "base_model": args.base_model,
        "base_revision": args.base_revision,
        "mode": args.mode,
    }
    if collection is not None and args.model is None:
        from ..retrieval import load_collection_model

        return load_collection_model(collection, **model_args, **common)
    model_args["mode"] = args.mode or "train"
    return relsim.load(args.model or DEFAULT_MODEL, **model_args, **common)


# ---------------------------------------------------------------------------------------------------- output


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON: non-finite numbers become ``null``, never ``NaN``."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)


def print_json(value: Any, *, indent: int | None = None) -> None:
    print(dumps(value, indent=indent))


def human_size(size: float) -> str:
    """``1234567`` -> ``'1.2 MB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``plural(1, "image")`` -> ``'1 image'``; ``plural(2, "image")`` -> ``'2 images'``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
