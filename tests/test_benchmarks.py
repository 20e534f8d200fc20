"""The CPU benchmark scripts run from a checkout and write sane JSON (smoke runs; no timing is asserted).

``benchmarks/gpu.py --tiny`` is exercised in tests/test_fastpath.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{name}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_bench_embed_quick(tmp_path):
    args = ["--quick", "--models", "tiny", "--images", "2", "--upstream-images", "1", "--repeats", "1"]
    run_script("bench_embed.py", *args, "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_embed-quick.json").read_text())
    pipelines = {row["pipeline"] for row in data["rows"]}
    assert pipelines == {"upstream", "relsim-native", "relsim-train"}
    assert all(row["images_per_s"] > 0 and row["ratio_vs_upstream"] > 0 for row in data["rows"])
    assert data["parity"] and all(p["max_abs_diff_native_vs_upstream"] < 1e-5 for p in data["parity"])
    assert (tmp_path / "bench_embed-quick.png").stat().st_size > 0


def test_bench_fastpath_counts_attention_calls(tmp_path):
    run_script("bench_fastpath.py", "--model", "tiny", "--batch-sizes", "2", "--repeats", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "bench_fastpath-tiny.json").read_text())["rows"]
    assert {(row["mode"], row["part"]) for row in rows} >= {("train", "vision"), ("native", "forward")}
    for row in rows:
        assert row["fastpath_sdpa_calls"] < row["plain_sdpa_calls"]
        assert row["max_abs_diff"] <= 1e-5


def test_bench_preprocess_stages(tmp_path):
    args = ["--images", "2", "--repeats", "1", "--sizes", "320x240"]
    result = run_script("bench_preprocess.py", *args, "--out", str(tmp_path))
    rows = json.loads((tmp_path / "preprocess.json").read_text())
    stages = {row["stage"] for row in rows}
    per_mode = ("prepare", "worker", "tensor-resize")
    assert stages == {"decode"} | {f"{stage}-{mode}" for stage in per_mode for mode in ("train", "native")}
    assert all(row["size"] == "320x240" and row["images_per_s"] > 0 for row in rows)
    assert "worker-train" in result.stdout


def test_eval_example_writes_the_four_outputs(tmp_path):
    """The script behind docs/evaluation.md's example (tiny random models, loopback judge)."""
    run_script("eval_example.py", "--out", str(tmp_path), "--images", "6", "--queries", "3")
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["method"] for s in results["summary"]] == ["relsim", "clip", "dino"]
    assert all(s["judged"] == 3 for s in results["summary"]) and "TINY RANDOM" in results["label"]
    assert all((tmp_path / name).is_file() for name in ("results.md", "results.png", "results.html"))


def test_bench_cli_start(tmp_path):
    run_script("bench_cli_start.py", "--repeats", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "cli_start.json").read_text())["rows"]
    assert [row["command"] for row in rows][1:3] == ["relsim --version", "relsim --help"]
    assert all(row["seconds"] > 0 for row in rows)


def test_bench_train_tiny_steps(tmp_path):
    """The training-step benchmark (docs/training.md's 7B estimates on a GPU) runs its tiny CPU smoke test."""
    run_script("bench_train.py", "--tiny", "--steps", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "bench_train-tiny.json").read_text())["rows"]
    kinds = {(r["model"], r["gradient_checkpointing"]) for r in rows}
    assert kinds == {("captioner", True), ("captioner", False), ("embedder", True)}
    assert all(r["images_per_s"] > 0 and r["tflop_per_image"] >= 0 for r in rows)


def test_bench_collection_small(tmp_path):
    out = tmp_path / "collection.json"
    args = ["--rows", "3000", "--queries", "5", "--clusters", "20", "--kinds", "IVF_SQ", "--settings", "8"]
    run_script("bench_collection.py", *args, "--out", str(out))
    data = json.loads(out.read_text())
    assert data["rows"] == 3000 and data["ingest_rows_per_s"] > 0 and data["disk_bytes"] > 3000 * 384 * 2
    assert data["flat"]["recall_at_10"] == 1.0  # flat search is exact: it agrees with relsim 0.1's search
    assert data["reference_exact"]["p50_ms"] > 0 and 0 < data["IVF_SQ"]["settings"]["8"]["recall_at_10"] <= 1
