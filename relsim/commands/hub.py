"""``relsim download``, ``relsim convert`` and ``relsim push-to-hub``: models from and to the Hugging Face Hub.

Example:
    $ relsim download                                   # adapter + base + text model into the HF cache
    $ relsim convert thaoshibe/relsim-qwenvl25-lora relsim-converted   # add relsim's files to an upstream checkpoint
    $ relsim push-to-hub run/final me/relsim-my-run     # a trained checkpoint with a generated model card
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from ..registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL, PRETRAINED
from ._common import command, human_size, print_json, require_inputs


def register(subparsers) -> None:
    _register_download(subparsers)
    _register_push(subparsers)
    _register_convert(subparsers)


def _register_download(subparsers) -> None:
    p = subparsers.add_parser(
        "download",
        help="fetch model files into the Hugging Face cache for offline use",
        description="Download the relsim adapter, its base model and the text model into the Hugging Face cache "
        "(HF_HOME), then print where they are, their commits and sizes. Afterwards HF_HUB_OFFLINE=1 works.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--revision", help="branch, tag or commit of --model (default: the repo's main branch)")
    p.add_argument("--base-model", help="default: the base named by the adapter")
    p.add_argument("--base-revision", help="base branch, tag or commit (default: what the adapter records, else main)")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"default: {DEFAULT_TEXT_MODEL}")
    p.add_argument("--text-revision", help="branch, tag or commit of --text-model (default: its main branch)")
    p.add_argument("--no-text-model", dest="with_text", action="store_false", help="skip the text model")
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


def _base_of(adapter_path: Path, model: str) -> tuple[str | None, str | None]:
    """The base model and revision a load of this adapter would use (as :func:`relsim.load` decides)."""
    pinned = PRETRAINED.get(model, {})
    config: dict[str, Any] = {}
    for name in ("relsim_config.json", "adapter_config.json"):
        file = adapter_path / name
        if file.is_file():
            config = {**json.loads(file.read_text()), **config}
    base = config.get("base_model") or config.get("base_model_name_or_path") or pinned.get("base_model")
    revision = config.get("base_revision") or pinned.get("base_revision")
    return base, revision


@command
def _download(args: argparse.Namespace) -> int:
    from ..hub import ADAPTER_FILES, BASE_FILES, resolve
    from ..text import HUB_FILES as TEXT_FILES

    # offline, a repo missing from the cache cannot be fetched by running this command again
    advice = "unset HF_HUB_OFFLINE on a machine with internet access to download it."
    hub = {"cache_dir": args.cache_dir, "token": args.token, "offline_advice": advice}
    revision = args.revision if args.revision is not None else PRETRAINED.get(args.model, {}).get("revision")
    adapter = resolve(args.model, revision=revision, allow_patterns=ADAPTER_FILES, **hub)
    base_name, base_revision = args.base_model, args.base_revision
    if base_name is None:
        base_name, pinned_revision = _base_of(adapter.path, args.model)
        base_revision = base_revision if base_revision is not None else pinned_revision
    if base_name is None:
        raise ArgumentError(f"{args.model!r} names no base model; pass --base-model")
    repos = [
        ("adapter", adapter),
        ("base", resolve(base_name, revision=base_revision, allow_patterns=BASE_FILES, **hub)),
    ]
    if args.with_text:
        repos.append(("text", resolve(args.text_model, revision=args.text_revision, allow_patterns=TEXT_FILES, **hub)))
    entries = []
    for role, repo in repos:
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
