"""Students at their real sizes on one device (GPU by default): images per second embedding, and as a loss.

For each student of ``bench_cpu_7b.STUDENTS`` (random weights from the real configs): the forward of prepared
batches (``StudentModel.forward``, no decoding), ``embed`` from decoded photos (preparation included), and a
forward + backward to the input pixels (the metric as a loss). About a minute on an H100; ``--tiny`` runs the
same path on the tests' sizes on the CPU. Writes ``bench_students[-tiny].json``.

    python benchmarks/bench_students.py                 # in benchmarks/gpu.sh
    python benchmarks/bench_students.py --tiny --out /tmp/b
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from bench_cpu_7b import STUDENTS, write_student_backbone


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, best of ``repeats`` after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def forward(student, pixels: torch.Tensor) -> None:
    with torch.inference_mode():
        student(pixels)


def as_loss(student, pixels: torch.Tensor) -> None:
    """Forward and backward to the input pixels: what the metric costs as a loss."""
    x = pixels.clone().requires_grad_(True)
    student(x).sum().backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' sizes, on the CPU")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    from relsim.student import build_student

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = 4 if args.tiny else args.batch
    work = Path(tempfile.mkdtemp(prefix="bench_students-"))
    photos = common.make_photos(work / "photos", 640, 480, batch)
    rows = []
    for name in STUDENTS:
        folder = write_student_backbone(work / name, name, args.tiny)
        started = time.perf_counter()
        student = build_student(folder, device=device, dtype=dtype)
        load_s = time.perf_counter() - started
        pixels = torch.stack([student.preparation.prepare(p, i) for i, p in enumerate(photos)]).to(device)

        forward_s = timed(lambda s=student, x=pixels: forward(s, x), device, args.repeats)
        loss_s = timed(lambda s=student, x=pixels: as_loss(s, x), device, args.repeats)
        embed_s = timed(lambda s=student: s.embed(photos, batch_size=batch), device, 1)
        rows.append(
            {
                "student": name,
                "parameters_m": sum(p.numel() for p in student.parameters()) / 1e6,
                "load_s": load_s,
                "forward_images_per_s": batch / forward_s,
                "loss_images_per_s": batch / loss_s,
                "embed_images_per_s": batch / embed_s,
                "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            }
        )
    data = {"machine": common.machine_info(), "device": str(device), "dtype": str(dtype), "batch": batch, "rows": rows}
    path = common.write_json(data, args.out / f"bench_students{'-tiny' if args.tiny else ''}.json")
    columns = [("student", "student"), ("parameters_m", "M params"), ("forward_images_per_s", "forward img/s"),
               ("loss_images_per_s", "forward+backward img/s"), ("embed_images_per_s", "embed (decode+prep) img/s"),
               ("peak_gpu_mib", "peak GPU MiB")]  # fmt: skip
    print(f"{data['machine']['date']} | {device} {data['machine'].get('gpu', data['machine']['cpu'])} | {dtype}")
    print(common.markdown_table(rows, columns))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
