"""relsim.exact: flat search over the vectors in memory answers exactly as LanceDB's scan does, sees every
write, skips damaged rows, and is used only when it pays (several queries, or a second flat search)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lancedb")

from test_collection import FP, _inject_rows, raw_table  # noqa: E402

from relsim import exact  # noqa: E402
from relsim.collection import Collection  # noqa: E402
from relsim.exact import VectorMemory  # noqa: E402

DIM = 16


def clustered(n: int, seed: int = 0, copies: int = 0) -> tuple[list[dict], np.ndarray]:
    """n rows around 5 centres; the last ``copies`` rows repeat row 0's content (same SHA-256 and vector)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(5, DIM))[rng.integers(0, 5, n)] + 0.5 * rng.normal(size=(n, DIM))
    data[n - copies :] = data[0]
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    sha = [f"{i:064x}" for i in range(n)]
    sha[n - copies :] = [sha[0]] * copies
    records = [{"path": f"/d/{i:05d}.jpg", "size": i, "mtime_ns": i, "sha256": sha[i]} for i in range(n)]
    return records, data


def filled(tmp_path: Path, n: int = 3000, dtype: str = "float16", copies: int = 0) -> tuple[Collection, np.ndarray]:
    col = Collection.create(tmp_path / f"c{n}{dtype}.relsim", FP, dim=DIM, dtype=dtype)
    records, data = clustered(n, copies=copies)
    for start in range(0, n, 1000):  # several fragments: row ids are not 0..n-1
        col.add(records[start : start + 1000], data[start : start + 1000])
    return col, data


def same_hits(ours, lances, atol: float) -> None:
    """The same files per query, copies grouped alike (which copy leads a tie may differ), scores within atol,
    ours sorted best first."""
    for mine, theirs in zip(ours, lances, strict=True):
        groups = [sorted(sorted([h.path, *h.duplicates]) for h in hits) for hits in (mine, theirs)]
        assert groups[0] == groups[1]
        by_group = {frozenset([h.path, *h.duplicates]): h.score for h in theirs}
        mine_scores = [h.score for h in mine]
        np.testing.assert_allclose(mine_scores, [by_group[frozenset([h.path, *h.duplicates])] for h in mine], atol=atol)
        assert mine_scores == sorted(mine_scores, reverse=True)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_memory_answers_as_the_lancedb_scan(tmp_path: Path, monkeypatch, dtype: str) -> None:
    col, data = filled(tmp_path, dtype=dtype, copies=3)
    queries = torch.nn.functional.normalize(torch.from_numpy(data[[0, 7, 1500, 2999]]) + 0.1, dim=1)
    exclude = [[f"{0:064x}"], [], [f"{1500:064x}", f"{7:064x}"], []]
    settings = [(10, True), (25, False)]
    monkeypatch.setattr(exact, "MAX_BYTES", 0)  # LanceDB's scan for every query
    scanned = [col.nearest(queries, k=k, dedup=dedup, exclude_sha256=exclude) for k, dedup in settings]
    assert VectorMemory.of(col).version is None
    monkeypatch.setattr(exact, "MAX_BYTES", 1 << 30)
    monkeypatch.setattr(exact, "_CHUNK", 257)  # many chunks, k larger than some
    in_memory = [col.nearest(queries, k=k, dedup=dedup, exclude_sha256=exclude) for k, dedup in settings]
    assert VectorMemory.of(col).version == col.table.version
    for ours, lances in zip(in_memory, scanned, strict=True):
        same_hits(ours, lances, atol=2e-4 if dtype == "float16" else 1e-6)  # LanceDB scores float16 in float16
    stored = {r["path"]: np.asarray(r["vector"], np.float32) for r in col.scan(["path", "vector"]).to_pylist()}
    for q, hits in zip(queries.numpy(), in_memory[1], strict=True):  # ours: float32 dots of the stored values
        np.testing.assert_allclose([h.score for h in hits], [stored[h.path] @ q for h in hits], atol=1e-6)
    top = in_memory[0][1][0]
    assert top.path == "/d/00007.jpg" and in_memory[0][0][0].duplicates == []  # query 0's content left out
    assert all(h.path not in {"/d/00000.jpg", "/d/02997.jpg", "/d/02998.jpg", "/d/02999.jpg"} for h in in_memory[1][0])


def test_one_query_scans_a_second_uses_memory(tmp_path: Path) -> None:
    col, data = filled(tmp_path, n=600)
    memory = VectorMemory.of(col)
    first = col.nearest(data[3], k=5)[0]
    assert memory.version is None  # a one-off query costs one scan, no load
    second = col.nearest(data[3], k=5)[0]
    assert memory.version == col.table.version and len(memory.row_ids) == 600
    assert [(h.path, h.score) for h in first] == [(h.path, h.score) for h in second]
    assert second[0].path == "/d/00003.jpg" and second[0].score == pytest.approx(1.0, abs=1e-3)
    assert VectorMemory.of(Collection.open(col.uri)) is not memory  # per Collection object


def test_memory_sees_writes_and_deletes(tmp_path: Path) -> None:
    col, data = filled(tmp_path, n=600)
    col.nearest(data[:2], k=3)
    memory = VectorMemory.of(col)
    loaded = memory.version
    target = -data[5]  # no stored row is near it, until one is added
    col.add([{"path": "/new/far.jpg", "size": 1, "mtime_ns": 1, "sha256": "e" * 64}], target[None])
    assert col.nearest(np.stack([target, data[1]]), k=1)[0][0].path == "/new/far.jpg"
    assert memory.version != loaded and len(memory.row_ids) == 601
    col.delete(["/new/far.jpg"])
    assert col.nearest(np.stack([target, data[1]]), k=1)[0][0].path != "/new/far.jpg"
    _inject_rows(col, ["/raw/writer.jpg"], target[None])  # another process's handle
    col.refresh()
    assert col.nearest(np.stack([target, data[1]]), k=1)[0][0].path == "/raw/writer.jpg"
    assert len(raw_table(col).to_arrow()) == len(memory.row_ids) == 601


def test_damaged_rows_are_reported_and_never_returned(tmp_path: Path) -> None:
    col, data = filled(tmp_path, n=600)
    query = data[0]
    bad = np.stack([np.zeros(DIM), 3 * query, np.full(DIM, np.inf)])  # LanceDB refuses to write NaN
    _inject_rows(col, ["/bad/zero.jpg", "/bad/long.jpg", "/bad/inf.jpg"], bad)
    col.refresh()
    with pytest.warns(UserWarning, match="/bad/") as caught:
        hits = col.nearest(np.stack([query, data[1]]), k=5)
    assert VectorMemory.of(col).version is not None
    assert all(not h.path.startswith("/bad/") and np.isfinite(h.score) for q in hits for h in q)
    assert hits[0][0].path == "/d/00000.jpg" and len(hits[0]) == 5
    assert "relsim repair" in str(caught[0].message)


def test_a_filter_or_an_index_bypasses_memory(tmp_path: Path) -> None:
    col, data = filled(tmp_path, n=600)
    hits = col.nearest(data[:3], k=3, where="path LIKE '/d/0001%'")
    assert VectorMemory.of(col).version is None
    assert all(h.path.startswith("/d/0001") for q in hits for h in q)
    col.create_vector_index("IVF_SQ", num_partitions=2)
    col.nearest(data[:3], k=3)
    assert VectorMemory.of(col).version is None
    col.nearest(data[:3], k=3, exact=True)
    assert VectorMemory.of(col).version is not None


def test_more_rows_than_memory_allows_stay_on_the_scan(tmp_path: Path, monkeypatch) -> None:
    col, data = filled(tmp_path, n=600)
    monkeypatch.setattr(exact, "MAX_BYTES", 600 * DIM * 2 - 1)
    col.nearest(data[:4], k=3)
    col.nearest(data[:4], k=3)
    assert VectorMemory.of(col).version is None


def test_nprobes_reaches_the_index_and_is_checked(tmp_path: Path, monkeypatch) -> None:
    import relsim
    from relsim import neighbours

    col, data = filled(tmp_path, n=600)
    col.create_vector_index("IVF_SQ", num_partitions=4)
    seen: list[int | None] = []
    real = neighbours._query
    monkeypatch.setattr(neighbours, "_query", lambda search, *a: seen.append(search.nprobes) or real(search, *a))
    hits = relsim.search(col, embedding=torch.from_numpy(data[3]), k=3, nprobes=2)
    col.nearest(data[3], k=3)
    assert seen == [2, neighbours.DEFAULT_NPROBES] and hits[0]["path"] == "/d/00003.jpg"
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="nprobes must be an int >= 1"):
            col.nearest(data[3], k=3, nprobes=bad)


def test_memory_goes_with_its_collection(tmp_path: Path) -> None:
    import gc

    col, data = filled(tmp_path, n=600)
    col.nearest(data[:2], k=3)
    assert len(VectorMemory.of(col).row_ids) == 600 and col in exact._MEMORIES
    before = len(exact._MEMORIES)
    del col
    gc.collect()
    assert len(exact._MEMORIES) == before - 1  # 768 MB per million rows is not kept after the collection


def test_a_lost_data_file_is_one_error_naming_the_fix(tmp_path: Path) -> None:
    from relsim.errors import CollectionError

    col, data = filled(tmp_path, n=2000)
    (lost,) = sorted(Path(col.uri, "embeddings.lance", "data").iterdir())[-1:]
    lost.unlink()
    with pytest.raises(CollectionError, match="relsim repair") as err:
        Collection.open(col.uri).nearest(data[:2], k=3)
    assert lost.name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_vector_values_reads_any_slice_in_place(dtype) -> None:
    import pyarrow as pa

    from relsim.collection import vector_matrix, vector_values

    x = np.random.default_rng(0).normal(size=(50, DIM)).astype(dtype)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
    for part, rows in (
        (column, x),
        (column.slice(7, 20), x[7:27]),
        (column.slice(0, 5), x[:5]),
        (column.slice(0, 0), x[:0]),
    ):
        values = vector_values(part)
        assert values.dtype == dtype and np.array_equal(values, rows.ravel())
    table = pa.table({"vector": pa.chunked_array([column.slice(0, 10), column.slice(10, 40)])})
    assert np.array_equal(vector_matrix(table, DIM), x.astype(np.float32))
