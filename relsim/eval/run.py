"""The whole evaluation: pool -> queries -> each method's embeddings -> top-k -> judge -> statistics -> outputs.

Everything a run computes is kept under the output directory, so running the same command again costs
nothing and an interrupted run resumes where it stopped::

    pool.json, pool.txt         the pool in order, with content hashes (pool.txt: the order --embeddings use)
    embeddings/                 one folder per method (relsim: a collection; others: vector tables)
    retrievals.json             every method's top-k per query, in upstream's retrieved_images.json layout
    judge_cache.sqlite          every judge answer, keyed by (model, prompt, temperature, images, sample)
    results.json                configuration, per-method summary, per-query matches and answers
    results.md, results.png     the table; the bar chart with 95% CIs (with a judge)
    results.html, thumbs/       each query with every method's matches and the judge's scores

Example:
    >>> config = EvalConfig(pool=["images/"], out=Path("out"), judge=JudgeSettings(model="gpt-4o"))
    >>> outcome = run_retrieval_eval(config)                        # doctest: +SKIP
    >>> print(outcome.paths["markdown"].read_text())                # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArgumentError, ModelNotFoundError
from .embeddings import PoolVectors
from .judge import Judge, JudgeCache, JudgeRequest, JudgeSettings, Verdict, check_ready
from .matches import top_matches
from .methods import (
    BUILTIN_METHODS,
    DEFAULT_METHODS,
    EncoderMethod,
    Method,
    MethodOptions,
    MethodUnavailable,
    RelSimMethod,
    StudentMethod,
    external_method,
)
from .pool import Pool, load_pool, sample_queries
from .report import write_chart, write_html, write_markdown
from .stats import summarise

__all__ = ["EvalConfig", "EvalOutcome", "build_method", "run_retrieval_eval"]


@dataclass
class EvalConfig:
    """Everything ``relsim eval retrieval`` takes. ``judge=None`` stops after retrieval (``--no-judge``)."""

    pool: list[str]
    out: Path
    image_dir: str | None = None
    queries: int = 1000
    seed: int = 0
    k: int = 10
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    embeddings: list[str] = field(default_factory=list)
    options: MethodOptions = field(default_factory=MethodOptions)
    judge: JudgeSettings | None = None
    judge_cache: Path | None = None
    reference: str | None = "relsim"
    label: str | None = None
    progress: bool | None = None


@dataclass
class EvalOutcome:
    results: dict[str, Any]
    paths: dict[str, Path]
    failed_requests: int = 0
    skipped_methods: dict[str, str] = field(default_factory=dict)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _entry(pool: Pool, row: int, cosine: float | None = None) -> dict[str, Any]:
    image = pool.images[row]
    out: dict[str, Any] = {"row": row, "path": image.path, "sha256": image.sha256, "label": image.label}
    if cosine is not None:
        out["cosine"] = round(float(cosine), 6)
    return out


def build_method(name: str, options: MethodOptions) -> Method:
    """A built-in method by name; :class:`MethodUnavailable` when it cannot run in this installation (a missing
    package, or for ``clip``, ``dino`` and ``caption`` a model that is neither cached nor downloadable: the
    message names the ``relsim download`` command). ``relsim``, the reference, is never skipped."""
    if name == "relsim":
        return RelSimMethod(options)
    if name in ("clip", "dino"):
        from .baselines import HFImageEncoder

        model = options.clip_model if name == "clip" else options.dino_model
        revision = options.clip_revision if name == "clip" else options.dino_revision
        try:
            encoder = HFImageEncoder(name, model, revision=revision, device=options.device)
        except ModelNotFoundError as err:
            raise MethodUnavailable(f"{name} skipped: {err}") from None
        return EncoderMethod(name, encoder, options)
    if name == "dreamsim":
        from .baselines import DreamSimEncoder

        try:
            encoder = DreamSimEncoder(
                dreamsim_type=options.dreamsim_type, device=options.device, cache_dir=options.dreamsim_cache
            )
        except ImportError as err:
            raise MethodUnavailable(f"dreamsim skipped: {err}") from None
        return EncoderMethod(name, encoder, options)
    if name == "caption":
        from .captions import CaptionMethod

        method = CaptionMethod(options)
        try:
            method.fingerprints()  # resolves the captioner, its base and the text model: no weights loaded
        except ModelNotFoundError as err:
            raise MethodUnavailable(f"caption skipped: {err}") from None
        return method
    if name == "student":
        return StudentMethod(options)
    raise ArgumentError(f"unknown method {name!r}; choose from {', '.join(BUILTIN_METHODS)} or use --embeddings")


def _build_methods(config: EvalConfig, log: Callable[[str], None]) -> tuple[list[Method], dict[str, str]]:
    methods: list[Method] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(config.methods):
        try:
            methods.append(build_method(name, config.options))
        except MethodUnavailable as why:
            skipped[name] = str(why)
            log(f"relsim eval: {why}")
    for spec in config.embeddings:
        method = external_method(spec)
        if method.name in {m.name for m in methods} | set(config.methods):
            raise ArgumentError(f"--embeddings {spec!r}: the name {method.name!r} is taken by a method")
        methods.append(method)
    if not methods:
        raise ArgumentError("no method can run here: " + "; ".join(skipped.values()) if skipped else "no method given")
    return methods, skipped


def _embed_all(methods: list[Method], pool: Pool, workdir: Path, log: Callable[[str], None]) -> dict[str, PoolVectors]:
    vectors: dict[str, PoolVectors] = {}
    for method in methods:
        started = time.perf_counter()
        result = method.embed(pool, workdir)
        note = f"; {len(result.failures)} unreadable" if result.failures else ""
        log(
            f"relsim eval: {method.name}: {int(result.valid.sum())} of {len(pool)} images embedded "
            f"({result.computed} this run{note}, {time.perf_counter() - started:.1f} s)"
        )
        vectors[method.name] = result
    return vectors


def _upstream_layout(pool: Pool, queries: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
    """One method's matches as upstream's ``retrieved_images.json`` lists them (so its gptscore.py reads it)."""
    out = []
    for q, (row_list, score_list) in enumerate(zip(rows, scores, strict=True)):
        keep = row_list >= 0
        out.append(
            {
                "query_image_id": pool.images[queries[q]].label,
                "query_image_path": pool.images[queries[q]].path,
                "top_k_image_ids": [pool.images[r].label for r in row_list[keep]],
                "top_k_image_paths": [pool.images[r].path for r in row_list[keep]],
                "top_k_scores": [round(float(s), 3) for s in score_list[keep]],
            }
        )
    return out


def _write_json(path: Path, payload: Any) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_retrieval_eval(config: EvalConfig, *, log: Callable[[str], None] = _stderr) -> EvalOutcome:
    """Run (or resume) the evaluation described by ``config``; see the module docstring for the outputs."""
    if config.k < 1:
        raise ArgumentError(f"k must be >= 1, got {config.k}")
    if config.judge is not None:
        check_ready(config.judge)  # a missing package or key is found now, not after the embeddings
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = load_pool(config.pool, image_dir=config.image_dir, cache_file=out / "pool.json")
    note = f" ({len(pool.missing)} listed files are missing)" if pool.missing else ""
    log(f"relsim eval: pool of {len(pool)} images, {len(pool.copies())} distinct{note}")
    sampled = sample_queries(len(pool), config.queries, config.seed)
    methods, skipped = _build_methods(config, log)
    vectors = _embed_all(methods, pool, out / "embeddings", log)

    # Every method searches the same images: those all of them could embed.
    valid = np.logical_and.reduce([v.valid for v in vectors.values()])
    dropped = [
        {"path": pool.images[q].path, "reason": "a method could not embed the query image"}
        for q in sampled
        if not valid[q]
    ]
    queries = np.array([q for q in sampled if valid[q]], dtype=np.int64)
    if len(queries) == 0:
        raise ArgumentError("none of the sampled query images could be embedded by every method")
    matches = {name: top_matches(v.vectors, valid, pool.hashes, queries, config.k) for name, v in vectors.items()}
    _write_json(out / "retrievals.json", {n: _upstream_layout(pool, queries, *m) for n, m in matches.items()})
    log(f"relsim eval: {len(queries)} queries, top-{config.k} of {len(vectors)} methods in retrievals.json")

    judged = _judge(config, pool, queries, matches, log) if config.judge is not None else None
    results = _results(config, pool, sampled, queries, dropped, vectors, skipped, matches, judged)
    paths = {"json": _write_json(out / "results.json", results)}
    paths["markdown"] = write_markdown(results, out / "results.md")
    chart = write_chart(results, out / "results.png")
    if chart is not None:
        paths["chart"] = chart
    paths["html"] = write_html(results, out / "results.html")
    failed = sum(s.get("failed", 0) for s in results["summary"])
    return EvalOutcome(results, paths, failed, skipped)


def _judge(
    config: EvalConfig,
    pool: Pool,
    queries: np.ndarray,
    matches: dict[str, tuple[np.ndarray, np.ndarray]],
    log: Callable[[str], None],
) -> dict[str, dict[int, list[Verdict]]]:
    """Each method's top-1 per query, judged ``samples`` times: method -> query index -> verdicts."""
    settings = config.judge
    assert settings is not None
    wanted: dict[str, dict[int, list[JudgeRequest]]] = {}
    for name, (rows, _) in matches.items():
        wanted[name] = {}
        for qi, row_list in enumerate(rows):
            if row_list[0] < 0:
                continue
            q, m = pool.images[queries[qi]], pool.images[row_list[0]]
            wanted[name][qi] = [
                JudgeRequest(q.sha256, q.path, m.sha256, m.path, sample) for sample in range(settings.samples)
            ]
    requests = [r for per_query in wanted.values() for rs in per_query.values() for r in rs]
    cache = JudgeCache(config.judge_cache or Path(config.out) / "judge_cache.sqlite")
    try:
        judge = Judge(settings, cache, log=log)
        distinct = len({JudgeCache.key(settings, r) for r in requests})
        log(f"relsim eval: {len(requests)} judge requests ({distinct} distinct) to {settings.model} at {settings.url}")
        verdicts = judge.run(requests, progress=config.progress)
        p = judge.progress
        log(f"relsim eval: judge: {p.cached} answers from the cache, {p.asked} asked, {p.failed} failed")
    finally:
        cache.close()
    return {name: {qi: [verdicts[r] for r in rs] for qi, rs in per_query.items()} for name, per_query in wanted.items()}


def _results(
    config: EvalConfig,
    pool: Pool,
    sampled: np.ndarray,
    queries: np.ndarray,
    dropped: list[dict],
    vectors: dict[str, PoolVectors],
    skipped: dict[str, str],
    matches: dict[str, tuple[np.ndarray, np.ndarray]],
    judged: dict[str, dict[int, list[Verdict]]] | None,
) -> dict[str, Any]:
    from .. import __version__

    names = list(vectors)
    reference = config.reference if config.reference in vectors else None
    if reference is not None:
        names = [reference] + [n for n in names if n != reference]
    per_query_scores: dict[str, dict[int, float]] = {}
    summary = []
    if judged is not None:
        for name in names:
            scores = {}
            for qi, verdicts in judged[name].items():
                values = [v.score for v in verdicts if v.score is not None]
                if values:
                    scores[qi] = float(np.mean(values))
            per_query_scores[name] = scores
    for name in names:
        with_match = int((matches[name][0][:, 0] >= 0).sum())
        if judged is None:
            summary.append({"method": name, "queries": with_match})
            continue
        verdicts = [v for vs in judged[name].values() for v in vs]
        ref = (reference, per_query_scores[reference]) if reference is not None and name != reference else None
        summary.append(
            summarise(
                name,
                with_match,
                per_query_scores[name],
                unparseable=sum(v.error is None and v.score is None for v in verdicts),
                failed=sum(v.error is not None for v in verdicts),
                reference=ref,
                seed=config.seed,
            ).to_dict()
        )
    per_query = []
    for qi, q in enumerate(queries):
        item: dict[str, Any] = {"query": _entry(pool, int(q)), "methods": {}}
        for name in names:
            rows, scores = matches[name]
            entry: dict[str, Any] = {
                "matches": [_entry(pool, int(r), s) for r, s in zip(rows[qi], scores[qi], strict=True) if r >= 0]
            }
            if judged is not None and qi in judged[name]:
                verdicts = judged[name][qi]
                entry["judge"] = {
                    "score": per_query_scores[name].get(qi),
                    "answers": [v.answer for v in verdicts if v.error is None],
                    "errors": [v.error for v in verdicts if v.error is not None],
                }
            item["methods"][name] = entry
        per_query.append(item)
    return {
        "relsim_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "label": config.label,
        "pool": pool.describe(),
        "queries": {
            "requested": config.queries,
            "seed": config.seed,
            "sampled": len(sampled),
            "used": len(queries),
            "dropped": dropped,
        },
        "k": config.k,
        "methods": {
            name: {"fingerprint": v.fingerprint, "unreadable": v.failures, "embedded_this_run": v.computed}
            for name, v in vectors.items()
        },
        "skipped_methods": skipped,
        "reference": reference,
        "judge": config.judge.describe() if config.judge is not None else None,
        "summary": summary,
        "per_query": per_query,
    }
