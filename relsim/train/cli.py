"""Subcommands ``train``, ``data download``, ``data targets``, ``convert`` and ``push-to-hub``.

Importing this module needs neither peft nor a model: the heavy imports happen when a command runs.

Example:
    $ relsim data download anonymous_captions_train.jsonl images/
    $ relsim train --config recipe.yaml --output-dir run
    $ torchrun --nproc_per_node 8 -m relsim.cli train --config recipe.yaml
    $ relsim push-to-hub run/final me/relsim-my-run
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import TrainConfig, field_types


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig().to_dict()
    for name, (scalar, _optional, is_list) in field_types().items():
        kwargs: dict = {"default": argparse.SUPPRESS, "dest": name, "help": f"default: {defaults[name]}"}
        if scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = scalar
            kwargs["metavar"] = scalar.__name__.upper()
            if is_list:
                kwargs["nargs"] = "+"
        parser.add_argument(_flag(name), **kwargs)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a relsim model (the paper's recipe by default)",
        description="Train a relsim model. Options come from --config (JSON or YAML) and flags; flags win. "
        "Run under torchrun for several GPUs. See docs/training.md.",
    )
    p.add_argument("--config", help="a JSON or YAML file of TrainConfig options")
    _add_config_flags(p)
    p.set_defaults(func=_train)

    data = subparsers.add_parser("data", help="prepare training data")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    dl = data_commands.add_parser("download", help="download the images of a captions JSONL")
    dl.add_argument("jsonl")
    dl.add_argument("directory")
    dl.add_argument("--workers", type=int, default=16)
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    dl.add_argument("--retries", type=int, default=3)
    dl.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    dl.add_argument("--limit", type=int, default=None, help="only the first N records")
    dl.add_argument("--verify-existing", action="store_true", help="re-download files that do not decode")
    dl.set_defaults(func=_download)
    tg = data_commands.add_parser("targets", help="compute and cache the caption embeddings")
    tg.add_argument("jsonl", nargs="+")
    tg.add_argument("--cache-dir", required=True)
    tg.add_argument("--text-model", default=TrainConfig.text_model)
    tg.add_argument("--text-revision", default=None)
    tg.add_argument("--device", default=None)
    tg.set_defaults(func=_targets)

    cv = subparsers.add_parser("convert", help="add relsim's files (projection.safetensors, relsim_config.json)")
    cv.add_argument("source", help="upstream checkpoint: a directory or Hub repo id")
    cv.add_argument("destination", nargs="?", help="output directory (default: convert a local source in place)")
    cv.add_argument("--revision")
    cv.add_argument("--base-model")
    cv.add_argument("--base-revision")
    cv.add_argument("--overwrite", action="store_true")
    cv.set_defaults(func=_convert)

    push = subparsers.add_parser("push-to-hub", help="upload a checkpoint with a generated model card")
    push.add_argument("directory")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--token")
    push.set_defaults(func=_push)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then ``--config``, then the flags given on the command line."""
    names = set(field_types())
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig.from_file(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)


def _train(args: argparse.Namespace) -> int:
    from .loop import train

    config = config_from_args(args)
    if not config.train_jsonl or not config.image_dir:
        print("relsim train: train_jsonl and image_dir are required (in --config or as flags)", file=sys.stderr)
        return 2
    result = train(config)
    summary = {
        "step": result.step,
        "final": str(result.final) if result.final else None,
        "eval": result.eval,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "skipped_images": result.skipped,
    }
    print(json.dumps(summary))
    return 0


def _download(args: argparse.Namespace) -> int:
    from .download import FAILURES_FILE, download_images

    report = download_images(
        args.jsonl,
        args.directory,
        workers=args.workers,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        limit=args.limit,
        verify_existing=args.verify_existing,
    )
    print(report.summary())
    if report.failed:
        print(f"failures listed in {args.directory}/{FAILURES_FILE}", file=sys.stderr)
        return 1
    return 0


def _targets(args: argparse.Namespace) -> int:
    from .data import read_jsonl
    from .targets import cache_file, caption_targets, resolve_text_model

    captions = [r.caption for path in args.jsonl for r in read_jsonl(path)]
    targets = caption_targets(
        captions, cache_dir=args.cache_dir, text_model=args.text_model, revision=args.text_revision, device=args.device
    )
    path = cache_file(args.cache_dir, resolve_text_model(args.text_model, args.text_revision))
    print(f"{targets.shape[0]} caption targets in {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(
        args.source,
        args.destination,
        revision=args.revision,
        base_model=args.base_model,
        base_revision=args.base_revision,
        overwrite=args.overwrite,
    )
    print(f"converted checkpoint: {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    url = push_to_hub(
        args.directory,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        license=args.license,
    )
    print(url)
    return 0
