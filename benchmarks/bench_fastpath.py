"""CPU benchmark of ``relsim.fastpath.optimize``: the vision tower and the whole forward, with and without it.

Pixels are decoded and patchified once; only the model is timed (best of ``--repeats``), on a random
``mid`` (default) or ``tiny`` model, in train mode (448x448, 16 equal windows per image) and native mode
(a mix of sizes: ragged windows at the edges). Also reports the max abs difference of both outputs.

    python benchmarks/bench_fastpath.py [--model mid] [--batch-sizes 8,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NATIVE_MIX = ("448x448", "640x480", "1024x768")


def inputs(paths: list[Path], mode: str, batch: int):
    from relsim import preprocess

    pixels = [preprocess.prepare(paths[i % len(paths)], i, mode) for i in range(batch)]
    return preprocess.patchify(pixels)


def count_sdpa_calls(fn) -> int:
    """How many ``scaled_dot_product_attention`` calls one run of ``fn`` makes."""
    original, calls = F.scaled_dot_product_attention, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = counting
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = original
    return calls[0]


def runner(model, part: str, pixel_values: torch.Tensor, grid: torch.Tensor):
    """The timed call: the vision tower alone, or the whole forward (vision + language model + head)."""
    if part == "vision":
        return lambda: model.body.visual(pixel_values, grid_thw=grid).pooler_output
    return lambda: model(pixel_values, grid)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mid", choices=sorted(common.MODEL_SIZES))
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    common.setup_cpu(args.threads)

    import relsim
    from relsim import fastpath

    data: dict = {"machine": common.machine_info(), "model": args.model, "rows": []}
    with tempfile.TemporaryDirectory(prefix="relsim-bench-") as tmp:
        tmp = Path(tmp)
        adapter, base = common.build_checkpoint(tmp, args.model)
        paths = []
        for size in NATIVE_MIX:
            paths += common.make_photos(tmp / "photos", *common.SIZES[size], 2)
        paths = paths[::2] + paths[1::2]  # sizes interleaved: every batch is a mix
        for mode in ("train", "native"):
            loaded = relsim.load(adapter, base_model=base, device="cpu", dtype=torch.float32, mode=mode)
            models = {
                "plain": fastpath.restore(copy.deepcopy(loaded)),
                "fastpath": fastpath.optimize(copy.deepcopy(loaded)),
            }
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                pixel_values, grid = inputs(paths, mode, batch)
                with torch.inference_mode():
                    for part in ("vision", "forward"):
                        row = {"mode": mode, "batch": batch, "part": part}
                        fns = {name: runner(model, part, pixel_values, grid) for name, model in models.items()}
                        outs = {name: fn() for name, fn in fns.items()}  # warm-up, and the outputs to compare
                        for name, fn in fns.items():
                            row[f"{name}_sdpa_calls"] = count_sdpa_calls(fn)
                        # interleaved, so that a burst of load from other processes hits both
                        times = {name: [] for name in fns}
                        for _ in range(args.repeats):
                            for name, fn in fns.items():
                                times[name].append(common.best_time(fn, 1))
                        row.update({f"{name}_s": min(t) for name, t in times.items()})
                        row["speedup"] = row["plain_s"] / row["fastpath_s"]
                        row["max_abs_diff"] = float((outs["plain"] - outs["fastpath"]).abs().max())
                        data["rows"].append(row)
                        print(
                            f"{mode:6s} batch {batch:3d} {part:7s}  plain {row['plain_s']:7.3f} s  "
                            f"fastpath {row['fastpath_s']:7.3f} s  x{row['speedup']:.2f}  "
                            f"max diff {row['max_abs_diff']:.1e}  SDPA calls {row['plain_sdpa_calls']} -> "
                            f"{row['fastpath_sdpa_calls']}",
                            flush=True,
                        )
    out = common.write_json(data, args.out / f"bench_fastpath-{args.model}.json")
    columns = [
        ("mode", "mode"),
        ("batch", "batch"),
        ("part", "part"),
        ("plain_s", "transformers s"),
        ("fastpath_s", "fastpath s"),
        ("speedup", "speed-up"),
        ("plain_sdpa_calls", "SDPA calls (transformers)"),
        ("fastpath_sdpa_calls", "SDPA calls (fastpath)"),
        ("max_abs_diff", "max abs diff"),
    ]
    print(common.markdown_table(data["rows"], columns))
    print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
