"""Seed groups (the captioner's training data): upstream's JSON, the Hub dataset layout, local folders, and
`relsim data download` of a seed-group JSON against a local HTTP server (retries, atomic writes, resume)."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import QuietHandler, photo, serve

from relsim.cli import main
from relsim.train.download import FAILURES_FILE, download_images
from relsim.train.seed_groups import (
    SeedImage,
    is_seed_group_file,
    load_seed_groups,
    read_seed_group_folders,
    read_seed_group_json,
    split_groups,
)

FIXTURES = Path(__file__).parent / "fixtures" / "anonymous_caption"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(30 + seed, 40, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(36, 28, seed=seed).save(buffer, format="JPEG")
    return buffer.getvalue()


class _Handler(QuietHandler):
    hits: Counter = Counter()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path
        type(self).hits[path] += 1
        if path.endswith("/gone.png"):
            self._send(404, b"not found", "text/plain")
        elif path.endswith("/flaky.png") and type(self).hits[path] == 1:
            self._send(503, b"busy", "text/plain")
        elif path.endswith(".jpg"):
            self._send(200, _jpeg(len(path)), "image/jpeg")
        else:
            self._send(200, _png(len(path) % 7))


@pytest.fixture
def server():
    _Handler.hits = Counter()
    with serve(_Handler) as url:
        yield url


def _groups(base: str) -> list[dict]:
    hub = f"{base}/datasets/thaoshibe/seed-groups/resolve/main/images"
    return [
        # the Hub layout, group 7 at list position 0 (upstream's file numbers groups by its own index)
        {
            "anonymous_caption": '"A {Fruit} cut open to show its layers."',
            "image_urls": [f"{hub}/7/1.png", f"{hub}/7/0.png"],
        },
        # anywhere else: {position}/{k}.png, stored as PNG whatever the source format
        {
            "anonymous_caption": "  {Animals} queueing in a line.\n",
            "image_urls": [f"{base}/a/x.jpg", f"{base}/b/flaky.png"],
        },
        {"anonymous_caption": "A {Object} in its {Shadow}.", "image_urls": [f"{base}/gone.png", f"{base}/c/ok.png"]},
    ]


def test_read_upstream_json_maps_urls_to_the_hub_layout(tmp_path):
    path = tmp_path / "seed_group.json"
    path.write_text(json.dumps(_groups("http://127.0.0.1:1")))
    images = read_seed_group_json(path)
    assert [i.file for i in images] == ["7/1.png", "7/0.png", "1/0.png", "1/1.png", "2/0.png", "2/1.png"]
    assert [i.group for i in images] == ["7", "7", "1", "1", "2", "2"]
    assert images[0].caption == '"A {Fruit} cut open to show its layers."'  # quotes kept, as upstream trained
    assert images[2].caption == "{Animals} queueing in a line."  # whitespace stripped
    assert is_seed_group_file(path) and images[0].filename == "7/1.png"

    # upstream's own head of data/seed_group.json: Hub URLs -> the same relative paths
    head = read_seed_group_json(FIXTURES / "seed_group_head.json")
    assert head[0].file == "0/1.png" and head[2].file == "1/0.png" and len({i.group for i in head}) == 5

    # index_group (upstream's training file) names the folder
    path.write_text(json.dumps([{"index_group": 12, "anonymous_caption": "c", "image_urls": ["http://h/x.png"]}]))
    assert read_seed_group_json(path)[0].file == "12/0.png"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"anonymous_caption": "c"}, "expected a JSON list"),
        ([{"anonymous_caption": "c", "image_urls": ["http://h/1.png"]}, "x"], "seed group 1 is a str"),
        ([{"anonymous_caption": " ", "image_urls": ["http://h/1.png"]}], "seed group 0: anonymous_caption"),
        ([{"anonymous_caption": "c", "image_urls": []}], "seed group 0: image_urls"),
        ([{"anonymous_caption": "c", "image_urls": [3]}], "seed group 0: image_urls"),
        ([{"index_group": "../x", "anonymous_caption": "c", "image_urls": ["http://h/1.png"]}], "not a safe folder"),
        (
            [
                {"anonymous_caption": "a", "image_urls": ["http://h/images/3/0.png"]},
                {"anonymous_caption": "b", "image_urls": ["http://h/images/3/0.png"]},
            ],
            "seed group 1: image 3/0.png is also an image of seed group 0",
        ),
    ],
)
def test_bad_seed_group_json_names_the_entry(tmp_path, content, message):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        read_seed_group_json(path)


def test_local_folders_and_the_hub_dataset_folder(tmp_path):
    root = tmp_path / "mine"
    for group, caption, names in (("layers", "{Fruit} cut open", ["b.jpg", "a.png"]), ("queue", "a queue", ["q.webp"])):
        (root / group).mkdir(parents=True)
        (root / group / "caption.txt").write_text(caption + "\n")
        for k, name in enumerate(names):
            photo(20, 20, seed=k).save(root / group / name)
    (root / "layers" / "notes.md").write_text("not an image")
    (root / "layers" / ".DS_Store").write_bytes(b"\0")
    images, image_dir = load_seed_groups(root)
    assert image_dir == root
    assert [(i.file, i.caption) for i in images] == [
        ("layers/a.png", "{Fruit} cut open"),
        ("layers/b.jpg", "{Fruit} cut open"),
        ("queue/q.webp", "a queue"),
    ]
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has no caption.txt"):
        read_seed_group_folders(root)
    with pytest.raises(ValueError, match="its images are in it"):
        load_seed_groups(root, tmp_path / "elsewhere")

    # a snapshot of the Hub dataset: seed_group.json + images/{group}/{i}.png
    hub = tmp_path / "seed-groups"
    hub.mkdir()
    (hub / "seed_group.json").write_text((FIXTURES / "seed_group_head.json").read_text())
    images, image_dir = load_seed_groups(hub)
    assert image_dir == hub / "images" and images[0].file == "0/1.png"
    assert load_seed_groups(hub / "seed_group.json", tmp_path / "imgs")[1] == tmp_path / "imgs"
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_seed_groups(tmp_path / "nothing")


def test_held_out_groups_are_whole_and_stable():
    images = [SeedImage(f"{g}/{i}.png", f"caption {g}", str(g)) for g in range(40) for i in range(g % 3 + 1)]
    train, held = split_groups(images, 0.1)
    held_groups = {i.group for i in held}
    assert len(held_groups) == 4 and not held_groups & {i.group for i in train}
    assert len(train) + len(held) == len(images)
    assert {i.group for i in split_groups(images[::-1], 0.1)[1]} == held_groups  # order-free
    assert split_groups(images, 0.0)[1] == [] and len({i.group for i in split_groups(images, 0.001)[1]}) == 1
    with pytest.raises(ValueError, match="leaves none"):
        split_groups(images[:1], 0.5)


def test_download_seed_groups_resumes_and_reports(server, tmp_path):
    path = tmp_path / "seed_group.json"
    path.write_text(json.dumps(_groups(server)))
    out = tmp_path / "images"
    report = download_images(path, out, workers=3, timeout=5.0, retries=1, backoff=0.0)
    assert report.total == 6 and report.downloaded == 5 and len(report.failed) == 1
    assert report.failed[0] == {"image": "2/0.png", "group": "2", "url": f"{server}/gone.png", "reason": "HTTP 404"}
    hub = "/datasets/thaoshibe/seed-groups/resolve/main/images"
    assert (out / "7" / "1.png").read_bytes() == _png(len(f"{hub}/7/1.png") % 7)  # PNG bytes unchanged
    from PIL import Image

    with Image.open(out / "1" / "0.png") as img:  # the JPEG, decoded and stored as PNG
        assert img.format == "PNG" and img.size == (28, 36)
    assert (out / "1" / "1.png").is_file() and _Handler.hits["/b/flaky.png"] == 2  # a 503, retried
    assert not [p for p in out.rglob(".*")]  # no partial files
    failures = [json.loads(line) for line in (out / FAILURES_FILE).read_text().splitlines()]
    assert [f["image"] for f in failures] == ["2/0.png"]

    # the samples training reads are exactly the files written
    images, image_dir = load_seed_groups(path, out)
    assert sorted(i.file for i in images if (image_dir / i.file).is_file()) == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*.png")
    )

    # resume: nothing that is there is fetched again; through the CLI, exit 1 for the dead link
    _Handler.hits.clear()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["data", "download", str(path), str(out), "--retries", "0", "--timeout", "5"])
    assert code == 1 and "6 images: 0 downloaded, 5 already present, 1 failed" in stdout.getvalue()
    assert sum(_Handler.hits.values()) == 1 and _Handler.hits["/gone.png"] == 1
