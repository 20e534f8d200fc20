"""``train(config)``: the training loop (single process, or one process per GPU under torchrun).

One optimiser step = ``batch_size`` images over all processes, cut into ``micro_batch_size`` forwards
per process (gradient accumulation when there are several). Data order is a function of the seed and
the epoch only; resuming restores parameters, AdamW, the schedule, every RNG and the data position, so
k steps + resume gives the same parameters as an uninterrupted run.

Example:
    >>> from relsim.train import TrainConfig, train
    >>> config = TrainConfig(train_jsonl="captions.jsonl", image_dir="images", output_dir="run")
    >>> result = train(config)                                    # doctest: +SKIP
    >>> relsim.load(result.final)                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import write_checkpoint
from ..hub import BASE_FILES, resolve, write_model_card
from ..preprocess import patchify
from . import distributed
from . import state as trainer_state
from .config import TrainConfig
from .data import Batch, CaptionImages, MicroBatches, Record, collate, fingerprint, present, read_jsonl, split_eval
from .logs import Logger
from .model import build_model
from .objective import info_nce, retrieval_metrics
from .targets import caption_targets, resolve_text_model


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    final: Path | None
    """The inference checkpoint of the finished run (None when stopped early by ``stop_after_step``)."""
    last_checkpoint: Path | None
    eval: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    """Global training loss of each step this invocation ran."""
    skipped: int = 0


class Cosine:
    """Linear warm-up, then cosine decay to 0 over the remaining steps (a LambdaLR factor)."""

    def __init__(self, total: int, warmup: int = 0) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(config: TrainConfig) -> TrainResult:
    """Train a relsim model as ``config`` says; see the module docstring and docs/training.md."""
    config.validate()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    env, device = distributed.setup(config.device)
    try:
        return _Run(config, env, device).run()
    finally:
        if owns_group:
            distributed.cleanup()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Run:
    def __init__(self, config: TrainConfig, env: distributed.Env, device: torch.device) -> None:
        self.config, self.env, self.device = config, env, device
        self.out = Path(config.output_dir)
        if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
            self.autocast, self.dtype = torch.bfloat16, torch.bfloat16
        else:
            self.autocast, self.dtype = None, torch.float32
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        self.log = Logger(self.out, enabled=env.main, tensorboard=config.tensorboard)
        self.skipped = 0

    # -- setup ----------------------------------------------------------------------------------------
    def _data(self) -> None:
        c = self.config
        if not c.train_jsonl or not c.image_dir:
            raise ValueError("train_jsonl and image_dir must be set")
        records = read_jsonl(c.train_jsonl)
        if c.eval_jsonl:
            train_records, eval_records = records, read_jsonl(c.eval_jsonl)
        else:
            train_records, eval_records = split_eval(records, c.eval_size)
        train_records, missing = present(train_records, c.image_dir)
        eval_records, eval_missing = present(eval_records, c.image_dir)
        if missing or eval_missing:
            self.log.info(
                f"{len(missing) + len(eval_missing)} images missing from {c.image_dir} are skipped "
                f"(train {len(missing)}, eval {len(eval_missing)}), e.g. {[r.filename for r in missing[:3]]}"
            )
        if len(train_records) < c.batch_size:
            raise ValueError(f"{len(train_records)} training images with a file, fewer than batch_size {c.batch_size}")
        self.train_records, self.eval_records = train_records, eval_records
        self.missing = len(missing) + len(eval_missing)
        self.log.info(f"data: {len(train_records)} training images, {len(eval_records)} held out")

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

    def _model(self) -> None:
        c = self.config
        if self.env.main:
            self.base = resolve(c.base_model, revision=c.base_revision, allow_patterns=BASE_FILES)
        distributed.barrier()
        if not self.env.main:
            self.base = resolve(c.base_model, revision=c.base_revision, allow_patterns=BASE_FILES)
        self.model, self.tokenizer = build_model(
            self.base.path,
            device=self.device,
            dtype=self.dtype,
            autocast=self.autocast,
            lora_r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=c.lora_target_modules,
            projection_dim=c.projection_dim,
            seed=c.seed,
            gradient_checkpointing=c.gradient_checkpointing,
        )
        if self.train_targets.shape[1] != c.projection_dim:
            dim = self.train_targets.shape[1]
            raise ValueError(f"caption targets are {dim}-d but projection_dim is {c.projection_dim}")
        self.ddp = self.model
        if self.env.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Every process loaded the same frozen weights from disk: only the trainable ones need syncing.
            frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in self.model.named_buffers()]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, frozen)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        params = list(self.model.trainable().values())
        self.optimizer = torch.optim.AdamW(
            params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay
        )
        self.micro = c.micro_batch_size or c.batch_size // self.env.world
        if c.batch_size % (self.micro * self.env.world):
            raise ValueError(
                f"batch_size {c.batch_size} must be a multiple of "
                f"micro_batch_size {self.micro} x {self.env.world} processes"
            )
        self.accumulation = c.batch_size // (self.micro * self.env.world)
        self.steps_per_epoch = len(self.train_records) // c.batch_size
        self.total = c.max_steps or c.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, Cosine(self.total, c.warmup_steps))
        trainable = sum(p.numel() for p in params)
        self.log.info(
            f"model: {trainable:,} trainable parameters; {self.total} steps of {c.batch_size} images "
            f"({self.accumulation} x {self.micro} per process x {self.env.world} processes; "
            f"{self.micro * self.env.world} contrastive negatives per loss); "
            f"precision {'bf16' if self.autocast else 'fp32'} on {self.device}"
        )

    def _resume(self) -> int:
        c = self.config
        _seed_everything(c.seed * 1000 + self.env.rank)  # the training RNG stream (LoRA dropout) of this rank
        source = c.resume
        if source is None:
            return 0
        if source == "latest":
            found = trainer_state.list_checkpoints(self.out)
            if not found:
                self.log.info(f"resume=latest: no checkpoint in {self.out}, starting from scratch")
                return 0
            source = found[-1]
        state = trainer_state.load_state(source, self.model, self.optimizer, self.scheduler, device=self.device)
        if state["data_fingerprint"] != fingerprint(self.train_records):
            raise ValueError(f"{source} was trained on different data (the image list or captions changed)")
        if state["world"] != self.env.world or not trainer_state.load_rng(source, self.env.rank):
            self.log.info(f"world size changed ({state['world']} -> {self.env.world}): RNG not restored, not bit-exact")
        if state["total_steps"] != self.total:
            raise ValueError(f"{source} was a {state['total_steps']}-step schedule, this run has {self.total}")
        self.skipped = state.get("skipped", 0)
        self.log.info(f"resumed from {source} at step {state['step']}")
        return int(state["step"])

    # -- data stream ----------------------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> DataLoader:
        c = self.config
        sampler = MicroBatches(
            len(self.train_records),
            batch_size=c.batch_size,
            micro=self.micro,
            world=self.env.world,
            rank=self.env.rank,
            seed=c.seed,
            epoch=epoch,
            start=start,
        )
        return DataLoader(
            CaptionImages(self.train_records, c.image_dir),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps the loader from drawing on the global RNG
            persistent_workers=False,
        )

    def _stream(self, step: int) -> Iterator[Batch]:
        while True:
            epoch, start = divmod(step, self.steps_per_epoch)
            yield from self._loader(epoch, start)
            step = (epoch + 1) * self.steps_per_epoch

    def _pixels(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not batch.pixels:
            return torch.zeros(0, 1176, device=self.device), torch.zeros(0, 3, dtype=torch.long, device=self.device)
        return patchify(batch.pixels, device=self.device, dtype=self.dtype)

    def _count_skipped(self, batch: Batch, records: list[Record]) -> None:
        for index, reason in batch.skipped:
            self.skipped += 1
            if self.skipped <= 20:
                self.log.info(f"skipping unreadable image {records[index].filename}: {reason}")

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._data()
        self._model()
        step = self._resume()
        c = self.config
        end = min(self.total, c.stop_after_step or self.total)
        losses: list[float] = []
        result = TrainResult(self.out, step, None, None, skipped=self.skipped)
        stream = self._stream(step)
        bar = self.log.progress(total=self.total, initial=step, enabled=c.progress)
        window: list[tuple[float, float, float]] = []
        images_seen, started = 0, time.perf_counter()
        params = list(self.model.trainable().values())
        while step < end:
            self.ddp.train()
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device)
            seen = torch.zeros((), device=self.device)
            for j in range(self.accumulation):
                batch = next(stream)
                self._count_skipped(batch, self.train_records)
                pixel_values, grid_thw = self._pixels(batch)
                targets = self.train_targets[batch.indices].to(self.device)
                last = j == self.accumulation - 1
                sync = self.ddp.no_sync() if self.env.world > 1 and not last else contextlib.nullcontext()
                with sync:
                    embeddings = self.ddp(pixel_values, grid_thw)
                    loss, accuracy = info_nce(embeddings, targets, c.temperature)
                    (loss / self.accumulation).backward()
                loss_sum += loss.detach() / self.accumulation
                if embeddings.shape[0]:
                    correct += accuracy * embeddings.shape[0]
                    seen += embeddings.shape[0]
                images_seen += embeddings.shape[0]
            max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            reduced = distributed.all_reduce_sum(torch.stack([loss_sum, correct, seen]))
            global_loss = float(reduced[0]) / self.env.world
            losses.append(global_loss)
            window.append((global_loss, float(reduced[1]) / max(float(reduced[2]), 1.0), float(grad_norm)))
            bar.update(1)
            bar.set_postfix(loss=f"{global_loss:.4f}")
            if step % c.log_every == 0 or step == end:
                rate = images_seen * self.env.world / max(time.perf_counter() - started, 1e-9)
                self._log_train(step, window, lr, rate)
                window, images_seen, started = [], 0, time.perf_counter()
            if step % c.eval_every == 0 and step < self.total:
                result.eval = self.evaluate(step)
            if step % c.save_every == 0 or step == end:
                result.last_checkpoint = self.save(step, result.eval)
        bar.close()
        stream.close()
        if step >= self.total:
            result.eval = self.evaluate(step) or result.eval
            result.final = self.save_final(step, result.eval)
        result.step, result.losses, result.skipped = step, losses, self.skipped
        self.log.close()
        return result

    def _log_train(self, step: int, window: list[tuple[float, float, float]], lr: float, rate: float) -> None:
        loss, acc, norm = (sum(v) / len(window) for v in zip(*window, strict=True))
        epoch = step / self.steps_per_epoch
        self.log.scalars(
            step,
            {
                "train/loss": loss,
                "train/accuracy": acc,
                "train/lr": lr,
                "train/grad_norm": norm,
                "train/images_per_s": rate,
                "train/skipped": self.skipped,
                "train/epoch": epoch,
            },
            line=f"step {step}/{self.total} | epoch {epoch:.2f} | loss {loss:.4f} | acc {acc:.3f} | lr {lr:.3e} | "
            f"grad_norm {norm:.3f} | {rate:.1f} img/s | skipped {self.skipped}",
        )

    # -- evaluation and checkpoints -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Image -> caption recall@1/5/10 and mean positive cosine on the held-out images."""
        if not self.eval_records:
            return {}
        c = self.config
        mine = list(range(self.env.rank, len(self.eval_records), self.env.world))
        batches = [mine[i : i + c.eval_batch_size] for i in range(0, len(mine), c.eval_batch_size)]
        loader = DataLoader(
            CaptionImages(self.eval_records, c.image_dir),
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=c.num_workers,
            generator=torch.Generator(),
        )
        self.model.eval()
        indices, embeddings, skipped = [], [], 0
        for batch in loader:
            skipped += len(batch.skipped)
            if batch.pixels:
                embeddings.append(self.model(*self._pixels(batch)))
                indices += batch.indices
        self.model.train()
        local = torch.cat(embeddings) if embeddings else torch.zeros(0, c.projection_dim, device=self.device)
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

    def _extra(self, step: int, eval_metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "eval": eval_metrics,
            "text_model": self.text_model.name,
            "text_model_key": self.text_model.key,
            "train_images": len(self.train_records),
            "precision": "bf16" if self.autocast else "fp32",
        }

    def _write_model(self, directory: Path, step: int, eval_metrics: dict[str, float]) -> Path:
        return write_checkpoint(
            directory,
            peft_model=self.model.peft,
            projection=self.model.projection,
            query_token_id=self.model.prompt.query_token_id,
            tokenizer=self.tokenizer,
            base=self.base,
            recipe=self.config.to_dict(),
            extra=self._extra(step, eval_metrics),
        )

    def save(self, step: int, eval_metrics: dict[str, float]) -> Path:
        """``checkpoint-{step}``: the inference checkpoint plus trainer_state/, written then renamed."""
        final = self.out / f"checkpoint-{step}"
        tmp = self.out / f".checkpoint-{step}.tmp"
        if self.env.main:
            shutil.rmtree(tmp, ignore_errors=True)
            self._write_model(tmp, step, eval_metrics)
        distributed.barrier()
        state = {
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "batch_in_epoch": step % self.steps_per_epoch,
            "total_steps": self.total,
            "world": self.env.world,
            "skipped": self.skipped,
            "data_fingerprint": fingerprint(self.train_records),
            "config": self.config.to_dict(),
        }
        trainer_state.save_state(
            tmp, self.model, self.optimizer, self.scheduler, state, rank=self.env.rank, main=self.env.main
        )
        distributed.barrier()
        if self.env.main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._prune()
            self.log.info(f"saved {final}")
        distributed.barrier()
        return final

    def _prune(self) -> None:
        keep = self.config.keep_checkpoints
        if keep is None:
            return
        for old in trainer_state.list_checkpoints(self.out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def save_final(self, step: int, eval_metrics: dict[str, float]) -> Path:
        final = self.out / "final"
        if self.env.main:
            shutil.rmtree(final, ignore_errors=True)
            self._write_model(final, step, eval_metrics)
            write_model_card(final)
            self.log.info(f"final model: {final} (load it with relsim.load({str(final)!r}))")
        distributed.barrier()
        return final
