"""``relsim train``, ``relsim train-captioner``, ``relsim data download|targets``: reproduce
the paper's two trainings (the embedder and the anonymous captioner).

Importing this module needs neither peft nor a model: the heavy imports happen when a command runs.

Example:
    $ relsim data download anonymous_captions_train.jsonl images/
    $ relsim train --config recipe.yaml --output-dir run
    $ relsim train-captioner seed-groups/seed_group.json --output-dir captioner-run
    $ torchrun --nproc_per_node 8 -m relsim.cli train --config recipe.yaml
    $ relsim distill photos.relsim --student facebook/dinov2-small --output-dir student-run
"""

from __future__ import annotations

import argparse

from ..train.config import BaseConfig, CaptionerTrainConfig, DistillConfig, TrainConfig, field_types
from ._common import (
    EXIT_USAGE,
    UsageError,
    available_device,
    bounded,
    command,
    print_json,
    require_inputs,
    warn,
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseConfig] = TrainConfig) -> None:
    defaults = cls().to_dict()
    for name, (scalar, _optional, is_list) in field_types(cls).items():
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

    cap = subparsers.add_parser(
        "train-captioner",
        help="fine-tune an anonymous captioner on seed groups (upstream's recipe by default)",
        description="Train an anonymous captioner (LoRA on Qwen2.5-VL) on seed groups: upstream's seed_group.json, "
        "a folder holding it and images/ (the Hub dataset layout), or a folder of seed-group folders each with "
        "caption.txt. Options come from CONFIG (JSON or YAML) and flags; flags win. Run under torchrun for several "
        "GPUs. See docs/training.md.",
    )
    cap.add_argument("config_file", nargs="?", metavar="CONFIG", help="a JSON or YAML file of options")
    cap.add_argument("--config", help="the same as CONFIG")
    _add_config_flags(cap, CaptionerTrainConfig)
    cap.set_defaults(func=_train_captioner)

    dis = subparsers.add_parser(
        "distill",
        help="distil a relsim collection's embeddings into a small student backbone (docs/students.md)",
        description="Train a student (any transformers vision backbone, pooled, projected to 384-d) to reproduce the "
        "embeddings of TEACHER, a relsim collection (relsim embed), streamed from LanceDB: cosine regression plus "
        "the in-batch similarity structure, optionally the anonymous captions' MiniLM targets (--captions-jsonl). "
        "Options come from --config (JSON or YAML) and flags; flags win. Run under torchrun for several GPUs.",
    )
    dis.add_argument("teacher_arg", nargs="?", metavar="TEACHER", help="the teacher: a relsim collection")
    dis.add_argument("--config", help="a JSON or YAML file of DistillConfig options")
    _add_config_flags(dis, DistillConfig)
    dis.set_defaults(func=_distill)

    data = subparsers.add_parser("data", help="prepare training data")
    data_commands = data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), EXIT_USAGE)[1])
    dl = data_commands.add_parser(
        "download",
        help="download the images of a captions JSONL or of seed groups (upstream's seed_group.json)",
        description="Fetch the images of a captions JSONL into DIRECTORY/{image_hash}.png, or those of a seed-group "
        "JSON (a list of {anonymous_caption, image_urls}) into DIRECTORY/{group}/{i}.png. Reruns resume.",
    )
    dl.add_argument("jsonl", metavar="LIST", help="captions JSONL or seed-group JSON")
    dl.add_argument("directory")
    dl.add_argument("--workers", type=bounded(int, 1, 256), default=16)
    dl.add_argument("--timeout", type=bounded(float, 0, 86400, above=True), default=30.0, help="seconds per request")
    dl.add_argument("--retries", type=bounded(int, 0, 100), default=3)
    dl.add_argument(
        "--backoff", type=bounded(float, 0, 3600), default=1.0, help="first retry delay in seconds (doubles)"
    )
    dl.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N records")
    dl.add_argument("--verify-existing", action="store_true", help="re-download files that do not decode")
    dl.set_defaults(func=_download)
    tg = data_commands.add_parser("targets", help="compute and cache the caption embeddings")
    tg.add_argument("jsonl", nargs="+")
    tg.add_argument("--cache-dir", required=True)
    tg.add_argument("--text-model", default=TrainConfig.text_model)
    tg.add_argument("--text-revision", default=None)
    tg.add_argument("--device", default=None)
    tg.set_defaults(func=_targets)


def config_from_args(args: argparse.Namespace, cls: type[BaseConfig] = TrainConfig) -> BaseConfig:
    """Defaults, then ``--config``, then the flags given on the command line."""
    names = set(field_types(cls))
    overrides = {k: v for k, v in vars(args).items() if k in names}
    path = config_path(args)
    try:
        config = cls.from_file(path, **overrides) if path else cls.from_dict(overrides)
    except ValueError as err:  # a bad option value, in the file or a flag: a usage error, before any model loads
        raise UsageError(str(err)) from err
    if config.device is not None:
        available_device(config.device)
    return config


def config_path(args: argparse.Namespace) -> str | None:
    """``--config`` or the positional CONFIG (``relsim train-captioner``); both at once must agree."""
    flag, positional = getattr(args, "config", None), getattr(args, "config_file", None)
    if flag and positional and flag != positional:
        raise UsageError(f"two configuration files given: {positional} and --config {flag}")
    return flag or positional


@command
def _train(args: argparse.Namespace) -> int:
    from ..train import train

    require_inputs(args.config)
    config = config_from_args(args)
    if not config.train_jsonl:
        raise UsageError("train_jsonl is required (in --config or as flags)")
    _print_result(train(config))
    return 0


def _print_result(result) -> None:
    """The summary line of a training command (JSON): step, final checkpoint, evaluation, skipped images."""
    summary = {
        "step": result.step,
        "final": str(result.final) if result.final else None,
        "eval": result.eval,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "skipped_images": result.skipped,
    }
    print_json(summary)


@command
def _train_captioner(args: argparse.Namespace) -> int:
    from ..train import train

    require_inputs(config_path(args))
    config = config_from_args(args, CaptionerTrainConfig)
    if not config.seed_groups:
        raise UsageError("seed_groups is required (in CONFIG or as --seed-groups)")
    require_inputs(config.seed_groups)
    _print_result(train(config))
    return 0


@command
def _distill(args: argparse.Namespace) -> int:
    from ..train import train

    require_inputs(args.config)
    if args.teacher_arg:
        if getattr(args, "teacher", args.teacher_arg) != args.teacher_arg:
            raise UsageError(f"two teachers given: {args.teacher_arg} and --teacher {args.teacher}")
        args.teacher = args.teacher_arg
    config = config_from_args(args, DistillConfig)
    if not config.teacher:
        raise UsageError("the teacher is required: relsim distill TEACHER (a relsim collection)")
    _print_result(train(config))
    return 0


@command
def _download(args: argparse.Namespace) -> int:
    from ..train.download import FAILURES_FILE, download_images

    require_inputs(args.jsonl)
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
        warn(args, f"failures listed in {args.directory}/{FAILURES_FILE}")
        return 1
    return 0


@command
def _targets(args: argparse.Namespace) -> int:
    from ..train.data import read_jsonl
    from ..train.targets import cache_file, caption_targets, resolve_text_model

    require_inputs(*args.jsonl)
    captions = [r.caption for path in args.jsonl for r in read_jsonl(path)]
    device = available_device(args.device) if args.device else None
    targets = caption_targets(
        captions, cache_dir=args.cache_dir, text_model=args.text_model, revision=args.text_revision, device=device
    )
    path = cache_file(args.cache_dir, resolve_text_model(args.text_model, args.text_revision))
    print(f"{targets.shape[0]} caption targets in {path}")
    return 0


__all__ = [
    "register",
]
