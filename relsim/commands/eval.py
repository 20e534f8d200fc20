"""``relsim eval retrieval``: the paper's retrieval evaluation, judged by any OpenAI-compatible VLM.

See docs/evaluation.md. Exit codes as every command (``_common``); 3 here means the run finished but some judge
requests failed after their retries (run the same command again to ask only those); 130 keeps everything
computed so far under --out.

Example:
    $ relsim eval retrieval images/ --out eval/ --judge-model gpt-4o
    $ relsim eval retrieval data/anonymous_captions_test.jsonl data/random_images_14k.jsonl \\
        --image-dir data/images --out eval/ --judge-model gpt-4o --judge-temperature 0.7
    $ relsim eval retrieval images/ --out eval/ --no-judge --methods relsim,clip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL
from ._common import (
    BATCH_SIZE,
    EXIT_SKIPPED,
    EXIT_USAGE,
    MAX_NEW_TOKENS,
    SEED,
    WORKERS,
    UsageError,
    add_model_flags,
    bounded,
    command,
    device_from_args,
    print_json,
)
from .caption import add_captioner_flags

#: The built-in methods (the same list as relsim.eval.methods.BUILTIN_METHODS, kept here to stay import-light).
METHODS = ("relsim", "clip", "dino", "dreamsim", "caption", "student")


def register(subparsers) -> None:
    group = subparsers.add_parser("eval", help="evaluate methods as the paper does (retrieval judged by a VLM)")
    commands = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda args: (group.print_help(), EXIT_USAGE)[1])
    p = commands.add_parser(
        "retrieval",
        help="top-1 retrieval of relsim vs CLIP, DINOv2, DreamSim..., scored by a VLM judge",
        description="For each query sampled from POOL, every method retrieves its best match (never the query "
        "or a byte-identical copy); a VLM judge scores each (query, match) pair 0-10 with the paper's prompt. "
        "Everything is kept under --out: a rerun computes and pays for nothing twice. Writes results.json, "
        "results.md, results.png and results.html. See docs/evaluation.md.",
    )
    p.add_argument(
        "pool",
        nargs="+",
        metavar="POOL",
        help="folders, .txt lists of images, or upstream JSONL files (image_hash, url_link) in this order",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created; reused on reruns)")
    p.add_argument("--image-dir", metavar="DIR", help="where a JSONL's {image_hash}.png files are (default: X_images)")
    p.add_argument(
        "--queries", type=bounded(int, 1, 10_000_000), default=1000, metavar="N", help="queries sampled (default: 1000)"
    )
    p.add_argument("--seed", type=SEED, default=0, help="query sampling and bootstrap seed (default: 0)")
    p.add_argument(
        "--k", type=bounded(int, 1, 1000), default=10, help="matches kept per query and method (default: 10)"
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS[:-1]),
        metavar="LIST",
        help="comma-separated: relsim, clip, dino, dreamsim, caption, student (default: all but student; "
        "unavailable ones are skipped)",
    )
    p.add_argument(
        "--embeddings",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="another method's vectors (.npy or .safetensors), one row per image in the order of DIR/pool.txt",
    )
    p.add_argument("--reference", default="relsim", help="method the others are paired against (default: relsim)")
    p.add_argument("--label", help="a line shown with the table, chart and page (e.g. what the run is)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--num-workers", type=WORKERS, default=None, help="decoding threads (default: up to 8)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")

    add_model_flags(p)  # the relsim method's checkpoint and preprocessing; --device and --dtype for every model

    baselines = p.add_argument_group("baselines")
    baselines.add_argument("--clip-model", help="Hub id or directory (default: openai/clip-vit-large-patch14)")
    baselines.add_argument("--clip-revision")
    baselines.add_argument("--dino-model", help="Hub id or directory (default: facebook/dinov2-large)")
    baselines.add_argument("--dino-revision")
    baselines.add_argument("--dreamsim-type", default="ensemble", help="DreamSim model (default: ensemble)")
    baselines.add_argument("--dreamsim-cache", metavar="DIR", help="DreamSim weights (default: ~/.cache/dreamsim)")
    baselines.add_argument(
        "--student", metavar="DIR", help="the student method's checkpoint (relsim distill): DIR or Hub id"
    )
    baselines.add_argument("--student-revision", help="branch, tag or commit of --student")

    captions = p.add_argument_group(
        "caption method (the anonymous captioner + MiniLM; --base-model, --base-revision and --dtype apply too)"
    )
    add_captioner_flags(captions, "--captioner", "--captioner-revision")
    captions.add_argument(
        "--caption-max-new-tokens",
        type=MAX_NEW_TOKENS,
        default=128,
        metavar="N",
        help="caption length limit (default: 128)",
    )
    captions.add_argument("--text-model", help=f"MiniLM for the captions (default: {DEFAULT_TEXT_MODEL})")
    captions.add_argument("--text-revision", help="branch, tag or commit of --text-model")

    judge = p.add_argument_group("judge (any OpenAI-compatible chat-completions endpoint serving a VLM)")
    judge.add_argument("--no-judge", action="store_true", help="stop after retrieval: galleries only, no judge")
    judge.add_argument("--judge-url", default=None, help="endpoint base URL (default: https://api.openai.com/v1)")
    judge.add_argument("--judge-model", help="model name at the endpoint (the paper: gpt-4o)")
    judge.add_argument("--judge-key-env", default="OPENAI_API_KEY", metavar="VAR", help="env variable with the API key")
    judge.add_argument("--judge-prompt", metavar="FILE", help="judge prompt text (default: upstream's, verbatim)")
    judge.add_argument(
        "--judge-temperature", type=bounded(float, 0, 2), default=0.0, help="default: 0 (reproducible); 0.7 = the paper"
    )
    judge.add_argument(
        "--judge-samples", type=bounded(int, 1, 100), default=1, help="answers per pair, averaged (default: 1)"
    )
    judge.add_argument(
        "--judge-concurrency", type=bounded(int, 1, 256), default=8, help="requests in flight (default: 8)"
    )
    judge.add_argument(
        "--judge-retries", type=bounded(int, 0, 100), default=5, help="retries on 429/5xx/timeouts (default: 5)"
    )
    judge.add_argument(
        "--judge-timeout",
        type=bounded(float, 0, 86400, above=True),
        default=120.0,
        help="seconds per request (default: 120)",
    )
    judge.add_argument(
        "--judge-max-tokens", type=bounded(int, 1, 1_000_000), default=None, help="answer length cap (default: none)"
    )
    judge.add_argument("--judge-cache", metavar="FILE", help="answer cache (default: DIR/judge_cache.sqlite)")
    p.set_defaults(func=_retrieval)


def _judge_settings(args: argparse.Namespace):
    from ..eval.judge import DEFAULT_JUDGE_URL, UPSTREAM_PROMPT, JudgeSettings

    if args.judge_prompt:
        prompt, source = Path(args.judge_prompt).read_text(encoding="utf-8"), str(Path(args.judge_prompt).resolve())
    else:
        prompt, source = UPSTREAM_PROMPT, "upstream retrieval/gptscore.py"
    return JudgeSettings(
        model=args.judge_model,
        url=args.judge_url or DEFAULT_JUDGE_URL,
        key_env=args.judge_key_env,
        prompt=prompt,
        prompt_source=source,
        temperature=args.judge_temperature,
        samples=args.judge_samples,
        concurrency=args.judge_concurrency,
        retries=args.judge_retries,
        timeout=args.judge_timeout,
        max_tokens=args.judge_max_tokens,
    )


def _config(args: argparse.Namespace):
    from ..eval import EvalConfig, MethodOptions

    options = MethodOptions(
        device=device_from_args(args),
        batch_size=args.batch_size,
        workers=args.num_workers,
        progress=args.progress,
        relsim={
            "model": args.model or DEFAULT_MODEL,
            "revision": args.revision,
            "base_model": args.base_model,
            "base_revision": args.base_revision,
            "mode": args.mode or "train",
            "dtype": args.dtype,
        },
        clip_model=args.clip_model,
        clip_revision=args.clip_revision,
        dino_model=args.dino_model,
        dino_revision=args.dino_revision,
        dreamsim_type=args.dreamsim_type,
        dreamsim_cache=args.dreamsim_cache,
        caption={
            "model": args.captioner,
            "revision": args.captioner_revision,
            "base_model": args.base_model,
            "base_revision": args.base_revision,
            "dtype": args.dtype,
        },
        student={"model": args.student, "revision": args.student_revision, "dtype": args.dtype},
        caption_max_new_tokens=args.caption_max_new_tokens,
        text_model=args.text_model,
        text_revision=args.text_revision,
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none"]
    return EvalConfig(
        pool=args.pool,
        out=Path(args.out),
        image_dir=args.image_dir,
        queries=args.queries,
        seed=args.seed,
        k=args.k,
        methods=methods,
        embeddings=args.embeddings,
        options=options,
        judge=None if args.no_judge else _judge_settings(args),
        judge_cache=Path(args.judge_cache) if args.judge_cache else None,
        reference=args.reference,
        label=args.label,
        progress=args.progress,
    )


def _check_usage(args: argparse.Namespace) -> None:
    for path in args.pool:
        if not Path(path).expanduser().exists():
            raise UsageError(f"{path}: no such file or directory")
    if not args.no_judge and not args.judge_model:
        raise UsageError("name the judge with --judge-model (the paper used gpt-4o), or pass --no-judge")
    unknown = [m.strip() for m in args.methods.split(",") if m.strip() not in (*METHODS, "none", "")]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)} (or --embeddings)")
    if "student" in [m.strip() for m in args.methods.split(",")] and not args.student:
        raise UsageError("--methods student needs the student checkpoint: --student DIR")
    if args.judge_prompt and not Path(args.judge_prompt).is_file():
        raise UsageError(f"{args.judge_prompt}: no such file")


@command
def _retrieval(args: argparse.Namespace) -> int:
    _check_usage(args)
    from ..eval import run_retrieval_eval

    try:
        outcome = run_retrieval_eval(_config(args))
    except KeyboardInterrupt:
        print(
            f"\nrelsim eval retrieval: interrupted; what was computed is kept under {args.out}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        raise
    if args.json:
        summary = {k: outcome.results[k] for k in ("summary", "queries", "judge", "skipped_methods", "reference")}
        print_json({**summary, "outputs": {k: str(v) for k, v in outcome.paths.items()}}, indent=1)
    else:
        print(outcome.paths["markdown"].read_text(encoding="utf-8"), end="")
        print("outputs: " + ", ".join(str(p) for p in outcome.paths.values()), file=sys.stderr)
    if outcome.failed_requests:
        print(
            f"relsim eval retrieval: {outcome.failed_requests} judge request(s) failed after their retries; "
            "run the same command again to ask only those",
            file=sys.stderr,
        )
    if outcome.failed_requests or outcome.skipped_methods:
        return EXIT_SKIPPED  # each skipped method was named on its own line when it was skipped
    return 0


__all__ = [
    "register",
]
