"""GPU benchmark: relsim on the real Qwen2.5-VL-7B architecture with random bf16 weights, vs upstream-style.

The FLOPs and memory of a forward depend on the weights' shapes, not their values, so a randomly filled
7B model built directly in GPU memory measures what the published checkpoint would: no download, no
internet. The script measures

1. ``forward``: the model alone (pixels already patchified on the GPU), train mode, batch 1/8/32/64:
   images/s, ms/image, MFU against 989 TFLOP/s (H100 dense bf16), peak memory;
2. ``embed``: end to end from JPEG paths (decode threads + model), train and native mode, on each image size
   and on the photo mix (448x448, 640x480, 1024x768, 1920x1080 interleaved), batch 1/8/32/64;
3. ``upstream``: the upstream-style pipeline (tests/reference.py: one image at a time, transformers'
   processor, full ``Qwen2_5_VLForConditionalGeneration`` forward with ``output_hidden_states=True``, a peft
   LoRA adapter unmerged) on a few images of each size, on the same weights, and the ratio to it.

Usage, from the repository root of a CUDA machine (finishes in under 8 minutes, model construction
included; ``--budget`` skips what would not fit)::

    bash benchmarks/gpu.sh                     # = PYTHONPATH=. python benchmarks/gpu.py
    python benchmarks/gpu.py --compile         # also time fastpath.compile_body at batch 32
    python benchmarks/gpu.py --tiny            # CPU smoke test: tiny model, float32, a minute

Needs torch, transformers, peft, Pillow, numpy (matplotlib for the plot, optional), this repository and
``shared/fixtures/qwen2_5_vl_processor`` beside it (the tokenizer; without it the prompt ids are taken from
DESIGN.md section 1 and the upstream pipeline is skipped). Writes ``gpu.json`` / ``gpu.png`` (``gpu-tiny.*``
with ``--tiny``) under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUERY_TOKEN_ID = 151665
IMAGE_TOKEN_ID = 151655
#: The relsim prompt around the image (DESIGN.md section 1, item 9), used when no tokenizer is available.
PROMPT_PREFIX = (151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652)
PROMPT_SUFFIX = (151653, QUERY_TOKEN_ID)
PAD_TOKEN_ID = 151643


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU in float32 (smoke test)")
    parser.add_argument("--batch-sizes", default=None, help="default 1,8,32,64 (--tiny: 1,4)")
    parser.add_argument("--sizes", default=None, help="image sizes, default all four (--tiny: 448x448,640x480)")
    parser.add_argument("--photos", type=int, default=8, help="distinct JPEGs per size (repeated as needed)")
    parser.add_argument("--upstream-images", type=int, default=3, help="images per size for upstream")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each measurement at least this long")
    parser.add_argument("--budget", type=float, default=420.0, help="skip measurements after this many seconds")
    parser.add_argument("--min-runs", type=int, default=2, help="timed runs per measurement, at least")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (fastpath.compile_body)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_sizes = args.batch_sizes or "1,4"
        args.sizes = args.sizes or "448x448,640x480"
        args.photos, args.upstream_images, args.min_seconds = min(args.photos, 2), min(args.upstream_images, 1), 0.0
        args.min_runs = 1
    args.batch_sizes = [int(b) for b in (args.batch_sizes or "1,8,32,64").split(",")]
    args.sizes = (args.sizes or ",".join(common.SIZES)).split(",")
    return args


# -- the model ---------------------------------------------------------------------------------------------


def model_config(tiny: bool):
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-7B-Instruct (or of the tiny test model)."""
    import tiny as tiny_fixtures
    from transformers import Qwen2_5_VLConfig

    if tiny:
        return Qwen2_5_VLConfig(**tiny_fixtures.base_config())
    return Qwen2_5_VLConfig(**tiny_fixtures.base_config(common.QWEN25_VL_7B_TEXT, common.QWEN25_VL_7B_VISION))


def _no_init():
    """transformers' context that skips weight initialisation (its module moved between versions)."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(module, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def random_init(module: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill parameters in place like a freshly initialised model: N(0, std) matrices, unit norms, zero biases."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.ndim == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)


def build_body(config, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A ``Qwen2_5_VLModel`` allocated directly on ``device`` in ``dtype``, filled with random weights."""
    from transformers import Qwen2_5_VLModel

    from relsim.pretrained import attn_implementation

    config._attn_implementation = attn_implementation(device, dtype)
    with torch.device(device), _default_dtype(dtype), _no_init():
        body = Qwen2_5_VLModel(config)
    random_init(body)
    return body.eval().requires_grad_(False)


def build_prompt():
    """The relsim prompt from the tokenizer fixture (+ ``<|query|>``), or the documented ids without it."""
    import tiny as tiny_fixtures

    from relsim.encoder import Prompt

    try:
        tokenizer = tokenizer_with_query()
    except OSError as err:
        print(f"no tokenizer ({err}); using the prompt ids of DESIGN.md")
        return Prompt(PROMPT_PREFIX, PROMPT_SUFFIX, IMAGE_TOKEN_ID, QUERY_TOKEN_ID, PAD_TOKEN_ID), None
    prompt = Prompt.from_tokenizer(tokenizer, tiny_fixtures.QUERY_TOKEN, IMAGE_TOKEN_ID)
    assert (prompt.prefix, prompt.suffix) == (PROMPT_PREFIX, PROMPT_SUFFIX), prompt
    return prompt, tokenizer


def tokenizer_with_query():
    import tiny as tiny_fixtures
    from transformers import AutoTokenizer

    if not Path(tiny_fixtures.PROCESSOR_FIXTURE).is_dir():
        raise OSError(f"{tiny_fixtures.PROCESSOR_FIXTURE} not found")
    tokenizer = AutoTokenizer.from_pretrained(tiny_fixtures.PROCESSOR_FIXTURE)
    tokenizer.add_special_tokens({"additional_special_tokens": [tiny_fixtures.QUERY_TOKEN]})
    return tokenizer


def build_models(body: nn.Module, prompt) -> dict:
    """relsim models in train and native mode sharing one body and projection (fastpath applied)."""
    from relsim import fastpath
    from relsim.encoder import RelSimModel

    hidden = body.config.text_config.hidden_size
    device = body.language_model.embed_tokens.weight.device
    projection = nn.Linear(hidden, common.PROJECTION_DIM, device=device, dtype=torch.float32)
    fastpath.optimize(body)
    return {mode: RelSimModel(body, projection, prompt, mode=mode) for mode in ("train", "native")}


class DeviceUpstream:
    """tests/reference.py's ``UpstreamPipeline`` on an in-memory model: inputs moved to its device."""

    @classmethod
    def build(cls, body: nn.Module, projection: nn.Linear, tokenizer, dtype: torch.dtype):
        """Wrap ``body`` (transformers' own forward: fastpath must be restored) as upstream runs it.

        ``Qwen2_5_VLForConditionalGeneration`` around the same body, an LM head of the resized vocabulary
        (151666 rows, as upstream's ``resize_token_embeddings``), and a peft LoRA r=16 on q_proj/v_proj,
        unmerged. peft's default init (B = 0) leaves the function unchanged, so the embeddings equal
        relsim's up to the numerics of batching.
        """
        from peft import LoraConfig, get_peft_model
        from reference import UpstreamPipeline
        from transformers import Qwen2_5_VLForConditionalGeneration

        device = body.language_model.embed_tokens.weight.device
        with torch.device("meta"):
            full = Qwen2_5_VLForConditionalGeneration(body.config)
        full.model = body
        full.lm_head = nn.Linear(body.config.text_config.hidden_size, len(tokenizer), bias=False, device=device)
        full.lm_head.to(dtype)
        random_init(full.lm_head, seed=1)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(full, lora).eval()

        class _Pipeline(UpstreamPipeline):
            def inputs(self, image):
                return {k: v.to(device) for k, v in super().inputs(image).items()}

        pipeline = _Pipeline.__new__(_Pipeline)
        pipeline.tokenizer, pipeline.processor = tokenizer, _image_processor()
        pipeline.model, pipeline.query_id, pipeline.projection, pipeline.dtype = (
            model,
            QUERY_TOKEN_ID,
            projection,
            dtype,
        )
        return pipeline, model


def _image_processor():
    """transformers' PIL Qwen2-VL image processor as upstream configures it (older transformers: the slow one)."""
    try:
        from reference import _image_processor as reference_processor

        return reference_processor()
    except ImportError:
        from transformers import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor(
            min_pixels=3136,
            max_pixels=12845056,
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        )


# -- measuring ---------------------------------------------------------------------------------------------


class Meter:
    """Times a callable on the benchmark's device and records peak memory (GPU: allocated; CPU: RSS)."""

    def __init__(self, device: torch.device, min_seconds: float, min_runs: int, budget: float) -> None:
        self.device, self.min_seconds, self.min_runs, self.budget = device, min_seconds, min_runs, budget
        self.started = time.perf_counter()

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, fn, items: int) -> dict:
        """Warm up once, then run ``fn`` (``items`` images per run) for ``min_seconds`` and ``min_runs`` runs."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rss = common.PeakRSS().__enter__()
        fn()
        self.sync()
        runs, start = 0, time.perf_counter()
        while runs < self.min_runs or time.perf_counter() - start < self.min_seconds:
            fn()
            self.sync()
            runs += 1
        seconds = (time.perf_counter() - start) / runs
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            rss.__exit__()
            peak = rss.mib / 1024
        return {
            "images": items,
            "seconds_per_run": seconds,
            "images_per_s": items / seconds,
            "ms_per_image": 1000 * seconds / items,
            "peak_memory_gib": peak,
        }


def photo_sets(folder: Path, sizes: list[str], count: int) -> dict[str, list[Path]]:
    sets = {size: common.make_photos(folder, *common.SIZES[size], count, seed=10 * i) for i, size in enumerate(sizes)}
    sets["mix"] = [p for group in zip(*(sets[s] for s in sizes), strict=True) for p in group]
    return sets


def mean_flops(config, paths: list[Path], mode: str) -> float:
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sum(common.image_flops(config, w, h, mode) for w, h in sizes) / len(sizes)


def repeat(paths: list[Path], n: int) -> list[Path]:
    return [paths[i % len(paths)] for i in range(n)]


def run(args: argparse.Namespace) -> dict:
    from relsim import fastpath, preprocess

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if device.type == "cpu":
        common.setup_cpu(None)
    data: dict = {"machine": common.machine_info(), "device": str(device), "dtype": str(dtype), "rows": []}
    meter = Meter(device, args.min_seconds, args.min_runs, args.budget)
    config = model_config(args.tiny)

    start = time.perf_counter()
    body = build_body(config, device, dtype)
    prompt, tokenizer = build_prompt()
    models = build_models(body, prompt)
    data["build_seconds"] = time.perf_counter() - start
    data["attn_implementation"] = body.config._attn_implementation
    weights = sum(p.numel() * p.element_size() for p in body.parameters()) / 2**30
    data["weights_gib"] = weights
    print(
        f"built {'tiny' if args.tiny else 'Qwen2.5-VL-7B'} body ({weights:.2f} GiB, "
        f"{data['attn_implementation']}) on {device} in {data['build_seconds']:.1f} s",
        flush=True,
    )
    peak = 989e12 if device.type == "cuda" else None

    def record(row: dict, flops: float | None) -> None:
        row["tflop_per_image"] = flops / 1e12 if flops else None
        row["mfu"] = flops * row["images_per_s"] / peak if flops and peak else None
        data["rows"].append(row)
        mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] is not None else "    -"
        print(
            f"  {row['pipeline']:14s} {row['part']:8s} {row['images_set']:10s} batch {row['batch']:3d}  "
            f"{row['images_per_s']:8.2f} img/s {row['ms_per_image']:8.2f} ms/img  MFU {mfu}  "
            f"peak {row['peak_memory_gib']:6.2f} GiB",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="relsim-gpu-") as tmp:
        photos = photo_sets(Path(tmp), args.sizes, args.photos)
        with torch.inference_mode():
            # 1. the model alone, train mode
            train = models["train"]
            pixels = [preprocess.prepare(p, i, "train") for i, p in enumerate(photos["mix"])]
            flops = common.image_flops(config, 448, 448, "train")
            for batch in args.batch_sizes:
                if meter.over_budget():
                    break
                pixel_values, grid = preprocess.patchify(repeat(pixels, batch), device=device, dtype=dtype)
                row = meter.measure(lambda pv=pixel_values, g=grid: train(pv, g), batch)
                record(
                    {"pipeline": "relsim-train", "part": "forward", "images_set": "448x448", "batch": batch, **row},
                    flops,
                )
            if args.compile and not meter.over_budget():
                compile_row(args, train, pixels, device, dtype, meter, record, flops, fastpath, preprocess)

            # 2. end to end from JPEG files
            for mode in ("train", "native"):
                model = models[mode]
                for name, paths in photos.items():
                    batches = (
                        args.batch_sizes
                        if name == "mix"
                        else [b for b in args.batch_sizes if b == 32] or [max(args.batch_sizes)]
                    )
                    for batch in batches:
                        if meter.over_budget():
                            break
                        files = repeat(paths, max(2 * batch, 8) if not args.tiny else max(batch, 2))
                        row = meter.measure(lambda m=model, f=files, b=batch: m.embed(f, batch_size=b), len(files))
                        record(
                            {"pipeline": f"relsim-{mode}", "part": "embed", "images_set": name, "batch": batch, **row},
                            mean_flops(config, files, mode),
                        )

            # the resize on the device (the default on a GPU) against Pillow in the workers: same pixels? speed?
            data["device_resize"] = device_resize_check(photos, device, preprocess)
            train = models["train"]
            batch = 32 if 32 in args.batch_sizes else max(args.batch_sizes)
            if not meter.over_budget():
                files = repeat(photos["mix"], max(2 * batch, 8) if not args.tiny else max(batch, 2))
                train.resize_on_device = False
                row = meter.measure(lambda f=files, b=batch: train.embed(f, batch_size=b), len(files))
                train.resize_on_device = None
                record(
                    {"pipeline": "train-worker-resize", "part": "embed", "images_set": "mix", "batch": batch, **row},
                    mean_flops(config, files, "train"),
                )

            # 3. upstream, on the same weights
            data["parity"] = upstream_rows(args, body, models, tokenizer, photos, meter, record, config, dtype)
    data["seconds"] = time.perf_counter() - meter.started + data["build_seconds"]
    add_ratios(data)
    return data


def device_resize_check(photos: dict[str, list[Path]], device: torch.device, preprocess) -> dict:
    """Resize every photo on ``device`` (``resample.resize_uint8``) and compare with Pillow, bit for bit."""
    mismatches, checked, seconds = [], 0, 0.0
    for mode in preprocess.MODES:
        for name, paths in photos.items():
            if name == "mix":
                continue
            for i, path in enumerate(paths):
                expected = preprocess.prepare(path, i, mode)
                decoded = preprocess.prepare(path, i, mode, resize=False).to(device)
                preprocess.resize_for_mode(decoded, mode)  # warm the weight tables
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                got = preprocess.resize_for_mode(decoded, mode)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - start
                checked += 1
                if not torch.equal(got.cpu(), expected):
                    mismatches.append(f"{mode}:{path.name}")
    result = {"checked": checked, "mismatches": mismatches, "ms_per_image": 1000 * seconds / max(checked, 1)}
    print(
        f"device resize vs Pillow: {checked} images, {len(mismatches)} differ, "
        f"{result['ms_per_image']:.2f} ms/image on {device}",
        flush=True,
    )
    return result


def compile_row(args, train, pixels, device, dtype, meter, record, flops, fastpath, preprocess) -> None:
    """Train-mode forward at batch 32 after ``fastpath.compile_body`` (compilation time reported apart)."""
    batch = 32 if 32 in args.batch_sizes else max(args.batch_sizes)
    pixel_values, grid = preprocess.patchify(repeat(pixels, batch), device=device, dtype=dtype)
    fastpath.compile_body(train.body)
    start = time.perf_counter()
    train(pixel_values, grid)
    meter.sync()
    compile_seconds = time.perf_counter() - start
    row = meter.measure(lambda: train(pixel_values, grid), batch)
    record(
        {
            "pipeline": "relsim-train-compiled",
            "part": "forward",
            "images_set": "448x448",
            "batch": batch,
            "compile_seconds": compile_seconds,
            **row,
        },
        flops,
    )
    torch._dynamo.reset()
    for module in (*train.body.visual.blocks, train.body.visual.merger, *train.body.language_model.layers):
        module._compiled_call_impl = None  # back to eager for the rest of the run


def upstream_rows(args, body, models, tokenizer, photos, meter, record, config, dtype) -> dict:
    """The upstream-style pipeline on a few images per size; returns parity with relsim-native."""
    from relsim import fastpath

    if tokenizer is None:
        print("  upstream: skipped (no tokenizer fixture)")
        return {}
    from PIL import Image
    from reference import upstream_native_image

    fastpath.restore(body)  # upstream runs transformers' own vision attention
    pipeline, _ = DeviceUpstream.build(body, models["native"].projection, tokenizer, dtype)
    parity = {}
    for name in args.sizes:
        if meter.over_budget():
            break
        files = photos[name][: args.upstream_images]

        def embed_all(files=files):
            out = []
            for path in files:  # open + resize inside the timing, as relsim's embed decodes inside its timing
                with Image.open(path) as image:
                    out.append(pipeline.embed(upstream_native_image(image)))
            return torch.stack(out)

        row = meter.measure(embed_all, len(files))
        record(
            {"pipeline": "upstream", "part": "embed", "images_set": name, "batch": 1, **row},
            mean_flops(config, files, "native"),
        )
        theirs = embed_all().float().cpu()
        fastpath.optimize(body)
        ours = models["native"].embed(files, batch_size=len(files))
        fastpath.restore(body)
        parity[name] = float((ours - theirs).abs().max())
    fastpath.optimize(body)
    diffs = list(parity.values())
    return {"max_abs_diff_native_vs_upstream": max(diffs) if diffs else None, "per_size": parity}


def add_ratios(data: dict) -> None:
    """x upstream, per image size: relsim embed (batch 32, or the largest run) over upstream on that size."""
    upstream = {r["images_set"]: r["images_per_s"] for r in data["rows"] if r["pipeline"] == "upstream"}
    for row in data["rows"]:
        if row["part"] == "embed" and row["images_set"] in upstream and row["pipeline"] != "upstream":
            row["x_upstream"] = row["images_per_s"] / upstream[row["images_set"]]


def report(data: dict, args: argparse.Namespace) -> None:
    columns = [
        ("pipeline", "pipeline"),
        ("part", "part"),
        ("images_set", "images"),
        ("batch", "batch"),
        ("images_per_s", "images/s"),
        ("ms_per_image", "ms/image"),
        ("tflop_per_image", "TFLOP/image"),
        ("mfu", "MFU"),
        ("peak_memory_gib", "peak GiB"),
        ("x_upstream", "x upstream"),
    ]
    rows = [{**r, "mfu": None if r["mfu"] is None else round(100 * r["mfu"], 1)} for r in data["rows"]]
    print(common.markdown_table(rows, columns).replace("| MFU |", "| MFU % |"))
    print(f"parity relsim-native vs upstream: {data.get('parity')}")
    print(f"device resize vs Pillow: {data.get('device_resize')}")
    stem = "gpu-tiny" if args.tiny else "gpu"
    out = common.write_json(data, args.out / f"{stem}.json")
    png = plot(data, args.out / f"{stem}.png")
    print(f"wrote {out}" + (f" and {png}" if png else "") + f"; total {data['seconds']:.0f} s")


def plot(data: dict, path: Path) -> Path | None:
    """images/s per image size (end to end), relsim train/native at batch 32 (or the largest) and upstream."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in data["rows"] if r["part"] == "embed" and r["images_set"] != "mix"]
    sizes = list(dict.fromkeys(r["images_set"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in ("relsim-train", "relsim-native", "upstream"):
        points = [(s, r["images_per_s"]) for s in sizes for r in rows if r["images_set"] == s and r["pipeline"] == name]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("input image size")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title(f"relsim on {data['machine'].get('gpu', 'CPU')} ({data['dtype'].removeprefix('torch.')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = run(args)
    report(data, args)
    return data


if __name__ == "__main__":
    main()
