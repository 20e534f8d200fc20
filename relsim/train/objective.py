"""The training loss (row-wise InfoNCE, image -> caption) and the held-out retrieval metrics.

Example:
    >>> images = F.normalize(torch.randn(4, 384), dim=-1)
    >>> loss, accuracy = info_nce(images, images, temperature=0.07)
    >>> float(accuracy)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .distributed import env, gather_rows


def info_nce(images: torch.Tensor, targets: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise InfoNCE: each image must pick its own caption among all captions of the global batch.

    ``images`` (n, d) are this process's L2-normalised image embeddings, ``targets`` (n, d) their caption
    embeddings. Under DDP the captions of all processes are gathered, so the negatives are the whole
    global batch, and the loss is scaled so that DDP's gradient average equals the gradient of the mean
    over the global batch. Only captions cross processes: the loss is image -> caption only, so no
    process needs another's image embeddings. Returns (loss, top-1 accuracy of this process's rows).
    """
    all_targets, offset = gather_rows(targets.to(images.dtype))
    logits = images @ all_targets.T / temperature
    labels = torch.arange(images.shape[0], device=images.device) + offset
    total = all_targets.shape[0]
    loss = F.cross_entropy(logits, labels, reduction="sum") * (env().world / max(total, 1))
    if images.shape[0] == 0:
        return loss, torch.tensor(float("nan"))
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return loss, accuracy.detach()


@torch.no_grad()
def retrieval_metrics(images: torch.Tensor, captions: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image -> caption retrieval over a held-out set: recall@k and the mean positive cosine.

    Row i of ``images`` and of ``captions`` belong together; the rank of the true caption is the number of
    captions scoring strictly higher, so identical captions (equal targets) tie in the image's favour.

    >>> e = torch.eye(3)
    >>> retrieval_metrics(e, e[[0, 2, 1]], ks=(1, 2))["recall@1"]
    0.3333333432674408
    """
    images, captions = images.float(), captions.float()
    scores = images @ captions.T
    positive = scores.diagonal()
    rank = (scores > positive[:, None]).sum(dim=1)
    out = {f"recall@{k}": float((rank < k).float().mean()) for k in ks}
    out["positive_cosine"] = float(positive.mean())
    return out


__all__ = [
    "info_nce",
    "retrieval_metrics",
]
