"""Smoke test of relsim as a user installs it: run by .ci/wheel in a fresh virtual environment that holds the
wheel (not the checkout), from a directory outside the repository.

Usage: python smoke.py ADAPTER_DIR BASE_DIR IMAGE_A IMAGE_B
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time

import relsim
import relsim.relsim_score  # noqa: F401  (upstream 0.1.0's module path and names)
from relsim import preprocess_image  # noqa: F401
from relsim import relsim as upstream_loader  # noqa: F401


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"smoke: {message}")


def best_time(argv: list[str], repeats: int = 5) -> tuple[float, subprocess.CompletedProcess]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(adapter: str, base: str, image_a: str, image_b: str) -> None:
    check("site-packages" in relsim.__file__, f"relsim is imported from {relsim.__file__}, not the installed wheel")
    version = importlib.metadata.version("relsim")
    check(version == relsim.__version__, f"metadata version {version} != relsim.__version__ {relsim.__version__}")
    script = os.path.join(os.path.dirname(sys.executable), "relsim")

    version_s, out = best_time([script, "--version"])
    check(out.returncode == 0 and out.stdout.strip() == f"relsim {version}", f"relsim --version: {out}")
    help_s, out = best_time([script, "--help"])
    check(out.returncode == 0 and all(c in out.stdout for c in ("score", "embed", "download")), f"--help: {out}")

    check(callable(relsim.load) and callable(relsim.functional.relational_similarity), "relsim.load / functional")
    metric_class = relsim.RelationalSimilarity

    flags = ["--model", adapter, "--base-model", base, "--device", "cpu", "--json"]
    out = subprocess.run([script, "score", image_a, image_b, *flags], capture_output=True, text=True, timeout=600)
    check(out.returncode == 0, f"relsim score failed: {out.stderr[-2000:]}")
    cli_score = json.loads(out.stdout)["score"]
    model = relsim.load(adapter, base_model=base, device="cpu")
    api_score = model.score(image_a, image_b)
    metric = metric_class(adapter, base_model=base, device="cpu")
    metric.update([image_a], [image_b])
    check(-1 <= api_score <= 1 and abs(api_score - cli_score) < 1e-5, f"scores: api {api_score}, cli {cli_score}")
    check(abs(float(metric.compute()) - api_score) < 1e-6, "the metric disagrees with model.score")
    print(
        f"smoke: relsim {version} from {os.path.dirname(relsim.__file__)}: --version {version_s:.3f} s, "
        f"--help {help_s:.3f} s (best of 5); score {api_score:.6f} (API = CLI = metric)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
