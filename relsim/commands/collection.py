"""``relsim embed``, ``search`` and ``info``: build, query and describe a collection of image embeddings.

Importing this module loads no model: that happens when a command runs.

Example:
    $ relsim embed photos/ -o photos.relsim --recursive
    $ relsim search photos.relsim --text "{Animal} peeking out from behind a {Object}" --grid top.png
    $ relsim info photos.relsim
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..registry import DEFAULT_TEXT_MODEL
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_SKIPPED,
    UsageError,
    add_model_flags,
    command,
    device_from_args,
    human_size,
    load_model_from_args,
    model_flags_given,
    plural,
    print_json,
    require_inputs,
)


def register(subparsers) -> None:
    _register_embed(subparsers)
    _register_search(subparsers)
    _register_info(subparsers)


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
    add_model_flags(p, from_collection=True)
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
    add_model_flags(p, from_collection=True)
    p.set_defaults(func=_search)


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
    add_model_flags(p, from_collection=True)
    p.set_defaults(func=_search)


def _register_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a store", description="Model, revision, mode, count, dimensions.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)


def _open_store_if_any(path: str):
    from ..store import META_FILE, EmbeddingStore

    root = Path(path)
    if root.is_file() or (root / META_FILE).is_file():
        return EmbeddingStore.open(root)
    return None


# ---------------------------------------------------------------------------------------------------- embed


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    from ..store import parse_shard, shard_from_env

    return parse_shard(args.shard) if args.shard else shard_from_env()


@command
def _embed(args: argparse.Namespace) -> int:
    from ..retrieval import IMAGE_EXTENSIONS, collect_images
    from ..store import shard_of

    if args.batch_size < 1 or (args.save_every is not None and args.save_every < 1):
        raise UsageError("--batch-size and --save-every must be >= 1")
    try:
        index, count = _shard(args)
        extensions = args.extensions.split(",") if args.extensions else IMAGE_EXTENSIONS
        paths = collect_images(args.inputs, recursive=args.recursive, extensions=extensions)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    if not paths:
        hint = "" if args.recursive else " (add --recursive for subfolders)"
        raise UsageError(f"no images found in {' '.join(args.inputs)}{hint}")
    part = shard_of(paths, index, count) if count > 1 else paths
    try:
        return _embed_part(args, part, index, count)
    except KeyboardInterrupt:
        store = _open_store_if_any(args.output)
        held = len(store) if store is not None else 0
        print(
            f"\nrelsim embed: interrupted; {args.output} holds {plural(held, 'embedding')}. "
            "Run the same command again to embed the rest.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _embed_part(args: argparse.Namespace, part: list[str], index: int, count: int) -> int:
    from ..retrieval import EmbedReport, embed_files
    from ..store import EmbeddingStore

    store = _open_store_if_any(args.output)
    todo = store.needs_embedding(part) if store is not None else part
    if not todo:  # nothing to do: no model to load
        report = EmbedReport(up_to_date=len(part))
        return _embed_summary(args, report, store, index, count)
    model = load_model_from_args(args, store)
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
        print_json({"store": str(args.output), "shard": [index, count], **report.to_dict(), "size": size})
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
        print(f"skipped {plural(len(report.skipped), 'unreadable image')} (logged in {log}):", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        return EXIT_SKIPPED
    return 0


# --------------------------------------------------------------------------------------------------- search


@command
def _search(args: argparse.Namespace) -> int:
    from ..retrieval import search, write_grid, write_html
    from ..store import EmbeddingStore

    if args.k < 1:
        raise UsageError("-k must be >= 1")
    require_inputs(args.store)
    store = EmbeddingStore.open(args.store)
    if args.image is not None:
        require_inputs(args.image)
        # Explicit model flags load that model; otherwise a stored image needs none, another the store's.
        model = load_model_from_args(args, store) if model_flags_given(args) else None
        hits = search(
            store,
            image=args.image,
            model=model,
            k=args.k,
            exclude_self=args.exclude_self,
            dedup=args.dedup,
            backend=args.backend,
            device=device_from_args(args),
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
            device=device_from_args(args),
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
        print_json({"store": str(store.path), "query": query, "k": args.k, "results": hits}, indent=2)
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


@command
def _info(args: argparse.Namespace) -> int:
    from ..store import EmbeddingStore

    require_inputs(args.store)
    store = EmbeddingStore.open(args.store)
    info = store.info()
    # Every embed run retries unreadable files and logs them again: count files, not log lines.
    failed = len({f.get("path") for f in store.failures()})
    if args.json:
        print_json(info, indent=2)
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
        ("shards", f"{info['num_shards']} from ranks {info['ranks']}, {human_size(info['bytes'])}"),
        (
            "failures",
            plural(failed, "unreadable file") + (f" ({info['num_failures']} in failures.log)" if failed else ""),
        ),
        ("created", f"{info['created_at']} by {info['created_by']} (model dtype {fp.get('dtype')})"),
    ]
    if info["skipped_shards"]:
        rows.append(("unreadable shards", ", ".join(info["skipped_shards"])))
    for name, value in rows:
        print(f"{name + ':':<15} {value}")
    return 0
