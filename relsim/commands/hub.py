"""``relsim download``, ``relsim convert`` and ``relsim push-to-hub``: models from and to the Hugging Face Hub.

Example:
    $ relsim download                                   # adapter + base + text model into the HF cache
    $ relsim download all                               # + the captioner and the CLIP/DINO eval baselines
    $ relsim convert thaoshibe/relsim-qwenvl25-lora relsim-converted   # add relsim's files to an upstream checkpoint
    $ relsim push-to-hub run/final me/relsim-my-run     # a trained checkpoint with a generated model card
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from ..registry import (
    CAPTIONERS,
    DEFAULT_BASE_MODEL,
    DEFAULT_CAPTIONER,
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    DEFAULT_MODEL,
    DEFAULT_TEXT_MODEL,
    DOWNLOADS,
    PRETRAINED,
)
from ._common import UsageError, command, human_size, print_json, require_inputs


def register(subparsers) -> None:
    _register_download(subparsers)
    _register_push(subparsers)
    _register_convert(subparsers)


def _register_download(subparsers) -> None:
    whats = ", ".join(DOWNLOADS)
    p = subparsers.add_parser(
        "download",
        help="fetch model files into the Hugging Face cache for offline use",
        description="Download models into the Hugging Face cache (HF_HOME), then print where they are, their commits "
        "and sizes. Afterwards HF_HUB_OFFLINE=1 works. WHAT: embedder (the relsim adapter and its base model), "
        "captioner (the anonymous captioner and its base), base, text (the MiniLM text model), clip and dino "
        "(the evaluation baselines), or all of them (all); default: embedder and text. An offline error names the "
        "exact command to run.",
    )
    p.add_argument("what", nargs="*", metavar="WHAT", help=f"{whats} or all (default: embedder text)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the embedder (default: {DEFAULT_MODEL})")
    p.add_argument("--revision", help="branch, tag or commit of --model (default: the repo's main branch)")
    p.add_argument("--base-model", help=f"default: the base each adapter names (WHAT base: {DEFAULT_BASE_MODEL})")
    p.add_argument("--base-revision", help="base branch, tag or commit (default: what the adapter records, else main)")
    p.add_argument("--captioner", default=DEFAULT_CAPTIONER, help=f"default: {DEFAULT_CAPTIONER}")
    p.add_argument("--captioner-revision", help="branch, tag or commit of --captioner")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"default: {DEFAULT_TEXT_MODEL}")
    p.add_argument("--text-revision", help="branch, tag or commit of --text-model (default: its main branch)")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"default: {DEFAULT_CLIP_MODEL}")
    p.add_argument("--clip-revision", help="branch, tag or commit of --clip-model")
    p.add_argument("--dino-model", default=DEFAULT_DINO_MODEL, help=f"default: {DEFAULT_DINO_MODEL}")
    p.add_argument("--dino-revision", help="branch, tag or commit of --dino-model")
    p.add_argument("--no-text-model", dest="with_text", action="store_false", help="default WHAT: skip the text model")
    p.add_argument("--cache-dir", help="default: the Hugging Face cache ($HF_HOME/hub)")
    p.add_argument("--token", help="Hugging Face token (default: $HF_TOKEN or the saved login)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_download)


def _register_push(subparsers) -> None:
    push = subparsers.add_parser("push-to-hub", help="upload a checkpoint with a generated model card")
    push.add_argument("directory")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to upload to (default: main)")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--token")
    push.set_defaults(func=_push)


def _register_convert(subparsers) -> None:
    cv = subparsers.add_parser("convert", help="add relsim's files (projection.safetensors, relsim_config.json)")
    cv.add_argument("source", help="upstream checkpoint: a directory or Hub repo id")
    cv.add_argument("destination", nargs="?", help="output directory (default: convert a local source in place)")
    cv.add_argument("--revision", help="branch, tag or commit of a Hub source (default: the repo's main branch)")
    cv.add_argument("--base-model", help="base model to record (default: the one the adapter names)")
    cv.add_argument("--base-revision", help="base model revision to record")
    cv.add_argument("--overwrite", action="store_true")
    cv.set_defaults(func=_convert)


def _folder_size(path: Path) -> tuple[int, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def _base_of(adapter_path: Path, pinned: dict[str, Any]) -> tuple[str | None, str | None]:
    """The base model and revision a load of this adapter would use (as :func:`relsim.load` decides)."""
    from ..checkpoint import ADAPTER_CONFIG, read_json, read_relsim_config
    from ..errors import CheckpointError

    config: dict[str, Any] = read_relsim_config(adapter_path)  # checked: a list or a number is one clear line
    file = adapter_path / ADAPTER_CONFIG
    if file.is_file():  # only the base's name is needed here: the LoRA settings are checked when it loads
        named = read_json(file).get("base_model_name_or_path")
        if named is not None and not isinstance(named, str):
            raise CheckpointError(f"{file}: base_model_name_or_path must be a string, got {named!r}")
        config = {"base_model_name_or_path": named, **config}
    base = config.get("base_model") or config.get("base_model_name_or_path") or pinned.get("base_model")
    revision = config.get("base_revision") or pinned.get("base_revision")
    return base, revision


def _wanted(args: argparse.Namespace) -> list[str]:
    """The WHAT list, checked (exit 2 for an unknown one), in DOWNLOADS order."""
    unknown = [w for w in args.what if w not in DOWNLOADS and w != "all"]
    if unknown:
        raise UsageError(f"download: unknown WHAT {unknown[0]!r}; choose from {', '.join(DOWNLOADS)} or all")
    if not args.what:
        return ["embedder", "text"] if args.with_text else ["embedder"]
    return [w for w in DOWNLOADS if w in args.what or ("all" in args.what and w != "base")]


@command
def _download(args: argparse.Namespace) -> int:
    from ..caption import CAPTIONER_FILES
    from ..eval.baselines import HF_FILES
    from ..hub import ADAPTER_FILES, BASE_FILES, resolve
    from ..student import STUDENT_FILES, is_student
    from ..text import HUB_FILES as TEXT_FILES

    wanted = _wanted(args)
    # offline, a repo missing from the cache cannot be fetched by running this command again
    advice = "unset HF_HUB_OFFLINE on a machine with internet access to download it."
    hub = {"cache_dir": args.cache_dir, "token": args.token, "offline_advice": advice}
    repos = []

    def with_base(role: str, adapter, pins: dict[str, Any]) -> None:
        base_name, base_revision = args.base_model, args.base_revision
        if base_name is None:
            base_name, pinned_revision = _base_of(adapter.path, pins)
            base_revision = base_revision if base_revision is not None else pinned_revision
        if base_name is None:
            raise ArgumentError(f"{adapter.name!r} names no base model; pass --base-model")
        repos.append((role, adapter))
        repos.append(("base", resolve(base_name, revision=base_revision, allow_patterns=BASE_FILES, **hub)))

    if "embedder" in wanted:
        pins = PRETRAINED.get(args.model, {})
        revision = args.revision if args.revision is not None else pins.get("revision")
        adapter = resolve(args.model, revision=revision, allow_patterns=ADAPTER_FILES, **hub)
        if is_student(adapter.path):  # a distilled student holds its whole backbone: no base to fetch
            repos.append(("student", resolve(args.model, revision=revision, allow_patterns=STUDENT_FILES, **hub)))
        else:
            with_base("adapter", adapter, pins)
    if "captioner" in wanted:
        pins = CAPTIONERS.get(args.captioner, {})
        revision = args.captioner_revision if args.captioner_revision is not None else pins.get("revision")
        adapter = resolve(args.captioner, revision=revision, allow_patterns=CAPTIONER_FILES, **hub)
        with_base("captioner", adapter, pins)
    if "base" in wanted:
        name = args.base_model or DEFAULT_BASE_MODEL
        repos.append(("base", resolve(name, revision=args.base_revision, allow_patterns=BASE_FILES, **hub)))
    for role, name, revision, files in (
        ("text", args.text_model, args.text_revision, TEXT_FILES),
        ("clip", args.clip_model, args.clip_revision, HF_FILES),
        ("dino", args.dino_model, args.dino_revision, HF_FILES),
    ):
        if role in wanted:
            repos.append((role, resolve(name, revision=revision, allow_patterns=files, **hub)))
    entries, seen = [], set()
    for role, repo in repos:
        if repo.path in seen:  # the captioner's base is usually the embedder's
            continue
        seen.add(repo.path)
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
        print_json(entries, indent=2)
        return 0
    for e in entries:
        at = f"@ {e['revision']}" if e["revision"] else "(local directory)"
        print(f"{e['role']:<8} {e['name']} {at}: {e['files']} files, {human_size(e['bytes'])}")
        print(f"{'':<8} {e['path']}")
    total = sum(e["bytes"] for e in entries)
    print(f"total    {human_size(total)}; with HF_HUB_OFFLINE=1 relsim now loads these without the network")
    return 0


@command
def _push(args: argparse.Namespace) -> int:
    from ..publish import push_to_hub

    require_inputs(args.directory)
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


@command
def _convert(args: argparse.Namespace) -> int:
    from ..publish import convert

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


__all__ = [
    "register",
]
