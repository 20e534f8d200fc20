"""The benchmark scripts run from a checkout and write sane JSON (smoke runs; no timing is asserted).

``benchmarks/gpu.py --tiny`` runs the GPU benchmark's whole path on CPU in bfloat16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{name}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_bench_embed_quick(tmp_path):
    args = ["--quick", "--images", "2", "--upstream-images", "1", "--repeats", "1"]
    result = run_script("bench_embed.py", *args, "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_embed-quick.json").read_text())
    assert {row["pipeline"] for row in data["rows"]} == {"upstream", "relsim-native", "relsim-native-1", "relsim-train"}
    assert {row["size"] for row in data["rows"]} == {"448x448", "1024x768", "mix"}
    assert all(row["images_per_s"] > 0 and row["ratio_vs_upstream"] > 0 for row in data["rows"])
    assert data["parity"] and all(p["max_abs_diff_native_vs_upstream"] < 1e-5 for p in data["parity"])
    native = {row["size"]: row for row in data["rows"] if row["pipeline"] == "relsim-native"}
    assert all(row["ratio_vs_one_at_a_time"] > 0 for row in native.values())
    # the mix is one 640x480, one 1024x768 and one 1920x1080 photo: three batches, no padding
    assert native["mix"]["images"] == 3 and native["mix"]["padding"] == 1.0
    assert "x one at a time" in result.stdout and data["load_before"] is not None
    assert (tmp_path / "bench_embed-quick.png").stat().st_size > 0


def test_proxy_splits_upstream_work_like_the_7b():
    """benchmarks/proxy.py: vision / language / LM head / attention shares within 1 point of the 7B's at the
    fitted sizes (448x448, 1024x768), at 1/159 of the work; the tiny model is nothing like it."""
    import proxy

    rows = proxy.split_rows(list(proxy.FITTED_SIZES))
    assert proxy.worst_difference(rows) <= proxy.TOLERANCE_PP
    seven_b = {r["size"]: r for r in rows if r["model"] == "7B"}
    assert 5 < seven_b["448x448"]["lm_head_pct"] < 6.5 and 2 < seven_b["1024x768"]["attention_pct"] < 3.5
    for row in rows:
        if row["model"] == "proxy":
            assert 150 < seven_b[row["size"]]["gflop_upstream"] / row["gflop_upstream"] < 170
    import tiny
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(**tiny.base_config())
    tiny_split = common.upstream_flops(config, 448, 448)
    assert tiny_split["lm_head"] / sum(tiny_split.values()) > 0.5  # why the tiny model cannot stand in


def test_upstream_flop_split_matches_torch_flop_counter(tmp_path):
    """The upstream-side arithmetic (22 prompt tokens, LM head at every position, cut to the proxy's rows)
    counts what torch counts on the tiny model's upstream pipeline (eager attention: the full square)."""
    from conftest import photo
    from reference import upstream_native_image
    from torch.utils.flop_counter import FlopCounterMode

    adapter, base = common.build_checkpoint(tmp_path, "tiny")
    pipeline = common.upstream_pipeline(adapter, base, "proxy")  # the LM head cut to PROXY_LM_HEAD_ROWS
    pipeline.model.get_base_model().set_attn_implementation("eager")
    image = upstream_native_image(photo(480, 640, 0))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        pipeline.embed(image)
    config = pipeline.model.get_base_model().config
    parts = common.flop_split(
        config, 640, 480, "native", prompt_tokens=22, causal=False, lm_head_rows=common.PROXY_LM_HEAD_ROWS
    )
    text = config.text_config
    d, kv = text.hidden_size, text.num_key_value_heads * text.hidden_size // text.num_attention_heads
    tokens = parts["lm_head"] // (2 * d * common.PROXY_LM_HEAD_ROWS)
    lora = text.num_hidden_layers * 2 * tokens * 16 * ((d + d) + (d + kv))  # peft's unmerged r=16 q_proj, v_proj
    assert counter.get_total_flops() == pytest.approx(sum(parts.values()) + lora, rel=2e-4)


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
    assert [s["method"] for s in results["summary"]] == ["relsim", "clip", "dino", "caption"]  # dreamsim: no package
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
    memory = data["flat_memory"]  # so is the flat path with the vectors in memory, one query or a batch
    assert memory["recall_at_10"] == memory["batch_recall_at_10"] == 1.0 and memory["load_s"] > 0
    assert data["reference_exact"]["p50_ms"] > 0 and 0 < data["IVF_SQ"]["settings"]["8"]["recall_at_10"] <= 1


def test_gpu_benchmark_tiny_runs_every_section_in_bfloat16(tmp_path):
    """``benchmarks/gpu.py --tiny``: the GPU script's path on the tiny model, on CPU, in bfloat16."""
    result = run_script("gpu.py", "--tiny", "--out", str(tmp_path))
    data = json.loads((tmp_path / "gpu-tiny.json").read_text())
    assert data["dtype"] == "bfloat16"
    assert data["modules"].keys() == {"visual", "language_model"}
    assert all(set(counts) == {"bfloat16"} for counts in data["modules"].values()), data["modules"]
    upstream = data["sections"]["upstream"]["modules"]
    assert set(upstream["lm_head"]) == {"bfloat16"} and set(upstream["lora_adapter (float32 by design)"]) == {"float32"}
    assert set(data["sections"]["reference"]["modules"]["language_model"]) == {"float32"}
    expected = ["build", "roof", "reference", "upstream", "agreement", "forward", "embed", "device-resize"]
    assert list(data["sections"]) == expected
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in data["sections"].values()), data["sections"]
    rows = data["rows"]
    assert {"relsim-train", "relsim-native", "upstream", "train-worker-resize"} <= {r["pipeline"] for r in rows}
    assert all(r["images_per_s"] > 0 and r["mfu_roof"] > 0 for r in rows)
    assert all(r["padding"] >= 1.0 for r in rows if r["pipeline"] == "relsim-native")
    assert any("x_batch1" in r for r in rows) and any("x_upstream" in r for r in rows)
    agreement = data["agreement"]
    assert agreement["pairs"] == 6 and agreement["relsim_vs_float32"]["score_max"] > 0
    assert agreement["relsim_vs_upstream"]["score_max"] < 0.01  # bf16 noise, not a different function
    assert data["sections"]["roof"]["tflops"] > 0 and data["environment"]["transformers"]
    assert data["device_resize"]["checked"] > 0 and data["device_resize"]["mismatches"] == []
    assert "MFU" in result.stdout and result.returncode == 0


def test_gpu_benchmark_builds_every_module_in_the_requested_dtype():
    """tests/tiny.py's config says float32; transformers 5 built the language model from it whatever the default
    dtype was. gpu.py sets the dtype on every sub-config, and its census catches a module off that dtype."""
    import gpu

    body = gpu.build_body(gpu.model_config(True, torch.bfloat16), torch.device("cpu"))
    census = gpu.dtype_census({"visual": body.visual, "language_model": body.language_model})
    assert all(set(counts) == {"bfloat16"} for counts in census.values()), census
    assert gpu.dtype_mismatches(census, {"visual": torch.bfloat16, "language_model": torch.bfloat16}) == []
    import tiny
    from transformers import Qwen2_5_VLConfig

    plain = Qwen2_5_VLConfig(**tiny.base_config())  # the config as tests/tiny.py writes it
    plain.dtype = torch.bfloat16  # the top level alone is not enough
    wrong = gpu.build_body(plain, torch.device("cpu"))
    census = gpu.dtype_census({"visual": wrong.visual, "language_model": wrong.language_model})
    assert gpu.dtype_mismatches(census, {"visual": torch.bfloat16, "language_model": torch.bfloat16}) == [
        f"language_model: {census['language_model']['float32']:,} parameters in float32, expected bfloat16"
    ]


def test_bench_heatmap_tiny(tmp_path):
    """benchmarks/bench_heatmap.py on the tiny model: sane JSON (no timing is asserted)."""
    result = run_script("bench_heatmap.py", "--size", "tiny", "--images", "2", "--repeats", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_heatmap-tiny.json").read_text())
    (row,) = data["rows"]
    assert row["model"] == "tiny" and row["images"] == 2 and row["dtype"] == "float32"
    assert row["embed_s_per_image"] > 0 and row["heatmap_s_per_image"] > 0
    assert row["ratio_with_b_image"] == pytest.approx(row["ratio_own_work"] + 1)
    assert row["saved_mib"] > 0 and row["lm_tokens"] == 273 and row["saved_bytes_per_token_layer"] > 0
    assert data["load_before"] is not None and "heatmap / embed" in result.stdout

def test_bench_cpu_7b_tiny_scale(tmp_path):
    """The 7B-vs-students benchmark's whole path on the tiny shapes: sharded checkpoint, one child per pipeline."""
    result = run_script("bench_cpu_7b.py", "--scale", "tiny", "--count", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_cpu_7b-tiny.json").read_text())
    pipelines = [row["pipeline"] for row in data["rows"]]
    assert pipelines == ["relsim", "upstream", "dinov2-small", "dinov2-base", "siglip-base-patch16-224"]
    for row in data["rows"]:
        assert row["load_s"] > 0 and row["s_per_image"] > 0 and row["peak_rss_mib"] > 0 and row["teacher_over_this"] > 0
    assert data["rows"][0]["teacher_over_this"] == 1.0 and data["machine"]["cpu"] and data["checkpoint_gib"] > 0
    assert "load average" in result.stdout and "| relsim |" in result.stdout


def test_bench_students_tiny(tmp_path):
    run_script("bench_students.py", "--tiny", "--repeats", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_students-tiny.json").read_text())
    assert [row["student"] for row in data["rows"]] == ["dinov2-small", "dinov2-base", "siglip-base-patch16-224"]
    assert all(row["forward_images_per_s"] > 0 and row["loss_images_per_s"] > 0 for row in data["rows"])
