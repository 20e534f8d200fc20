"""Hardening of the collection commands (issue 10 items 2, 3, 5, 7, 8, 12-14 and the cosmetic ones), end to end
on the tiny model: special files, Ctrl-C, thin images in pages, disk full, damaged collections, prune, repair,
--reembed, JSON without NaN, one line per path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, photo
from conftest import run_cli as run
from PIL import Image

pytest.importorskip("lancedb")

from relsim.collection import Collection  # noqa: E402


@pytest.fixture(scope="module")
def model_args(tiny_model, adapter_dir, base_dir) -> list[str]:
    return ["--model", str(adapter_dir), "--base-model", str(base_dir)]


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------ 10.5 special files


def test_fifos_and_devices_are_skipped_with_their_reason(model_args, tmp_path) -> None:
    folder = tmp_path / "imgs"
    first = make_images(folder, 2)[0]
    os.mkfifo(folder / "x.jpg")  # nobody ever writes to it: opening it for reading blocks for ever
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "link.png").symlink_to(first)  # a symlink to a regular file is fine
    argv = [sys.executable, "-m", "relsim.cli", "embed", str(folder), "-o", str(tmp_path / "c"), *model_args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 3, proc.stderr
    assert "skipped 2 unreadable files" in proc.stderr
    assert f"{folder / 'x.jpg'}: cannot read file (not a regular file (a FIFO))" in proc.stderr
    assert f"{folder / 'zero.jpg'}: cannot read file (not a regular file (a character device))" in proc.stderr
    assert "2 embedded" in proc.stdout  # img_00 and its link resolve to one file
    assert {f["path"] for f in Collection.open(tmp_path / "c").failures()} == {
        str(folder / "x.jpg"),
        str(folder / "zero.jpg"),
    }


def test_ctrl_c_stops_within_seconds_keeping_what_was_saved(adapter_dir, base_dir, tmp_path) -> None:
    folder, out = tmp_path / "imgs", tmp_path / "c"
    make_images(folder, 8, seed=10)
    argv = ["embed", str(folder), "-o", str(out), "--batch-size", "2", "--model", str(adapter_dir)]
    argv += ["--base-model", str(base_dir)]
    script = textwrap.dedent(
        f"""
        import sys, time, relsim, faulthandler, signal
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # Ctrl-C as a terminal delivers it: a test process can hand SIGINT down ignored or blocked (both survive
        # fork and exec), and then no program could see it.
        inherited = signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print(f"SIGINT inherited as (handler, blocked) = {{inherited}}", file=sys.stderr, flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        from relsim.cli import main
        original, calls = relsim.RelSimModel._embed_batch, []
        def slow(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                print("ready", flush=True)
                time.sleep(600)  # a batch that takes for ever (a huge model on a slow machine)
            return original(self, *args, **kwargs)
        relsim.RelSimModel._embed_batch = slow
        sys.exit(main({argv!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no exit 30 s after Ctrl-C; its threads:\n{err}") from None
    assert proc.returncode == 130 and "interrupted" in err
    assert time.monotonic() - start < 10
    assert len(Collection.open(out)) == 4  # the two batches committed before the interrupt


# ---------------------------------------------------------------------------------- 10.7 thin thumbnails


def test_html_and_grid_survive_thin_and_missing_images(model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    paths = make_images(folder, 3)
    Image.new("RGB", (1000, 2), "red").save(folder / "strip.png")
    Image.new("RGB", (2, 1000), "blue").save(folder / "pole.png")
    assert run(capsys, "embed", folder, "-o", tmp_path / "c", *model_args)[0] == 0
    paths[2].unlink()  # gone since it was embedded: "file unavailable", the page still written
    page, grid = tmp_path / "r.html", tmp_path / "r.png"
    code, out, err = run(
        capsys, "search", tmp_path / "c", "--image", folder / "strip.png", "-k", "5", "--html", page, "--grid", grid
    )
    assert code == 0, err
    text = page.read_text()
    assert text.count('src="data:image/jpeg;base64,') == 5 and text.count("file unavailable") == 1
    assert Image.open(grid).size == (8 + 6 * 200, 8 + 236)
    unavailable = [line for line in out.splitlines() if "[file unavailable]" in line]
    assert len(unavailable) == 1 and str(paths[2]) in unavailable[0]  # text output marks it too (10.13)


# ------------------------------------------------------------------------------------- 10.8 disk full


def test_file_size_limit_during_embed_is_one_line(model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 2)
    assert run(capsys, "embed", folder, "-o", tmp_path / "c", *model_args)[0] == 0
    make_images(tmp_path / "more", 4, seed=30)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from relsim.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))
        sys.exit(main({["embed", str(tmp_path / "more"), "-o", str(tmp_path / "c"), *model_args]!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relsim embed: error: cannot write to the collection")
    assert str(tmp_path / "c") in lines[0]
    assert len(Collection.open(tmp_path / "c")) == 2


# ----------------------------------------------------------------- 10.3, 10.12-14: damaged collections


def _collection(model_args, tmp_path, capsys, n: int = 4) -> tuple[Path, list[Path]]:
    paths = make_images(tmp_path / "imgs", n)
    assert run(capsys, "embed", tmp_path / "imgs", "-o", tmp_path / "c", *model_args)[0] == 0
    return tmp_path / "c", paths


def test_bad_rows_never_reach_json_and_repair_drops_them(model_args, tmp_path, capsys) -> None:
    import lancedb
    import pyarrow as pa

    uri, paths = _collection(model_args, tmp_path, capsys)
    table = lancedb.connect(str(uri)).open_table("embeddings")
    row = table.search().where(f"path = '{paths[0]}'").limit(None).to_arrow()
    vector = np.asarray(row.column("vector")[0].as_py(), np.float32)
    bad = row.to_pylist()[0] | {"path": "/corrupt/nan.png", "vector": np.full_like(vector, np.inf).tolist()}
    long = row.to_pylist()[0] | {"path": "/corrupt/long.png", "vector": (3 * vector).tolist()}
    table.add(pa.Table.from_pylist([bad, long], schema=table.schema))
    code, out, _ = run(capsys, "search", uri, "--image", paths[0], "-k", "10", "--json")
    results = _no_nan(out)["results"]
    assert code == 0 and len(results) == 4 and not any(r["path"].startswith("/corrupt") for r in results)
    code, out, _ = run(capsys, "info", uri, "--check")
    assert code == 3 and "/corrupt/long.png" in out and "relsim repair" in out
    code, out, _ = run(capsys, "repair", uri)
    assert code == 0 and "dropped 2 row(s)" in out
    assert run(capsys, "info", uri, "--check")[0] == 0


def test_damaged_metadata_is_one_clear_line(model_args, tmp_path, capsys) -> None:
    import lancedb

    uri, _ = _collection(model_args, tmp_path, capsys, n=2)
    db = lancedb.connect(str(uri))
    data = db.open_table("embeddings").to_arrow()
    meta = json.loads(data.schema.metadata[b"relsim"]) | {"fingerprint": None}
    db.create_table("embeddings", data.replace_schema_metadata({b"relsim": json.dumps(meta)}), mode="overwrite")
    code, _, err = run(capsys, "info", uri)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "fingerprint must be an object" in err
    code, out, _ = run(capsys, "info", uri, "--check")
    assert code == 3 and "restores the metadata of version" in out
    assert run(capsys, "repair", uri)[0] == 0
    assert run(capsys, "info", uri)[0] == 0


def test_prune_and_embed_prune(model_args, tmp_path, capsys) -> None:
    uri, paths = _collection(model_args, tmp_path, capsys)
    paths[0].unlink()
    code, out, _ = run(capsys, "prune", uri)
    assert code == 0 and "dropped 1 row of files that are gone" in out and str(paths[0]) in out
    paths[1].unlink()
    code, out, _ = run(capsys, "embed", tmp_path / "imgs", "-o", uri, "--prune")
    assert code == 0 and "1 pruned" in out and len(Collection.open(uri)) == 2


def test_reembed_with_another_model(model_args, tiny_native_model, tmp_path, capsys) -> None:
    uri, paths = _collection(model_args, tmp_path, capsys, n=2)
    code, _, err = run(capsys, "embed", tmp_path / "imgs", "-o", uri, "--mode", "native", *model_args)
    assert code == 1 and "--reembed" in err
    code, out, _ = run(capsys, "embed", tmp_path / "imgs", "-o", uri, "--mode", "native", "--reembed", *model_args)
    assert code == 0 and "2 embedded" in out
    col = Collection.open(uri)
    assert col.fingerprint["mode"] == "native"
    np.testing.assert_allclose(col.vectors(paths).numpy(), tiny_native_model.embed(paths).numpy(), atol=2e-3)


# ------------------------------------------------------------------------------------------- cosmetics


def test_empty_text_and_newlines_in_names(model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 2)
    odd = folder / "two\nlines.png"
    photo(44, 44, 5).save(odd)
    assert run(capsys, "embed", folder, "-o", tmp_path / "c", *model_args)[0] == 0
    code, _, err = run(capsys, "search", tmp_path / "c", "--text", "  ")
    assert code == 2 and "empty" in err
    code, out, _ = run(capsys, "search", tmp_path / "c", "--image", odd, "-k", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and json.dumps(str(odd)) in lines[1]


def test_index_kinds_agree() -> None:
    from relsim import collection
    from relsim.commands import collection as commands

    assert commands.INDEX_KINDS == collection.INDEX_KINDS


def test_index_export_migrate_commands(model_args, tmp_path, capsys) -> None:
    fixture = Path(__file__).parent / "fixtures" / "store_v0_1" / "photos.relsim"
    code, out, _ = run(capsys, "migrate", fixture, tmp_path / "migrated")
    assert code == 0 and "holds 5 embeddings" in out
    code, _, err = run(capsys, "search", fixture, "--text", "x")
    assert code == 1 and "relsim migrate" in err
    code, out, _ = run(capsys, "export", tmp_path / "migrated", tmp_path / "out", "--format", "npy")
    assert code == 0 and np.load(tmp_path / "out" / "img_emb" / "img_emb_0000.npy").shape == (5, 384)
    code, _, err = run(capsys, "index", tmp_path / "migrated")
    assert code == 1 and "at least 256" in err


def test_export_refuses_a_used_target_in_one_line(tmp_path, capsys) -> None:
    """Issue 21, items 1 and 7: a non-empty OUT needs --overwrite; OUT inside the collection or a file: exit 2."""
    fixture = Path(__file__).parent / "fixtures" / "store_v0_1" / "photos.relsim"
    store, out = tmp_path / "c", tmp_path / "out"
    assert run(capsys, "migrate", fixture, store)[0] == 0
    assert run(capsys, "export", store, out, "--format", "parquet")[0] == 0
    code, _, err = run(capsys, "export", store, out)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    code, out_text, _ = run(capsys, "export", store, out, "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["img_emb", "metadata", "relsim.json"]
    (tmp_path / "file").write_text("x")
    for target, needle in [(store, "inside the collection"), (store / "embeddings.lance", "inside the collection"),
                           (tmp_path / "file", "is a file")]:  # fmt: skip
        code, _, err = run(capsys, "export", store, target, "--overwrite")
        assert code == 2 and err.count("\n") == 1 and needle in err and "Errno" not in err, err
    assert len(Collection.open(store)) == 5
    for argv in (["search", "/dev/null", "--text", "x"], ["info", tmp_path / "file"]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.count("\n") == 1 and "is a file, not a relsim collection" in err, err
