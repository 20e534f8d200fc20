"""``relsim serve COLLECTION``: a local web app for relational search (extra ``relsim[serve]``; docs/search.md).

Example:
    $ relsim serve photos.relsim --open
    $ relsim serve photos.relsim --port 8080 -k 24 --captioner ./my-captioner
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ..registry import DEFAULT_TEXT_MODEL
from ._common import (
    UsageError,
    add_model_flags,
    bounded,
    command,
    device_from_args,
    load_model_from_args,
    require_inputs,
    warn,
)
from .collection import add_caption_flags, caption_settings

DESCRIPTION = (
    "Serve a web page (and a JSON API, documented at /docs) to search COLLECTION: upload or drop an image, describe "
    "a relation, or click a result to search with it. Binds 127.0.0.1 unless told otherwise; only the images of the "
    "collection's rows are served, by row id. Ctrl-C stops it."
)


def register(subparsers) -> None:
    help = "a local web app to search a collection by image, text or a click"
    p = subparsers.add_parser("serve", help=help, description=DESCRIPTION)
    p.add_argument("store", metavar="COLLECTION", help="collection folder or URI")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=bounded(int, 0, 65535), default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser once the server is up")
    p.add_argument(
        "-k",
        type=bounded(int, 1, 200),
        default=12,
        help="results per query unless the page asks otherwise (default: 12)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=bounded(float, 0, 1024, above=True),
        default=20,
        help="largest image upload in MB (default: 20)",
    )
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL, help=f"text encoder (default: {DEFAULT_TEXT_MODEL})")
    p.add_argument("--text-revision", help="branch, tag or commit of --text-model")
    add_caption_flags(p.add_argument_group("captions (the 'with anonymous captions' option)"))
    add_model_flags(p, from_collection=True)
    p.set_defaults(func=_serve)


def exposed(host: str) -> bool:
    """Whether binding ``host`` serves other machines (anything but a loopback address or localhost).

    >>> exposed("127.0.0.1"), exposed("0.0.0.0"), exposed("localhost")
    (False, True, False)
    """
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to anything


@command
def _serve(args: argparse.Namespace) -> int:
    if not 1 <= args.k <= 200:
        raise UsageError("-k must be from 1 to 200")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be from 0 to 65535")
    if args.max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be > 0")
    caption_options = caption_settings(args, True, "serve")
    if "://" not in args.store:
        require_inputs(args.store)
    import uvicorn

    from ..collection import Collection
    from ..serve import SearchEngine, create_app

    collection = Collection.open(args.store)
    model = load_model_from_args(args, collection)
    engine = SearchEngine(
        collection,
        model,
        text_model=args.text_model,
        text_revision=args.text_revision,
        captioner=args.captioner,
        captioner_revision=args.captioner_revision,
        caption_options=caption_options,
        device=device_from_args(args),
    )
    app = create_app(engine, k=args.k, max_upload_bytes=int(args.max_upload_mb * 1e6))
    if exposed(args.host):
        warn(
            args,
            f"binding {args.host} serves the images of {collection.uri} and its search to every machine that can "
            "reach this one, without any login; use --host 127.0.0.1 (the default) to keep it on this machine",
        )
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    _announce_when_up(server, args.host, args.open)
    server.run()
    return 0


def _announce_when_up(server, host: str, open_browser: bool) -> None:
    """Print the URL (and open it with ``--open``) once ``server`` listens: its port is known only then."""
    import threading
    import time
    import webbrowser

    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
        print(f"relsim serve: {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        if open_browser:
            webbrowser.open(url)

    threading.Thread(target=wait, daemon=True).start()
