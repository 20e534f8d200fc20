"""CPU benchmark: relsim's batched embedding vs the upstream-style pipeline, same weights, same images.

For each model size (random ``tiny`` and ``mid`` Qwen2.5-VL checkpoints built in code) and each image
size (photo-like JPEGs written by this script), it times, end to end from JPEG paths:

- ``upstream``: what upstream inference does (tests/reference.py): one image at a time, native resolution,
  the tokenizer + transformers' ``Qwen2VLImageProcessorPil``, the full ``Qwen2_5_VLForConditionalGeneration``
  forward with ``output_hidden_states=True`` (LM head over every position), the peft adapter unmerged;
- ``relsim-native``: ``relsim.load(mode="native")`` — the same resolution and result as upstream, batched;
- ``relsim-train``: ``relsim.load()`` (the default: 448x448 centre crop, what the model was trained on).

and reports images/s, the ratio to upstream, peak RSS of each timed run, and the parity of relsim-native
with upstream (max abs difference of the embeddings, float32). JSON and a PNG plot go to
benchmarks/results/.

    python benchmarks/bench_embed.py            # 3-10 minutes on 2 cores
    python benchmarks/bench_embed.py --quick    # under a minute: tiny model, two sizes
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

PIPELINES = ("upstream", "relsim-native", "relsim-train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 448 and 1024x768, few images")
    parser.add_argument("--models", default="tiny,mid", help="comma-separated model sizes (tiny, mid)")
    parser.add_argument("--sizes", default=",".join(common.SIZES), help="comma-separated WxH sizes")
    parser.add_argument("--images", type=int, default=None, help="images per size for relsim (default: PROFILE)")
    parser.add_argument("--upstream-images", type=int, default=None, help="images per size for upstream")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    parser.add_argument("--name", default=None, help="output file stem (default: bench_embed[-quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.sizes = "tiny", "448x448,1024x768"
    return args


#: (relsim images, upstream images, repeats) per model size: the default run stays under ~10 minutes on
#: 2 cores (the mid model needs ~30 s per 1920x1080 image natively, ~60 s upstream-style). --quick: tiny only.
PROFILE = {"tiny": (16, 4, 3), "mid": (4, 1, 2)}
QUICK_PROFILE = (8, 2, 1)


def counts(args: argparse.Namespace, model_size: str) -> tuple[int, int, int]:
    images, upstream, repeats = QUICK_PROFILE if args.quick else PROFILE[model_size]
    return (args.images or images, args.upstream_images or upstream, args.repeats or repeats)


def load_pipelines(adapter: Path, base: Path) -> dict:
    """The three pipelines on the same checkpoint files (the relsim models share nothing with upstream's)."""
    from reference import UpstreamPipeline

    import relsim
    from relsim import fastpath

    models = {}
    for mode in ("native", "train"):
        model = relsim.load(adapter, base_model=base, device="cpu", dtype=torch.float32, mode=mode)
        fastpath.optimize(model.body)  # no-op once relsim.load wires it in
        models[f"relsim-{mode}"] = model
    models["upstream"] = UpstreamPipeline(adapter, base)
    return models


def upstream_embed(pipeline, paths: list[Path]) -> torch.Tensor:
    """Upstream inference over a list of files: open, native resize, processor, one forward each."""
    from PIL import Image
    from reference import upstream_native_image

    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(pipeline.embed(upstream_native_image(image)))
    return torch.stack(out)


def embedder(name: str, model, batch_size: int):
    """A function list-of-paths -> (N, 384) embeddings for one pipeline."""
    if name == "upstream":
        return lambda paths: upstream_embed(model, paths)
    return lambda paths: model.embed(paths, batch_size=batch_size)


def run_size(models: dict, paths: list[Path], n: tuple[int, int, int], batch_size: int) -> tuple[list[dict], float]:
    """Time each pipeline on one image size; returns the rows and the native parity with upstream."""
    images, upstream_images, repeats = n
    rows, results = [], {}
    for name in PIPELINES:
        embed = embedder(name, models[name], batch_size)
        batch = paths[:upstream_images] if name == "upstream" else paths[:images]
        times = []
        with torch.inference_mode(), common.PeakRSS() as rss:
            for _ in range(repeats):
                start = time.perf_counter()
                results[name] = embed(batch)
                times.append(time.perf_counter() - start)
        seconds = min(times)
        rows.append(
            {
                "pipeline": name,
                "images": len(batch),
                "seconds": seconds,
                "images_per_s": len(batch) / seconds,
                "peak_rss_mib": rss.mib,
            }
        )
        print(
            f"    {name:14s} {len(batch):3d} images {seconds:8.2f} s  {len(batch) / seconds:8.2f} img/s  "
            f"peak RSS {rss.mib:7.0f} MiB",
            flush=True,
        )
    upstream_rate = rows[0]["images_per_s"]
    for row in rows:
        row["ratio_vs_upstream"] = row["images_per_s"] / upstream_rate
    n = len(results["upstream"])
    parity = float((results["relsim-native"][:n] - results["upstream"]).abs().max())
    return rows, parity


def plot(data: dict, path: Path) -> Path | None:
    """images/s per image size, one panel per model, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    models = list(dict.fromkeys(r["model"] for r in data["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        rows = [r for r in data["rows"] if r["model"] == model]
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        for name in PIPELINES:
            rates = [next(r["images_per_s"] for r in rows if r["size"] == s and r["pipeline"] == name) for s in sizes]
            ax.plot(sizes, rates, marker="o", label=name)
        ax.set_yscale("log")
        ax.set_title(f"{model} model, CPU ({data['machine']['torch_threads']} threads)")
        ax.set_xlabel("input image size")
        ax.set_ylabel("images / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.setup_cpu(args.threads)
    data: dict = {
        "machine": common.machine_info(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
        "parity": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relsim-bench-") as tmp:
        tmp = Path(tmp)
        for model_size in args.models.split(","):
            print(f"== {model_size} model", flush=True)
            models = load_pipelines(*common.build_checkpoint(tmp, model_size))
            n = counts(args, model_size)
            warm = common.make_photos(tmp / "photos", 448, 448, 1, seed=99)
            with torch.inference_mode():  # first-call costs, once per model
                for name in PIPELINES:
                    embedder(name, models[name], args.batch_size)(warm)
            for size in args.sizes.split(","):
                width, height = common.SIZES[size]
                paths = common.make_photos(tmp / "photos", width, height, max(n[:2]))
                print(f"  {size}", flush=True)
                rows, parity = run_size(models, paths, n, args.batch_size)
                for row in rows:
                    data["rows"].append({"model": model_size, "size": size, **row})
                data["parity"].append({"model": model_size, "size": size, "max_abs_diff_native_vs_upstream": parity})
                print(f"    parity relsim-native vs upstream: max abs diff {parity:.2e}", flush=True)
            del models
    data["seconds"] = time.perf_counter() - started
    stem = args.name or ("bench_embed-quick" if args.quick else "bench_embed")
    out = common.write_json(data, args.out / f"{stem}.json")
    png = plot(data, args.out / f"{stem}.png")
    columns = [
        ("model", "model"),
        ("size", "size"),
        ("pipeline", "pipeline"),
        ("images_per_s", "images/s"),
        ("ratio_vs_upstream", "x upstream"),
        ("peak_rss_mib", "peak RSS MiB"),
    ]
    print(common.markdown_table(data["rows"], columns))
    print(f"wrote {out}" + (f" and {png}" if png else "") + f" in {data['seconds']:.0f} s")
    return data


if __name__ == "__main__":
    main()
