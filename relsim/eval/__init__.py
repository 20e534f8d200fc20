"""relsim.eval: the paper's retrieval evaluation, reproducible and resumable (``relsim eval retrieval``).

For each query image sampled from a pool, every method (relsim, CLIP, DINOv2, DreamSim, captions, or your
own embeddings) retrieves its best match; a vision-language judge scores each (query, match) pair 0-10 for
shared relational logic with the paper's prompt. One module per job:

- :mod:`relsim.eval.pool` - the pool, content hashes, seeded queries
- :mod:`relsim.eval.methods`, :mod:`relsim.eval.baselines`, :mod:`relsim.eval.embeddings` - the methods and
  their embeddings, kept under the output directory
- :mod:`relsim.eval.matches` - top-k without the query and its byte-identical copies
- :mod:`relsim.eval.judge` - the judge client (``openai``, imported only when judging) and its answer cache
- :mod:`relsim.eval.stats`, :mod:`relsim.eval.report` - bootstrap CIs, paired wins; table, chart, HTML
- :mod:`relsim.eval.run` - the whole run

Importing this package imports neither ``openai`` nor a model. Guide: docs/evaluation.md.

Example:
    >>> from relsim.eval import EvalConfig, JudgeSettings, run_retrieval_eval
    >>> config = EvalConfig(pool=["images/"], out=Path("out"), judge=JudgeSettings(model="gpt-4o"))
    >>> run_retrieval_eval(config)          # doctest: +SKIP
"""

from __future__ import annotations

from .judge import UPSTREAM_PROMPT, JudgeError, JudgeSettings, parse_score
from .methods import BUILTIN_METHODS, DEFAULT_METHODS, MethodOptions, MethodUnavailable
from .pool import load_pool, sample_queries
from .run import EvalConfig, EvalOutcome, run_retrieval_eval

__all__ = [
    "BUILTIN_METHODS",
    "DEFAULT_METHODS",
    "EvalConfig",
    "EvalOutcome",
    "JudgeError",
    "JudgeSettings",
    "MethodOptions",
    "MethodUnavailable",
    "UPSTREAM_PROMPT",
    "load_pool",
    "parse_score",
    "run_retrieval_eval",
    "sample_queries",
]
