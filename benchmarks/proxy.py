"""A CPU proxy of Qwen2.5-VL-7B: upstream's work split as the 7B's is, at 1/159 of the FLOPs.

The ``tiny`` and ``mid`` test models keep the real 152,064-row LM head while shrinking everything else, so on
them the LM head is most of upstream's work (on the 7B it is ~6%) and a CPU speed-up mostly measures skipping
it. The proxy (``common.MODEL_SIZES["proxy"]``) is shaped so that the FLOPs of the upstream procedure split
into vision (patch embedding, blocks, merger), language (decoder projections and MLPs), LM head and attention
(scores and values, vision and language) as the 7B's do, at 448x448 and at 1024x768:

- attention over linear work, per token and layer, is (sequence length) / (4c + 3 x MLP width) in the vision
  tower and (sequence length) / (2d + 2 x kv width + 3 x MLP width) in the language model. The sequence
  lengths are fixed by the image, so these width sums stay near the 7B's (15,380 and 65,024) while the depth
  (32 -> 8 vision blocks, 7 windowed : 1 full as in the 7B; 28 -> 2 decoder layers) and the residual widths
  (1280 -> 32, 3584 -> 320) shrink. Hence the unusual shapes: MLPs 160x and 66x wider than their residual.
- the LM head keeps its share through its row count: 151,666 rows per 28 layers becomes 10,700 for 2 layers
  (``common.PROXY_LM_HEAD_ROWS``; the embedding table keeps the real vocabulary so the real token ids work).

The widths were fitted on a grid to the 7B's split at both sizes. What the proxy cannot reproduce is the
efficiency of each shape on a given machine (a 320-wide matmul does not run at the speed of a 3584-wide one),
so CPU ratios measured on it predict the 7B's FLOP-wise, not kernel-wise.

    python benchmarks/proxy.py                  # the split table of the 7B and the proxy at both sizes
    python benchmarks/proxy.py --sizes 448x448,640x480,1024x768,1920x1080
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

#: Sizes the proxy is fitted at.
FITTED_SIZES = ("448x448", "1024x768")
#: Largest difference of any part's share (percentage points) the proxy may have at a fitted size.
TOLERANCE_PP = 1.0


def configs() -> dict:
    """``Qwen2_5_VLConfig`` of the 7B and of the proxy, with the LM-head rows of each upstream pipeline."""
    import tiny
    from transformers import Qwen2_5_VLConfig

    seven_b = Qwen2_5_VLConfig(**tiny.base_config(common.QWEN25_VL_7B_TEXT, common.QWEN25_VL_7B_VISION))
    proxy = Qwen2_5_VLConfig(**tiny.base_config(*common.MODEL_SIZES["proxy"]))
    return {"7B": (seven_b, common.UPSTREAM_LM_HEAD_ROWS), "proxy": (proxy, common.PROXY_LM_HEAD_ROWS)}


def split_rows(sizes: list[str]) -> list[dict]:
    """One row per (model, size): upstream's FLOPs per image and each part's share in percent."""
    rows = []
    for size in sizes:
        width, height = common.SIZES[size]
        for name, (config, head_rows) in configs().items():
            parts = common.upstream_flops(config, width, height, lm_head_rows=head_rows)
            total = sum(parts.values())
            relsim = common.image_flops(config, width, height, "native")
            row = {"model": name, "size": size, "gflop_upstream": total / 1e9, "gflop_relsim": relsim / 1e9}
            row.update({f"{part}_pct": 100 * flops / total for part, flops in parts.items()})
            rows.append(row)
    return rows


def worst_difference(rows: list[dict]) -> float:
    """Largest |share(proxy) - share(7B)| over parts and sizes, in percentage points."""
    by_key = {(r["model"], r["size"]): r for r in rows}
    return max(
        abs(by_key["proxy", size][f"{part}_pct"] - by_key["7B", size][f"{part}_pct"])
        for size in {r["size"] for r in rows}
        for part in common.FLOP_PARTS
    )


def table(rows: list[dict]) -> str:
    columns = [
        ("model", "model"),
        ("size", "input"),
        ("vision_pct", "vision %"),
        ("language_pct", "language %"),
        ("lm_head_pct", "LM head %"),
        ("attention_pct", "attention %"),
        ("gflop_upstream", "upstream GFLOP/image"),
        ("gflop_relsim", "relsim native GFLOP/image"),
    ]
    return common.markdown_table(rows, columns)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(FITTED_SIZES), help="comma-separated WxH sizes")
    args = parser.parse_args(argv)
    rows = split_rows(args.sizes.split(","))
    print("FLOPs of the upstream procedure per image (native resolution, whole prompt, LM head at every position):")
    print(table(rows))
    seven_b = {r["size"]: r["gflop_upstream"] for r in rows if r["model"] == "7B"}
    scale = [seven_b[r["size"]] / r["gflop_upstream"] for r in rows if r["model"] == "proxy"]
    print(
        f"proxy = 1/{min(scale):.0f}-1/{max(scale):.0f} of the 7B's work; "
        f"largest share difference {worst_difference(rows):.2f} percentage points"
    )
    return rows


if __name__ == "__main__":
    main()
