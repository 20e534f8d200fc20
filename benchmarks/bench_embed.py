"""CPU benchmark: relsim's batched embedding vs the upstream-style pipeline, same weights, same images.

For each model (random checkpoints built in code: ``proxy``, the 7B's FLOP split at 1/159 of its work, see
benchmarks/proxy.py; ``tiny`` and ``mid``, the test models, whose real 152k-row LM head dominates upstream's
work) and each image set (photo-like JPEGs of one size, and ``mix``: 640x480, 1024x768 and 1920x1080
interleaved), it times, end to end from JPEG paths:

- ``upstream``: what upstream inference does (tests/reference.py): one image at a time, native resolution,
  the tokenizer + transformers' ``Qwen2VLImageProcessorPil``, the full ``Qwen2_5_VLForConditionalGeneration``
  forward with ``output_hidden_states=True`` (LM head over every position), the peft adapter unmerged;
- ``relsim-native``: ``relsim.load(mode="native")`` -- the same resolution and result as upstream, batched;
- ``relsim-native-1``: the same model with ``batch_size=1``: the same images one at a time (the bar native
  batching must clear on any mix of sizes);
- ``relsim-train``: ``relsim.load()`` (the default: 448x448 centre crop, what the model was trained on).

and reports images/s, the ratios to upstream and (native) to one at a time, the padding of native batches
(padded / real language-model tokens), peak RSS of each timed run, and the parity of relsim-native with
upstream (max abs difference of the embeddings, float32). Pipelines run interleaved, best of ``--repeats``,
so the ratios of one run share its machine load. The ratios are also given in process CPU time (all threads,
decoding included): on a machine shared with other jobs, time-slicing inflates wall time but not CPU time.
JSON and a PNG plot go to benchmarks/results/.

    python benchmarks/bench_embed.py            # proxy and tiny: ~5 minutes on 2 quiet cores
    python benchmarks/bench_embed.py --models proxy,tiny,mid
    python benchmarks/bench_embed.py --quick    # under a minute: tiny model, 448x448, 1024x768, mix
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PIPELINES = ("upstream", "relsim-native", "relsim-native-1", "relsim-train")
#: Sizes interleaved in the ``mix`` set (issue 12's mixed photo set).
MIX_SIZES = ("640x480", "1024x768", "1920x1080")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 448x448, 1024x768 and the mix, few images")
    parser.add_argument("--models", default="proxy,tiny", help="comma-separated models (proxy, tiny, mid)")
    parser.add_argument("--sizes", default=None, help="comma-separated WxH sizes and/or 'mix' (default: PROFILE)")
    parser.add_argument("--images", type=int, default=None, help="images per size for relsim (default: PROFILE)")
    parser.add_argument("--upstream-images", type=int, default=None, help="images per size for upstream")
    parser.add_argument("--batch-size", type=int, default=None, help="default: PROFILE (32; proxy 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated subset of PIPELINES")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    parser.add_argument("--name", default=None, help="output file stem (default: bench_embed[-quick])")
    args = parser.parse_args(argv)
    args.pipelines = [p for p in PIPELINES if p in args.pipelines.split(",")]
    if args.quick:
        args.models, args.sizes = "tiny", args.sizes or "448x448,1024x768,mix"
    return args


#: Per model: relsim images per size, upstream images per size, photos of each size in ``mix`` (all
#: pipelines run all of them), timed runs, batch size, token cap, image sets. The default run (proxy + tiny)
#: stays near 5 minutes on 2 quiet cores. The proxy's MLPs are 66x its width, so a token costs as much
#: activation memory as on the 7B (twice, in float32): its batches are capped at 8,192 tokens (~3 GB). It runs
#: the two sizes it is fitted at (a proxy image costs ~1/159 of a 7B one: 31 GFLOP at 448x448, 119 at 1024x768).
PROFILE = {
    "proxy": dict(images=3, upstream=1, mix=1, repeats=2, batch=16, tokens=8192, sizes="448x448,1024x768"),
    "tiny": dict(
        images=16, upstream=4, mix=4, repeats=3, batch=32, tokens=65536, sizes=",".join([*common.SIZES, "mix"])
    ),
    "mid": dict(images=4, upstream=1, mix=1, repeats=2, batch=32, tokens=65536, sizes=",".join(common.SIZES)),
}
QUICK_PROFILE = dict(images=4, upstream=1, mix=1, repeats=1, batch=32, tokens=65536, sizes="448x448,1024x768,mix")


def settings(args: argparse.Namespace, model_size: str) -> dict:
    profile = dict(QUICK_PROFILE if args.quick else PROFILE[model_size])
    for key, value in (("images", args.images), ("upstream", args.upstream_images), ("repeats", args.repeats)):
        if value is not None:
            profile[key] = value
    profile["batch"] = args.batch_size or profile["batch"]
    profile["sizes"] = (args.sizes or profile["sizes"]).split(",")
    return profile


def load_pipelines(adapter: Path, base: Path, model_size: str, max_tokens: int) -> dict:
    """The pipelines on the same checkpoint files (the relsim models share nothing with upstream's)."""
    import relsim
    from relsim import fastpath

    models = {}
    for mode in ("native", "train"):
        model = relsim.load(adapter, base_model=base, device="cpu", dtype=torch.float32, mode=mode)
        fastpath.optimize(model.body)  # no-op once relsim.load wires it in
        model.max_tokens_per_batch = max_tokens
        models[f"relsim-{mode}"] = model
    models["relsim-native-1"] = models["relsim-native"]
    models["upstream"] = common.upstream_pipeline(adapter, base, model_size)
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
    if name == "relsim-native-1":
        return lambda paths: model.embed(paths, batch_size=1)
    return lambda paths: model.embed(paths, batch_size=batch_size)


def photo_set(folder: Path, name: str, profile: dict) -> list[Path]:
    """``images`` photos of one size, or for ``mix`` ``mix`` photos of each of ``MIX_SIZES``, interleaved."""
    if name != "mix":
        return common.make_photos(folder, *common.SIZES[name], profile["images"])
    per_size = profile["mix"]
    groups = [
        common.make_photos(folder, *common.SIZES[s], per_size, seed=100 + 10 * i) for i, s in enumerate(MIX_SIZES)
    ]
    return [path for group in zip(*groups, strict=True) for path in group]


def run_set(
    models: dict, name: str, paths: list[Path], profile: dict, pipelines: list[str]
) -> tuple[list[dict], float | None]:
    """Time each pipeline on one image set, interleaved over the repeats; returns the rows and the parity."""
    upstream_count = len(paths) if name == "mix" else profile["upstream"]
    batches = {p: paths[:upstream_count] if p == "upstream" else paths for p in pipelines}
    times: dict[str, list[float]] = {p: [] for p in pipelines}
    cpu_times: dict[str, list[float]] = {p: [] for p in pipelines}
    rss = dict.fromkeys(pipelines, 0.0)
    padding: dict[str, float | None] = dict.fromkeys(pipelines)
    results = {}
    with torch.inference_mode():
        for _ in range(profile["repeats"]):
            for pipeline in pipelines:
                embed = embedder(pipeline, models[pipeline], profile["batch"])
                meter = common.PaddingMeter(models[pipeline]) if pipeline.startswith("relsim-native") else None
                with common.PeakRSS() as peak, meter or contextlib.nullcontext():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    results[pipeline] = embed(batches[pipeline])
                    times[pipeline].append(time.perf_counter() - start)
                    cpu_times[pipeline].append(time.process_time() - cpu_start)
                rss[pipeline] = max(rss[pipeline], peak.mib)
                padding[pipeline] = meter.waste if meter else None
    rows = []
    for pipeline in pipelines:
        seconds, count = min(times[pipeline]), len(batches[pipeline])
        rows.append(
            {
                "pipeline": pipeline,
                "images": count,
                "seconds": seconds,
                "images_per_s": count / seconds,
                "cpu_seconds": min(cpu_times[pipeline]),
                "peak_rss_mib": rss[pipeline],
                "padding": padding[pipeline],
            }
        )
        pad = f"  padding x{padding[pipeline]:.3f}" if padding[pipeline] else ""
        print(
            f"    {pipeline:16s} {count:3d} images {seconds:8.2f} s (CPU {min(cpu_times[pipeline]):7.2f} s) "
            f"{count / seconds:8.2f} img/s  "
            f"peak RSS {rss[pipeline]:7.0f} MiB{pad}",
            flush=True,
        )
    rate = {row["pipeline"]: row["images_per_s"] for row in rows}
    cpu_rate = {row["pipeline"]: row["images"] / row["cpu_seconds"] for row in rows}
    for row in rows:
        for suffix, rates in (("", rate), ("_cpu", cpu_rate)):
            if "upstream" in rates:
                row[f"ratio_vs_upstream{suffix}"] = rates[row["pipeline"]] / rates["upstream"]
            if row["pipeline"] == "relsim-native" and "relsim-native-1" in rates:
                row[f"ratio_vs_one_at_a_time{suffix}"] = rates["relsim-native"] / rates["relsim-native-1"]
    if "upstream" not in results or "relsim-native" not in results:
        return rows, None
    return rows, float((results["relsim-native"][:upstream_count] - results["upstream"]).abs().max())


def plot(data: dict, path: Path) -> Path | None:
    """images/s per image set, one panel per model, log scale."""
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
        for name in dict.fromkeys(r["pipeline"] for r in rows):
            rates = [next(r["images_per_s"] for r in rows if r["size"] == s and r["pipeline"] == name) for s in sizes]
            ax.plot(sizes, rates, marker="o", label=name)
        ax.set_yscale("log")
        ax.set_title(f"{model} model, CPU ({data['machine']['torch_threads']} threads)")
        ax.set_xlabel("input images")
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
        "load_before": common.load_average(),
        "rows": [],
        "parity": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relsim-bench-") as tmp:
        tmp = Path(tmp)
        for model_size in args.models.split(","):
            profile = settings(args, model_size)
            print(f"== {model_size} model ({profile})", flush=True)
            models = load_pipelines(*common.build_checkpoint(tmp, model_size), model_size, profile["tokens"])
            warm = common.make_photos(tmp / "photos", 448, 448, 1, seed=99)
            with torch.inference_mode():  # first-call costs, once per model
                for name in args.pipelines:
                    embedder(name, models[name], profile["batch"])(warm)
            for size in profile["sizes"]:
                paths = photo_set(tmp / "photos", size, profile)
                print(f"  {size}", flush=True)
                rows, parity = run_set(models, size, paths, profile, args.pipelines)
                for row in rows:
                    data["rows"].append({"model": model_size, "size": size, **row})
                if parity is not None:
                    data["parity"].append(
                        {"model": model_size, "size": size, "max_abs_diff_native_vs_upstream": parity}
                    )
                    print(f"    parity relsim-native vs upstream: max abs diff {parity:.2e}", flush=True)
            del models
    data["seconds"] = time.perf_counter() - started
    data["load_after"] = common.load_average()
    stem = args.name or ("bench_embed-quick" if args.quick else "bench_embed")
    out = common.write_json(data, args.out / f"{stem}.json")
    png = plot(data, args.out / f"{stem}.png")
    columns = [
        ("model", "model"),
        ("size", "input"),
        ("pipeline", "pipeline"),
        ("images_per_s", "images/s"),
        ("ratio_vs_upstream", "x upstream"),
        ("ratio_vs_one_at_a_time", "x one at a time"),
        ("ratio_vs_upstream_cpu", "x upstream (CPU time)"),
        ("ratio_vs_one_at_a_time_cpu", "x one at a time (CPU time)"),
        ("padding", "padding"),
        ("peak_rss_mib", "peak RSS MiB"),
    ]
    print(common.markdown_table(data["rows"], columns))
    print(f"load average before {data['load_before']}, after {data['load_after']}")
    print(f"wrote {out}" + (f" and {png}" if png else "") + f" in {data['seconds']:.0f} s")
    return data


if __name__ == "__main__":
    main()
