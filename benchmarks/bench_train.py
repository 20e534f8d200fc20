"""Training-step benchmark: the captioner's and the embedder's optimiser step on the Qwen2.5-VL-7B architecture.

Random bf16 weights built directly in GPU memory cost the same FLOPs and memory as the published ones, so this
measures what docs/training.md estimates ("Time and memory of the 7B"): images per second, model TFLOP/s and
MFU (against 989 TFLOP/s, H100/H200 dense bf16) and peak memory of one step of

- the captioner (``relsim train-captioner``): LoRA on q_proj/v_proj, the answer-only loss on a 40-token caption
  (the seed groups' mean), with and without gradient checkpointing, at several micro-batch sizes;
- the embedder (``relsim train``): LoRA + projection head, InfoNCE, with gradient checkpointing.

A step is forward + backward + AdamW on the trainable parameters, as the training loop runs it (bf16 autocast,
float32 master weights). Model FLOPs per image: the vision tower forward, the language model forward, its
backward (about one more forward: gradients flow to the LoRA factors through frozen weights), and under
checkpointing a recomputed forward; the captioner adds the LM head at the answer positions.

Usage, from the repository root::

    PYTHONPATH=. python benchmarks/bench_train.py            # CUDA: the 7B architecture, ~3 minutes
    PYTHONPATH=. python benchmarks/bench_train.py --tiny     # CPU smoke test: the tiny model, float32

Writes ``bench_train.json`` (``bench_train-tiny.json``) under ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import gpu  # noqa: E402

PEAK_TFLOPS = 989.0
ANSWER_TOKENS = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU in float32 (smoke test)")
    parser.add_argument("--micro-batches", default=None, help="captioner micro-batch sizes (default 8,32; --tiny 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    args.micro_batches = [int(b) for b in (args.micro_batches or ("2" if args.tiny else "8,32")).split(",")]
    return args


def lm_flops(config, tokens: int) -> float:
    """Forward FLOPs of the language model's decoder layers over ``tokens`` (causal attention)."""
    t = config.text_config
    d, kv = t.hidden_size, t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    per_layer = 2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * t.intermediate_size)
    return float(t.num_hidden_layers * (per_layer + 4 * (tokens * (tokens + 1) // 2) * d))


def vision_flops(config) -> float:
    """Forward FLOPs of the vision tower and merger on one 448x448 image."""
    image_tokens = 256
    return common.image_flops(config, 448, 448, "train", prompt_tokens=0) - lm_flops(config, image_tokens)


def step_flops(config, tokens: int, checkpointing: bool, head_rows: int = 0) -> float:
    """Model FLOPs of one image in a training step (see the module docstring)."""
    passes = 3 if checkpointing else 2
    head = 2 * 2 * config.text_config.hidden_size * config.text_config.vocab_size * head_rows
    return vision_flops(config) + passes * lm_flops(config, tokens) + head


def set_checkpointing(body: nn.Module, on: bool) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(body, "activation_checkpointing_enable"):
        body.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs) if on else (
            body.activation_checkpointing_disable()
        )
    else:
        body.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs) if on else (
            body.gradient_checkpointing_disable()
        )


def time_steps(step, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step (best of ``steps`` after a warm-up) and peak memory in GiB."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return best, peak


def row(name: str, batch: int, checkpointing: bool, seconds: float, peak: float, flops: float, tiny: bool) -> dict:
    tflops = flops * batch / seconds / 1e12
    return {
        "model": name,
        "micro_batch": batch,
        "gradient_checkpointing": checkpointing,
        "s_per_step": round(seconds, 4),
        "images_per_s": round(batch / seconds, 3),
        "tflop_per_image": round(flops / 1e12, 3),
        "tflops": round(tflops, 2),
        "mfu": None if tiny else round(tflops / PEAK_TFLOPS, 4),
        "peak_gib": None if peak != peak else round(peak, 2),
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_flush_denormal(True)
    config = gpu.model_config(args.tiny)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 448, 448), dtype=torch.uint8, generator=generator) for _ in range(64)]
    rows = bench_captioner(args, config, device, dtype, images)
    gc.collect()
    rows.append(bench_embedder(args, config, device, dtype, images))  # a fresh body: peft's layers stay in the first
    return {"machine": common.machine_info(), "tiny": args.tiny, "answer_tokens": ANSWER_TOKENS, "rows": rows}


def bench_captioner(args, config, device: torch.device, dtype: torch.dtype, images: list) -> list[dict]:
    from relsim.caption_inputs import TRAINING_PROMPT, CaptionPrompt
    from relsim.preprocess import patchify
    from relsim.train.caption_model import CaptionerTrainModel
    from relsim.train.model import HubNames, add_lora

    body = gpu.build_body(config, device, dtype)
    text = config.text_config
    with torch.device(device):
        head = nn.Linear(text.hidden_size, text.vocab_size, bias=False, dtype=dtype).requires_grad_(False)
        nn.init.normal_(head.weight, std=0.02)
    _, tokenizer = gpu.build_prompt()
    prompt = CaptionPrompt.from_tokenizer(tokenizer, TRAINING_PROMPT, config.image_token_id)
    tokens = len(prompt.ids(256)) + ANSWER_TOKENS
    answer = list(range(1000, 1000 + ANSWER_TOKENS - 1)) + [151645]  # a caption's tokens and <|im_end|>
    torch.manual_seed(0)
    lora = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, target_modules=None, gradient_checkpointing=True)
    model = CaptionerTrainModel(add_lora(HubNames(body, head), body, **lora), prompt, 151643, _autocast(args))
    model.master_weights()
    model.train()
    optimizer = torch.optim.AdamW(list(model.trainable().values()), lr=2e-4, weight_decay=0.0)
    rows = []
    for checkpointing in (True, False):
        set_checkpointing(body, checkpointing)
        for batch in args.micro_batches if checkpointing else args.micro_batches[:1]:
            pixel_values, grid = patchify(images[:batch], device=device, dtype=dtype)

            def step(pv=pixel_values, g=grid, n=batch):
                loss_sum, count, _ = model(pv, g, [answer] * n)
                (loss_sum / count).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            seconds, peak = time_steps(step, args.steps, device)
            flops = step_flops(config, tokens, checkpointing, head_rows=ANSWER_TOKENS)
            rows.append(row("captioner", batch, checkpointing, seconds, peak, flops, args.tiny))
            print(rows[-1], flush=True)
    return rows


def bench_embedder(args, config, device: torch.device, dtype: torch.dtype, images: list) -> dict:
    from relsim.preprocess import patchify
    from relsim.train.model import HubNames, TrainModel, add_lora

    body = gpu.build_body(config, device, dtype)
    prompt, _ = gpu.build_prompt()
    torch.manual_seed(0)
    projection = nn.Linear(config.text_config.hidden_size, 384, device=device)
    lora = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, target_modules=None, gradient_checkpointing=True)
    model = TrainModel(add_lora(HubNames(body), body, **lora), projection, prompt, _autocast(args))
    model.master_weights()
    model.train()
    optimizer = torch.optim.AdamW(list(model.trainable().values()), lr=1e-4, weight_decay=0.01)
    batch = args.micro_batches[-1]
    pixel_values, grid = patchify(images[:batch], device=device, dtype=dtype)
    targets = F.normalize(torch.randn(batch, 384, generator=torch.Generator().manual_seed(1)), dim=-1).to(device)

    def step():
        embeddings = model(pixel_values, grid)
        F.cross_entropy(embeddings @ targets.T / 0.07, torch.arange(batch, device=device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peak = time_steps(step, args.steps, device)
    flops = step_flops(config, len(prompt.prefix) + 256 + len(prompt.suffix), True)
    result = row("embedder", batch, True, seconds, peak, flops, args.tiny)
    print(result, flush=True)
    return result


def _autocast(args) -> torch.dtype | None:
    return None if args.tiny else torch.bfloat16


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("bench_train.py needs CUDA (or --tiny for a CPU smoke test)", file=sys.stderr)
        return 2
    data = run(args)
    path = common.write_json(data, args.out / ("bench_train-tiny.json" if args.tiny else "bench_train.json"))
    print(common.markdown_table(data["rows"], [(k, k) for k in data["rows"][0]]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
