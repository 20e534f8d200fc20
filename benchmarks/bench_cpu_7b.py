"""The teacher (Qwen2.5-VL-7B + relsim adapter, random weights in the real shapes) against students on a CPU.

Writes a random bf16 checkpoint of the real 7B shapes to disk **shard by shard** (the whole model is never in
memory: ~17 GB on disk) plus a relsim adapter, then runs each pipeline in its own child process (so each peak
RSS is that pipeline's alone) on the same photo-like images:

- ``relsim``: ``relsim.load`` + ``embed`` (train mode, bf16), one image at a time;
- ``upstream``: the upstream procedure (tests/reference.py: transformers' processor, full chat template, peft);
- students at real backbone sizes, random weights from the real configs written here: DINOv2-small,
  DINOv2-base, SigLIP-base-patch16-224 (``relsim.student``, float32).

Prints a table (load seconds, seconds per image, peak RSS, teacher/student speed ratio) with the date, the CPU
and the load average, and writes ``bench_cpu_7b-{scale}.json``. ``--scale tiny`` runs the same path on the tiny
test shapes in seconds (the tests run that). The 7B run needs ~17 GB of disk and ~16 GB of RAM: run it on a quiet
machine.

    python benchmarks/bench_cpu_7b.py --workdir /scratch/bench7b          # the 7B shapes (long)
    python benchmarks/bench_cpu_7b.py --scale tiny --out /tmp/b           # the smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

#: Real configs of the students (config.json of the Hub repos), and their preprocessor_config.json.
STUDENTS = {
    "dinov2-small": (
        "dinov2",
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=518,
             patch_size=14, layerscale_value=1.0),
        dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255),
    ),
    "dinov2-base": (
        "dinov2",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=518,
             patch_size=14, layerscale_value=1.0),
        dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255),
    ),
    "siglip-base-patch16-224": (
        "siglip_vision_model",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
             patch_size=16),
        dict(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
             rescale_factor=1 / 255),
    ),
}  # fmt: skip
#: The same families at the tests' sizes (``--scale tiny``).
TINY_STUDENT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SHARD_BYTES = 2 << 30


def write_base_sharded(path: Path, text: dict | None, vision: dict | None, dtype: torch.dtype, seed: int = 0) -> Path:
    """A random Qwen2.5-VL base in the Hub layout, one shard at a time: the model is built on the meta device
    for its names and shapes only, and each shard's tensors exist only while that shard is written."""
    import tiny
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path.mkdir(parents=True, exist_ok=True)
    config = tiny.base_config(text, vision, initializer_range=0.02)
    with torch.device("meta"):
        shapes = {
            k: v.shape for k, v in Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).state_dict().items()
        }
    generator = torch.Generator().manual_seed(seed)
    weight_map, shard, size, index = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, size, index
        if shard:
            index += 1
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, size = {}, 0

    for key, shape in shapes.items():
        stored = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if len(shape) == 1 and ("norm" in key or key.endswith("ln_q.weight")):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        shard[stored] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    names = sorted(set(weight_map.values()))
    renamed = {old: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, old in enumerate(names)}
    for old, new in renamed.items():
        (path / old).rename(path / new)
    index_json = {"metadata": {}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(tiny.GENERATION_CONFIG, indent=2))
    for f in tiny.PROCESSOR_FIXTURE.iterdir():
        shutil.copy(f, path / f.name)
    return path


def write_student_backbone(path: Path, name: str, tiny_scale: bool) -> Path:
    """A random student backbone of ``name``'s real config (or the tiny one) with its preprocessor_config.json."""
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    from relsim.backbone import quiet_transformers

    family, sizes, preprocessor = STUDENTS[name]
    sizes = {**sizes, **TINY_STUDENT} if tiny_scale else sizes
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**sizes)) if family == "dinov2" else SiglipVisionModel(SiglipVisionConfig(**sizes))
    path.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(path), safe_serialization=True)
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return path


# -- the child processes ----------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """One pipeline in this process: load, then each image once (the first is a warm-up); JSON on stdout."""
    from PIL import Image

    common.setup_cpu(args.threads)
    paths = [Path(p) for p in args.images]
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    with common.PeakRSS() as rss:
        started = time.perf_counter()
        if args.child == "relsim":
            import relsim

            model = relsim.load(args.adapter, base_model=args.base, device="cpu", dtype=dtype)
            run = lambda p: model.embed([p])  # noqa: E731
        elif args.child == "upstream":
            pipeline = common.upstream_pipeline(Path(args.adapter), Path(args.base), dtype=dtype)
            run = lambda p: pipeline.embed(Image.open(p).convert("RGB"))  # noqa: E731
        else:
            from relsim.student import build_student

            model = build_student(args.student)
            run = lambda p: model.embed([p])  # noqa: E731
        load_s = time.perf_counter() - started
        with torch.inference_mode():
            run(paths[0])
            started = time.perf_counter()
            for p in paths:
                run(p)
            per_image = (time.perf_counter() - started) / len(paths)
    print(json.dumps({"pipeline": args.label, "load_s": load_s, "s_per_image": per_image, "peak_rss_mib": rss.mib}))


def run_child(label: str, extra: list[str], images: list[Path], threads: int | None, timeout: float) -> dict:
    argv = [sys.executable, __file__, "--child", *extra, "--label", label, "--images", *map(str, images)]
    if threads:
        argv += ["--threads", str(threads)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{label} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the benchmark ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--workdir", type=Path, help="where the checkpoints go (default: a temporary folder)")
    parser.add_argument("--images", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=3, help="timed images per pipeline (default: 3)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per pipeline")
    parser.add_argument("--child", choices=("relsim", "upstream", "student"), help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    import tiny

    tiny_scale = args.scale == "tiny"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cpu_7b-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if tiny_scale else torch.bfloat16
    started = time.perf_counter()
    sizes = (None, None) if tiny_scale else (common.QWEN25_VL_7B_TEXT, common.QWEN25_VL_7B_VISION)
    base = workdir / f"{args.scale}-base"
    if not (base / "model.safetensors.index.json").is_file():
        write_base_sharded(base, *sizes, dtype)
    adapter = workdir / f"{args.scale}-adapter"
    if not (adapter / "adapter_config.json").is_file():
        tiny.build_adapter(adapter, base, layout="v5", lora_std=0.035)
    written_s = time.perf_counter() - started
    disk_gib = sum(f.stat().st_size for f in base.iterdir() if f.is_file()) / 2**30
    images = common.make_photos(workdir / "photos", 640, 480, args.count)
    name = str(dtype).removeprefix("torch.")
    teacher = ["--adapter", str(adapter), "--base", str(base), "--dtype", name]
    rows = [
        run_child("relsim", ["relsim", *teacher], images, args.threads, args.timeout),
        run_child("upstream", ["upstream", *teacher], images, args.threads, args.timeout),
    ]
    for student in STUDENTS:
        folder = write_student_backbone(workdir / f"student-{student}", student, tiny_scale)
        rows.append(run_child(student, ["student", "--student", str(folder)], images, args.threads, args.timeout))
    teacher_s = rows[0]["s_per_image"]
    for row in rows:
        row["teacher_over_this"] = teacher_s / row["s_per_image"]
    data = {
        "scale": args.scale,
        "machine": common.machine_info(),
        "load_average": common.load_average(),
        "checkpoint_gib": disk_gib,
        "checkpoint_written_s": written_s,
        "images": f"{args.count} photo-like JPEGs, 640x480",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = common.write_json(data, args.out / f"bench_cpu_7b-{args.scale}.json")
    machine = data["machine"]
    print(f"{machine['date']} | {machine['cpu']} ({machine['cpu_count']} cores) | load average {data['load_average']}")
    print(f"teacher checkpoint: {disk_gib:.1f} GiB, written in {written_s:.0f} s ({args.scale} shapes)")
    columns = [("pipeline", "pipeline"), ("load_s", "load s"), ("s_per_image", "s/image"),
               ("peak_rss_mib", "peak RSS MiB"), ("teacher_over_this", "relsim s/image / this")]  # fmt: skip
    print(common.markdown_table(rows, columns))
    print(f"wrote {path}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
