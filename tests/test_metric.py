"""RelationalSimilarity (torchmetrics) and relsim.functional.relational_similarity on the tiny fixture model."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import photo
from torch import nn
from torchmetrics import MetricCollection

import relsim
from relsim.encoder import RelSimModel
from relsim.functional import relational_similarity
from relsim.metric import RelationalSimilarity
from relsim.preprocess import ImageInputError

REDUCTIONS = ("mean", "sum", "none")


def _uint8_batch(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def model(tiny_native_model):
    """Most tests use native mode: small images stay small, so the tiny backbone is fast."""
    return tiny_native_model


@pytest.fixture(scope="module")
def pairs():
    """Three pairs: PIL images of different sizes against a uint8 batch."""
    return [photo(64, 64, 0), photo(40, 90, 1), photo(100, 30, 2)], _uint8_batch(3, seed=1)


@pytest.fixture(scope="module")
def expected(model, pairs) -> torch.Tensor:
    return model.score(*pairs)


@pytest.fixture(params=["train", "native"])
def any_model(request, tiny_model, tiny_native_model):
    return tiny_model if request.param == "train" else tiny_native_model


@pytest.fixture
def forward_rows(model):
    """Rows embedded by the backbone during a test (one entry per batch)."""
    rows: list[int] = []
    handle = model.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    yield rows
    handle.remove()


# ---------------------------------------------------------------------------------------------------------
# Values


def test_class_attributes():
    assert RelationalSimilarity.is_differentiable is True
    assert RelationalSimilarity.higher_is_better is True
    assert RelationalSimilarity.full_state_update is False
    assert (RelationalSimilarity.plot_lower_bound, RelationalSimilarity.plot_upper_bound) == (-1.0, 1.0)


def test_value_equals_model_score_pair_by_pair(any_model, pairs):
    img1, img2 = pairs
    expected = any_model.score(img1, img2)
    metric = RelationalSimilarity(model=any_model, reduction="none")
    metric.update(img1, img2)
    value = metric.compute()
    assert value.dtype == torch.float32 and value.shape == (3,)
    assert torch.equal(value, expected)
    # over several updates: the same up to batch composition (a batch's matmuls may round differently)
    metric.reset()
    metric.update(img1[:2], img2[:2])
    metric.update(img1[2:], img2[2:])
    assert torch.allclose(metric.compute(), expected, atol=1e-6, rtol=0)


def test_reductions_in_a_collection_and_functional_agree(model, pairs, expected):
    img1, img2 = pairs
    collection = MetricCollection({r: RelationalSimilarity(model=model, reduction=r) for r in REDUCTIONS})
    collection.update(img1, img2)
    values = collection.compute()
    assert torch.equal(values["none"], expected)
    assert torch.allclose(values["sum"], expected.sum(), atol=1e-6)
    assert torch.allclose(values["mean"], expected.mean(), atol=1e-6)
    for reduction in REDUCTIONS:
        functional = relational_similarity(img1, img2, model=model, reduction=reduction)
        assert torch.equal(functional, values[reduction]), reduction
    assert collection.state_dict() == {}


def test_forward_returns_batch_value_and_accumulates(model, pairs, expected):
    img1, img2 = pairs
    metric = RelationalSimilarity(model=model)
    first = metric(img1[:2], img2[:2])
    second = metric(img1[2:], img2[2:])
    assert torch.allclose(first, expected[:2].mean(), atol=1e-6)
    assert torch.allclose(second, expected[2], atol=1e-6)
    assert torch.allclose(metric.compute(), expected.mean(), atol=1e-6)
    assert metric.update_count == 2


def test_forward_runs_the_backbone_once_per_batch(model, forward_rows):
    for kwargs in ({}, {"dist_sync_on_step": True}):  # the second takes torchmetrics' two-update forward path
        forward_rows.clear()
        RelationalSimilarity(model=model, **kwargs)(_uint8_batch(2, seed=2), _uint8_batch(2, seed=3))
        assert sum(forward_rows) == 4, kwargs


def test_repeated_reference_is_embedded_once(model, forward_rows):
    reference = photo(50, 50, 7)
    generated = list(_uint8_batch(4, seed=4).unbind(0))
    metric = RelationalSimilarity(model=model, reduction="none")
    metric.update(generated, [reference] * 4)
    assert sum(forward_rows) == 5
    assert torch.equal(metric.compute(), model.score(generated, [reference] * 4))


def test_lists_of_mixed_inputs_and_sizes(model, tmp_path):
    path = tmp_path / "a.png"
    photo(30, 70, 5).save(path)
    img1 = [str(path), torch.rand(3, 33, 47), np.asarray(photo(20, 20, 6))]
    img2 = [photo(80, 60, 8), torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8), path]
    value = relational_similarity(img1, img2, model=model, reduction="none")
    assert torch.equal(value, model.score(img1, img2))


def test_reset(model):
    metric = RelationalSimilarity(model=model, reduction="sum")
    metric.update(_uint8_batch(1, seed=9), _uint8_batch(1, seed=10))
    assert metric.total == 1
    metric.reset()
    assert metric.total == 0 and metric.score_sum == 0 and metric.update_count == 0
    listed = RelationalSimilarity(model=model, reduction="none")
    listed.update(_uint8_batch(1, seed=9), _uint8_batch(1, seed=10))
    listed.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert listed.scores == [] and listed.compute().shape == (0,)


def test_empty_batches_do_not_run_the_backbone(model, forward_rows):
    metric = RelationalSimilarity(model=model, reduction="sum")
    metric.update(torch.zeros(0, 3, 28, 28), [])
    assert forward_rows == [] and metric.compute() == 0 and metric.total == 0


# ---------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("img1", "img2", "match"),
    [
        (torch.rand(3, 28, 28), torch.rand(1, 3, 28, 28), r"shape \(3, 28, 28\).*img\[None\]"),
        (torch.rand(2, 28, 28, 3), torch.rand(2, 3, 28, 28), r"channels-last"),
        (torch.rand(2, 3, 28, 28) * 255, torch.rand(2, 3, 28, 28), r"`img1` in \[0, 1\], got range"),
        (torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28) * 2 - 1, r"`img2`.*\(img \+ 1\) / 2"),
        (torch.zeros(2, 3, 28, 28, dtype=torch.int32), torch.rand(2, 3, 28, 28), r"dtype torch.int32"),
        (torch.full((1, 3, 28, 28), float("nan")), torch.rand(1, 3, 28, 28), r"NaN"),
        (torch.rand(2, 3, 28, 28), torch.rand(3, 3, 28, 28), r"same number of images.*2 and 3"),
        ("a.jpg", "b.jpg", r"`img1` to be a batch.*got str"),
        ([photo(28, 28)], [None], r"`img2\[0\]`.*got NoneType"),
        ([torch.rand(2, 28, 28)], [photo(28, 28)], r"`img1\[0\]`.*shape \(2, 28, 28\)"),
        (np.zeros((2, 3, 28, 28), np.uint8), np.zeros((2, 28, 28, 3), np.uint8), r"numpy array of shape"),
        ([np.full((28, 28, 3), 2.0)], [photo(28, 28)], r"`img1\[0\]` in \[0, 1\]"),
    ],
)
def test_invalid_inputs_raise_value_error(model, forward_rows, img1, img2, match):
    metric = RelationalSimilarity(model=model)
    with pytest.raises(ValueError, match=match) as info:
        metric.update(img1, img2)
    assert isinstance(info.value, ImageInputError)
    with pytest.raises(ValueError, match=match):
        relational_similarity(img1, img2, model=model)
    assert forward_rows == [] and metric.total == 0


def test_invalid_arguments(model):
    with pytest.raises(ValueError, match="reduction"):
        RelationalSimilarity(model=model, reduction="max")
    with pytest.raises(ValueError, match="batch_size"):
        RelationalSimilarity(model=model, batch_size=0)
    with pytest.raises(ValueError, match="reduction"):
        relational_similarity(_uint8_batch(1), _uint8_batch(1), model=model, reduction="avg")
    with pytest.raises(ValueError, match="bfloat16"):
        RelationalSimilarity(model=model, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="mode"):
        RelationalSimilarity(model=model, mode="train")  # the fixture is a native-mode model
    with pytest.raises(ValueError, match="revision"):
        RelationalSimilarity(model=model, revision="main")
    with pytest.raises(TypeError, match="model"):
        RelationalSimilarity(model=42)
    RelationalSimilarity(model=model, dtype="float32", device="cpu", mode="native")  # matching: fine


# ---------------------------------------------------------------------------------------------------------
# Gradients


def test_gradient_reaches_the_input_pixels(tiny_model):
    model = tiny_model  # train mode: crop + Pillow-filter resize + patchify, all torch ops
    generated = torch.rand(2, 3, 56, 56, requires_grad=True)
    metric = RelationalSimilarity(model=model)
    value = metric(generated, _uint8_batch(2, seed=11))
    value.backward()
    grad = generated.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the accumulated state and the forward cache keep no graph (it would pin the backbone's activations)
    assert not metric.score_sum.requires_grad and not metric._forward_cache.requires_grad
    listed = RelationalSimilarity(model=model, reduction="none")
    listed(generated, _uint8_batch(2, seed=11)).sum().backward()
    assert all(not s.requires_grad for s in listed.scores)


def test_functional_gradient(model):
    generated = torch.rand(1, 3, 56, 56, requires_grad=True)
    (1 - relational_similarity(generated, _uint8_batch(1, seed=12), model=model)).backward()
    assert torch.isfinite(generated.grad).all() and generated.grad.abs().sum() > 0


def test_update_and_no_grad_forward_build_no_graph(model):
    generated = torch.rand(1, 3, 56, 56, requires_grad=True)
    metric = RelationalSimilarity(model=model)
    metric.update(generated, _uint8_batch(1, seed=13))
    assert not metric.score_sum.requires_grad
    with torch.no_grad():
        assert not metric(generated, _uint8_batch(1, seed=13)).requires_grad


# ---------------------------------------------------------------------------------------------------------
# The backbone: out of the module tree, shared, device/dtype behaviour


def test_backbone_is_not_in_state_dict_or_module_tree(model):
    holder = nn.Module()
    holder.metric = RelationalSimilarity(model=model)
    holder.head = nn.Linear(2, 2)
    assert set(holder.state_dict()) == {"head.weight", "head.bias"}
    assert list(holder.metric.parameters()) == [] and list(holder.metric.children()) == []
    holder.metric.persistent(True)
    assert set(holder.metric.state_dict()) == {"score_sum", "total"}
    holder.load_state_dict(holder.state_dict())
    holder.train()
    assert holder.metric.training and not model.training
    assert holder.metric.model is model


def test_dtype_casts_reach_neither_backbone_nor_states(model):
    metric = RelationalSimilarity(model=model)
    for cast in (lambda m: m.half(), lambda m: m.double(), lambda m: m.to(torch.float16), lambda m: m.bfloat16()):
        cast(metric)
        assert metric.score_sum.dtype == torch.float32 and model.dtype == torch.float32
    metric.set_dtype(torch.float64)
    assert metric.score_sum.dtype == torch.float64 and model.dtype == torch.float32
    metric.to("cpu")
    assert model.device.type == "cpu"


def test_meta_device_never_reaches_a_shared_backbone(model):
    metric = RelationalSimilarity(model=model)
    metric.to("meta")
    assert metric.score_sum.device.type == "meta" and model.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_moves_the_backbone(adapter_dir, base_dir):
    model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")
    metric = RelationalSimilarity(model=model, reduction="none")
    before = model.score(*[list(_uint8_batch(2, seed=s).unbind(0)) for s in (14, 15)])
    try:
        metric.cuda()
        assert model.device.type == "cuda" and metric.device.type == "cuda"
        metric.update(_uint8_batch(2, seed=14), _uint8_batch(2, seed=15))
        assert torch.allclose(metric.compute().cpu(), before, atol=1e-4)
        metric.cpu()
        assert model.device.type == "cpu"
        pinned = RelationalSimilarity(model=model, move_model=False).cuda()
        assert pinned.device.type == "cuda" and model.device.type == "cpu"
        pinned.update(_uint8_batch(2, seed=14), _uint8_batch(2, seed=15))
        assert pinned.compute().device.type == "cuda"
    finally:
        model.cpu()  # the session's shared fixture instance


def test_loading_by_directory_shares_the_cached_model(tiny_model, tiny_native_model, adapter_dir, base_dir):
    kwargs = {"dtype": torch.float32, "device": "cpu", "load_kwargs": {"base_model": base_dir}}
    train = RelationalSimilarity(str(adapter_dir), **kwargs)
    val = RelationalSimilarity(adapter_dir, reduction="none", **kwargs)
    assert train.model is tiny_model and val.model is tiny_model
    assert RelationalSimilarity(adapter_dir, mode="native", **kwargs).model is tiny_native_model


def test_base_model_is_an_argument_of_the_metric_and_the_functional(tiny_model, adapter_dir, base_dir):
    common = {"dtype": torch.float32, "device": "cpu"}
    assert RelationalSimilarity(adapter_dir, base_model=base_dir, **common).model is tiny_model
    a, b = _uint8_batch(2, seed=30), _uint8_batch(2, seed=31)
    direct = relational_similarity(a, b, model=adapter_dir, base_model=base_dir, **common)
    assert torch.equal(direct, relational_similarity(a, b, model=tiny_model))
    with pytest.raises(ValueError, match="base_model"):
        RelationalSimilarity(tiny_model, base_model=base_dir)
    with pytest.raises(ValueError, match="given twice"):
        relational_similarity(a, b, model=adapter_dir, base_model=base_dir, load_kwargs={"base_model": base_dir})


def test_deepcopy_and_clone_share_the_backbone(model):
    metric = RelationalSimilarity(model=model, reduction="sum")
    metric.update(_uint8_batch(1, seed=16), _uint8_batch(1, seed=17))
    for copied in (copy.deepcopy(metric), metric.clone(), copy.copy(metric)):
        assert copied.model is model
        assert torch.equal(copied.compute(), metric.compute())
        copied.update(_uint8_batch(1, seed=16), _uint8_batch(1, seed=17))
        assert metric.total == 1 and copied.total == 2
    assert copy.deepcopy({"a": metric, "b": metric})["a"].model is model


def test_pickle_stores_how_to_load_not_the_weights(model):
    metric = RelationalSimilarity(model=model, reduction="sum")
    metric.update(_uint8_batch(1, seed=18), _uint8_batch(1, seed=19))
    data = pickle.dumps(metric)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert len(data) < 100_000 < weights
    restored = pickle.loads(data)
    assert "_model" not in restored.__dict__  # loaded on first use
    assert torch.equal(restored.compute(), metric.compute())
    assert restored.model is model  # same process: relsim.load's cache returns the loaded instance
    assert "model=" in repr(restored)


def test_default_model_from_the_hub_cache(offline_hub):
    metric = RelationalSimilarity(device="cpu", dtype=torch.float32)
    assert metric.model.fingerprint["revision"] == offline_hub["adapter_commit"]
    assert RelationalSimilarity(device="cpu", dtype="float32", reduction="none").model is metric.model
    assert pickle.loads(pickle.dumps(metric)).model is metric.model
    img1, img2 = _uint8_batch(1, seed=40), _uint8_batch(1, seed=41)
    assert torch.equal(relational_similarity(img1, img2, device="cpu", dtype=torch.float32), metric(img1, img2))


def test_pickle_refuses_a_model_it_cannot_reload(model):
    bare = RelSimModel(model.body, model.projection, model.prompt)  # no fingerprint
    with pytest.raises(pickle.PicklingError, match="relsim.load"):
        pickle.dumps(RelationalSimilarity(model=bare))


def test_feature_share_shares_one_backbone(model):
    wrappers = pytest.importorskip("torchmetrics.wrappers")
    shared = wrappers.FeatureShare({r: RelationalSimilarity(model=model, reduction=r) for r in ("mean", "none")})
    assert all(m.model is model for m in shared.values())
    assert "forward" not in model.__dict__  # FeatureShare's lru_cache on forward is undone
    shared.update(_uint8_batch(2, seed=20), _uint8_batch(2, seed=21))
    values = shared.compute()
    assert torch.allclose(values["mean"], values["none"].mean(), atol=1e-6)
    assert shared.state_dict() == {}


# ---------------------------------------------------------------------------------------------------------
# Plotting


def test_plot_single_value_and_sequence(model):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = RelationalSimilarity(model=model)
    values = [metric(_uint8_batch(1, seed=s), _uint8_batch(1, seed=s + 1)) for s in (22, 24)]
    fig, ax = metric.plot()
    assert fig is not None and ax is not None
    fig, ax = metric.plot(values)
    assert len(ax.lines) >= 1
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------
# DDP: two CPU processes (gloo) give what one process gives over all the data


def _ddp_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per rank, its batches of pairs: rank 0 gets 3 pairs in two updates, rank 1 gets 2 (uneven on purpose)."""
    return [
        [(_uint8_batch(2, seed=30), _uint8_batch(2, seed=31)), (_uint8_batch(1, seed=32), _uint8_batch(1, seed=33))],
        [(_uint8_batch(2, seed=34), _uint8_batch(2, seed=35))],
    ]


def _ddp_worker(rank: int, world_size: int, port: int, adapter_dir: Path, base_dir: Path, out_dir: Path) -> None:
    code = 0
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=120),
        )
        model = relsim.load(adapter_dir, base_model=base_dir, device="cpu", dtype=torch.float32, mode="native")
        results = {}
        for reduction in REDUCTIONS:
            metric = RelationalSimilarity(model=model, reduction=reduction)
            for img1, img2 in _ddp_batches()[rank]:
                metric.update(img1, img2)
            results[reduction] = metric.compute()
            results[f"{reduction}-local-count"] = metric.update_count
        torch.save(results, out_dir / f"rank{rank}.pt")
        dist.barrier()
    except BaseException:
        code = 1
        (out_dir / f"rank{rank}.err").write_text(traceback.format_exc())
    finally:
        # gloo can abort at interpreter exit ("terminate called without an active exception"): leave by _exit
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(model, adapter_dir, base_dir, tmp_path):
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), adapter_dir, base_dir, tmp_path), nprocs=2, join=True)
    except mp.ProcessRaisedException as err:  # pragma: no cover - only on failure
        raise AssertionError(str(err)) from err
    except mp.ProcessExitedException as err:  # pragma: no cover - only on failure
        logs = "\n".join(p.read_text() for p in tmp_path.glob("rank*.err"))
        raise AssertionError(f"a rank failed:\n{logs}") from err
    all_pairs = [pair for rank in _ddp_batches() for pair in rank]
    for reduction in REDUCTIONS:
        single = RelationalSimilarity(model=model, reduction=reduction)
        for img1, img2 in all_pairs:
            single.update(img1, img2)
        want = single.compute()
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt")
            assert got[reduction].shape == want.shape, (reduction, rank)
            assert torch.allclose(got[reduction], want, atol=1e-6), (reduction, rank, got[reduction], want)
    assert [torch.load(tmp_path / f"rank{r}.pt")["none-local-count"] for r in range(2)] == [2, 1]
