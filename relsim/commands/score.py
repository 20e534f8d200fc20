"""``relsim score A B``: the relational similarity of two images (``--explain``: with their anonymous captions).

Example:
    $ relsim score peach.jpg earth.jpg
    0.734512
    $ relsim score peach.jpg earth.jpg --explain
"""

from __future__ import annotations

import argparse

from ..registry import DEFAULT_CAPTIONER
from ._common import UsageError, add_model_flags, command, load_model_from_args, print_json, require_inputs
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
    explain = p.add_argument_group("explain")
    explain.add_argument(
        "--explain",
        action="store_true",
        help="also print both images' anonymous captions and the MiniLM cosine of the two captions",
    )
    add_captioner_flags(explain, "--captioner", "--captioner-revision")
    explain.add_argument("--text-model", help="MiniLM for the caption cosine (default: all-MiniLM-L6-v2)")
    explain.add_argument("--max-new-tokens", type=int, default=128, help="caption length limit (default: 128)")
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
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    model = load_model_from_args(args)
    captioner = model.load_captioner(args.captioner or DEFAULT_CAPTIONER, revision=args.captioner_revision)
    explanation = model.explain(args.a, args.b, text_model=args.text_model, max_new_tokens=args.max_new_tokens)
    if args.json:
        record = {"a": args.a, "b": args.b, **explanation.to_dict()}
        print_json({**record, "model": model.fingerprint, "captioner": captioner.fingerprint})
    else:
        print(f"{explanation.score:.6f}")
        print(f"a: {explanation.caption_a.text}")
        print(f"b: {explanation.caption_b.text}")
        print(f"caption similarity: {explanation.caption_similarity:.6f}")
    return 0


__all__ = [
    "register",
]
