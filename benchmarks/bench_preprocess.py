"""Decode + preprocess throughput of one worker (one thread), the CPU work per image before the model.

    python benchmarks/bench_preprocess.py            # 640x480 and 1920x1080 JPEGs, train and native mode

Stages, images/s on one thread:

- ``decode``: PIL open + load, the floor.
- ``prepare-<mode>``: what a worker does when the model is on the CPU: decode, Pillow resize, tensor.
- ``worker-<mode>``: what a worker does when the model is on a GPU (``resize_on_device``): decode and
  tensor only; the resize runs on the GPU (``resample.resize_uint8``, same pixels).
- ``tensor-resize-<mode>``: that device-side resize run on this CPU instead, for reference.

Prints a table and writes benchmarks/results/preprocess.json. Target (issue 4): >= 300 images/s per worker
at 640x480 JPEG in train mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import photo  # noqa: E402

from relsim import preprocess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def time_per_image(fn, paths: list[Path], repeats: int) -> float:
    """Best of ``repeats`` passes over ``paths``: seconds per image."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            fn(path, i)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="distinct JPEGs per size")
    parser.add_argument("--repeats", type=int, default=5, help="passes; the best is kept")
    parser.add_argument("--sizes", default="640x480,1920x1080", help="comma-separated WxH JPEG sizes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in (tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")):
            paths = []
            for i in range(args.images):
                paths.append(Path(tmp) / f"{width}x{height}-{i}.jpg")
                photo(height, width, seed=i).save(paths[-1], quality=90)

            def decode_only(path: Path, i: int) -> None:
                with Image.open(path) as image:
                    image.load()

            stages = {"decode": decode_only}
            for mode in preprocess.MODES:
                stages[f"prepare-{mode}"] = lambda path, i, mode=mode: preprocess.prepare(path, i, mode)
                stages[f"worker-{mode}"] = lambda path, i, mode=mode: preprocess.prepare(path, i, mode, resize=False)
                decoded = {path: preprocess.prepare(path, 0, mode, resize=False) for path in paths}
                stages[f"tensor-resize-{mode}"] = lambda path, i, mode=mode, decoded=decoded: (
                    preprocess.resize_for_mode(decoded[path], mode)
                )
            for stage, fn in stages.items():
                seconds = time_per_image(fn, paths, args.repeats)
                rows.append({"size": f"{width}x{height}", "stage": stage, "images_per_s": 1 / seconds})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess.json").write_text(json.dumps(rows, indent=2))
    print(f"{'size':<10} {'stage':<22} {'images/s (1 thread)':>20}")
    for row in rows:
        print(f"{row['size']:<10} {row['stage']:<22} {row['images_per_s']:>20.0f}")
    return rows


if __name__ == "__main__":
    main()
