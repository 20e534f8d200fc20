"""Distil the relsim embedder into a small student (``relsim distill``): the student's part of a training run.

The teacher is a relsim collection (what ``relsim embed`` writes: the 7B ran once per image). Its rows are
streamed from LanceDB a step at a time (only paths and content hashes are held in memory); each image is
prepared as the student's backbone says and the student is trained towards the teacher's vector:

``loss = cosine_weight * (1 - cos(s_i, t_i))``  (regression onto the teacher's embedding)
``     + structure_weight * mean_{i != j} (s_i . s_j - t_i . t_j)^2``  (the in-batch similarity structure)
``     + caption_weight * (1 - cos(s_i, c_i))``  (optional: the paper's own targets, MiniLM embeddings of the
anonymous captions of ``captions_jsonl``, for the rows that have one)

Why both teacher terms: a relational metric is used through its *pair scores* (a score, a ranking); the cosine
term pins each embedding near the teacher's but leaves the residual errors free to distort pair cosines, which
the structure term penalises directly. Full fine-tuning by default (students are small), LoRA as an option.

A held-out split of the teacher's rows (whole images, chosen by content hash) measures agreement with the
teacher (:mod:`relsim.agreement`) at every evaluation; the final numbers go into the checkpoint's
``relsim_config.json`` and card. The loop is :class:`relsim.train.loop.Trainer` (DDP, accumulation, bf16, logs,
checkpoints, exact resume).

Example:
    >>> from relsim.train import DistillConfig, train
    >>> config = DistillConfig(teacher="photos.relsim", student="facebook/dinov2-small", output_dir="run")
    >>> result = train(config)                                    # doctest: +SKIP
    >>> relsim.load(result.final)                                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..agreement import agreement
from ..errors import ArgumentError, CollectionError
from ..preprocess import ImageInputError
from ..publish import write_model_card
from ..student import ImagePreparation, StudentModel, build_student, check_backbone, write_student
from . import distributed
from .config import DistillConfig
from .data import Batch, Sample, read_jsonl
from .loop import Trainer

__all__ = ["DistillTrainer", "distill_loss", "freeze_unused", "held_out", "open_teacher"]


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    cosine_weight: float = 1.0,
    structure_weight: float = 1.0,
    captions: torch.Tensor | None = None,
    caption_mask: torch.Tensor | None = None,
    caption_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective (module docstring) of one batch of L2-normalised rows; returns the loss and its terms.

    >>> t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> float(distill_loss(t, t)[0])
    0.0
    """
    cosine = (1 - (student * teacher).sum(-1)).mean()
    n = student.shape[0]
    if n > 1:
        off = ~torch.eye(n, dtype=torch.bool, device=student.device)
        structure = ((student @ student.T - teacher @ teacher.T)[off] ** 2).mean()
    else:
        structure = student.sum() * 0.0
    loss = cosine_weight * cosine + structure_weight * structure
    terms = {"cosine": cosine.detach(), "structure": structure.detach()}
    if captions is not None and caption_weight > 0:
        mask = caption_mask if caption_mask is not None else torch.ones(n, dtype=torch.bool, device=student.device)
        if bool(mask.any()):
            caption = (1 - (student[mask] * captions[mask]).sum(-1)).mean()
        else:
            caption = student.sum() * 0.0
        loss = loss + caption_weight * caption
        terms["caption"] = caption.detach()
    return loss, terms


@dataclass(frozen=True)
class TeacherRow:
    """One row of the teacher's collection: where the image is and its content hash."""

    path: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.path


class StudentImages(Dataset):
    """``rows[i]`` -> ``Sample(i, float32 (3, H, W))`` prepared as the student's backbone says (unreadable: skipped)."""

    def __init__(self, rows: list[TeacherRow], preparation: ImagePreparation) -> None:
        self.rows, self.preparation = rows, preparation

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        try:
            return Sample(index, self.preparation.prepare(self.rows[index].path, index))
        except ImageInputError as err:
            return Sample(index, None, str(err))


def held_out(rows: list[TeacherRow], eval_size: int) -> set[str]:
    """Content hashes of the ``eval_size`` distinct images held out: the first by SHA-1 of their content hash, so
    the split is stable across runs and collections, and copies of one image stay on one side."""
    contents = sorted({r.sha256 for r in rows}, key=lambda h: hashlib.sha1(h.encode()).hexdigest())
    if eval_size >= len(contents) and eval_size > 0:
        raise ArgumentError(f"eval_size {eval_size} leaves no training image out of {len(contents)} distinct images")
    return set(contents[:eval_size])


class DistillModel(nn.Module):
    """The student being trained (its backbone LoRA-wrapped with ``lora``), under bf16 autocast when asked."""

    def __init__(self, student: StudentModel, autocast: torch.dtype | None) -> None:
        super().__init__()
        self.student = student
        self.autocast = autocast

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        device = self.student.device
        with torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            return self.student(pixels)

    def trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def anchor(self) -> torch.Tensor:
        """A zero depending on every trainable parameter (a micro-batch of unreadable images still joins DDP)."""
        return sum(p.sum() for p in self.trainable().values()) * 0.0

    def inference_student(self) -> StudentModel:
        """A copy of the student with any LoRA merged into its backbone: what a checkpoint holds."""
        student = copy.deepcopy(self.student)
        if hasattr(student.backbone, "merge_and_unload"):
            student.backbone = student.backbone.merge_and_unload()
        return student


def freeze_unused(student: StudentModel) -> list[str]:
    """Freeze the parameters an embedding never reaches (DINOv2's ``mask_token``, ...), found by one backward of a
    blank image: DDP requires every trainable parameter to receive a gradient. Returns their names."""
    from PIL import Image

    pixels = student.preparation.prepare(Image.new("RGB", (64, 64)), 0)[None].to(student.device)
    student.zero_grad(set_to_none=True)
    with torch.enable_grad():
        student(pixels).sum().backward()
    unused = [name for name, p in student.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in student.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused


class DistillTrainer(Trainer):
    """Distils a relsim collection's embeddings into a student (see the module docstring)."""

    name = "relsim distill"
    config: DistillConfig

    # -- data -------------------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Open and check the teacher and the backbone (cheap, before any model), split rows by content hash."""
        c = self.config
        self.collection = open_teacher(c.teacher, c.projection_dim)
        self.backbone = check_backbone(c.student, revision=c.student_revision)  # config only: refuses remote code
        table = self.collection.scan(["path", "sha256"]).sort_by("path")
        rows = [
            TeacherRow(p, h) for p, h in zip(*(table.column(k).to_pylist() for k in ("path", "sha256")), strict=True)
        ]
        held = held_out(rows, c.eval_size)
        self.train_records = [r for r in rows if r.sha256 not in held]
        eval_rows = {r.sha256: r for r in rows if r.sha256 in held}  # one row per held-out image
        self.eval_records = [eval_rows[h] for h in sorted(eval_rows)]
        self.eval_teacher = self.collection.vectors([r.path for r in self.eval_records]) if held else None
        self.log.info(
            f"teacher {self.collection.uri}: {len(rows)} rows, {len(self.train_records)} for training, "
            f"{len(self.eval_records)} images held out"
        )
        self.caption_rows: dict[int, int] = {}
        self.caption_targets: torch.Tensor | None = None
        if c.captions_jsonl and c.caption_weight > 0 and len(self.train_records) >= c.batch_size:
            self._load_captions()

    def _load_captions(self) -> None:
        from ..files import path_resolver
        from .targets import caption_targets, resolve_text_model

        c = self.config
        resolve = path_resolver()
        by_key: dict[str, str] = {}
        for record in read_jsonl(c.captions_jsonl):
            by_key.setdefault(record.image_hash, record.caption)
            if record.path:
                by_key.setdefault(resolve(record.path), record.caption)
        matched = {}
        for i, row in enumerate(self.train_records):
            caption = by_key.get(row.path) or by_key.get(Path(row.path).stem) or by_key.get(row.sha256)
            if caption is not None:
                matched[i] = caption
        self.log.info(f"captions: {len(matched)} of {len(self.train_records)} training images have one")
        if not matched:
            return
        text_model = resolve_text_model(c.text_model, c.text_revision)
        kwargs = dict(cache_dir=self.out / "targets", text_model=text_model, device=self.device)
        if self.env.main:
            targets = caption_targets(list(matched.values()), **kwargs)
        distributed.barrier()
        if not self.env.main:
            targets = caption_targets(list(matched.values()), **kwargs)
        if targets.shape[1] != c.projection_dim:
            raise ArgumentError(f"caption targets are {targets.shape[1]}-d but projection_dim is {c.projection_dim}")
        self.caption_rows = {i: k for k, i in enumerate(matched)}
        self.caption_targets = targets

    def dataset(self, records: list) -> Dataset:
        """The images of ``records``, prepared as the student's backbone says."""
        return StudentImages(records, self.preparation)

    def data_fingerprint(self) -> str:
        """SHA-256 of the teacher's fingerprint, the training rows and the caption matches (resume checks it)."""
        digest = hashlib.sha256(repr(sorted(self.collection.fingerprint.items())).encode())
        for row in self.train_records:
            digest.update(row.path.encode() + b"\0" + row.sha256.encode() + b"\0")
        digest.update(f"captions:{sorted(self.caption_rows.items())}".encode())
        return digest.hexdigest()

    # -- model ------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The student (pretrained backbone, seeded head), all weights trainable or LoRA + head."""
        c = self.config
        student = build_student(self.backbone.path, projection_dim=c.projection_dim, device=self.device, seed=c.seed)
        self.preparation = student.preparation
        student.requires_grad_(True)
        self.frozen_unused = freeze_unused(student)
        if c.lora:
            from peft import LoraConfig, get_peft_model

            student.backbone.requires_grad_(False)
            lora = LoraConfig(
                r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, target_modules=c.lora_target_modules
            )
            try:
                student.backbone = get_peft_model(student.backbone, lora)
            except ValueError as err:
                raise ArgumentError(f"LoRA on {c.student}: {str(err).splitlines()[0]}") from None
        return DistillModel(student, self.autocast)

    def batch_note(self) -> str:
        """Full fine-tuning or LoRA, and of which backbone (the start-up line)."""
        return f"; {'LoRA' if self.config.lora else 'full fine-tuning'} of {self.backbone.name}"

    # -- steps ------------------------------------------------------------------------------------------
    def begin_step(self, batches: list[Batch]) -> None:
        """The teacher's rows of this step, read from LanceDB in one query."""
        indices = sorted({i for b in batches for i in b.indices})
        vectors = self.collection.vectors([self.train_records[i].path for i in indices]) if indices else None
        self.step_teacher = {i: vectors[k] for k, i in enumerate(indices)} if indices else {}

    def micro_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective (:func:`distill_loss`) of one micro-batch against its teacher rows."""
        c = self.config
        share = self.accumulation * self.env.world
        if not batch.pixels:
            zero = self.model.anchor()
            return zero, {"loss": zero.detach(), "cosine": zero.detach(), "structure": zero.detach()}
        teacher = torch.stack([self.step_teacher[i] for i in batch.indices]).to(self.device)
        student = self.ddp(torch.stack(batch.pixels).to(self.device))
        captions = mask = None
        if self.caption_targets is not None:
            rows = [self.caption_rows.get(i, -1) for i in batch.indices]
            mask = torch.tensor([r >= 0 for r in rows], device=self.device)
            captions = self.caption_targets[[max(r, 0) for r in rows]].to(self.device)
        loss, terms = distill_loss(
            student,
            teacher,
            cosine_weight=c.cosine_weight,
            structure_weight=c.structure_weight,
            captions=captions,
            caption_mask=mask,
            caption_weight=c.caption_weight,
        )
        numbers = {k: v / share for k, v in terms.items()}
        numbers["loss"] = loss.detach() / share
        return loss / self.accumulation, numbers

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        """The loss and each of its terms, summed over micro-batches and processes."""
        return {"loss": sums["loss"], **{k: v for k, v in sums.items() if k != "loss"}}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Agreement with the teacher on the held-out images (:func:`relsim.agreement.agreement`)."""
        if not self.eval_records or len(self.eval_records) < 3:
            return {}
        self.model.eval()
        indices, rows = [], []
        for batch in self.eval_loader(self.eval_records):
            if batch.pixels:
                rows.append(self.model(torch.stack(batch.pixels).to(self.device)))
                indices += batch.indices
        self.model.train()
        local = torch.cat(rows) if rows else torch.zeros(0, self.config.projection_dim, device=self.device)
        embeddings, _ = distributed.gather_rows(local)
        all_indices, _ = distributed.gather_rows(torch.tensor(indices, dtype=torch.long, device=self.device))
        if all_indices.numel() < 3:
            self.log.info("eval: fewer than 3 readable held-out images")
            return {}
        metrics = agreement(embeddings.float().cpu(), self.eval_teacher[all_indices.cpu()])
        self.log.scalars(
            step,
            {f"eval/{k}": v for k, v in metrics.items()},
            line=f"eval step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------
    def write_model(self, directory: Path, step: int, eval_metrics: dict[str, float]) -> Path:
        """A student checkpoint (:func:`relsim.student.write_student`) with the agreement of ``eval_metrics``."""
        backbone = self.backbone
        return write_student(
            directory,
            self.model.inference_student(),
            backbone_path=backbone.path,
            backbone=str(backbone.path) if backbone.is_local else backbone.name,
            backbone_revision=backbone.revision,
            teacher={"collection": self.collection.uri, "fingerprint": self.collection.fingerprint},
            recipe=self.config.to_dict(),
            extra={
                **self.checkpoint_extra(step, eval_metrics),
                "agreement": eval_metrics,
                "precision": self.precision_name(),
            },
        )

    def finish_model(self, directory: Path) -> None:
        """The model card."""
        write_model_card(directory)
        self.log.info(f"load it with relsim.load({str(directory)!r})")


def open_teacher(uri: str, dim: int):
    """The teacher's collection, checked (one clear line each): it exists, holds vectors, of the student's width."""
    from ..collection import Collection

    if not uri:
        raise ArgumentError("the teacher collection must be given (relsim distill TEACHER)")
    try:
        collection = Collection.open(uri)
    except FileNotFoundError:
        raise CollectionError(f"{uri!r}: no such collection (make one with `relsim embed IMAGES -c {uri}`)") from None
    if collection.dim != dim:
        raise CollectionError(
            f"the teacher {uri!r} holds {collection.dim}-d embeddings; a student makes {dim}-d ones (projection_dim)"
        )
    if len(collection) == 0:
        raise CollectionError(f"the teacher {uri!r} holds no vectors (embed images into it with `relsim embed`)")
    return collection
