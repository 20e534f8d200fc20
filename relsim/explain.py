"""Explain a score: the relational score of two images with both anonymous captions and their MiniLM cosine.

Example:
    >>> model = relsim.load()                                        # doctest: +SKIP
    >>> print(relsim.explain(model, "peach.jpg", "earth.jpg"))        # doctest: +SKIP
    score 0.7213
      a: A {Fruit} cut open to reveal its layered interior.
      b: A {Planet} cut away to show its layers.
      caption similarity 0.6120
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import preprocess
from .batching import deduplicate, is_single
from .caption import Caption
from .errors import ArgumentError
from .registry import DEFAULT_TEXT_MODEL
from .text import embed_text


@dataclass(frozen=True)
class Explanation:
    """Why two images score as they do: the relational score, both anonymous captions, and the MiniLM cosine
    of the two captions (a second, readable signal in the space the embeddings were trained into)."""

    score: float
    caption_a: Caption
    caption_b: Caption
    caption_similarity: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values (caption texts), for JSON."""
        return {
            "score": self.score,
            "caption_a": self.caption_a.text,
            "caption_b": self.caption_b.text,
            "caption_similarity": self.caption_similarity,
        }

    def __str__(self) -> str:
        return (
            f"score {self.score:.4f}\n  a: {self.caption_a.text}\n  b: {self.caption_b.text}\n"
            f"  caption similarity {self.caption_similarity:.4f}"
        )


def explain(
    model,
    a,
    b,
    *,
    text_model: str | os.PathLike | None = None,
    batch_size: int = 32,
    **caption_kwargs,
) -> Explanation | list[Explanation]:
    """The relational score of each pair with both anonymous captions and their MiniLM cosine.

    Each distinct image is embedded and captioned once. ``text_model``: the MiniLM used for the caption cosine
    (default ``sentence-transformers/all-MiniLM-L6-v2``); ``caption_kwargs`` go to ``Captioner.caption``.
    """
    if caption_kwargs.get("num_captions", 1) != 1:
        raise ArgumentError("explain() uses one caption per image")
    single = is_single(a) and is_single(b)
    list_a = preprocess.as_image_list(a, name="a")
    list_b = preprocess.as_image_list(b, name="b")
    if len(list_a) != len(list_b):
        raise ArgumentError(f"explain() needs as many images in a as in b, got {len(list_a)} and {len(list_b)}")
    unique, index = deduplicate(list_a + list_b)
    embeddings = model.embed(unique, batch_size=batch_size)
    captions = model.caption(unique, batch_size=batch_size, **caption_kwargs)
    texts = embed_text([c.text for c in captions], model=text_model or DEFAULT_TEXT_MODEL)
    n = len(list_a)
    ia, ib = index[:n], index[n:]
    scores = (embeddings[ia] * embeddings[ib]).sum(-1).clamp(-1.0, 1.0)
    similarity = (texts[ia] * texts[ib]).sum(-1).clamp(-1.0, 1.0)
    out = [
        Explanation(float(s), captions[i], captions[j], float(t))
        for s, i, j, t in zip(scores.tolist(), ia.tolist(), ib.tolist(), similarity.tolist(), strict=True)
    ]
    return out[0] if single else out


__all__ = ["Explanation", "explain"]
