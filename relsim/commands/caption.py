"""``relsim caption IMAGES...``: anonymous captions of images (the paper's captioner, greedy by default).

Without ``-o``: one line per image, ``path<TAB>caption`` (``--json``: ``{"path": ..., "caption": ...}``). With
``-o FILE``: JSON lines in the anonymous-captions training format, appended batch by batch and resumable.

Example:
    $ relsim caption peach.jpg earth.jpg
    $ relsim caption photos/ -r -o captions.jsonl --batch-size 32
    $ relsim caption photo.jpg --sample --seed 0 --num-captions 3 --json
"""

from __future__ import annotations

import argparse
import sys

from ..registry import DEFAULT_CAPTIONER
from ._common import (
    BATCH_SIZE,
    EXIT_INTERRUPTED,
    EXIT_SKIPPED,
    MAX_NEW_TOKENS,
    SEED,
    WORKERS,
    UsageError,
    bounded,
    collect_image_paths,
    command,
    device_from_args,
    dumps,
    plural,
    print_json,
    printable,
    single_line,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "caption",
        help="anonymous captions of images (the paper's captioner)",
        description="Write each image's anonymous caption: its relational logic with the objects left out "
        "('{Fruit} cut open to show its layers'). Greedy decoding by default. See docs/captions.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders, list files (.txt) or -")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    p.add_argument("--extensions", metavar="EXT,...", help="image endings collected from folders")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="append JSON-lines records in the training format; a rerun resumes"
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (with -o: a JSON summary)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--sample", action="store_true", help="sample (upstream's batch script) instead of greedy")
    gen.add_argument(
        "--temperature", type=bounded(float, 0, 100, above=True), default=0.7, help="with --sample (default: 0.7)"
    )
    gen.add_argument("--top-p", type=bounded(float, 0, 1, above=True), default=0.9, help="with --sample (default: 0.9)")
    gen.add_argument("--top-k", type=bounded(int, 1, 1_000_000), default=None, help="with --sample (default: 50)")
    gen.add_argument("--seed", type=SEED, default=None, help="with --sample: reproducible captions")
    gen.add_argument(
        "--num-captions", type=bounded(int, 1, 1000), default=1, help="captions per image (needs --sample)"
    )
    gen.add_argument("--max-new-tokens", type=MAX_NEW_TOKENS, default=128, help="default: 128")
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the instruction text (default: upstream's training prompt)")
    prompt.add_argument(
        "--prompt-variant",
        choices=("training", "batch", "hub"),
        help="one of upstream's prompt texts: training (default), batch (its batch script), hub (the model card)",
    )
    gen.add_argument("--batch-size", type=BATCH_SIZE, default=32, help="sequences per batch (default: 32)")
    gen.add_argument("--num-workers", type=WORKERS, default=None, help="image decoding threads")
    gen.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    add_captioner_flags(p, "--model", "--revision")
    p.add_argument("--base-model", help="base Qwen2.5-VL: Hub repo id or directory (default: the adapter's)")
    p.add_argument("--base-revision", help="branch, tag or commit of the base model")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: bfloat16 on GPU, float32 on CPU"
    )
    p.set_defaults(func=_caption)


def add_captioner_flags(parser: argparse.ArgumentParser, model_flag: str, revision_flag: str) -> None:
    """The captioner checkpoint flags (``relsim caption --model``, ``relsim score --captioner``)."""
    parser.add_argument(
        model_flag,
        dest="captioner",
        help=f"captioner checkpoint: Hub repo id or local directory (default: {DEFAULT_CAPTIONER})",
    )
    parser.add_argument(revision_flag, dest="captioner_revision", help="branch, tag or commit of the captioner")


def caption_options(args: argparse.Namespace) -> dict:
    """``Captioner.caption`` options from the generation flags."""
    from ..caption_inputs import PROMPTS

    if args.num_captions > 1 and not args.sample:
        raise UsageError("--num-captions > 1 needs --sample (greedy decoding gives one caption)")
    if not args.sample and (args.seed is not None or args.top_k is not None):
        raise UsageError("--seed and --top-k apply to --sample")
    prompt = args.prompt if args.prompt is not None else PROMPTS[args.prompt_variant or "training"]
    return {
        "prompt": prompt,
        "sample": args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "num_captions": args.num_captions,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
    }


@command
def _caption(args: argparse.Namespace) -> int:
    options = caption_options(args)
    paths = collect_image_paths(args)
    if args.output:
        return _caption_to_file(args, paths, options)
    captioner = _load(args)
    skipped = []
    for batch in captioner.stream(paths, skip_unreadable=True, **options):
        for index, result in batch:
            path = paths[index]
            if isinstance(result, Exception):
                skipped.append((path, str(result)))
                continue
            captions = result if isinstance(result, list) else [result]
            if args.json:
                record = {"path": path, "caption": captions[0].text}
                if len(captions) > 1:
                    record["captions"] = [c.text for c in captions]
                print(dumps(record))
            else:
                for caption in captions:
                    print(f"{printable(path)}\t{printable(single_line(caption.text))}")
        sys.stdout.flush()
    return _report_skipped(args, skipped)


def _load(args: argparse.Namespace):
    from ..caption import load_captioner

    return load_captioner(
        args.captioner or DEFAULT_CAPTIONER,
        revision=args.captioner_revision,
        base_model=args.base_model,
        base_revision=args.base_revision,
        device=device_from_args(args),
        dtype=args.dtype,
    )


def _caption_to_file(args: argparse.Namespace, paths: list[str], options: dict) -> int:
    from ..caption_files import CaptionReport, caption_to_jsonl, read_keys

    try:
        if _all_done(paths, read_keys(args.output)):
            report = CaptionReport(up_to_date=len(paths))  # nothing to do: no model to load
        else:
            report = caption_to_jsonl(_load(args), paths, args.output, progress=args.progress, **options)
    except KeyboardInterrupt:
        held = len(read_keys(args.output))
        print(
            f"\nrelsim caption: interrupted; {args.output} holds {plural(held, 'record')}. "
            "Run the same command again to caption the rest.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    held = len(read_keys(args.output))
    if args.json:
        print_json({"output": str(args.output), **report.to_dict(), "records": held})
    else:
        rate = f" in {report.seconds:.1f} s ({report.captions_per_second:.2f} images/s)" if report.captioned else ""
        print(
            f"relsim caption: {report.captioned} captioned, {len(report.skipped)} skipped, "
            f"{report.up_to_date} already in {args.output}{rate}; it holds {plural(held, 'record')}"
        )
    if report.duplicates:
        shown = ", ".join(f"{p} ({h})" for p, h in report.duplicates[:5])
        print(
            f"relsim caption: warning: {plural(len(report.duplicates), 'image')} share a file name (image_hash) "
            f"with another input and were not captioned: {shown}",
            file=sys.stderr,
        )
    return _report_skipped(args, report.skipped)


def _all_done(paths: list[str], have: set[str]) -> bool:
    from ..caption_files import image_hash

    return all(image_hash(p) in have for p in paths)


def _report_skipped(args: argparse.Namespace, skipped: list[tuple[str, str]]) -> int:
    if not skipped:
        return 0
    lines = [f"  {printable(path)}: {reason}" for path, reason in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"  ... and {len(skipped) - 20} more")
    print(f"skipped {plural(len(skipped), 'unreadable image')}:", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    return EXIT_SKIPPED


__all__ = [
    "register",
    "add_captioner_flags",
]
