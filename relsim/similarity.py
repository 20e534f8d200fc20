"""What every relsim image embedder shares: scores and cosine matrices from ``embed``, MiniLM text queries.

:class:`ImageEmbedder` is the base of :class:`relsim.RelSimModel` (the 7B teacher) and
:class:`relsim.student.StudentModel` (a small distilled backbone): a subclass supplies ``embed`` (images in,
(N, D) L2-normalised float32 rows out), ``fingerprint``, ``device``, ``dtype``, ``mode`` and ``embedding_dim``;
``score``, ``pairwise`` and ``embed_text`` then behave the same on both, and the metric, the functional API, the
command line and collections take either.

Example:
    >>> model = relsim.load("path/to/student")                    # doctest: +SKIP
    >>> isinstance(model, ImageEmbedder)                           # doctest: +SKIP
    True
    >>> model.score("a.jpg", "b.jpg")                              # doctest: +SKIP
    0.61
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import preprocess
from .batching import deduplicate, is_single, progress_bar
from .errors import ArgumentError
from .preprocess import ImageInput

__all__ = ["ImageEmbedder", "project"]


class ImageEmbedder(nn.Module):
    """Base of relsim's image embedders: ``embed`` / ``score`` / ``pairwise`` / ``embed_text`` on top of a
    subclass's ``_embedded_batches``.

    A subclass holds its head as ``self.projection`` (an ``nn.Linear`` to the embedding width)."""

    projection: nn.Linear

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.projection.weight.device

    @property
    def embedding_dim(self) -> int:
        """Dimensions of an embedding (384 for relsim's models)."""
        return self.projection.out_features

    def embed(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 32,
        *,
        num_workers: int | None = None,
        progress: bool | None = None,
        output_device: str | torch.device | None = "cpu",
    ) -> torch.Tensor:
        """Embed images: a (N, D) float32 tensor of L2-normalised rows, on ``output_device`` (None: the model's).

        Decoding runs in ``num_workers`` threads (default: up to 8, one per core). Gradients flow to float
        tensor inputs that require grad (when autograd is on); everything else runs under
        ``torch.inference_mode()``.

        >>> model.embed(["a.jpg", "b.jpg"]).shape                  # doctest: +SKIP
        torch.Size([2, 384])
        """
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
        items = preprocess.as_image_list(images)
        needs_grad = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in items)
        out: list[torch.Tensor | None] = [None] * len(items)
        bar = progress_bar(len(items), progress, "relsim embed")
        with contextlib.nullcontext() if needs_grad else torch.inference_mode():
            for indices, embeddings in self._embedded_batches(items, batch_size, num_workers, needs_grad):
                for i, e in zip(indices, embeddings, strict=False):
                    out[i] = e
                if bar is not None:
                    bar.update(len(indices))
        if bar is not None:
            bar.close()
        result = torch.stack(out)  # type: ignore[arg-type]
        return result if output_device is None else result.to(output_device)

    def _embedded_batches(
        self, items: list, batch_size: int, num_workers: int | None, needs_grad: bool
    ) -> Iterator[tuple[list[int], torch.Tensor]]:  # pragma: no cover - abstract
        """``(indices, embeddings)`` batches of ``items`` in any order: what a subclass computes."""
        raise NotImplementedError

    def score(self, a, b, *, batch_size: int = 32) -> float | torch.Tensor:
        """Relational similarity (cosine, in [-1, 1]) of ``a`` and ``b``.

        Two single images give a float; two equal-length lists (or batches) give a (N,) tensor of
        pair-wise scores. Each distinct image is embedded once.

        >>> model.score("peach.jpg", "earth.jpg")                  # doctest: +SKIP
        0.72
        """
        single = is_single(a) and is_single(b)
        list_a = preprocess.as_image_list(a, name="a")
        list_b = preprocess.as_image_list(b, name="b")
        if len(list_a) != len(list_b):
            raise ArgumentError(f"score() needs as many images in a as in b, got {len(list_a)} and {len(list_b)}")
        embeddings, index = self._embed_unique(list_a + list_b, batch_size)
        n = len(list_a)
        scores = (embeddings[index[:n]] * embeddings[index[n:]]).sum(-1).clamp(-1.0, 1.0)
        return float(scores[0]) if single else scores

    def pairwise(self, images_a, images_b=None, *, batch_size: int = 32) -> torch.Tensor:
        """Cosine matrix (N, M) between ``images_a`` and ``images_b`` (default: ``images_a`` itself).

        Each distinct image is embedded once, so this costs N + M forwards, not N x M.
        """
        list_a = preprocess.as_image_list(images_a, name="images_a")
        list_b = list_a if images_b is None else preprocess.as_image_list(images_b, name="images_b")
        embeddings, index = self._embed_unique(list_a + ([] if images_b is None else list_b), batch_size)
        ea = embeddings[index[: len(list_a)]]
        eb = ea if images_b is None else embeddings[index[len(list_a) :]]
        return (ea @ eb.T).clamp(-1.0, 1.0)

    def embed_text(self, texts: str | Sequence[str], **kwargs) -> torch.Tensor:
        """Embed texts with all-MiniLM-L6-v2, the space relsim's image embeddings were trained into.

        A relational description ("{Animal} peeking out from behind a {Object}") then scores against image
        embeddings directly. ``kwargs`` go to :func:`relsim.text.embed_text` (``model``, ``revision``, ...).

        >>> model.embed_text(["{Fruit} cut open to show its layers"]) @ model.embed(["earth.jpg"]).T  # doctest: +SKIP
        """
        from .text import embed_text

        return embed_text(texts, **kwargs)

    def _embed_unique(self, items: list, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        unique, index = deduplicate(items)
        return self.embed(unique, batch_size=batch_size), index


def project(features: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
    """The head of every relsim embedder: ``projection`` in float32, then L2 normalisation (float32 rows)."""
    projected = F.linear(features.float(), projection.weight.float(), projection.bias.float())
    return F.normalize(projected, dim=-1)
