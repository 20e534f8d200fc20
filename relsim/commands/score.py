"""``relsim score A B``: the relational similarity of two images (``--explain``: with their anonymous captions).

Example:
    $ relsim score peach.jpg earth.jpg
    0.734512
    $ relsim score peach.jpg earth.jpg --explain
    $ relsim score peach.jpg earth.jpg --heatmap pair.png
"""

from __future__ import annotations

import argparse

from ..registry import DEFAULT_CAPTIONER
from ._common import (
    MAX_NEW_TOKENS,
    UsageError,
    add_model_flags,
    command,
    load_model_from_args,
    print_json,
    printable,
    require_inputs,
    single_line,
)
from .caption import add_captioner_flags


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="relational similarity of two images",
        description="Print the relational similarity (cosine of relsim embeddings, in [-1, 1]) of two images.",
    )
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print a JSON object with the score and the model")
    p.add_argument(
        "--heatmap",
        metavar="OUT.png",
        help="also write a PNG of A and B side by side with their heatmaps (A's against B, B's against A: where in "
        "each image the similarity comes from; docs/heatmaps.md)",
    )
    explain = p.add_argument_group("explain")
    explain.add_argument(
        "--explain",
        action="store_true",
        help="also print both images' anonymous captions and the MiniLM cosine of the two captions",
    )
    add_captioner_flags(explain, "--captioner", "--captioner-revision")
    explain.add_argument("--text-model", help="MiniLM for the caption cosine (default: all-MiniLM-L6-v2)")
    explain.add_argument(
        "--max-new-tokens", type=MAX_NEW_TOKENS, default=128, help="caption length limit (default: 128)"
    )
    p.set_defaults(func=_score)


@command
def _score(args: argparse.Namespace) -> int:
    require_inputs(args.a, args.b)
    if args.explain:
        return _explain(args)
    if args.captioner or args.captioner_revision or args.text_model:
        raise UsageError("--captioner, --captioner-revision and --text-model go with --explain")
    model = load_model_from_args(args)
    score = model.score(args.a, args.b)
    if args.json:
        print_json({"a": args.a, "b": args.b, "score": score, "model": model.fingerprint})
    else:
        print(f"{score:.6f}")
    _write_heatmap(model, args)
    return 0


def _write_heatmap(model, args: argparse.Namespace) -> None:
    """``--heatmap OUT.png``: A's map against B and B's against A, over the images, side by side."""
    if not args.heatmap:
        return
    import os
    import sys

    from ..render import write_pair

    pair = model.heatmap([args.a, args.b], [args.b, args.a])
    images = [hm.overlay(alpha=0.0) for hm in pair]  # the images as displayed, the unseen parts dimmed
    names = os.path.basename(args.a), os.path.basename(args.b)
    labels = [f"{names[0]}: map against {names[1]}", f"{names[1]}: map against {names[0]}"]
    title = f"relsim {pair[0].score:.4f} ({model.mode} mode, {pair[0].method})"
    write_pair(args.heatmap, images, [hm.overlay() for hm in pair], labels, title=title)
    print(f"wrote {args.heatmap}", file=sys.stderr)


def _explain(args: argparse.Namespace) -> int:
    model = load_model_from_args(args)
    captioner = model.load_captioner(args.captioner or DEFAULT_CAPTIONER, revision=args.captioner_revision)
    explanation = model.explain(args.a, args.b, text_model=args.text_model, max_new_tokens=args.max_new_tokens)
    if args.json:
        record = {"a": args.a, "b": args.b, **explanation.to_dict()}
        print_json({**record, "model": model.fingerprint, "captioner": captioner.fingerprint})
    else:
        print(f"{explanation.score:.6f}")
        print(f"a: {printable(single_line(explanation.caption_a.text))}")
        print(f"b: {printable(single_line(explanation.caption_b.text))}")
        print(f"caption similarity: {explanation.caption_similarity:.6f}")
    _write_heatmap(model, args)
    return 0


__all__ = [
    "register",
]
