"""benchmarks/bench_caption.py runs from a checkout and writes sane JSON (smoke runs; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "benchmarks/bench_caption.py", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def check_memory(data: dict) -> None:
    tiny, seven_b = data["memory"]["rows"]
    assert tiny["embedder_bytes"] > 0 and tiny["captioner_bytes"] > 0
    # the 7B figures are counted: LM head + the base's q/v weights + LoRA + one embedding row, in bf16
    assert seven_b["captioner_parts"]["lm_head"] == 152064 * 3584 * 2
    assert seven_b["captioner_parts"]["base_weights"] == 28 * (3584 * 3584 + 512 * 3584) * 2
    assert 1.1 < seven_b["ratio"] < 1.13 and seven_b["separate_ratio"] > 2


def test_cpu_quick(tmp_path):
    args = ["--quick", "--images", "2", "--upstream-images", "1", "--repeats", "1", "--max-new-tokens", "6"]
    run(*args, "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_caption-quick.json").read_text())
    assert {row["pipeline"] for row in data["cpu"]["rows"]} == {"upstream", "relsim", "relsim-shared"}
    assert all(row["captions_per_s"] > 0 and row["ratio_vs_upstream"] > 0 for row in data["cpu"]["rows"])
    assert all(p["token_ids_equal_upstream"] for p in data["cpu"]["parity"])
    check_memory(data)


def test_gpu_section_smoke_on_cpu(tmp_path):
    run("--gpu-smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_caption-gpu-smoke.json").read_text())
    rows = data["gpu"]["rows"]
    assert [r["batch_size"] for r in rows if r["pipeline"] == "relsim"] == [1, 2]
    assert all(r["all_full_length"] for r in rows if r["pipeline"] == "relsim")
    assert rows[-1]["pipeline"] == "upstream" and rows[-1]["captions_per_s"] > 0
