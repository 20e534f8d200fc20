"""The anonymous captioner's part of a training run (``relsim train-captioner``): seed groups, the answer-only
cross-entropy, evaluation by greedy captions of held-out images, and the published captioner's checkpoint layout.
The loop itself is :class:`relsim.train.loop.Trainer`.

Evaluation (every ``eval_every`` steps and at the end): the teacher-forced loss and token accuracy on every
held-out image, and greedy captions of a fixed sample of ``eval_captions`` held-out images, logged next to their
reference captions (``samples.jsonl``, TensorBoard, W&B), with the mean all-MiniLM-L6-v2 cosine between generated
and reference captions as ``eval/caption_cosine`` (upstream's config names that model for this).

Example:
    >>> from relsim.train import CaptionerTrainConfig, train
    >>> config = CaptionerTrainConfig(seed_groups="seed-groups/seed_group.json", output_dir="run")
    >>> result = train(config)                                                     # doctest: +SKIP
    >>> relsim.load_captioner(result.final).caption("photo.jpg")                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..caption_inputs import TRAINING_PROMPT, prepare_image
from ..checkpoint import write_captioner_checkpoint
from ..errors import ArgumentError
from ..generation import base_generation_config
from ..publish import write_model_card
from . import distributed
from .caption_model import answer_ids, build_captioner_model, greedy_captions
from .config import CaptionerTrainConfig
from .data import Batch, CaptionImages, present
from .loop import Trainer
from .seed_groups import data_fingerprint, load_seed_groups, split_groups
from .targets import resolve_text_model


def _prepare(path: Path, index: int) -> torch.Tensor:
    return prepare_image(path, index)


class CaptionerTrainer(Trainer):
    """Trains an anonymous captioner: LoRA on the base's q_proj/v_proj, the loss on the answer tokens only."""

    name = "relsim train-captioner"
    config: CaptionerTrainConfig

    @property
    def prompt_text(self) -> str:
        return self.config.prompt if self.config.prompt is not None else TRAINING_PROMPT

    # -- data -----------------------------------------------------------------------------------------
    def load_data(self) -> None:
        c = self.config
        if not c.seed_groups:
            raise ArgumentError("seed_groups must be set (upstream's seed_group.json or a folder of seed groups)")
        images, self.image_dir = load_seed_groups(c.seed_groups, c.image_dir)
        train_images, held = split_groups(images, c.eval_fraction)
        train_images, missing = present(train_images, self.image_dir)
        held, held_missing = present(held, self.image_dir)
        if missing or held_missing:
            self.log.info(
                f"{len(missing) + len(held_missing)} images missing from {self.image_dir} are skipped "
                f"(train {len(missing)}, held out {len(held_missing)}), e.g. {[i.file for i in missing[:3]]}"
            )
        self.train_records, self.eval_records = train_images, held
        groups = len({i.group for i in train_images})
        self.log.info(
            f"data: {len(train_images)} training images in {groups} seed groups, {len(held)} held out "
            f"in {len({i.group for i in held})} groups"
        )
        # the fixed sample captioned at every evaluation: chosen by hash, so it stays put across runs
        order = sorted(range(len(held)), key=lambda i: hashlib.sha1(held[i].file.encode()).hexdigest())
        self.eval_sample = sorted(order[: c.eval_captions])

    def dataset(self, records: list) -> Dataset:
        return CaptionImages(records, self.image_dir, prepare_fn=_prepare)

    def data_fingerprint(self) -> str:
        return data_fingerprint(self.train_records)

    # -- model ----------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from .. import generation

        c = self.config
        base = self.resolve_base()
        model, self.tokenizer = build_captioner_model(base.path, prompt=self.prompt_text, **self.model_options())
        tokens: dict[str, list[int]] = {}
        for image in self.train_records + self.eval_records:
            if image.caption not in tokens:
                tokens[image.caption] = answer_ids(self.tokenizer, image.caption)
        self.answers = [tokens[i.caption] for i in self.train_records]
        self.eval_answers = [tokens[i.caption] for i in self.eval_records]
        self.settings = generation.GenerationSettings.from_config(
            base_generation_config(base.path, model.body), do_sample=False, max_new_tokens=c.max_new_tokens
        )
        self.text_encoder = None
        return model

    # -- a step ---------------------------------------------------------------------------------------
    def begin_step(self, batches: list[Batch]) -> None:
        """The step's loss is the mean over every answer token of the global batch: count them first."""
        mine = sum(len(self.answers[i]) for batch in batches for i in batch.indices)
        total = distributed.all_reduce_sum(torch.tensor([float(mine)], device=self.device))
        self.step_tokens = max(float(total[0]), 1.0)

    def micro_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        answers = [self.answers[i] for i in batch.indices]
        loss_sum, tokens, correct = self.ddp(*self.pixels(batch), answers)
        numbers = {
            "loss": loss_sum.detach() / self.step_tokens,
            "tokens": torch.tensor(float(tokens)),
            "correct": torch.tensor(float(correct)),
        }
        # DDP averages gradients over processes: scaled by the world size, they are the global token mean's
        return loss_sum * (self.env.world / self.step_tokens), numbers

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = max(sums["tokens"], 1.0)
        return {"loss": sums["loss"], "token_accuracy": sums["correct"] / tokens, "answer_tokens": sums["tokens"]}

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        if not self.eval_records:
            return {}
        self.model.eval()
        loss_sum, tokens, correct, skipped = 0.0, 0, 0, 0
        for batch in self.eval_loader(self.eval_records):
            skipped += len(batch.skipped)
            if batch.pixels:
                answers = [self.eval_answers[i] for i in batch.indices]
                part, n, k = self.model(*self.pixels(batch), answers)
                loss_sum, tokens, correct = loss_sum + float(part), tokens + n, correct + k
        captions = []
        for batch in self.eval_loader(self.eval_records, self.eval_sample):
            if batch.pixels:
                generated = greedy_captions(self.model, batch.pixels, self.settings)
                for index, g in zip(batch.indices, generated, strict=True):
                    captions.append((index, self._text(g.tokens), g.stopped))
        self.model.train()
        totals = distributed.all_reduce_sum(
            torch.tensor([loss_sum, tokens, correct, skipped], dtype=torch.float64, device=self.device)
        )
        captions = sorted(distributed.gather_objects(captions))
        if totals[1] == 0:
            self.log.info("eval: no readable held-out image")
            return {}
        metrics = {
            "loss": float(totals[0] / totals[1]),
            "token_accuracy": float(totals[2] / totals[1]),
            "images": float(len(self.eval_records) - totals[3]),
            "skipped": float(totals[3]),
        }
        if captions and self.env.main:
            metrics.update(self._caption_metrics(step, captions))
        self.log.scalars(
            step,
            {f"eval/{k}": v for k, v in metrics.items()},
            line=f"eval step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        return metrics

    def _text(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.strip()

    def _caption_metrics(self, step: int, captions: list[tuple[int, str, bool]]) -> dict[str, float]:
        """Mean MiniLM cosine (and exact matches) of generated vs reference captions; the rows go to the logs."""
        if self.text_encoder is None:
            from ..text import TextEncoder

            text_model = resolve_text_model(self.config.text_model, self.config.text_revision)
            self.text_encoder = TextEncoder.from_pretrained(text_model.path, device=self.device)
        references = [self.eval_records[i].caption for i, _, _ in captions]
        generated = [text for _, text, _ in captions]
        embedded = self.text_encoder.encode(generated + references).float()
        cosines = (embedded[: len(generated)] * embedded[len(generated) :]).sum(dim=-1).tolist()
        rows = [
            {
                "image": self.eval_records[i].file,
                "reference": reference,
                "generated": text,
                "cosine": round(cosine, 4),
                "stopped": stopped,
            }
            for (i, text, stopped), reference, cosine in zip(captions, references, cosines, strict=True)
        ]
        self.log.rows(step, "eval/captions", rows)
        for row in rows[:3]:
            self.log.info(f"  {row['image']}: {row['generated']!r} (reference {row['reference']!r})")
        return {
            "caption_cosine": sum(cosines) / len(cosines),
            "exact_match": sum(r["generated"] == r["reference"] for r in rows) / len(rows),
            "stopped": sum(r["stopped"] for r in rows) / len(rows),
        }

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_extra(self, step: int, eval_metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            **super().checkpoint_extra(step, eval_metrics),
            "prompt": self.prompt_text,
            "seed_groups": len({i.group for i in self.train_records}),
            "precision": self.precision_name(),
        }

    def write_model(self, directory: Path, step: int, eval_metrics: dict[str, float]) -> Path:
        return write_captioner_checkpoint(
            directory,
            peft_model=self.model.peft,
            tokenizer=self.tokenizer,
            base=self.base,
            recipe=self.config.to_dict(),
            extra=self.checkpoint_extra(step, eval_metrics),
        )

    def finish_model(self, directory: Path) -> None:
        write_model_card(directory)
        self.log.info(f"load it with relsim.load_captioner({str(directory)!r})")


__all__ = [
    "CaptionerTrainer",
]
