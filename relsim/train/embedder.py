"""The relsim embedder's part of a training run (``relsim train``): caption-target data, the InfoNCE loss,
held-out retrieval metrics and the relsim checkpoint layout. The loop itself is :class:`relsim.train.loop.Trainer`.

Example:
    >>> from relsim.train import TrainConfig, train
    >>> config = TrainConfig(train_jsonl="captions.jsonl", image_dir="images", output_dir="run")
    >>> result = train(config)                                    # doctest: +SKIP
    >>> relsim.load(result.final)                                 # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import write_checkpoint
from ..errors import ArgumentError
from ..publish import write_model_card
from . import distributed
from .config import TrainConfig
from .data import Batch, CaptionImages, fingerprint, present, read_jsonl, split_eval
from .loop import Trainer
from .model import build_model
from .objective import info_nce, retrieval_metrics
from .targets import caption_targets, resolve_text_model


class EmbedderTrainer(Trainer):
    """Trains a relsim embedder: LoRA + projection head, InfoNCE against frozen caption embeddings."""

    config: TrainConfig

    def load_data(self) -> None:
        c = self.config
        if not c.train_jsonl:
            raise ArgumentError("train_jsonl must be set")
        records = read_jsonl(c.train_jsonl)
        if c.eval_jsonl:
            train_records, eval_records = records, read_jsonl(c.eval_jsonl)
        else:
            train_records, eval_records = split_eval(records, c.eval_size)
        train_records, missing = present(train_records, c.image_dir)
        eval_records, eval_missing = present(eval_records, c.image_dir)
        if missing or eval_missing:
            self.log.info(
                f"{len(missing) + len(eval_missing)} images missing from {c.image_dir or 'their recorded paths'} "
                "are skipped "
                f"(train {len(missing)}, eval {len(eval_missing)}), e.g. {[r.filename for r in missing[:3]]}"
            )
        self.train_records, self.eval_records = train_records, eval_records
        self.log.info(f"data: {len(train_records)} training images, {len(eval_records)} held out")
        if len(train_records) < c.batch_size:
            return  # the loop says so before any caption is encoded

        cache = Path(c.target_cache) if c.target_cache else self.out / "targets"
        captions = [r.caption for r in train_records + eval_records]
        self.text_model = resolve_text_model(c.text_model, c.text_revision)
        kwargs = dict(cache_dir=cache, text_model=self.text_model, device=self.device)
        if self.env.main:  # one process encodes; the others read the cache it wrote
            targets = caption_targets(captions, **kwargs)
        distributed.barrier()
        if not self.env.main:
            targets = caption_targets(captions, **kwargs)
        self.train_targets = targets[: len(train_records)]
        self.eval_targets = targets[len(train_records) :]

    def dataset(self, records: list) -> Dataset:
        return CaptionImages(records, self.config.image_dir)

    def data_fingerprint(self) -> str:
        return fingerprint(self.train_records)

    def build_model(self) -> nn.Module:
        c = self.config
        base = self.resolve_base()
        model, self.tokenizer = build_model(base.path, projection_dim=c.projection_dim, **self.model_options())
        if self.train_targets.shape[1] != c.projection_dim:
            dim = self.train_targets.shape[1]
            raise ArgumentError(f"caption targets are {dim}-d but projection_dim is {c.projection_dim}")
        return model

    def batch_note(self) -> str:
        return f"; {self.micro * self.env.world} contrastive negatives per loss"

    def micro_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = self.train_targets[batch.indices].to(self.device)
        embeddings = self.ddp(*self.pixels(batch))
        loss, accuracy = info_nce(embeddings, targets, self.config.temperature)
        n = embeddings.shape[0]
        numbers = {
            "loss": loss.detach() / (self.accumulation * self.env.world),
            "correct": accuracy * n if n else torch.zeros(()),
            "seen": torch.tensor(float(n)),
        }
        return loss / self.accumulation, numbers

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"], "accuracy": sums["correct"] / max(sums["seen"], 1.0)}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Image -> caption recall@1/5/10 and mean positive cosine on the held-out images."""
        if not self.eval_records:
            return {}
        self.model.eval()
        indices, embeddings, skipped = [], [], 0
        for batch in self.eval_loader(self.eval_records):
            skipped += len(batch.skipped)
            if batch.pixels:
                embeddings.append(self.model(*self.pixels(batch)))
                indices += batch.indices
        self.model.train()
        dim = self.config.projection_dim
        local = torch.cat(embeddings) if embeddings else torch.zeros(0, dim, device=self.device)
        all_embeddings, _ = distributed.gather_rows(local)
        all_indices, _ = distributed.gather_rows(torch.tensor(indices, dtype=torch.long, device=self.device))
        skipped = int(distributed.all_reduce_sum(torch.tensor([skipped], device=self.device))[0])
        if all_indices.numel() == 0:
            self.log.info("eval: no readable held-out image")
            return {}
        metrics = retrieval_metrics(all_embeddings, self.eval_targets[all_indices.cpu()].to(self.device))
        metrics["images"] = float(all_indices.numel())
        metrics["skipped"] = float(skipped)
        self.log.scalars(
            step,
            {f"eval/{k}": v for k, v in metrics.items()},
            line=f"eval step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        return metrics

    def checkpoint_extra(self, step: int, eval_metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            **super().checkpoint_extra(step, eval_metrics),
            "text_model": self.text_model.name,
            "text_model_key": self.text_model.key,
            "precision": self.precision_name(),
        }

    def write_model(self, directory: Path, step: int, eval_metrics: dict[str, float]) -> Path:
        return write_checkpoint(
            directory,
            peft_model=self.model.peft,
            projection=self.model.projection,
            query_token_id=self.model.prompt.query_token_id,
            tokenizer=self.tokenizer,
            base=self.base,
            recipe=self.config.to_dict(),
            extra=self.checkpoint_extra(step, eval_metrics),
        )

    def finish_model(self, directory: Path) -> None:
        write_model_card(directory)
        self.log.info(f"load it with relsim.load({str(directory)!r})")


__all__ = [
    "EmbedderTrainer",
]
