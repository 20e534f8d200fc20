"""``relsim score A B``: the relational similarity of two images.

Example:
    $ relsim score peach.jpg earth.jpg
    0.734512
"""

from __future__ import annotations

import argparse

from ._common import add_model_flags, command, load_model_from_args, print_json, require_inputs


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
    p.set_defaults(func=_score)


@command
def _score(args: argparse.Namespace) -> int:
    require_inputs(args.a, args.b)
    model = load_model_from_args(args)
    score = model.score(args.a, args.b)
    if args.json:
        print_json({"a": args.a, "b": args.b, "score": score, "model": model.fingerprint})
    else:
        print(f"{score:.6f}")
    return 0
