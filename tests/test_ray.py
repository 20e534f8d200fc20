"""relsim.integrations.ray: RelSimEmbedder on a local Ray instance gives the rows ``relsim embed`` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo

ray = pytest.importorskip("ray")
pytest.importorskip("lancedb")

from relsim.cli import main  # noqa: E402
from relsim.collection import Collection  # noqa: E402
from relsim.integrations.ray import RelSimEmbedder, write_to_collection  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_relsim_embed(local_ray, tiny_model, adapter_dir, base_dir, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        photo(40 + 9 * i, 50, seed=70 + i).save(folder / f"p{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    model_args = ["--model", str(adapter_dir), "--base-model", str(base_dir)]
    assert main(["embed", str(folder), "-o", str(tmp_path / "cli"), "--store-dtype", "float32", *model_args]) == 3

    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    kwargs = {"model": str(adapter_dir), "base_model": str(base_dir), "device": "cpu", "dtype": torch.float32}
    ds = ds.map_batches(RelSimEmbedder, fn_constructor_kwargs=kwargs, concurrency=1, batch_size=3)
    counts = write_to_collection(ds, tmp_path / "ray", dtype="float32")
    assert counts == {"embedded": 5, "skipped": 1}

    via_cli, via_ray = Collection.open(tmp_path / "cli"), Collection.open(tmp_path / "ray")
    assert via_ray.fingerprint == via_cli.fingerprint == tiny_model.fingerprint
    assert via_ray.records() == via_cli.records()  # same paths, sizes, mtimes and hashes
    paths = via_cli.paths()
    np.testing.assert_allclose(via_ray.vectors(paths).numpy(), via_cli.vectors(paths).numpy(), atol=1e-5, rtol=0)
    assert [f["path"] for f in via_ray.failures()] == [str(folder / "broken.jpg")]
    assert via_cli.needs_embedding(paths) == [] and via_ray.needs_embedding(paths) == []
