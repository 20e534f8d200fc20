"""The ``caption`` method: each pool image's anonymous caption, embedded with all-MiniLM-L6-v2, ranked by cosine.

The anonymous captioner (``relsim.load_captioner``; greedy, the prompt it was trained with) writes each image's
relational logic with the objects left out; the caption's MiniLM embedding is the method's vector, in the very
space relsim's image embeddings were trained into. Two things are kept under ``DIR/embeddings``:

- ``captions-<key>/``: ``captions.jsonl``, one ``{"sha256", "caption", "path"}`` line per image content (an
  unreadable image: ``{"sha256", "caption": null, "path", "error"}``), keyed by the captioner's fingerprint
  (adapter and base revisions, dtype, prompt, ``max_new_tokens``) in its ``meta.json``; appended and flushed
  batch by batch, so a killed run keeps what it captioned;
- ``caption-<key>/``: the caption vectors (a :class:`relsim.eval.embeddings.VectorTable`), keyed by the
  captioner and the text model.

A rerun loads neither model; another text model re-embeds the stored captions without captioning again.

Example:
    >>> method = CaptionMethod(MethodOptions(device="cuda"))           # doctest: +SKIP
    >>> vectors = method.embed(pool, Path("out/embeddings"))          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import DEFAULT_CAPTIONER
from .embeddings import PoolVectors, VectorTable, open_keyed_dir
from .methods import Method, MethodOptions, key_of
from .pool import Pool

__all__ = ["CaptionCache", "CaptionMethod"]

_CAPTIONS = "captions.jsonl"
_TEXT_CHUNK = 4096  # captions embedded (and saved) per part


class CaptionCache:
    """Captions of image contents (SHA-256) made by one captioner: a ``captions.jsonl`` in a keyed folder."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        from ..caption_files import read_records

        self.path = Path(path)
        self.fingerprint = open_keyed_dir(path, fingerprint, "captions")
        records = read_records(self.path / _CAPTIONS, key="sha256")
        self.captions: dict[str, str] = {r["sha256"]: r["caption"] for r in records if r["caption"] is not None}
        self.failures: dict[str, str] = {r["sha256"]: r.get("error", "") for r in records if r["caption"] is None}

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.captions or sha256 in self.failures

    def fill(self, captioner, items: list[tuple[str, str]], options: dict[str, Any]) -> int:
        """Caption ``(sha256, path)`` items, appending each batch to the file as it is made (unreadable images as
        failures); returns how many were captioned."""
        from ..caption_files import append_records, caption_each

        sha_of = {path: sha for sha, path in items}
        with open(self.path / _CAPTIONS, "a", encoding="utf-8") as f:

            def save(batch: list[tuple[str, Any]]) -> None:
                records = [{"sha256": sha_of[p], "caption": c.text, "path": p} for p, c in batch]
                append_records(f, records)
                self.captions.update((r["sha256"], r["caption"]) for r in records)

            report = caption_each(captioner, [path for _, path in items], save, **options)
            failed = [{"sha256": sha_of[p], "caption": None, "path": p, "error": why} for p, why in report.skipped]
            append_records(f, failed)
            self.failures.update((r["sha256"], r["error"]) for r in failed)
        return report.captioned


class CaptionMethod(Method):
    """The anonymous captioner's captions embedded with MiniLM (see the module docstring)."""

    name = "caption"

    def __init__(self, options: MethodOptions) -> None:
        self.options = options
        self.load_kwargs = {k: v for k, v in options.caption.items() if v is not None}

    def fingerprints(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the captions depend on, and what their vectors depend on: resolved revisions, no weights loaded."""
        from ..backbone import canonical_device, parse_dtype
        from ..caption import captioner_fingerprint, resolve_captioner, trained_prompt
        from ..hub import download_advice, resolve
        from ..text import DEFAULT_TEXT_MODEL, HUB_FILES

        kwargs = dict(self.load_kwargs)
        model = kwargs.pop("model", DEFAULT_CAPTIONER)
        dtype = parse_dtype(kwargs.pop("dtype", None), canonical_device(self.options.device))
        adapter, base = resolve_captioner(model, **kwargs)
        captions = {
            "method": "caption",
            "captioner": captioner_fingerprint(adapter, base, dtype),
            "prompt_sha256": hashlib.sha256(trained_prompt(adapter.path).encode()).hexdigest(),
            "max_new_tokens": self.options.caption_max_new_tokens,
        }
        text_model, text_revision = self.options.text_model or DEFAULT_TEXT_MODEL, self.options.text_revision
        advice = download_advice("text", text_model, text_revision)
        text = resolve(text_model, revision=text_revision, allow_patterns=HUB_FILES, offline_advice=advice)
        return captions, {**captions, "text_model": text.name, "text_revision": text.revision}

    def embed(self, pool: Pool, workdir: Path) -> PoolVectors:
        captions_fp, vectors_fp = self.fingerprints()
        table = VectorTable.open(workdir / f"caption-{key_of(vectors_fp)}", vectors_fp)
        todo = table.missing(pool.hashes)
        computed = 0
        if todo:
            cache = CaptionCache(workdir / f"captions-{key_of(captions_fp)}", captions_fp)
            first_path: dict[str, str] = {}
            for image in pool.images:
                first_path.setdefault(image.sha256, image.path)
            missing = [(sha, first_path[sha]) for sha in todo if sha not in cache]
            if missing:
                computed = cache.fill(self._load(), missing, self._caption_options())
            for sha in todo:
                if sha in cache.failures:
                    table.add_failure(sha, first_path[sha], cache.failures[sha])
            self._embed_captions(table, [(sha, cache.captions[sha]) for sha in todo if sha in cache.captions])
        return table.gather(pool, computed=computed)

    def _load(self):
        from ..caption import load_captioner

        kwargs = dict(self.load_kwargs)
        return load_captioner(kwargs.pop("model", DEFAULT_CAPTIONER), device=self.options.device, **kwargs)

    def _caption_options(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.options.caption_max_new_tokens,
            "batch_size": self.options.batch_size,
            "num_workers": self.options.workers,
            "progress": self.options.progress,
        }

    def _embed_captions(self, table: VectorTable, captions: list[tuple[str, str]]) -> None:
        from ..text import DEFAULT_TEXT_MODEL, embed_text

        for start in range(0, len(captions), _TEXT_CHUNK):
            chunk = captions[start : start + _TEXT_CHUNK]
            vectors = embed_text(
                [text for _, text in chunk],
                model=self.options.text_model or DEFAULT_TEXT_MODEL,
                revision=self.options.text_revision,
                device=self.options.device,
            )
            table.add([sha for sha, _ in chunk], np.asarray(vectors, dtype=np.float32))
