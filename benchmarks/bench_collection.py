"""Collections at scale: ingest, flat and ANN search latency, recall@10, disk size, on synthetic vectors.

N x 384 float16 unit vectors drawn around random cluster centres (like image embeddings, which cluster by
content) go into a relsim collection through ``Collection.add`` (the upsert ``relsim embed`` uses), in
commits of 100,000 rows. Queries are perturbed copies of random rows. In the same run:

- ``reference exact``: relsim 0.1's exact search (the deleted ``relsim/topk.py``: the float16 matrix in memory,
  multiplied in chunks of 8192 rows in float32, running top-k merge), the ground truth for recall;
- ``flat``: LanceDB's brute-force scan of the table, what a one-off ``Collection.nearest(exact=True)`` runs;
- ``flat_memory``: the flat path from a collection's second query on (:mod:`relsim.exact`): the time to load
  the vectors once, then queries one at a time and in batches of ``--batch``;
- ``IVF_HNSW_SQ`` / ``IVF_PQ``: each index built, then searched at several ``nprobes``.

Latencies are per query, one query at a time, p50 / p95 over the queries. The machine is shared: ratios in
one run are more telling than absolute times. ``--rows 20000 --queries 20`` runs in seconds (a smoke test).

Example:
    $ python benchmarks/bench_collection.py                       # 1M rows, a few minutes on 2 cores
    $ python benchmarks/bench_collection.py --rows 20000 --queries 20 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relsim import exact  # noqa: E402
from relsim.collection import Collection  # noqa: E402
from relsim.exact import VectorMemory  # noqa: E402

FINGERPRINT = {"model": "synthetic", "revision": None, "base_model": None, "base_revision": None, "mode": "train"}


def synthetic(rows: int, dim: int, clusters: int, seed: int = 0, chunk: int = 100_000):
    """Clustered float16 unit vectors, chunk by chunk (the full float32 matrix never exists)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x.astype(np.float16)


def reference_exact(query: torch.Tensor, matrix: torch.Tensor, k: int, chunk: int = 8192) -> torch.Tensor:
    """relsim 0.1's exact search (topk.py): chunked float32 matmul over a float16 matrix, running top-k."""
    q = query.float().reshape(-1, 1)
    best_s = torch.empty(0)
    best_i = torch.empty(0, dtype=torch.int64)
    buf = torch.empty(min(chunk, len(matrix)), matrix.shape[1])
    out = torch.empty(min(chunk, len(matrix)), 1)
    for start in range(0, len(matrix), chunk):
        rows = matrix[start : start + chunk]
        block = buf[: len(rows)].copy_(rows)
        scores = torch.mm(block, q, out=out[: len(rows)])[:, 0]
        s, i = scores.topk(min(k, len(rows)))
        best_s, pos = torch.cat([best_s, s]).topk(min(k, len(best_s) + len(s)))
        best_i = torch.cat([best_i, i + start])[pos]
    return best_i


def timed(fn, queries) -> tuple[list, np.ndarray]:
    results, times = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    return results, 1000 * np.array(times)


def stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="queries per call in the batched flat row")
    parser.add_argument("--kinds", default="IVF_SQ,IVF_HNSW_SQ,IVF_PQ", help="indexes to build and compare")
    parser.add_argument("--settings", default="16,32,32:5", help="nprobes[:refine_factor] to try for each index")
    parser.add_argument("--dir", help="where to write the collection (default: a temporary folder, removed)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(args.dir or tempfile.mkdtemp(prefix="relsim-bench-"))
    uri = root / "bench.relsim"
    if uri.exists():
        shutil.rmtree(uri)
    result: dict = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "cpus": os.cpu_count()}
    try:
        col = Collection.create(uri, FINGERPRINT, dim=args.dim, dtype="float16")
        matrix = torch.empty(args.rows, args.dim, dtype=torch.float16)
        start = time.perf_counter()
        for first, block in synthetic(args.rows, args.dim, args.clusters):
            records = [
                {"path": f"/synthetic/{i:07d}.jpg", "size": i, "mtime_ns": i, "sha256": f"{i:064x}"}
                for i in range(first, first + len(block))
            ]
            col.add(records, block.astype(np.float32))
            matrix[first : first + len(block)] = torch.from_numpy(block)
        ingest = time.perf_counter() - start
        result["ingest_rows_per_s"] = round(args.rows / ingest)
        result["disk_bytes"] = disk(uri)
        print(
            f"ingest: {args.rows} rows in {ingest:.1f} s ({args.rows / ingest:,.0f} rows/s), {disk(uri) / 1e6:.0f} MB",
            flush=True,
        )

        rng = np.random.default_rng(1)
        picks = matrix[torch.from_numpy(rng.choice(args.rows, args.queries, replace=False))].float()
        queries = torch.nn.functional.normalize(
            picks + 0.1 * torch.randn(picks.shape, generator=torch.Generator().manual_seed(2)), dim=1
        )
        paths = [f"/synthetic/{i:07d}.jpg" for i in range(args.rows)]

        # The reference and the flat scan alternate query by query: a shared machine's load drifts, and both
        # then see the same drift.
        truth, ref_ms, found, flat_ms = [], [], [], []
        memory_bytes, exact.MAX_BYTES = exact.MAX_BYTES, 0  # every query a one-off: LanceDB's scan
        for q in queries:
            start = time.perf_counter()
            truth.append(reference_exact(q, matrix, 10))
            ref_ms.append(time.perf_counter() - start)
            start = time.perf_counter()
            found.append(col.nearest(q, 10, exact=True, dedup=False)[0])
            flat_ms.append(time.perf_counter() - start)
        exact.MAX_BYTES = memory_bytes
        truth_sets = [{paths[i] for i in t.tolist()} for t in truth]

        def recall(found) -> float:
            return float(np.mean([len({h.path for h in f} & t) / 10 for f, t in zip(found, truth_sets, strict=True)]))

        result["reference_exact"] = stats(1000 * np.array(ref_ms))
        result["flat"] = {**stats(1000 * np.array(flat_ms)), "recall_at_10": recall(found)}
        print(f"reference exact (relsim 0.1, matrix in memory): {result['reference_exact']}", flush=True)
        print(f"flat (LanceDB scan): {result['flat']}", flush=True)

        start = time.perf_counter()
        VectorMemory.of(col).load()
        loaded = time.perf_counter() - start
        found, ms = timed(lambda q: col.nearest(q, 10, exact=True, dedup=False)[0], queries)
        batches = [queries[i : i + args.batch] for i in range(0, len(queries), args.batch)]
        start = time.perf_counter()
        batched = [hits for b in batches for hits in col.nearest(b, 10, exact=True, dedup=False)]
        per_query = 1000 * (time.perf_counter() - start) / len(queries)
        result["flat_memory"] = {
            "load_s": round(loaded, 4),  # a small smoke run loads in milliseconds
            **stats(ms),
            "recall_at_10": recall(found),
            f"batch_{args.batch}_ms_per_query": round(per_query, 2),
            "batch_recall_at_10": recall(batched),
        }
        print(f"flat, vectors in memory: {result['flat_memory']}", flush=True)

        for kind in [k for k in args.kinds.split(",") if k]:
            start = time.perf_counter()
            col.create_vector_index(kind)
            built = time.perf_counter() - start
            entry = {"build_s": round(built, 1), "disk_bytes": disk(uri), "settings": {}}
            for setting in args.settings.split(","):
                nprobes, _, refine = setting.partition(":")
                options = {"nprobes": int(nprobes), "refine_factor": int(refine) if refine else None}
                found, ms = timed(lambda q, o=options: col.nearest(q, 10, dedup=False, **o)[0], queries)
                entry["settings"][setting] = {**stats(ms), "recall_at_10": recall(found)}
                print(f"{kind} nprobes:refine={setting}: {entry['settings'][setting]}", flush=True)
            result[kind] = entry
            print(f"{kind}: built in {built:.1f} s, {entry['disk_bytes'] / 1e6:.0f} MB with the index", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
