"""The training loop both relsim models share: single process, or one process per GPU under torchrun.

:class:`Trainer` owns everything that does not depend on what is trained: the process group and DDP, AdamW,
the learning-rate schedule, gradient accumulation and clipping, the data order, logs, evaluation cadence,
checkpoints and exact resume. A model's trainer (:class:`relsim.train.embedder.EmbedderTrainer`,
:class:`relsim.train.captioner.CaptionerTrainer`) supplies the data, the model, the loss of a micro-batch, the
held-out evaluation and the files of a checkpoint.

One optimiser step = ``batch_size`` images over all processes, cut into ``micro_batch_size`` forwards per
process (gradient accumulation when there are several). Data order is a function of the seed and the epoch
only; resuming restores parameters, AdamW, the schedule, every RNG and the data position, so k steps + resume
gives the same parameters as an uninterrupted run.

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
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ArgumentError
from ..files import output_folder
from ..hub import BASE_FILES, resolve
from ..preprocess import patchify
from . import distributed
from . import state as trainer_state
from .config import BaseConfig
from .data import Batch, MicroBatches, collate
from .logs import Logger


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


class Linear:
    """transformers' default schedule (``get_linear_schedule_with_warmup``): warm-up from 0, then linear to 0.

    >>> [Linear(10, 2)(s) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, total: int, warmup: int = 0) -> None:
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


SCHEDULES = {"cosine": Cosine, "linear": Linear}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """A training run. Subclasses implement the methods under "the model's part" below."""

    #: The progress bar's label.
    name = "relsim train"

    def __init__(self, config: BaseConfig, env: distributed.Env, device: torch.device) -> None:
        self.config, self.env, self.device = config, env, device
        self.out = output_folder(config.output_dir, "output_dir")
        if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
            self.autocast, self.dtype = torch.bfloat16, torch.bfloat16
        else:
            self.autocast, self.dtype = None, torch.float32
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        self.log = Logger(
            self.out,
            enabled=env.main,
            tensorboard=config.tensorboard,
            wandb_project=(config.wandb_project or "relsim") if config.wandb else None,
            config=config.to_dict(),
        )
        self.skipped = 0
        self.train_records: list = []
        self.model: nn.Module | None = None

    # -- the model's part ------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Set ``self.train_records`` (each with a ``filename``) and whatever evaluation needs."""
        raise NotImplementedError

    def dataset(self, records: list) -> Dataset:
        """The images of ``records``: ``dataset[i]`` is a :class:`relsim.train.data.Sample` of record ``i``."""
        raise NotImplementedError

    def data_fingerprint(self) -> str:
        """Identifies the training data (a resume refuses a checkpoint trained on other data)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The model; its ``trainable()`` gives the parameters to optimise (LoRA and any head)."""
        raise NotImplementedError

    def begin_step(self, batches: list[Batch]) -> None:
        """Called with all micro-batches of this process for a step, before the first forward."""

    def micro_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to back-propagate for one micro-batch, and detached numbers to log.

        The loss is scaled so that the gradients summed over a step's micro-batches and averaged by DDP over
        processes are the gradient of the step's loss. The numbers are summed over micro-batches and
        processes and handed to :meth:`summarise`.
        """
        raise NotImplementedError

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's logged values (``loss`` first) from the summed numbers of :meth:`micro_step`."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics (every process takes part); ``{}`` when there is nothing held out."""
        return {}

    def write_model(self, directory: Path, step: int, eval_metrics: dict[str, float]) -> Path:
        """Write the inference checkpoint files into ``directory``."""
        raise NotImplementedError

    def finish_model(self, directory: Path) -> None:
        """Called on the final checkpoint after :meth:`write_model` (the model card, ...)."""

    # -- setup ----------------------------------------------------------------------------------------
    def resolve_base(self):
        """The base model on disk; the main process downloads it, the others wait and read its cache."""
        c = self.config
        if self.env.main:
            self.base = resolve(c.base_model, revision=c.base_revision, allow_patterns=BASE_FILES)
        distributed.barrier()
        if not self.env.main:
            self.base = resolve(c.base_model, revision=c.base_revision, allow_patterns=BASE_FILES)
        return self.base

    def model_options(self) -> dict[str, Any]:
        """The device, precision and LoRA options both models' builders take."""
        c = self.config
        return {
            "device": self.device,
            "dtype": self.dtype,
            "autocast": self.autocast,
            "lora_r": c.lora_r,
            "lora_alpha": c.lora_alpha,
            "lora_dropout": c.lora_dropout,
            "target_modules": c.lora_target_modules,
            "seed": c.seed,
            "gradient_checkpointing": c.gradient_checkpointing,
        }

    def _setup(self) -> None:
        c = self.config
        self.load_data()
        if len(self.train_records) < c.batch_size:  # before the model is loaded: fail fast
            count = len(self.train_records)
            raise ArgumentError(
                f"{count} training images with a file, fewer than batch_size {c.batch_size}: "
                f"lower it (--batch-size N, or batch_size in the config) to at most {count}"
            )
        self.micro = c.micro_batch_size or c.batch_size // self.env.world
        if self.micro < 1 or c.batch_size % (self.micro * self.env.world):
            raise ArgumentError(
                f"batch_size {c.batch_size} must be a multiple of "
                f"micro_batch_size {self.micro} x {self.env.world} processes (--batch-size, --micro-batch-size)"
            )
        self.model = self.build_model()
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
        self.accumulation = c.batch_size // (self.micro * self.env.world)
        self.steps_per_epoch = len(self.train_records) // c.batch_size
        self.total = c.max_steps or c.epochs * self.steps_per_epoch
        schedule = SCHEDULES[c.lr_schedule](self.total, c.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        trainable = sum(p.numel() for p in params)
        self.log.info(
            f"model: {trainable:,} trainable parameters; {self.total} steps of {c.batch_size} images "
            f"({self.accumulation} x {self.micro} per process x {self.env.world} processes{self.batch_note()}); "
            f"{c.lr_schedule} schedule, precision {'bf16' if self.autocast else 'fp32'} on {self.device}"
        )

    def batch_note(self) -> str:
        """Extra words for the start-up line about a step's batch."""
        return ""

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
        if state["data_fingerprint"] != self.data_fingerprint():
            raise ArgumentError(f"{source} was trained on different data (the image list or captions changed)")
        if state["world"] != self.env.world or not trainer_state.load_rng(source, self.env.rank):
            self.log.info(f"world size changed ({state['world']} -> {self.env.world}): RNG not restored, not bit-exact")
        if state["total_steps"] != self.total:
            raise ArgumentError(f"{source} was a {state['total_steps']}-step schedule, this run has {self.total}")
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
            self.dataset(self.train_records),
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

    def eval_loader(self, records: list, indices: list[int] | None = None) -> DataLoader:
        """This process's share of ``records`` (or of ``indices`` into them), in ``eval_batch_size`` batches."""
        c = self.config
        mine = list(range(len(records)) if indices is None else indices)[self.env.rank :: self.env.world]
        batches = [mine[i : i + c.eval_batch_size] for i in range(0, len(mine), c.eval_batch_size)]
        return DataLoader(
            self.dataset(records),
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=c.num_workers,
            generator=torch.Generator(),
        )

    def pixels(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Patchified pixels and grids of a batch, on the device in the weights' dtype."""
        if not batch.pixels:
            return torch.zeros(0, 1176, device=self.device), torch.zeros(0, 3, dtype=torch.long, device=self.device)
        return patchify(batch.pixels, device=self.device, dtype=self.dtype)

    def _count_skipped(self, batch: Batch, records: list) -> None:
        for index, reason in batch.skipped:
            self.skipped += 1
            if self.skipped <= 20:
                self.log.info(f"skipping unreadable image {records[index].filename}: {reason}")

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._setup()
        step = self._resume()
        c = self.config
        end = min(self.total, c.stop_after_step or self.total)
        losses: list[float] = []
        result = TrainResult(self.out, step, None, None, skipped=self.skipped)
        stream = self._stream(step)
        bar = self.log.progress(total=self.total, initial=step, enabled=c.progress, desc=self.name)
        window: list[dict[str, float]] = []
        images_seen, started = 0, time.perf_counter()
        params = list(self.model.trainable().values())
        while step < end:
            self.ddp.train()
            batches = [next(stream) for _ in range(self.accumulation)]
            self.begin_step(batches)
            sums: dict[str, torch.Tensor] = {}
            for j, batch in enumerate(batches):
                self._count_skipped(batch, self.train_records)
                last = j == self.accumulation - 1
                sync = self.ddp.no_sync() if self.env.world > 1 and not last else contextlib.nullcontext()
                with sync:
                    loss, numbers = self.micro_step(batch)
                    loss.backward()
                for key, value in numbers.items():
                    sums[key] = sums.get(key, 0) + value.detach().float().to(self.device)
                images_seen += len(batch.indices)
            max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            keys = sorted(sums)
            reduced = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]))
            values = self.summarise({k: float(v) for k, v in zip(keys, reduced, strict=True)})
            losses.append(values["loss"])
            window.append({**values, "grad_norm": float(grad_norm)})
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
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

    def _log_train(self, step: int, window: list[dict[str, float]], lr: float, rate: float) -> None:
        means = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
        epoch = step / self.steps_per_epoch
        values = {**means, "lr": lr, "images_per_s": rate, "skipped": self.skipped, "epoch": epoch}
        shown = " | ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "grad_norm")
        self.log.scalars(
            step,
            {f"train/{k}": v for k, v in values.items()},
            line=f"step {step}/{self.total} | epoch {epoch:.2f} | {shown} | lr {lr:.3e} | "
            f"grad_norm {means['grad_norm']:.3f} | {rate:.1f} img/s | skipped {self.skipped}",
        )

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, step: int, eval_metrics: dict[str, float]) -> Path:
        """``checkpoint-{step}``: the inference checkpoint plus trainer_state/, written then renamed."""
        final = self.out / f"checkpoint-{step}"
        tmp = self.out / f".checkpoint-{step}.tmp"
        if self.env.main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.write_model(tmp, step, eval_metrics)
        distributed.barrier()
        state = {
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "batch_in_epoch": step % self.steps_per_epoch,
            "total_steps": self.total,
            "world": self.env.world,
            "skipped": self.skipped,
            "data_fingerprint": self.data_fingerprint(),
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
            self.write_model(final, step, eval_metrics)
            self.finish_model(final)
            self.log.info(f"final model: {final}")
        distributed.barrier()
        return final

    def precision_name(self) -> str:
        return "bf16" if self.autocast else "fp32"

    def checkpoint_extra(self, step: int, eval_metrics: dict[str, Any]) -> dict[str, Any]:
        """What every checkpoint's config records besides the recipe."""
        return {"step": step, "eval": eval_metrics, "train_images": len(self.train_records)}


__all__ = [
    "TrainResult",
    "Cosine",
    "Linear",
    "SCHEDULES",
    "Trainer",
]
