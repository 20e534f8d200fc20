"""Collection subcommands: ``embed``, ``search``, ``info``, ``index``, ``export``, ``migrate``, ``prune``,
``repair``. See docs/cli.md and docs/search.md. Collections need ``pip install "relsim[search]"`` (LanceDB).

Exit codes: 0 success, 1 an error while running (one line on stderr), 2 a usage error, 3 ``embed`` finished
but skipped unreadable files (or ``info --check`` found problems), 130 interrupted (what was saved is kept).

Example:
    $ relsim embed photos/ -o photos.relsim --recursive
    $ relsim search photos.relsim --text "{Animal} peeking out from behind a {Object}" --grid top.png
    $ relsim index photos.relsim
    $ relsim info photos.relsim --check
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import MissingFileError
from ..registry import DEFAULT_TEXT_MODEL
from ._common import (
    BATCH_SIZE,
    EXIT_INTERRUPTED,
    EXIT_SKIPPED,
    MAX_NEW_TOKENS,
    WORKERS,
    UsageError,
    add_model_flags,
    bounded,
    collect_image_paths,
    command,
    device_from_args,
    human_size,
    load_model_from_args,
    model_flags_given,
    plural,
    print_json,
    printable,
    require_inputs,
    single_line,
    warn,
)
from .caption import add_captioner_flags

#: relsim.collection.INDEX_KINDS, repeated so that `relsim --help` imports neither torch nor LanceDB.
INDEX_KINDS = ("IVF_SQ", "IVF_HNSW_SQ", "IVF_PQ")


def register(subparsers) -> None:
    _register_embed(subparsers)
    _register_search(subparsers)
    _register_info(subparsers)
    for register_one in (_register_index, _register_export, _register_migrate, _register_prune, _register_repair):
        register_one(subparsers)


# ------------------------------------------------------------------------------------------------ helpers


def _parser(subparsers, name: str, func, help: str, description: str, *positionals: str) -> argparse.ArgumentParser:
    """A subcommand with its positional arguments (``"STORE"`` -> ``args.store``) and its function."""
    p = subparsers.add_parser(name, help=help, description=description)
    for metavar in positionals:
        p.add_argument(metavar.lower(), metavar=metavar)
    p.set_defaults(func=func)
    return p


def _require_store(uri: str) -> None:
    """A local collection that does not exist is a usage error (exit 2); URIs are LanceDB's to judge."""
    if "://" not in uri:
        require_inputs(uri)


def _open_if_any(uri: str):
    from ..collection import Collection, is_collection

    if "://" in uri or is_collection(uri):
        return Collection.open(uri)
    return None


# -------------------------------------------------------------------------------------------------- embed


def _register_embed(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed a collection of images (incremental, resumable)",
        description="Embed images into a collection (a LanceDB table, created if needed). Re-running embeds only "
        "new or changed files; an interrupted run keeps everything committed so far. Unreadable files and special "
        "files (FIFOs, devices) are skipped, listed and logged in the collection; the exit code is then 3. Split "
        "the work over N processes with --shard I/N (or torchrun's RANK/WORLD_SIZE): they write one collection.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, or .txt lists of paths ('-': stdin)"
    )
    p.add_argument("-o", "--output", required=True, metavar="STORE", help="collection folder or URI (s3://...)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--num-workers", type=WORKERS, default=None, help="decoding threads (default: up to 8)")
    p.add_argument(
        "--save-every", type=bounded(int, 1), default=None, metavar="N", help="commit every N images (default: a batch)"
    )
    p.add_argument("--shard", metavar="I/N", help="embed only part I of N (0-based; default: $RANK/$WORLD_SIZE or 0/1)")
    p.add_argument(
        "--extensions", metavar="EXT,...", help="image endings collected from folders (default: common ones)"
    )
    p.add_argument(
        "--store-dtype", choices=("float16", "float32"), default="float16", help="for a new collection (float16)"
    )
    p.add_argument(
        "--reembed", action="store_true", help="a collection of another model: empty it and embed everything again"
    )
    p.add_argument("--prune", action="store_true", help="also drop rows whose file is gone")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    captions = p.add_argument_group("captions")
    captions.add_argument(
        "--captions",
        action="store_true",
        help="also store each image's anonymous caption (the captioner shares the model's base; images that have "
        "one are not captioned again; search --explain and --caption-contains use them)",
    )
    add_caption_flags(captions)
    add_model_flags(p, from_collection=True)
    p.set_defaults(func=_embed)


@command
def _embed(args: argparse.Namespace) -> int:
    from ..files import parse_shard, shard_from_env, shard_of

    caption_options = caption_settings(args, args.captions, "--captions")
    try:
        index, count = parse_shard(args.shard) if args.shard else shard_from_env()
    except ValueError as err:
        raise UsageError(str(err)) from err
    paths = collect_image_paths(args)
    part = shard_of(paths, index, count) if count > 1 else paths
    try:
        return _embed_part(args, part, index, count, caption_options)
    except KeyboardInterrupt:
        try:
            collection = _open_if_any(args.output)
            held = len(collection) if collection is not None else 0
        except Exception:  # noqa: BLE001 - only for the message
            held = "its committed"
        print(
            f"\nrelsim embed: interrupted; {args.output} holds {held} embeddings. "
            "Run the same command again to embed the rest.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _embed_part(
    args: argparse.Namespace, part: list[str], index: int, count: int, caption_options: dict[str, Any]
) -> int:
    from ..bulk import EmbedReport, embed_files
    from ..collection import Collection

    collection = _open_if_any(args.output)
    pruned: list[str] = []
    if collection is not None and args.prune:
        pruned = collection.prune()
    todo = collection.needs_embedding(part) if collection is not None and not args.reembed else part
    if not todo and collection is not None and _contradicts(args, collection.fingerprint):
        todo = part  # flags naming another model: load it, so the mismatch is refused rather than ignored
    uncaptioned = args.captions and collection is not None and collection.count_uncaptioned(part) > 0
    if not todo and not uncaptioned:  # nothing to do: no model to load
        return _embed_summary(args, EmbedReport(up_to_date=len(part)), collection, index, count, pruned)
    model = load_model_from_args(args, collection)
    collection = Collection.create(
        args.output,
        model.fingerprint,
        dim=model.embedding_dim,
        dtype=args.store_dtype,
        exist_ok=True,
        reembed=args.reembed,
    )
    batches = {"batch_size": args.batch_size, "num_workers": args.num_workers, "progress": args.progress}
    report = embed_files(model, collection, part, save_every=args.save_every, rank=index, log_rank=count > 1, **batches)
    captioned = None
    if args.captions:  # the rows of this shard's files without a caption get one (stored batch by batch)
        from ..bulk import caption_collection

        if args.captioner is None and args.captioner_revision is None:
            captioner = model.captioner
        else:
            captioner = model.load_captioner(args.captioner, revision=args.captioner_revision)
        captioned = caption_collection(captioner, collection, part, **batches, **caption_options)
    return _embed_summary(args, report, collection, index, count, pruned, captioned)


def _contradicts(args: argparse.Namespace, fingerprint: dict[str, Any]) -> bool:
    """Model flags that may not describe the collection's model (checked without loading anything; the model
    they name is then loaded and compared, as when there are files to embed)."""
    names = ("model", "revision", "base_model", "base_revision", "mode")
    return any(getattr(args, name) not in (None, fingerprint.get(name)) for name in names)


def _embed_summary(args, report, collection, index: int, count: int, pruned: list[str], captioned=None) -> int:
    where = f" (shard {index}/{count})" if count > 1 else ""
    size = len(collection) if collection is not None else 0  # None: this shard got no files, no collection yet
    if args.json:
        summary = {"store": str(args.output), "shard": [index, count], **report.to_dict(), "size": size}
        if args.captions:
            summary["captions"] = captioned.to_dict() if captioned is not None else {"captioned": 0}
        print_json(summary)
    else:
        rate = f" in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)" if report.embedded else ""
        gone = f", {len(pruned)} pruned" if pruned else ""
        print(
            f"relsim embed{where}: {report.embedded} embedded, {len(report.skipped)} skipped, "
            f"{report.up_to_date} already up to date{gone}{rate}; {args.output} holds {size} embeddings"
        )
        if captioned is not None:
            rate = f" in {captioned.seconds:.1f} s" if captioned.captioned else ""
            print(f"relsim embed{where}: {captioned.captioned} captioned{rate}, {captioned.up_to_date} had a caption")
    if captioned is not None and captioned.skipped:
        print(f"relsim embed: could not caption {plural(len(captioned.skipped), 'file')}:", file=sys.stderr)
        print("\n".join(f"  {printable(p)}: {r}" for p, r in captioned.skipped[:20]), file=sys.stderr)
        if not report.skipped:
            return EXIT_SKIPPED
    if report.skipped:
        shown = report.skipped[:20]
        lines = [f"  {printable(path)}: {reason}" for path, reason in shown]
        if len(report.skipped) > len(shown):
            lines.append(f"  ... and {len(report.skipped) - len(shown)} more")
        print(
            f"skipped {plural(len(report.skipped), 'unreadable file')} (logged in the collection: "
            f"relsim info {args.output}):",
            file=sys.stderr,
        )
        print("\n".join(lines), file=sys.stderr)
        return EXIT_SKIPPED
    return 0


# ------------------------------------------------------------------------------------------------- search


def _register_search(subparsers) -> None:
    description = (
        "Top-k images of STORE by relational similarity to an image or to a text (embedded with all-MiniLM-L6-v2, "
        "the space relsim embeddings live in). An image already in the collection is looked up, not re-embedded; "
        "another image is embedded with the collection's model (a different model is refused). Uses the ANN "
        "index when `relsim index` built one (--exact: a flat, exact scan)."
    )
    help = "find the images of a collection nearest to an image or a text"
    p = _parser(subparsers, "search", _search, help, description, "STORE")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="PATH", help="query image")
    query.add_argument("--text", metavar="TEXT", help='query text, e.g. "{Animal} peeking out from behind a {Object}"')
    p.add_argument("-k", type=bounded(int, 1, 1_000_000), default=10, help="number of results (default: 10)")
    p.add_argument(
        "--where", metavar="SQL", help="filter, e.g. \"path LIKE '%%/2024/%%'\" (Lance SQL over the columns)"
    )
    p.add_argument("--caption-contains", metavar="WORDS", help="only images whose caption has these words")
    p.add_argument("--exact", action="store_true", help="flat exact search even when an ANN index exists")
    p.add_argument(
        "--nprobes",
        type=bounded(int, 1, 1_000_000),
        help="ANN index partitions a query visits (default: 16; more is slower, finds more)",
    )
    p.add_argument("--exclude-self", action="store_true", help="leave the query image (and identical copies) out")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="list byte-identical files separately")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page of the results")
    p.add_argument(
        "--heatmaps",
        action="store_true",
        help="with --html: show under each hit its heatmap against the query (where in the hit the similarity "
        "comes from; one backward pass through the model per hit; docs/heatmaps.md)",
    )
    p.add_argument("--grid", metavar="OUT.png", help="write a PNG contact sheet of the results")
    p.add_argument(
        "--thumb-size", type=bounded(int, 16, 1024), default=None, help="thumbnail size in pixels (html 224, grid 192)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"text encoder (default: {DEFAULT_TEXT_MODEL})")
    p.add_argument("--text-revision", help="branch, tag or commit of --text-model")
    explain = p.add_argument_group("explain")
    explain.add_argument(
        "--explain",
        action="store_true",
        help="show the anonymous captions of the query and each result (stored ones are computed once and kept in "
        "the collection) and the MiniLM cosine of each result's caption with the query's",
    )
    add_caption_flags(explain)
    add_model_flags(p, from_collection=True)


def add_caption_flags(group) -> None:
    """``--captioner``, ``--captioner-revision``, ``--max-new-tokens`` (search --explain, embed --captions)."""
    add_captioner_flags(group, "--captioner", "--captioner-revision")
    group.add_argument(
        "--max-new-tokens", type=MAX_NEW_TOKENS, default=None, help="caption length limit (default: 128)"
    )


def caption_settings(args: argparse.Namespace, enabled: bool, flag: str) -> dict[str, Any]:
    """The caption options of the command line, checked: they need ``flag`` (``--explain`` / ``--captions``)."""
    given = [args.captioner, args.captioner_revision, args.max_new_tokens]
    if not enabled:
        if any(value is not None for value in given):
            raise UsageError(f"--captioner, --captioner-revision and --max-new-tokens go with {flag}")
        return {}
    return {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}


@command
def _search(args: argparse.Namespace) -> int:
    from ..collection import Collection
    from ..render import write_grid, write_html
    from ..retrieval import check_search_arguments, search

    flags = {"k": "-k", "text": "--text", "nprobes": "--nprobes", "exact": "--exact"}
    try:
        check_search_arguments(k=args.k, text=args.text, nprobes=args.nprobes, exact=args.exact, spell=flags.get)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.heatmaps and not args.html:
        raise UsageError("--heatmaps goes with --html")
    caption_options = caption_settings(args, args.explain, "--explain")
    _require_store(args.store)
    collection = Collection.open(args.store)
    common = {"k": args.k, "dedup": args.dedup, "where": args.where, "exact": args.exact, "nprobes": args.nprobes}
    common.update(caption_contains=args.caption_contains, device=device_from_args(args))
    if args.explain:
        common.update(explain=True, captioner=args.captioner, captioner_revision=args.captioner_revision)
        common.update(caption_options=caption_options, text_model=args.text_model, text_revision=args.text_revision)
    if args.image is not None:
        if not os.path.exists(args.image):
            raise MissingFileError(f"{args.image}: no such file")
        # Explicit model flags load that model; otherwise a stored image needs none, another the collection's.
        model = load_model_from_args(args, collection) if model_flags_given(args) else None
        hits = search(collection, image=args.image, model=model, exclude_self=args.exclude_self, **common)
        query: dict[str, Any] = {"image": os.path.abspath(args.image)}
    else:
        common.update(text_model=args.text_model, text_revision=args.text_revision)
        hits = search(collection, text=args.text, **common)
        query = {"text": args.text}
    if args.explain and args.image is not None:
        query["caption"] = hits.query_caption
    visual = {"image": args.image, "text": args.text, "query_caption": hits.query_caption}
    size = {"thumb_size": args.thumb_size} if args.thumb_size else {}
    if args.html:
        subtitle = f"{len(hits)} nearest of {len(collection)} images in {collection.uri}"
        heatmaps = {"heatmaps": _hit_heatmaps(args, collection, hits)} if args.heatmaps else {}
        write_html(args.html, hits, subtitle=subtitle, **visual, **size, **heatmaps)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.grid:
        write_grid(args.grid, hits, **visual, **size)
        print(f"wrote {args.grid}", file=sys.stderr)
    if args.json:
        print_json({"store": collection.uri, "query": query, "k": args.k, "results": list(hits)}, indent=2)
    else:
        _print_hits(hits, args.explain)
    return 0


def _hit_heatmaps(args: argparse.Namespace, collection, hits) -> list:
    """Each hit's heatmap overlay against the query, with the collection's model (or the one the flags name); all
    hits in one batch, or one by one when a file cannot be read (None for it, and a warning)."""
    from ..errors import ImageInputError

    if not hits:
        return []
    model = load_model_from_args(args, collection)
    query = {"text": args.text, "text_model": args.text_model, "text_revision": args.text_revision}
    if args.image is not None:
        query = {"b": args.image}
    try:
        return [hm.overlay() for hm in model.heatmap([hit["path"] for hit in hits], **query)]
    except (ImageInputError, OSError):
        pass
    overlays = []
    for hit in hits:
        try:
            overlays.append(model.heatmap(hit["path"], **query).overlay())
        except (ImageInputError, OSError) as err:
            warn(args, f"no heatmap for {printable(hit['path'])}: {err}")
            overlays.append(None)
    return overlays


def _print_hits(hits, explain: bool) -> None:
    if explain and hits.query_caption is not None:
        print(f"query caption: {printable(single_line(hits.query_caption))}")
    print(f"{'rank':>4}  {'score':>7}  " + ("caption  path" if explain else "path"))
    for hit in hits:
        dupes = len(hit["duplicates"])
        extra = f"  (+{dupes} identical)" if dupes else ""
        if "://" not in hit["path"] and not os.path.exists(hit["path"]):
            extra += "  [file unavailable]"
        similarity = ""
        if explain:
            value = hit["caption_similarity"]
            similarity = f"{value:7.4f}  " if value is not None else f"{'-':>7}  "
        print(f"{hit['rank']:>4}  {hit['score']:7.4f}  {similarity}{printable(hit['path'])}{extra}")
        if explain:
            caption = hit["caption"]
            shown = printable(single_line(caption)) if caption is not None else "(no caption: the file cannot be read)"
            print(" " * 24 + shown)


# --------------------------------------------------------------------------------------------------- info


def _register_info(subparsers) -> None:
    description = (
        "Model, revision, mode, count, dimensions, indexes. --check also reads every row and says exactly what is "
        "wrong and what to do (exit code 3 when something is)."
    )
    p = _parser(subparsers, "info", _info, "describe a collection (--check: find what is wrong)", description, "STORE")
    p.add_argument("--check", action="store_true", help="read everything; report problems and their fixes")
    p.add_argument("--json", action="store_true")


@command
def _info(args: argparse.Namespace) -> int:
    from ..collection import Collection
    from ..upkeep import check

    _require_store(args.store)
    if args.check:
        problems = check(args.store)
        if args.json:
            print_json({"store": args.store, "problems": [vars(p) for p in problems]}, indent=2)
        elif not problems:
            print(f"{args.store}: no problems found")
        for problem in [] if args.json else problems:
            print(f"problem: {problem.what}\n    fix: {problem.fix}")
        return EXIT_SKIPPED if problems else 0
    collection = Collection.open(args.store)
    info = collection.info()
    if args.json:
        print_json(info, indent=2)
        return 0
    fp = info["fingerprint"]
    indexes = ", ".join(f"{ix['type']} on {'/'.join(ix['columns'])}" for ix in info["indexes"]) or "none (flat search)"
    size = human_size(info["bytes"]) if info["bytes"] is not None else "remote"
    rows = [
        ("store", f"{info['path']} (LanceDB, format {info['format_version']}, version {info['version']}, {size})"),
        ("model", fp.get("model")),
        ("revision", fp.get("revision") or "(local directory)"),
        ("base model", fp.get("base_model")),
        ("base revision", fp.get("base_revision") or "(local directory)"),
        ("mode", fp.get("mode")),
        ("embeddings", f"{info['num_embeddings']} x {info['dim']} ({info['dtype']})"),
        ("captions", str(info["num_captions"])),
        ("indexes", indexes),
        ("failures", plural(info["num_failures"], "unreadable file")),
        ("created", f"{info['created_at']} by {info['created_by']} (model dtype {fp.get('dtype')})"),
    ]
    for name, value in rows:
        print(f"{name + ':':<15} {value}")
    return 0


# ------------------------------------------------------------------------------------- index, export, ...


def _register_index(subparsers) -> None:
    description = (
        "Build an approximate-nearest-neighbour index on the embeddings, then measure its recall@10 against exact "
        "search on a sample of the collection's own rows as queries. `search` uses it from then on (--exact "
        "bypasses it). Also builds the full-text index on captions when there are captions. Needs at least 256 rows "
        "(below that, flat search is exact and fast)."
    )
    help = "build the ANN index (and the caption full-text index) of a collection of 256 rows or more"
    p = _parser(subparsers, "index", _index, help, description, "STORE")
    p.add_argument("--kind", choices=INDEX_KINDS, default=INDEX_KINDS[0], help=f"default: {INDEX_KINDS[0]}")
    p.add_argument(
        "--partitions", type=bounded(int, 1, 65536), default=None, help="IVF partitions (default: about sqrt(rows) / 2)"
    )
    p.add_argument(
        "--queries",
        type=bounded(int, 1, 100_000),
        default=100,
        help="sample queries for the recall check (default: 100)",
    )
    p.add_argument("--json", action="store_true")


@command
def _index(args: argparse.Namespace) -> int:
    import time

    from ..collection import Collection
    from ..upkeep import measure_recall

    collection = Collection.open(args.store)
    options = {"num_partitions": args.partitions} if args.partitions else {}
    start = time.perf_counter()
    collection.create_vector_index(args.kind, **options)
    built = time.perf_counter() - start
    captions = collection.create_caption_index()
    recall = measure_recall(collection, queries=args.queries, k=10)
    result = {"store": collection.uri, "kind": args.kind, "seconds": round(built, 2), **recall}
    result["caption_index"] = captions
    if args.json:
        print_json(result, indent=2)
        return 0
    print(
        f"relsim index: {args.kind} on {len(collection)} rows in {built:.1f} s; recall@10 against exact search "
        f"{recall['recall_at_10']:.3f} on {recall['queries']} sample queries "
        f"({recall['ann_ms']:.1f} ms vs {recall['exact_ms']:.1f} ms per query)"
        + ("; caption full-text index built" if captions else "")
    )
    return 0


def _register_export(subparsers) -> None:
    description = (
        "npy: OUT/img_emb/img_emb_0000.npy + OUT/metadata/metadata_0000.parquet (the autofaiss layout); parquet: "
        "OUT/embeddings_0000.parquet with a vector column. OUT/relsim.json holds the metadata. OUT must be new or "
        "empty (--overwrite replaces an earlier export) and outside the collection."
    )
    help = "write embeddings + metadata as .npy or Parquet (for FAISS / autofaiss)"
    p = _parser(subparsers, "export", _export, help, description, "STORE", "OUT")
    p.add_argument("--format", choices=("npy", "parquet"), default="npy")
    p.add_argument(
        "--overwrite", action="store_true", help="OUT holds an earlier export: remove it first (default: refuse)"
    )


@command
def _export(args: argparse.Namespace) -> int:
    from ..errors import OutputPathError
    from ..upkeep import export

    _require_store(args.store)
    try:
        files = export(args.store, args.out, format=args.format, overwrite=args.overwrite)
    except OutputPathError as err:  # a bad OUT is a usage error (exit 2)
        raise UsageError(str(err)) from err
    print(f"relsim export: wrote {plural(len(files), 'file')} under {args.out}")
    return 0


def _register_migrate(subparsers) -> None:
    _parser(
        subparsers,
        "migrate",
        _migrate,
        "convert a relsim 0.1 embedding store into a collection",
        "Read a relsim 0.1 store (a folder of safetensors shards with meta.json, or its single-file export) and "
        "write its records, embeddings, model fingerprint and failures into a new collection NEW.",
        "OLD",
        "NEW",
    )


@command
def _migrate(args: argparse.Namespace) -> int:
    from ..upkeep import migrate

    collection = migrate(args.old, args.new)
    print(f"relsim migrate: {args.new} holds {len(collection)} embeddings from {args.old}")
    return 0


def _register_prune(subparsers) -> None:
    _parser(
        subparsers, "prune", _prune, "drop rows whose file is gone", "Drop rows of deleted or renamed files.", "STORE"
    )


@command
def _prune(args: argparse.Namespace) -> int:
    from ..collection import Collection

    gone = Collection.open(args.store).prune()
    for path in gone:
        print(f"  {printable(path)}")
    print(f"relsim prune: dropped {plural(len(gone), 'row')} of files that are gone")
    return 0


def _register_repair(subparsers) -> None:
    description = (
        "Restore damaged metadata or unreadable data from the latest good version, drop rows that are not finite "
        "unit vectors and duplicate rows of a path. Old versions are kept."
    )
    _parser(subparsers, "repair", _repair, "fix what `info --check` reports", description, "STORE")


@command
def _repair(args: argparse.Namespace) -> int:
    from ..upkeep import repair

    done = repair(args.store)
    for line in done or ["nothing to repair"]:
        print(f"relsim repair: {line}")
    return 0


__all__ = [
    "register",
]
