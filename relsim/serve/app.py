"""The FastAPI app of ``relsim serve``: the page (``/``), the JSON API (``/api/...``) and FastAPI's ``/docs``.

Routes: ``GET /`` (``?text=`` / ``?row=``, with ``k`` and ``explain``), ``POST /`` (an image form), ``POST
/api/search`` (multipart ``image``, or JSON ``{"text"|"row": ..., "k": ..., "explain": ...}``), ``GET
/api/thumb/{row}``, ``GET /api/heatmap?a=ROW&b=ROW`` (PNG), ``GET /api/info``. Images are addressed by row id
only (see :mod:`relsim.serve.engine`); request bodies over the upload limit are cut off with 413.

Example:
    >>> app = create_app(SearchEngine(Collection.open("photos.relsim"), model))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                           # doctest: +SKIP
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import ImageInputError, RowNotFoundError
from .engine import DEFAULT_MAX_UPLOAD_BYTES, MAX_K, SearchEngine, decode_upload
from .page import render_page

__all__ = ["create_app"]

_FORM_SLACK = 64 * 1024  # multipart headers and the other fields of the image form


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 (by its Content-Length, or as it
    streams in) before it is parsed or spooled to disk."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request is larger than the upload limit of {self.limit - _FORM_SLACK} bytes"


def create_app(engine: SearchEngine, *, k: int = 12, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The app over ``engine``: ``k`` results by default, uploads up to ``max_upload_bytes``.

    Example:
        >>> client = fastapi.testclient.TestClient(create_app(engine))            # doctest: +SKIP
        >>> client.post("/api/search", json={"text": "{Fruit} cut open"}).json()["hits"][0]["row"]  # doctest: +SKIP
        '8eb2e8dcf059d6f0'
    """
    app = FastAPI(
        title="relsim serve",
        description=f"Relational search over {engine.collection.uri}. Images are addressed by row id.",
    )
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_SLACK)
    static = resources.files("relsim.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def run_search(explain: bool, count: int, **query: Any) -> dict[str, Any]:
        try:
            hits = engine.search(k=count, explain=explain, **query)
        except RowNotFoundError as err:
            raise HTTPException(404, str(err)) from err
        except (ImageInputError, ValueError) as err:
            raise HTTPException(400, " ".join(str(err).split())) from err
        return {
            "hits": [_public(hit, explain) for hit in hits],
            "query_caption": hits.query_caption,
            "explain_error": engine.explain_error if explain else None,
        }

    def row_path(row: str) -> str:
        try:
            return engine.path(row)
        except RowNotFoundError as err:
            raise HTTPException(404, str(err)) from err

    def page(request_k: int, explain: bool, query: dict[str, Any] | None, found=None, error=None) -> HTMLResponse:
        has_heatmaps = hasattr(engine.model, "heatmap")
        body = render_page(
            title=str(engine.collection.uri),
            count=len(engine),
            k=request_k,
            hits=found["hits"] if found else None,
            query=query,
            query_caption=found["query_caption"] if found else None,
            explain=explain,
            explained=bool(found) and explain and engine.explain_error is None,
            explain_note=engine.explain_error,
            heatmaps=has_heatmaps,
            error=str(error.detail) if error else None,
            max_upload_bytes=max_upload_bytes,
        )
        return HTMLResponse(body, status_code=error.status_code if error else 200)

    @app.get("/", response_class=HTMLResponse, summary="The search page (a text or row query by URL)")
    def index(
        text: str | None = None, row: str | None = None, k: int = Query(k, ge=1, le=MAX_K), explain: bool = False
    ) -> HTMLResponse:
        if text is None and row is None:
            return page(k, explain, None)
        query: dict[str, Any] = {"text": text} if text is not None else {"row": row}
        try:
            if row is not None and text is None:
                query["path"] = row_path(row)
            found = run_search(explain, k, **({"text": text} if text is not None else {"row": row}))
        except HTTPException as err:
            return page(k, explain, query, error=err)
        return page(k, explain, query, found)

    @app.post("/", response_class=HTMLResponse, summary="The search page for an uploaded image (a form)")
    async def index_upload(request: Request) -> HTMLResponse:
        form = await request.form()
        count, explain = _form_k(form.get("k"), k), form.get("explain") in ("1", "true", "on")
        upload = form.get("image")
        name = getattr(upload, "filename", None) or "upload"
        query = {"upload": name, "thumbnail": None}
        try:
            image = await _read_image(upload, max_upload_bytes)
            query["thumbnail"] = await run_in_threadpool(_upload_thumbnail, image)
            found = await run_in_threadpool(lambda: run_search(explain, count, image=image))
        except HTTPException as err:
            return page(count, explain, query, error=err)
        return page(count, explain, query, found)

    @app.post(
        "/api/search",
        summary="Search by image (multipart 'image'), text or row (JSON)",
        openapi_extra={"requestBody": _SEARCH_BODY},
    )
    async def api_search(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            count, explain = _form_k(form.get("k"), k), form.get("explain") in ("1", "true", "on")
            image = await _read_image(form.get("image"), max_upload_bytes)
            return await run_in_threadpool(lambda: run_search(explain, count, image=image))
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            message = "the body must be JSON {'text' or 'row': ..., 'k': ...} or a multipart image"
            raise HTTPException(400, message) from err
        if not isinstance(body, dict):
            raise HTTPException(400, "the JSON body must be an object: {'text' or 'row': ..., 'k': ...}")
        unknown = sorted(set(body) - {"text", "row", "k", "explain"})
        if unknown:
            raise HTTPException(400, f"unknown field(s) {unknown}: expected 'text' or 'row', 'k', 'explain'")
        query = {name: body[name] for name in ("text", "row") if body.get(name) is not None}
        if len(query) != 1 or not isinstance(next(iter(query.values())), str):
            raise HTTPException(400, "give exactly one of 'text' or 'row' (a string), or upload an 'image'")
        count, explain = body.get("k", k), bool(body.get("explain", False))
        return await run_in_threadpool(lambda: run_search(explain, count, **query))

    @app.get("/api/thumb/{row}", summary="A JPEG thumbnail of a row's image", response_class=Response)
    def thumb(row: str) -> Response:
        try:
            data = engine.thumbnail(row)
        except RowNotFoundError as err:
            raise HTTPException(404, str(err)) from err
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    @app.get("/api/heatmap", summary="PNG: row a's image with the map of its similarity to row b")
    def heatmap(a: str, b: str) -> Response:
        try:
            data = engine.heatmap(a, b)
        except RowNotFoundError as err:
            raise HTTPException(404, str(err)) from err
        except NotImplementedError as err:
            raise HTTPException(501, str(err)) from err
        except (ImageInputError, ValueError, OSError) as err:
            raise HTTPException(400, " ".join(str(err).split())) from err
        return Response(data, media_type="image/png")

    @app.get("/api/info", summary="The collection: its URI, size and model")
    def info() -> dict[str, Any]:
        return {"collection": engine.collection.uri, "count": len(engine), "fingerprint": engine.collection.fingerprint}

    return app


def _public(hit: dict[str, Any], explain: bool) -> dict[str, Any]:
    out = {key: hit[key] for key in ("row", "rank", "path", "score", "caption", "duplicates")}
    if explain and "caption_similarity" in hit:
        out["caption_similarity"] = hit["caption_similarity"]
    return out


def _form_k(value: Any, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError as err:
        raise HTTPException(400, f"k must be an integer from 1 to {MAX_K}, got {str(value)[:20]!r}") from err


async def _read_image(upload: Any, max_bytes: int):
    if upload is None or isinstance(upload, str) or not hasattr(upload, "read"):
        raise HTTPException(400, "no image: send the file as the multipart field 'image'")
    name = upload.filename or "upload"
    data = await upload.read(max_bytes + 1)
    try:
        return await run_in_threadpool(decode_upload, data, name, max_bytes)
    except ImageInputError as err:
        status = 413 if len(data) > max_bytes else 400
        raise HTTPException(status, " ".join(str(err).split())) from err


def _upload_thumbnail(image: Any) -> bytes | None:
    from ..render import thumbnail_jpeg

    return thumbnail_jpeg(image, 256)


_SEARCH_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "a relational description"},
                    "row": {"type": "string", "description": "a row id (a hit's 'row')"},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                    "explain": {"type": "boolean", "description": "add the anonymous captions"},
                },
            },
            "example": {"text": "{Animal} peeking out from behind a {Object}", "k": 5},
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "k": {"type": "integer"},
                    "explain": {"type": "boolean"},
                },
                "required": ["image"],
            }
        },
    },
}
