"""What a pair heatmap costs: ``model.heatmap(A, B)`` against ``model.embed(A)`` on the same images, same machine.

A heatmap runs A's forward with the graph kept from A's image tokens on, one backward to them (input gradients
only: the weights are frozen), and B's embedding (the target). ``ratio_own_work`` is A's forward + backward over
A's embedding; ``ratio_with_b_image`` adds one embedding for B (a pair whose B is not embedded yet). The memory
is what autograd keeps for the backward: ``saved_mib`` per image and ``saved_bytes_per_token_layer``
(docs/heatmaps.md scales it to the 7B).

    python benchmarks/bench_heatmap.py --size tiny            # random checkpoints built in code (tiny, mid, proxy)
    python benchmarks/bench_heatmap.py --model ADAPTER_DIR --base-model BASE_DIR --device cuda --dtype bfloat16

Times are the best of ``--repeats`` interleaved runs (embed, heatmap, embed, ...), so a shared machine's load
weighs on both; the load average before and after is recorded. Prints a table and writes
benchmarks/results/bench_heatmap-<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--size", choices=sorted(common.MODEL_SIZES), default=None, help="random checkpoint (tiny)")
    source.add_argument("--model", type=Path, help="a relsim adapter directory (with --base-model)")
    parser.add_argument("--base-model", type=Path, help="the base Qwen2.5-VL directory of --model")
    parser.add_argument("--mode", choices=("train", "native"), default="train")
    parser.add_argument("--image-size", default="640x480", help="WxH of the photo-like JPEGs (default: 640x480)")
    parser.add_argument("--images", type=int, default=4, help="images A (default: 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: float32 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.model is not None and args.base_model is None:
        parser.error("--model needs --base-model")
    if args.model is None and args.size is None:
        args.size = "tiny"
    return args


def measure(model, images: list[Path], target: Path, batch_size: int, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of embedding the images and of their heatmaps against ``target`` (an image),
    interleaved; ``ratio_without_target`` takes one image's embedding (B's) off the heatmap's time."""
    on_gpu = model.device.type == "cuda"
    times = {"embed": float("inf"), "heatmap": float("inf")}
    peaks = {"embed": 0.0, "heatmap": 0.0}
    runs = {
        "embed": lambda: model.embed(images, batch_size=batch_size),
        "heatmap": lambda: model.heatmap(images, target, batch_size=batch_size),
    }
    runs["embed"]()  # warm-up (allocator, kernels)
    runs["heatmap"]()
    for _ in range(repeats):
        for name, run in runs.items():
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with common.PeakRSS() as rss:
                run()
            if on_gpu:
                torch.cuda.synchronize()
            times[name] = min(times[name], time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else rss.mib
            peaks[name] = max(peaks[name], peak)
    one_target = times["embed"] / len(images)  # B's embedding: one per call here (one B for all A's)
    own = (times["heatmap"] - one_target) / times["embed"]
    return {
        "images": len(images),
        "embed_s_per_image": times["embed"] / len(images),
        "heatmap_s_per_image": times["heatmap"] / len(images),
        "ratio_own_work": own,
        "ratio_with_b_image": own + 1,
        "peak_mib_embed": peaks["embed"],
        "peak_mib_heatmap": peaks["heatmap"],
        "peak_kind": "cuda allocated" if on_gpu else "process RSS",
        **saved_activations(model, images[0], target),
    }


def saved_activations(model, image: Path, target: Path) -> dict:
    """What one image's heatmap keeps for its backward (autograd's saved tensors, weights left out): MiB, and
    bytes per language-model token per decoder layer (the figure docs/heatmaps.md scales to the 7B)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        heatmap = model.heatmap(image, target)
    tokens = model.prompt.length(heatmap.map.numel())
    layers = model.body.config.text_config.num_hidden_layers
    total = sum(saved.values())
    return {"lm_tokens": tokens, "saved_mib": total / 2**20, "saved_bytes_per_token_layer": total / tokens / layers}


def main(argv: list[str] | None = None) -> dict:
    import relsim

    args = parse_args(argv)
    threads = common.setup_cpu(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    width, height = (int(v) for v in args.image_size.split("x"))
    data = {"machine": common.machine_info(), "threads": threads, "load_before": common.load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is None:
            adapter, base = common.build_checkpoint(root, args.size)
            name = args.size
        else:
            adapter, base, name = args.model, args.base_model, args.model.name
        model = relsim.load(adapter, base_model=base, device=args.device, dtype=dtype, mode=args.mode)
        images = common.make_photos(root / "photos", width, height, args.images)
        target = common.make_photos(root / "target", width, height, 1, seed=1000)[0]
        row = measure(model, images, target, args.batch_size, args.repeats)
    row.update(model=name, mode=args.mode, dtype=str(model.dtype).removeprefix("torch."), image_size=args.image_size)
    data["load_after"] = common.load_average()
    data["rows"] = [row]
    out = common.write_json(data, args.out / f"bench_heatmap-{name}.json")
    columns = [
        ("model", "model"),
        ("mode", "mode"),
        ("dtype", "dtype"),
        ("embed_s_per_image", "embed s/img"),
        ("heatmap_s_per_image", "heatmap s/img"),
        ("ratio_own_work", "heatmap / embed (A's own work)"),
        ("ratio_with_b_image", "with B's embedding"),
        ("peak_mib_embed", "peak MiB embed"),
        ("peak_mib_heatmap", "peak MiB heatmap"),
        ("saved_mib", "saved for backward MiB/img"),
        ("saved_bytes_per_token_layer", "bytes/token/layer"),
    ]
    print(common.markdown_table(data["rows"], columns))
    print(f"load average before {data['load_before']}, after {data['load_after']}; wrote {out}")
    return data


if __name__ == "__main__":
    main()
