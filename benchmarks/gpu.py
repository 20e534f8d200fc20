"""GPU benchmark: relsim on the real Qwen2.5-VL-7B architecture with random bf16 weights, vs upstream-style.

The FLOPs and memory of a forward depend on the weights' shapes, not their values, so a randomly filled 7B
model built directly in GPU memory measures what the published checkpoint would: no download, no internet.
Every module is built in the requested dtype and checked: the JSON records the dtype and parameter count of
each top-level module, and the run stops without reporting if any differs. Sections, in order (each in its
own try block; the JSON is rewritten after each, so a crash or the time limit keeps what was measured):

1. ``build``: the body (vision tower + language model) in bf16 on the GPU, random weights; dtype census.
2. ``roof``: one large bf16 GEMM: the matmul throughput this card reaches in this run. MFU is reported against
   it and against the card's dense bf16 spec peak (H100 / H200 SXM: 989 TFLOP/s).
3. ``reference``: a float32 copy of the body with a non-zero LoRA merged in float32 (no TF32): the float32
   embeddings of a fixed set of photos (native mode).
4. ``upstream``: the upstream-style pipeline (tests/reference.py: one image at a time, transformers'
   processor, full ``Qwen2_5_VLForConditionalGeneration`` forward with ``output_hidden_states=True``, an LM
   head of 151,666 rows, the same LoRA through peft, unmerged, adapter in float32) on the same body: its
   embeddings of the agreement photos, then its speed on a small fixed number of photos per size.
5. ``agreement``: the LoRA merged into the bf16 body (what ``relsim.load`` does); relsim-bf16 vs
   upstream-bf16 vs float32 on the pair scores of the agreement photos, and the tolerance it passes at.
6. ``forward``: the model alone (pixels already patchified on the GPU), train mode, batch 1/8/32/64.
7. ``embed``: end to end from JPEG paths (decode threads + model), train and native mode, per image size at
   batch 32 and on the photo mix (448x448, 640x480, 1024x768, 1920x1080 interleaved) at batch 1/8/32/64;
   padding of native batches (padded / real tokens), the ratio to upstream and to batch 1 (one at a time).
8. ``device-resize``: the resize on the GPU against Pillow on every photo (bit for bit); train mode with the
   resize left to the decode workers.
9. ``compile`` (``--compile``): train-mode forward at batch 32 after ``fastpath.compile_body``.

Measurements run from cheap to expensive; a measurement whose predicted time would pass ``--budget`` (seconds
since the start, imports and model construction included) is skipped, so the largest sizes go first.

Usage, from the repository root of a CUDA machine (about 5 minutes on an H100/H200, 6 at most)::

    bash benchmarks/gpu.sh                     # = PYTHONPATH=. python benchmarks/gpu.py
    python benchmarks/gpu.py --compile         # also time fastpath.compile_body at batch 32
    python benchmarks/gpu.py --tiny            # the same path on CPU in bfloat16 with the tiny model (test)

Needs torch, transformers, peft, Pillow, numpy (matplotlib for the plot, optional) and this repository (the
tokenizer is tests/fixtures/qwen2_5_vl_processor; a missing fixture is an error). Writes ``gpu.json`` /
``gpu.png`` (``gpu-tiny.*`` with ``--tiny``) under ``--out``. Exit status: 0 when every section ran, 1 when
one failed (its error is in the JSON), 2 when a module was not built in the requested dtype.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the budget counts imports and model construction too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUERY_TOKEN_ID = 151665
IMAGE_TOKEN_ID = 151655
#: The relsim prompt around the image (docs/architecture.md section 1, item 9): checked against the tokenizer.
PROMPT_PREFIX = (151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652)
PROMPT_SUFFIX = (151653, QUERY_TOKEN_ID)
LORA_RANK, LORA_ALPHA = 16, 32
#: Size of the random LoRA update relative to the base weights (a trained adapter's order of magnitude).
LORA_RELATIVE = 0.1
#: The photo mix of the ``embed`` section and the order measurements run in (cheapest first).
SIZE_ORDER = ("448x448", "640x480", "1024x768", "mix", "1920x1080")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU in bfloat16 (smoke test)")
    parser.add_argument("--batch-sizes", default=None, help="default 1,8,32,64 (--tiny: 1,4)")
    parser.add_argument("--sizes", default=None, help="image sizes, default all four (--tiny: 448x448,640x480)")
    parser.add_argument("--photos", type=int, default=8, help="distinct JPEGs per size (repeated as needed)")
    parser.add_argument("--upstream-images", type=int, default=2, help="photos per size timed upstream-style")
    parser.add_argument("--agreement-images", type=int, default=2, help="photos per size (up to 1024x768)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each measurement at least this long")
    parser.add_argument("--min-runs", type=int, default=1, help="timed runs per measurement (after a warm-up)")
    parser.add_argument("--budget", type=float, default=300.0, help="start no measurement that would end later")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (fastpath.compile_body)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_sizes = args.batch_sizes or "1,4"
        args.sizes = args.sizes or "448x448,640x480"
        args.photos, args.upstream_images, args.min_seconds = min(args.photos, 2), 1, 0.0
    args.batch_sizes = [int(b) for b in (args.batch_sizes or "1,8,32,64").split(",")]
    args.sizes = [s for s in SIZE_ORDER if s in (args.sizes or ",".join(common.SIZES)).split(",")]
    return args


# -- environment -------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    """Card, driver, CUDA and library versions, and the spec peak MFU is measured against."""
    info = common.machine_info()
    for name in ("peft", "numpy", "PIL"):
        with contextlib.suppress(ImportError):
            info[name] = __import__(name).__version__
    info["platform"] = platform.platform()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=gpu_driver(),
        )
        peak = next((p for key, p in common.SPEC_BF16_PEAKS if key in props.name), None)
        info["spec_bf16_tflops"] = peak / 1e12 if peak else None
    else:
        info["spec_bf16_tflops"] = None
    return info


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


# -- the model ---------------------------------------------------------------------------------------------


def model_config(tiny: bool, dtype: torch.dtype = torch.bfloat16):
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-7B-Instruct (or of the tiny test model) that builds in ``dtype``.

    The config dicts of tests/tiny.py say ``torch_dtype: float32``, and transformers 5 builds each sub-model in
    its sub-config's dtype whatever the default dtype is: the dtype is set on the config and every sub-config.
    """
    import tiny as tiny_fixtures
    from transformers import Qwen2_5_VLConfig

    sizes = () if tiny else (common.QWEN25_VL_7B_TEXT, common.QWEN25_VL_7B_VISION)
    config = Qwen2_5_VLConfig(**tiny_fixtures.base_config(*sizes))
    return with_dtype(config, dtype)


def with_dtype(config, dtype: torch.dtype):
    """A copy of ``config`` that builds every module in ``dtype``."""
    return set_dtype(copy.deepcopy(config), dtype)


def set_dtype(config, dtype: torch.dtype):
    """Set ``dtype`` on ``config`` and every sub-config, in place (transformers 5 builds each sub-model in its own)."""
    for sub in (config, *(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})):
        if sub is not None:
            sub.dtype = dtype
    for key in ("text_config", "vision_config"):
        getattr(config, key).dtype = dtype
    return config


def _no_init():
    """transformers' context that skips weight initialisation (its module moved between versions)."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(module, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
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


def build_body(config, device: torch.device, dtype: torch.dtype | None = None, *, init: bool = True) -> nn.Module:
    """A ``Qwen2_5_VLModel`` allocated directly on ``device`` in ``config.dtype`` (random weights if ``init``).

    ``dtype`` (optional) is first set on ``config`` and all its sub-configs, in place.
    """
    from transformers import Qwen2_5_VLModel

    from relsim.backbone import attn_implementation

    if dtype is not None:
        set_dtype(config, dtype)

    config._attn_implementation = attn_implementation(device, config.dtype)
    with torch.device(device), _default_dtype(config.dtype), _no_init():
        body = Qwen2_5_VLModel(config)
    if init:
        random_init(body)
    return body.eval().requires_grad_(False)


def dtype_census(modules: dict[str, nn.Module | list[torch.Tensor]]) -> dict[str, dict[str, int]]:
    """Parameter count per dtype of each named module (or list of parameters)."""
    census = {}
    for name, module in modules.items():
        counts: dict[str, int] = {}
        for param in module.parameters() if isinstance(module, nn.Module) else module:
            key = str(param.dtype).removeprefix("torch.")
            counts[key] = counts.get(key, 0) + param.numel()
        census[name] = counts
    return census


def dtype_mismatches(census: dict[str, dict[str, int]], expected: dict[str, torch.dtype]) -> list[str]:
    """'module: N parameters in float32, expected bfloat16' for every module with a parameter off its dtype."""
    wrong = []
    for name, want in expected.items():
        want_name = str(want).removeprefix("torch.")
        for dtype, count in census.get(name, {}).items():
            if dtype != want_name:
                wrong.append(f"{name}: {count:,} parameters in {dtype}, expected {want_name}")
    return wrong


def build_prompt():
    """The relsim prompt from the tokenizer fixture (+ ``<|query|>``); a missing fixture is an error."""
    import tiny as tiny_fixtures  # raises FileNotFoundError naming the fixture when it is missing
    from transformers import AutoTokenizer

    from relsim.encoder import Prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_fixtures.PROCESSOR_FIXTURE, trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [tiny_fixtures.QUERY_TOKEN]})
    prompt = Prompt.from_tokenizer(tokenizer, tiny_fixtures.QUERY_TOKEN, IMAGE_TOKEN_ID)
    if (prompt.prefix, prompt.suffix) != (PROMPT_PREFIX, PROMPT_SUFFIX):
        raise ValueError(f"the tokenizer fixture gives the prompt {prompt}, not the documented ids")
    return prompt, tokenizer


def lora_factors(body: nn.Module, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random non-zero LoRA factors (A, B) in float32 for every q_proj / v_proj of the language model.

    A is drawn like peft's default (std 1/sqrt(3 x in)); B so that the update ``scale x B @ A`` has
    ``LORA_RELATIVE`` of the base weights' standard deviation.
    """
    scale = LORA_ALPHA / LORA_RANK
    factors = {}
    for name, module in body.named_modules():
        if name.startswith("language_model.") and name.endswith(("q_proj", "v_proj")):
            device = module.weight.device
            generator = torch.Generator(device=device).manual_seed(seed + len(factors))
            std_a = (3 * module.in_features) ** -0.5
            std_b = LORA_RELATIVE * float(module.weight.float().std()) / (scale * LORA_RANK**0.5 * std_a)
            a = torch.randn(LORA_RANK, module.in_features, device=device, generator=generator) * std_a
            b = torch.randn(module.out_features, LORA_RANK, device=device, generator=generator) * std_b
            factors[name] = (a, b)
    return factors


def merge(body: nn.Module, factors: dict) -> None:
    from relsim.checkpoint import LoraWeights, merge_lora

    with torch.no_grad():
        merge_lora(body, LoraWeights(factors=factors, scale=LORA_ALPHA / LORA_RANK, rank=LORA_RANK))


def relsim_model(body: nn.Module, projection: nn.Linear, prompt, mode: str):
    """A ``RelSimModel`` on ``body`` (fastpath applied, as ``relsim.load`` does)."""
    from relsim import fastpath
    from relsim.encoder import RelSimModel

    fastpath.optimize(body)
    return RelSimModel(body, projection, prompt, mode=mode)


class DeviceUpstream:
    """tests/reference.py's ``UpstreamPipeline`` around an in-memory body: inputs moved to its device."""

    @classmethod
    def build(cls, body: nn.Module, projection: nn.Linear, tokenizer, factors: dict, dtype: torch.dtype):
        """Wrap ``body`` as upstream runs it; returns (pipeline, peft model).

        ``Qwen2_5_VLForConditionalGeneration`` around the same body, an LM head of the resized vocabulary
        (151,666 rows, as upstream's ``resize_token_embeddings``) in ``dtype``, and peft LoRA r=16 on
        q_proj / v_proj holding ``factors``, unmerged (peft keeps the adapter in float32).
        """
        from peft import LoraConfig, get_peft_model
        from reference import UpstreamPipeline, _image_processor
        from transformers import Qwen2_5_VLForConditionalGeneration

        device = body.language_model.embed_tokens.weight.device
        with torch.device("meta"):
            full = Qwen2_5_VLForConditionalGeneration(body.config)
        full.model = body
        hidden = body.config.text_config.hidden_size
        full.lm_head = nn.Linear(hidden, len(tokenizer), bias=False, device=device, dtype=dtype)
        random_init(full.lm_head, seed=1)
        lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(full, lora).eval()
        with torch.no_grad():
            for name, (a, b) in factors.items():
                module = body.get_submodule(name)
                module.lora_A["default"].weight.copy_(a)
                module.lora_B["default"].weight.copy_(b)

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


# -- measuring ---------------------------------------------------------------------------------------------


class Meter:
    """Times callables on the benchmark's device, records peak memory, and keeps the run inside its budget."""

    def __init__(self, device: torch.device, args: argparse.Namespace) -> None:
        self.device, self.min_seconds, self.min_runs, self.budget = device, args.min_seconds, args.min_runs, args.budget
        self.rates: dict[str, float] = {}  # slowest FLOP/s seen per kind of measurement
        self.roof: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - STARTED

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def predict(self, kind: str, flops_per_run: float) -> float:
        """Seconds a measurement of ``flops_per_run`` should take (warm-up + runs), from what ran before."""
        rate = self.rates.get(kind) or min(self.rates.values(), default=None)
        if rate is None:
            rate = 0.1 * self.roof if self.roof else 1e12
        run = flops_per_run / rate
        return run + max(self.min_runs * run, self.min_seconds)

    def skip(self, kind: str, flops_per_run: float) -> str | None:
        """Why a measurement is skipped (it would end past the budget), or None."""
        expected = self.predict(kind, flops_per_run)
        if self.elapsed() + expected > self.budget:
            return f"skipped: predicted {expected:.0f} s at {self.elapsed():.0f} s, budget {self.budget:.0f} s"
        return None

    def measure(self, fn: Callable[[], object], items: int, kind: str, flops_per_run: float | None) -> dict:
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
        if flops_per_run:
            self.rates[kind] = min(self.rates.get(kind, float("inf")), flops_per_run / seconds)
        return {
            "images": items,
            "runs": runs,
            "seconds_per_run": seconds,
            "images_per_s": items / seconds,
            "ms_per_image": 1000 * seconds / items,
            "peak_memory_gib": peak,
        }


def matmul_roof(device: torch.device, seconds: float = 1.0) -> dict:
    """bf16 throughput of one large square GEMM on ``device`` (the best of timed runs)."""
    n = 8192 if device.type == "cuda" else 1024
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - t0) / 10)
    return {"n": n, "dtype": "bfloat16", "tflops": 2 * n**3 / best / 1e12}


def photo_sets(folder: Path, sizes: list[str], count: int) -> dict[str, list[Path]]:
    sets = {
        size: common.make_photos(folder, *common.SIZES[size], count, seed=10 * i)
        for i, size in enumerate(common.SIZES)
        if size in sizes
    }
    sets["mix"] = [p for group in zip(*(sets[s] for s in sizes), strict=True) for p in group]
    return sets


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def total_flops(config, paths: list[Path], mode: str) -> float:
    return sum(common.image_flops(config, *image_size(p), mode) for p in paths)


def repeat(paths: list[Path], n: int) -> list[Path]:
    return [paths[i % len(paths)] for i in range(n)]


# -- the run -----------------------------------------------------------------------------------------------


class Run:
    """The benchmark's state, its JSON, and the sections (each one try block, the JSON written after it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
        self.dtype = torch.bfloat16
        self.meter = Meter(self.device, args)
        self.path = args.out / ("gpu-tiny.json" if args.tiny else "gpu.json")
        self.data: dict = {
            "tiny": args.tiny,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "sections": {},
            "rows": [],
        }
        self.failed = False
        self.refused = False

    def write(self) -> None:
        self.data["seconds"] = self.meter.elapsed()
        common.write_json(self.data, self.path)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[dict]:
        """Run a section: its wall time and status ("ok", "error: ...", "refused: ...") go into the JSON."""
        entry: dict = {"status": "running", "started_s": round(self.meter.elapsed(), 1)}
        self.data["sections"][name] = entry
        start = time.perf_counter()
        print(f"== {name} ({self.meter.elapsed():.0f} s)", flush=True)
        try:
            yield entry
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as err:  # a failing section is recorded and the run goes on
            traceback.print_exc()
            entry["status"] = f"error: {type(err).__name__}: {err}"
            self.failed = True
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 2)
            self.write()

    def ran(self, name: str) -> bool:
        return self.data["sections"].get(name, {}).get("status") == "ok"

    def record(self, row: dict, flops: float | None) -> None:
        spec = self.data["environment"].get("spec_bf16_tflops")
        roof = self.meter.roof
        achieved = flops * row["images_per_s"] if flops else None
        row["tflop_per_image"] = flops / 1e12 if flops else None
        row["mfu_spec"] = achieved / (spec * 1e12) if achieved and spec else None
        row["mfu_roof"] = achieved / roof if achieved and roof else None
        self.data["rows"].append(row)
        mfu = " ".join(
            f"{label} {100 * row[key]:5.1f}%" if row[key] is not None else f"{label}     -"
            for key, label in (("mfu_spec", "MFU/spec"), ("mfu_roof", "MFU/roof"))
        )
        pad = f" pad x{row['padding']:.3f}" if row.get("padding") else ""
        print(
            f"  {row['pipeline']:20s} {row['part']:7s} {row['images_set']:9s} batch {row['batch']:3d} "
            f"{row['images_per_s']:8.2f} img/s {row['ms_per_image']:8.2f} ms/img  {mfu}  "
            f"peak {row['peak_memory_gib']:6.2f} GiB{pad}",
            flush=True,
        )

    def skipped(self, entry: dict, what: str, reason: str) -> None:
        entry.setdefault("skipped", []).append(f"{what}: {reason}")
        print(f"  {what}: {reason}", flush=True)


def run(args: argparse.Namespace) -> Run:
    r = Run(args)
    if r.device.type == "cpu":
        common.setup_cpu(None)
    r.data["environment"] = environment(r.device)
    r.write()
    with tempfile.TemporaryDirectory(prefix="relsim-gpu-") as tmp, torch.inference_mode():
        with r.section("build") as entry:
            build(r, entry, Path(tmp))
        if r.refused or not r.ran("build"):
            return r
        with r.section("roof") as entry:
            entry.update(matmul_roof(r.device))
            r.meter.roof = entry["tflops"] * 1e12
            print(f"  bf16 GEMM {entry['n']}^3: {entry['tflops']:.1f} TFLOP/s", flush=True)
        with r.section("reference") as entry:
            reference_float32(r, entry)
        with r.section("upstream") as entry:
            upstream(r, entry)
        with r.section("agreement") as entry:
            agreement(r, entry)
        if r.refused:
            return r
        with r.section("forward") as entry:
            forward(r, entry)
        with r.section("embed") as entry:
            embed(r, entry)
        with r.section("device-resize") as entry:
            device_resize(r, entry)
        if args.compile:
            with r.section("compile") as entry:
                compile_row(r, entry)
    add_ratios(r.data)
    r.write()
    return r


def build(r: Run, entry: dict, tmp: Path) -> None:
    r.config = model_config(r.args.tiny, r.dtype)
    start = time.perf_counter()
    r.body = build_body(r.config, r.device)
    r.meter.sync()
    entry["build_seconds"] = round(time.perf_counter() - start, 2)
    census = dtype_census({"visual": r.body.visual, "language_model": r.body.language_model})
    r.data["modules"] = census
    wrong = dtype_mismatches(census, {"visual": r.dtype, "language_model": r.dtype})
    if wrong:
        r.refused = True
        entry["status"] = "refused: " + "; ".join(wrong)
        r.data["refused"] = wrong
        print("refusing to report: " + "; ".join(wrong), flush=True)
        return
    r.prompt, r.tokenizer = build_prompt()
    hidden = r.config.text_config.hidden_size
    r.projection = nn.Linear(hidden, common.PROJECTION_DIM, device=r.device, dtype=torch.float32)
    r.factors = lora_factors(r.body)
    r.photos = photo_sets(tmp / "photos", r.args.sizes, r.args.photos)
    small = [s for s in r.args.sizes if s != "1920x1080"][:3]
    r.agreement_photos = [p for s in small for p in r.photos[s][: r.args.agreement_images]]
    r.embeddings = {}
    entry["attn_implementation"] = r.body.config._attn_implementation
    entry["weights_gib"] = sum(p.numel() * p.element_size() for p in r.body.parameters()) / 2**30
    entry["lora_modules"] = len(r.factors)
    print(
        f"  {'tiny' if r.args.tiny else 'Qwen2.5-VL-7B'} body, {entry['weights_gib']:.2f} GiB, "
        f"{entry['attn_implementation']}, on {r.device} in {entry['build_seconds']:.1f} s; modules {census}",
        flush=True,
    )


def reference_float32(r: Run, entry: dict) -> None:
    """float32 copy of the base weights + the LoRA merged in float32; no TF32 anywhere."""
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    body32 = None
    try:
        body32 = build_body(with_dtype(r.config, torch.float32), r.device, init=False)
        body32.load_state_dict(r.body.state_dict())
        census = dtype_census({"visual": body32.visual, "language_model": body32.language_model})
        entry["modules"] = census
        wrong = dtype_mismatches(census, {"visual": torch.float32, "language_model": torch.float32})
        if wrong:
            raise TypeError("the float32 reference is not float32: " + "; ".join(wrong))
        merge(body32, r.factors)
        model = relsim_model(body32, r.projection, r.prompt, "native")
        r.embeddings["float32"] = model.embed(r.agreement_photos, batch_size=len(r.agreement_photos))
        entry["images"] = len(r.agreement_photos)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
        del body32
        if r.device.type == "cuda":
            torch.cuda.empty_cache()


def upstream(r: Run, entry: dict) -> None:
    """Upstream-style on the same body: agreement embeddings first, then timing (cheap sizes first)."""
    from PIL import Image
    from reference import upstream_native_image

    from relsim import fastpath

    fastpath.restore(r.body)  # upstream runs transformers' own vision attention loop
    peft_model = None
    try:
        pipeline, peft_model = DeviceUpstream.build(r.body, r.projection, r.tokenizer, r.factors, r.dtype)
        head = dtype_census({"lm_head": peft_model.get_base_model().lm_head})
        lora = [p for n, p in r.body.named_parameters() if "lora_" in n]
        entry["modules"] = {**head, **dtype_census({"lora_adapter (float32 by design)": lora})}
        wrong = dtype_mismatches(head, {"lm_head": r.dtype})
        if wrong:
            r.refused = True
            entry["status"] = "refused: " + "; ".join(wrong)
            r.data["refused"] = wrong
            return

        def embed_all(files: list[Path]) -> torch.Tensor:
            out = []
            for path in files:  # open + resize inside the timing, as relsim's embed decodes inside its timing
                with Image.open(path) as image:
                    out.append(pipeline.embed(upstream_native_image(image)))
            return torch.stack(out)

        r.embeddings["upstream"] = embed_all(r.agreement_photos).float().cpu()
        for name in r.args.sizes:
            files = r.photos[name][: r.args.upstream_images]
            flops = total_flops(r.config, files, "native")
            reason = r.meter.skip("upstream", flops)
            if reason:
                r.skipped(entry, f"upstream {name}", reason)
                continue
            row = r.meter.measure(lambda f=files: embed_all(f), len(files), "upstream", flops)
            r.record(
                {"pipeline": "upstream", "part": "embed", "images_set": name, "batch": 1, **row}, flops / len(files)
            )
    finally:
        if peft_model is not None:
            peft_model.unload()  # the plain Linear layers back in place, unmerged
        fastpath.optimize(r.body)


def agreement(r: Run, entry: dict) -> None:
    """Merge the LoRA into the bf16 body (as relsim.load does); compare with upstream-bf16 and float32."""
    merge(r.body, r.factors)
    r.models = {mode: relsim_model(r.body, r.projection, r.prompt, mode) for mode in ("train", "native")}
    ours = r.models["native"].embed(r.agreement_photos, batch_size=len(r.agreement_photos))
    if "upstream" not in r.embeddings or "float32" not in r.embeddings:
        missing = [k for k in ("upstream", "float32") if k not in r.embeddings]
        raise RuntimeError(f"no {' or '.join(missing)} embeddings to compare with (see that section)")
    figures = common.bf16_agreement(ours, r.embeddings["upstream"], r.embeddings["float32"])
    entry.update(figures)
    entry["lora_relative_size"] = LORA_RELATIVE
    r.data["agreement"] = figures
    gap, ours32, theirs32 = (
        figures[key]["score_rms"] for key in ("relsim_vs_upstream", "relsim_vs_float32", "upstream_vs_float32")
    )
    print(
        f"  {figures['pairs']} pair scores: relsim-bf16 vs upstream-bf16 RMS {gap:.2e}; vs float32: relsim "
        f"{ours32:.2e}, upstream {theirs32:.2e}; gap/spread {figures['gap_over_spread']:.2f} "
        f"({'within' if figures['within_spread'] else 'OUTSIDE'} the bf16 spread)",
        flush=True,
    )


def forward(r: Run, entry: dict) -> None:
    from relsim import preprocess

    model = r.models["train"]
    pixels = [preprocess.prepare(p, i, "train") for i, p in enumerate(r.photos["mix"])]
    flops = common.image_flops(r.config, 448, 448, "train")
    for batch in r.args.batch_sizes:
        reason = r.meter.skip("relsim", flops * batch)
        if reason:
            r.skipped(entry, f"forward batch {batch}", reason)
            continue
        pixel_values, grid = preprocess.patchify(repeat(pixels, batch), device=r.device, dtype=r.dtype)
        row = r.meter.measure(lambda pv=pixel_values, g=grid: model(pv, g), batch, "relsim", flops * batch)
        r.record({"pipeline": "relsim-train", "part": "forward", "images_set": "448x448", "batch": batch, **row}, flops)


def embed(r: Run, entry: dict) -> None:
    """Per image set (cheap first), train then native, at batch 32 per size and 1/8/32/64 on the mix."""
    sets = [s for s in SIZE_ORDER if s in r.photos]
    per_size_batch = 32 if 32 in r.args.batch_sizes else max(r.args.batch_sizes)
    for name in sets:
        for mode in ("train", "native"):
            model = r.models[mode]
            for batch in r.args.batch_sizes if name == "mix" else [per_size_batch]:
                files = repeat(r.photos[name], max(2 * batch, 8) if not r.args.tiny else max(batch, 2))
                flops = total_flops(r.config, files, mode)
                label = f"{mode} {name} batch {batch}"
                reason = r.meter.skip("relsim", flops)
                if reason:
                    r.skipped(entry, label, reason)
                    continue
                meter = common.PaddingMeter(model)
                with meter:
                    row = r.meter.measure(
                        lambda m=model, f=files, b=batch: m.embed(f, batch_size=b), len(files), "relsim", flops
                    )
                row["padding"] = meter.waste if mode == "native" else None
                r.record(
                    {"pipeline": f"relsim-{mode}", "part": "embed", "images_set": name, "batch": batch, **row},
                    flops / len(files),
                )


def device_resize(r: Run, entry: dict) -> None:
    """The resize on the device against Pillow (every photo, bit for bit); train mode with workers resizing."""
    from relsim import preprocess

    entry["check"] = r.data["device_resize"] = device_resize_check(r.photos, r.device, preprocess)
    model = r.models["train"]
    batch = 32 if 32 in r.args.batch_sizes else max(r.args.batch_sizes)
    files = repeat(r.photos["mix"], max(2 * batch, 8) if not r.args.tiny else max(batch, 2))
    flops = total_flops(r.config, files, "train")
    reason = r.meter.skip("relsim", flops)
    if reason:
        r.skipped(entry, "train-worker-resize", reason)
        return
    model.resize_on_device = False
    try:
        row = r.meter.measure(lambda: model.embed(files, batch_size=batch), len(files), "relsim", flops)
    finally:
        model.resize_on_device = None
    r.record(
        {"pipeline": "train-worker-resize", "part": "embed", "images_set": "mix", "batch": batch, **row},
        flops / len(files),
    )


def device_resize_check(photos: dict[str, list[Path]], device: torch.device, preprocess) -> dict:
    """Resize every photo on ``device`` (``resample.resize_uint8``) and compare with Pillow, bit for bit."""
    mismatches, checked, seconds = [], 0, 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for mode in preprocess.MODES:
        for name, paths in photos.items():
            if name == "mix":
                continue
            for i, path in enumerate(paths):
                expected = preprocess.prepare(path, i, mode)
                decoded = preprocess.prepare(path, i, mode, resize=False).to(device)
                preprocess.resize_for_mode(decoded, mode)  # warm the weight tables
                sync()
                start = time.perf_counter()
                got = preprocess.resize_for_mode(decoded, mode)
                sync()
                seconds += time.perf_counter() - start
                checked += 1
                if not torch.equal(got.cpu(), expected):
                    mismatches.append(f"{mode}:{path.name}")
    result = {"checked": checked, "mismatches": mismatches, "ms_per_image": 1000 * seconds / max(checked, 1)}
    print(
        f"  device resize vs Pillow: {checked} images, {len(mismatches)} differ, "
        f"{result['ms_per_image']:.2f} ms/image on {device}",
        flush=True,
    )
    return result


def compile_row(r: Run, entry: dict) -> None:
    """Train-mode forward at batch 32 after ``fastpath.compile_body`` (compilation time reported apart)."""
    from relsim import fastpath, preprocess

    model = r.models["train"]
    batch = 32 if 32 in r.args.batch_sizes else max(r.args.batch_sizes)
    pixels = [preprocess.prepare(p, i, "train") for i, p in enumerate(r.photos["mix"])]
    pixel_values, grid = preprocess.patchify(repeat(pixels, batch), device=r.device, dtype=r.dtype)
    flops = common.image_flops(r.config, 448, 448, "train")
    fastpath.compile_body(model.body)
    try:
        start = time.perf_counter()
        model(pixel_values, grid)
        r.meter.sync()
        entry["compile_seconds"] = time.perf_counter() - start
        row = r.meter.measure(lambda: model(pixel_values, grid), batch, "relsim", flops * batch)
        r.record(
            {"pipeline": "relsim-train-compiled", "part": "forward", "images_set": "448x448", "batch": batch, **row},
            flops,
        )
    finally:
        torch._dynamo.reset()
        for module in (*model.body.visual.blocks, model.body.visual.merger, *model.body.language_model.layers):
            module._compiled_call_impl = None  # back to eager


def add_ratios(data: dict) -> None:
    """x upstream (same image set) for relsim embed rows; x batch 1 for the mix rows of each mode."""
    upstream = {r["images_set"]: r["images_per_s"] for r in data["rows"] if r["pipeline"] == "upstream"}
    single = {r["pipeline"]: r["images_per_s"] for r in data["rows"] if r["images_set"] == "mix" and r["batch"] == 1}
    for row in data["rows"]:
        if row["part"] != "embed" or row["pipeline"] == "upstream":
            continue
        if row["images_set"] in upstream:
            row["x_upstream"] = row["images_per_s"] / upstream[row["images_set"]]
        if row["images_set"] == "mix" and row["pipeline"] in single:
            row["x_batch1"] = row["images_per_s"] / single[row["pipeline"]]


def report(r: Run) -> None:
    columns = [
        ("pipeline", "pipeline"),
        ("part", "part"),
        ("images_set", "images"),
        ("batch", "batch"),
        ("images_per_s", "images/s"),
        ("ms_per_image", "ms/image"),
        ("tflop_per_image", "TFLOP/image"),
        ("mfu_spec", "MFU % spec"),
        ("mfu_roof", "MFU % roof"),
        ("padding", "padding"),
        ("peak_memory_gib", "peak GiB"),
        ("x_upstream", "x upstream"),
        ("x_batch1", "x batch 1"),
    ]
    pct = ("mfu_spec", "mfu_roof")
    rows = [{**row, **{k: None if row.get(k) is None else 100 * row[k] for k in pct}} for row in r.data["rows"]]
    env = r.data["environment"]
    print(
        f"{env.get('gpu', env.get('cpu'))} (driver {env.get('driver')}), torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env.get('peft')}; "
        f"roof {r.data['sections'].get('roof', {}).get('tflops')} TFLOP/s, spec {env.get('spec_bf16_tflops')}"
    )
    print(common.markdown_table(rows, columns))
    print("sections: " + ", ".join(f"{k} {v['status']} ({v['seconds']:.0f} s)" for k, v in r.data["sections"].items()))
    print(f"modules: {r.data.get('modules')}")
    print(f"agreement: {r.data.get('agreement')}")
    print(f"device resize vs Pillow: {r.data.get('device_resize')}")
    png = plot(r.data, r.path.with_suffix(".png"))
    print(f"wrote {r.path}" + (f" and {png}" if png else "") + f"; total {r.data['seconds']:.0f} s")


def plot(data: dict, path: Path) -> Path | None:
    """images/s per image size (end to end), relsim train/native at batch 32 (or the largest) and upstream."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in data["rows"] if r["part"] == "embed" and r["images_set"] != "mix"]
    if not rows:
        return None
    sizes = [s for s in SIZE_ORDER if any(r["images_set"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in ("relsim-train", "relsim-native", "upstream"):
        points = [(s, r["images_per_s"]) for s in sizes for r in rows if r["images_set"] == s and r["pipeline"] == name]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("input image size")
    ax.set_ylabel("images / s (end to end)")
    env = data["environment"]
    ax.set_title(f"relsim on {env.get('gpu', 'CPU')} ({data['dtype']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r = run(args)
    if r.refused:
        print(f"refused: {r.data.get('refused')}; wrote {r.path} (no report)", flush=True)
        return 2
    report(r)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
