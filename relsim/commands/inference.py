"""Subcommands ``score``, ``embed``, ``search``, ``info`` and ``download``. See docs/cli.md.

Importing this module loads no model: that happens when a command runs. Exit codes: 0 success, 1 an error
while running (message on stderr), 2 a usage error, 3 ``embed`` finished but skipped unreadable images,
130 interrupted (Ctrl-C; what was embedded is kept).

Example:
    $ relsim score a.jpg b.jpg
    $ relsim embed photos/ -o photos.relsim --recursive
    $ relsim search photos.relsim --text "{Animal} peeking out from behind a {Object}" --grid top.png
    $ relsim info photos.relsim
    $ relsim download
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..pretrained import DEFAULT_MODEL, PRETRAINED
from ..text import DEFAULT_TEXT_MODEL

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130
_MODEL_FLAGS = ("model", "revision", "base_model", "base_revision", "mode", "dtype")


# ------------------------------------------------------------------------------------------------ parsers


def register(subparsers) -> None:
    _register_score(subparsers)
    _register_embed(subparsers)
    _register_search(subparsers)
    _register_info(subparsers)
    _register_download(subparsers)


def _add_model_flags(parser: argparse.ArgumentParser, *, from_store: bool = False) -> None:
    group = parser.add_argument_group("model")
    default = "the model recorded in the store" if from_store else DEFAULT_MODEL
    group.add_argument("--model", help=f"relsim checkpoint: Hub repo id or local directory (default: {default})")
    group.add_argument("--revision", help="branch, tag or commit of --model (default: pinned)")
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


def _register_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="relational similarity of two images",
        description="Print the relational similarity (cosine of relsim embeddings, in [-1, 1]) of two images.",
    )
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image")
    _add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print a JSON object with the score and the model")
    p.set_defaults(func=_score)


def _register_embed(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed a collection of images into a store (incremental, resumable)",
        description="Embed images into an embedding store. Re-running embeds only new or changed files; an "
        "interrupted run keeps everything saved so far. Unreadable images are skipped, listed and logged to "
        "STORE/failures.log; the exit code is then 3. Split the work over N processes with --shard I/N (or "
        "torchrun's RANK/WORLD_SIZE): each writes its own shard files into the same store.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, or .txt lists of paths ('-': stdin)"
    )
    p.add_argument("-o", "--output", required=True, metavar="STORE", help="store directory (created if needed)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--num-workers", type=int, default=None, help="decoding threads (default: up to 8)")
    p.add_argument(
        "--save-every", type=int, default=None, metavar="N", help="save a shard every N images (default: 8 batches)"
    )
    p.add_argument("--shard", metavar="I/N", help="embed only part I of N (0-based; default: $RANK/$WORLD_SIZE or 0/1)")
    p.add_argument(
        "--extensions", metavar="EXT,...", help="image endings collected from folders (default: common ones)"
    )
    p.add_argument(
        "--store-dtype", choices=("float16", "float32"), default="float16", help="for a new store (default: float16)"
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_model_flags(p, from_store=True)
    p.set_defaults(func=_embed)


def _register_search(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="find the images of a store nearest to an image or a text",
        description="Top-k images of STORE by relational similarity to an image or to a text (embedded with "
        "all-MiniLM-L6-v2, the space relsim embeddings live in). An image already in the store is looked up, "
        "not re-embedded; another image is embedded with the store's model (a different model is refused).",
    )
    p.add_argument("store", metavar="STORE")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="PATH", help="query image")
    query.add_argument("--text", metavar="TEXT", help='query text, e.g. "{Animal} peeking out from behind a {Object}"')
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--exclude-self", action="store_true", help="leave the query image (and identical copies) out")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="list byte-identical files separately")
    p.add_argument("--backend", choices=("exact", "faiss"), default="exact", help="faiss needs relsim[faiss]")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page of the results")
    p.add_argument("--grid", metavar="OUT.png", help="write a PNG contact sheet of the results")
    p.add_argument("--thumb-size", type=int, default=None, help="thumbnail size in pixels (html 224, grid 192)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"text encoder (default: {DEFAULT_TEXT_MODEL})")
    p.add_argument("--text-revision", help="branch, tag or commit of --text-model")
    _add_model_flags(p, from_store=True)
    p.set_defaults(func=_search)


def _register_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a store", description="Model, revision, mode, count, dimensions.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)


def _register_download(subparsers) -> None:
    p = subparsers.add_parser(
        "download",
        help="fetch model files into the Hugging Face cache for offline use",
        description="Download the relsim adapter, its base model and the text model into the Hugging Face cache "
        "(HF_HOME), then print where they are, their commits and sizes. Afterwards HF_HUB_OFFLINE=1 works.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--revision")
    p.add_argument("--base-model", help="default: the base named by the adapter")
    p.add_argument("--base-revision")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"default: {DEFAULT_TEXT_MODEL}")
    p.add_argument("--text-revision")
    p.add_argument("--no-text-model", dest="with_text", action="store_false", help="skip the text model")
    p.add_argument("--cache-dir", help="default: the Hugging Face cache ($HF_HOME/hub)")
    p.add_argument("--token", help="Hugging Face token (default: $HF_TOKEN or the saved login)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_download)


# -------------------------------------------------------------------------------------------------- helpers


def _handle_errors(func: Callable[..., int]) -> Callable[..., int]:
    """Errors a user can fix (bad file, missing model, wrong store) as one line on stderr, exit code 1."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace, *rest: Any) -> int:
        try:
            return func(args, *rest)
        except (ValueError, OSError, ImportError) as err:
            _err(args, str(err) or type(err).__name__)
            return EXIT_ERROR

    return wrapper


def _err(args: argparse.Namespace, message: str) -> None:
    print(f"relsim {args.command}: error: {message}", file=sys.stderr)


def _device(args: argparse.Namespace) -> str | None:
    """``--device``; under torchrun each process takes its own GPU (``cuda:$LOCAL_RANK``)."""
    if args.device:
        return args.device
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(local_rank)}"
    return None


def _model_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in _MODEL_FLAGS)


def _load_model(args: argparse.Namespace, store=None):
    """The model named by the flags; with a store and no ``--model``, the store's model (flags override)."""
    import relsim

    from ..retrieval import load_store_model

    common = {"device": _device(args), "dtype": args.dtype}
    model_args = {
        "revision": args.revision,
        "base_model": args.base_model,
        "base_revision": args.base_revision,
        "mode": args.mode,
    }
    if store is not None and args.model is None:
        return load_store_model(store, **model_args, **common)
    model_args["mode"] = args.mode or "train"
    return relsim.load(args.model or DEFAULT_MODEL, **model_args, **common)


def _open_store_if_any(path: str):
    from ..store import META_FILE, EmbeddingStore

    root = Path(path)
    if root.is_file() or (root / META_FILE).is_file():
        return EmbeddingStore.open(root)
    return None


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ---------------------------------------------------------------------------------------------------- score


@_handle_errors
def _score(args: argparse.Namespace) -> int:
    for path in (args.a, args.b):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
    model = _load_model(args)
    score = model.score(args.a, args.b)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "score": score, "model": model.fingerprint}))
    else:
        print(f"{score:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------------- embed


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    from ..store import parse_shard, shard_from_env

    return parse_shard(args.shard) if args.shard else shard_from_env()


def _embed(args: argparse.Namespace) -> int:
    from ..retrieval import IMAGE_EXTENSIONS, collect_images
    from ..store import shard_of

    if args.batch_size < 1 or (args.save_every is not None and args.save_every < 1):
        _err(args, "--batch-size and --save-every must be >= 1")
        return EXIT_USAGE
    try:
        index, count = _shard(args)
        extensions = args.extensions.split(",") if args.extensions else IMAGE_EXTENSIONS
        paths = collect_images(args.inputs, recursive=args.recursive, extensions=extensions)
    except (ValueError, FileNotFoundError) as err:
        _err(args, str(err))
        return EXIT_USAGE
    if not paths:
        hint = "" if args.recursive else " (add --recursive for subfolders)"
        _err(args, f"no images found in {' '.join(args.inputs)}{hint}")
        return EXIT_USAGE
    part = shard_of(paths, index, count) if count > 1 else paths
    try:
        return _embed_part(args, part, index, count)
    except KeyboardInterrupt:
        store = _open_store_if_any(args.output)
        held = len(store) if store is not None else 0
        print(
            f"\nrelsim embed: interrupted; {args.output} holds {held} embeddings. "
            "Run the same command again to embed the rest.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


@_handle_errors
def _embed_part(args: argparse.Namespace, part: list[str], index: int, count: int) -> int:
    from ..retrieval import EmbedReport, embed_files
    from ..store import EmbeddingStore

    store = _open_store_if_any(args.output)
    todo = store.needs_embedding(part) if store is not None else part
    if not todo:  # nothing to do: no model to load
        report = EmbedReport(up_to_date=len(part))
        return _embed_summary(args, report, store, index, count)
    model = _load_model(args, store)
    dim = model.embedding_dim
    store = EmbeddingStore.create(args.output, model.fingerprint, dim=dim, dtype=args.store_dtype, exist_ok=True)
    report = embed_files(
        model,
        store,
        todo,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        save_every=args.save_every,
        rank=index,
        log_rank=count > 1,
        progress=args.progress,
    )
    report.up_to_date += len(part) - len(todo)
    return _embed_summary(args, report, store, index, count)


def _embed_summary(args: argparse.Namespace, report, store, index: int, count: int) -> int:
    where = f" (shard {index}/{count})" if count > 1 else ""
    size = len(store) if store is not None else 0  # None: this shard got no files and no store exists yet
    if args.json:
        print(json.dumps({"store": str(args.output), "shard": [index, count], **report.to_dict(), "size": size}))
    else:
        rate = f" in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)" if report.embedded else ""
        print(
            f"relsim embed{where}: {report.embedded} embedded, {len(report.skipped)} skipped, "
            f"{report.up_to_date} already up to date{rate}; {args.output} holds {size} embeddings"
        )
    if report.skipped:
        shown = report.skipped[:20]
        lines = [f"  {path}: {reason}" for path, reason in shown]
        if len(report.skipped) > len(shown):
            lines.append(f"  ... and {len(report.skipped) - len(shown)} more")
        log = Path(args.output) / "failures.log"
        print(f"skipped {len(report.skipped)} unreadable images (logged in {log}):", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        return EXIT_SKIPPED
    return 0


# --------------------------------------------------------------------------------------------------- search


@_handle_errors
def _search(args: argparse.Namespace) -> int:
    from ..retrieval import search, write_grid, write_html
    from ..store import EmbeddingStore

    if args.k < 1:
        _err(args, "-k must be >= 1")
        return EXIT_USAGE
    store = EmbeddingStore.open(args.store)
    if args.image is not None:
        if not os.path.exists(args.image):
            raise FileNotFoundError(f"{args.image}: no such file")
        # Explicit model flags load that model; otherwise a stored image needs none, another the store's.
        model = _load_model(args, store) if _model_flags_given(args) else None
        hits = search(
            store,
            image=args.image,
            model=model,
            k=args.k,
            exclude_self=args.exclude_self,
            dedup=args.dedup,
            backend=args.backend,
            device=_device(args),
        )
        query: dict[str, Any] = {"image": os.path.abspath(args.image)}
    else:
        hits = search(
            store,
            text=args.text,
            text_model=args.text_model,
            text_revision=args.text_revision,
            k=args.k,
            dedup=args.dedup,
            backend=args.backend,
            device=_device(args),
        )
        query = {"text": args.text}
    visual = {"image": args.image, "text": args.text}
    size = {"thumb_size": args.thumb_size} if args.thumb_size else {}
    if args.html:
        subtitle = f"{len(hits)} nearest of {len(store)} images in {store.path}"
        write_html(args.html, hits, subtitle=subtitle, **visual, **size)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.grid:
        write_grid(args.grid, hits, **visual, **size)
        print(f"wrote {args.grid}", file=sys.stderr)
    if args.json:
        print(json.dumps({"store": str(store.path), "query": query, "k": args.k, "results": hits}, indent=2))
    else:
        _print_hits(hits)
    return 0


def _print_hits(hits: list[dict[str, Any]]) -> None:
    print(f"{'rank':>4}  {'score':>7}  path")
    for hit in hits:
        dupes = len(hit["duplicates"])
        extra = f"  (+{dupes} identical)" if dupes else ""
        print(f"{hit['rank']:>4}  {hit['score']:7.4f}  {hit['path']}{extra}")


# ----------------------------------------------------------------------------------------------------- info


@_handle_errors
def _info(args: argparse.Namespace) -> int:
    from ..store import EmbeddingStore

    store = EmbeddingStore.open(args.store)
    info = store.info()
    # Every embed run retries unreadable files and logs them again: count files, not log lines.
    failed = len({f.get("path") for f in store.failures()})
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    fp = info["fingerprint"]
    rows = [
        ("store", f"{info['path']} ({info['kind']}, format {info['format_version']})"),
        ("model", fp.get("model")),
        ("revision", fp.get("revision") or "(local directory)"),
        ("base model", fp.get("base_model")),
        ("base revision", fp.get("base_revision") or "(local directory)"),
        ("mode", fp.get("mode")),
        ("embeddings", f"{info['num_embeddings']} x {info['dim']} ({info['dtype']})"),
        ("shards", f"{info['num_shards']} from ranks {info['ranks']}, {_human(info['bytes'])}"),
        ("failures", f"{failed} unreadable files" + (f" ({info['num_failures']} in failures.log)" if failed else "")),
        ("created", f"{info['created_at']} by {info['created_by']} (model dtype {fp.get('dtype')})"),
    ]
    if info["skipped_shards"]:
        rows.append(("unreadable shards", ", ".join(info["skipped_shards"])))
    for name, value in rows:
        print(f"{name + ':':<15} {value}")
    return 0


# ------------------------------------------------------------------------------------------------- download


def _folder_size(path: Path) -> tuple[int, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def _base_of(adapter_path: Path, model: str) -> tuple[str | None, str | None]:
    """The base model and revision a load of this adapter would use (as :func:`relsim.load` decides)."""
    pinned = PRETRAINED.get(model, {})
    config: dict[str, Any] = {}
    for name in ("relsim_config.json", "adapter_config.json"):
        file = adapter_path / name
        if file.is_file():
            config = {**json.loads(file.read_text()), **config}
    base = config.get("base_model") or config.get("base_model_name_or_path") or pinned.get("base_model")
    revision = config.get("base_revision") or pinned.get("base_revision")
    return base, revision


@_handle_errors
def _download(args: argparse.Namespace) -> int:
    from ..hub import ADAPTER_FILES, BASE_FILES, resolve
    from ..text import HUB_FILES as TEXT_FILES

    hub = {"cache_dir": args.cache_dir, "token": args.token}
    revision = args.revision if args.revision is not None else PRETRAINED.get(args.model, {}).get("revision")
    adapter = resolve(args.model, revision=revision, allow_patterns=ADAPTER_FILES, **hub)
    base_name, base_revision = args.base_model, args.base_revision
    if base_name is None:
        base_name, pinned_revision = _base_of(adapter.path, args.model)
        base_revision = base_revision if base_revision is not None else pinned_revision
    if base_name is None:
        raise ValueError(f"{args.model!r} names no base model; pass --base-model")
    repos = [
        ("adapter", adapter),
        ("base", resolve(base_name, revision=base_revision, allow_patterns=BASE_FILES, **hub)),
    ]
    if args.with_text:
        repos.append(("text", resolve(args.text_model, revision=args.text_revision, allow_patterns=TEXT_FILES, **hub)))
    entries = []
    for role, repo in repos:
        n_files, size = _folder_size(repo.path)
        entries.append(
            {
                "role": role,
                "name": repo.name,
                "revision": repo.revision,
                "path": str(repo.path),
                "files": n_files,
                "bytes": size,
            }
        )
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        at = f"@ {e['revision']}" if e["revision"] else "(local directory)"
        print(f"{e['role']:<8} {e['name']} {at}: {e['files']} files, {_human(e['bytes'])}")
        print(f"{'':<8} {e['path']}")
    total = sum(e["bytes"] for e in entries)
    print(f"total    {_human(total)}; with HF_HUB_OFFLINE=1 relsim now loads these without the network")
    return 0
