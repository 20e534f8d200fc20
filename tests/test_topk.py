"""relsim.topk: chunked exact top-k against brute force, exclusions, FAISS, store search with dedup."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from relsim.store import EmbeddingStore, FileRecord, StoreMismatchError
from relsim.topk import dedup_by_hash, search, search_store

DIM = 32
FP = {"model": "m", "revision": "r", "base_model": "b", "base_revision": "br", "mode": "train"}


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute(query: torch.Tensor, emb: torch.Tensor, k: int, exclude=None) -> tuple[torch.Tensor, torch.Tensor]:
    scores = F.normalize(query.float().reshape(-1, emb.shape[1]), dim=1) @ emb.float().T
    if exclude is not None:
        for row, ids in enumerate(exclude):
            scores[row, ids] = float("-inf")
    return scores.topk(min(k, emb.shape[0]), dim=1)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 257, 100_000])
@pytest.mark.parametrize("nq", [1, 5])
def test_matches_brute_force(chunk_size: int, nq: int) -> None:
    emb, query = unit(1000, DIM), unit(nq, DIM, seed=1)
    scores, idx = search(query, emb, k=10, chunk_size=chunk_size)
    expected_s, expected_i = brute(query, emb, 10)
    assert torch.equal(idx, expected_i)
    torch.testing.assert_close(scores, expected_s, atol=1e-5, rtol=0)
    assert scores.shape == (nq, 10) and idx.dtype == torch.int64


def test_one_dimensional_query_gives_one_dimensional_result() -> None:
    emb = unit(50, DIM)
    scores, idx = search(emb[7], emb, k=3, chunk_size=8)
    assert scores.shape == idx.shape == (3,) and int(idx[0]) == 7
    assert abs(float(scores[0]) - 1.0) < 1e-5


def test_query_is_normalised() -> None:
    emb, query = unit(200, DIM), unit(2, DIM, seed=1)
    s1, i1 = search(query * 7.5, emb, k=5)
    s2, i2 = search(query, emb, k=5)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("chunk_size", [2, 16, 1000])
def test_exclude_global_and_per_query(chunk_size: int) -> None:
    emb = unit(300, DIM)
    query = emb[[3, 10, 250]]
    glob = [3, 10, 250, 299, 0]
    scores, idx = search(query, emb, k=6, chunk_size=chunk_size, exclude=glob)
    es, ei = brute(query, emb, 6, exclude=[glob] * 3)
    assert torch.equal(idx, ei)
    torch.testing.assert_close(scores, es, atol=1e-5, rtol=0)

    per = [[3], [10, 11], torch.tensor([250])]  # exclude-self, one list per query
    scores, idx = search(query, emb, k=6, chunk_size=chunk_size, exclude=per)
    es, ei = brute(query, emb, 6, exclude=[[3], [10, 11], [250]])
    assert torch.equal(idx, ei)
    assert not any(int(idx[q, 0]) == s for q, s in enumerate([3, 10, 250]))
    # Out-of-range and repeated ids are ignored; a 1-D tensor applies to every query.
    _, idx2 = search(query, emb, k=6, chunk_size=chunk_size, exclude=torch.tensor([3, 3, 10, 250, 299, 0, 10**6]))
    assert torch.equal(idx2, brute(query, emb, 6, exclude=[glob] * 3)[1])


def test_k_larger_than_n_and_bad_k() -> None:
    emb = unit(4, DIM)
    scores, idx = search(emb[:2], emb, k=10, chunk_size=3)
    assert idx.shape == (2, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]
    for bad in [0, -1, 2.5]:
        with pytest.raises(ValueError, match="k must"):
            search(emb[0], emb, k=bad)  # type: ignore[arg-type]


def test_exclusions_leaving_fewer_than_k() -> None:
    emb = unit(5, DIM)
    # Both queries lose one row: 4 results each.
    scores, idx = search(emb[:2], emb, k=10, exclude=[[0], [1]])
    assert idx.shape == (2, 4) and (idx >= 0).all()
    # Uneven exclusions: the second query can only fill 2 of 4 slots.
    scores, idx = search(emb[:2], emb, k=10, exclude=[[0], [0, 1, 2]])
    assert idx.shape == (2, 4)
    assert idx[1, 2:].tolist() == [-1, -1] and torch.isneginf(scores[1, 2:]).all()
    scores, idx = search(emb[0], emb, k=3, exclude=list(range(5)))
    assert idx.shape == (0,)


def test_float16_embeddings() -> None:
    emb16 = unit(2000, DIM).half()
    query = unit(3, DIM, seed=4)
    scores, idx = search(query, emb16, k=20, chunk_size=333)
    es, ei = brute(query, emb16.float(), 20)
    assert torch.equal(idx, ei)
    torch.testing.assert_close(scores, es, atol=1e-5, rtol=0)
    assert scores.dtype == torch.float32


def test_input_validation() -> None:
    emb = unit(10, DIM)
    with pytest.raises(ValueError, match="query must have shape"):
        search(torch.randn(DIM + 1), emb)
    with pytest.raises(ValueError, match="zero"):
        search(torch.zeros(DIM), emb)
    with pytest.raises(ValueError, match="backend"):
        search(emb[0], emb, backend="annoy")
    with pytest.raises(ValueError, match="exclude has 1 lists for 2"):
        search(emb[:2], emb, exclude=[[1, 2]])


def test_faiss_matches_exact() -> None:
    pytest.importorskip("faiss")
    emb, query = unit(3000, DIM), unit(4, DIM, seed=2)
    for exclude in [None, [5, 17, 2999], [[1], [2, 3], [], [4]]]:
        s_exact, i_exact = search(query, emb, k=15, exclude=exclude)
        s_faiss, i_faiss = search(query, emb, k=15, exclude=exclude, backend="faiss", chunk_size=1000)
        assert torch.equal(i_exact, i_faiss)
        torch.testing.assert_close(s_exact, s_faiss, atol=1e-5, rtol=0)
    s, i = search(emb[:2], emb[:5], k=10, exclude=[[0], [0, 1, 2]], backend="faiss")
    assert i.shape == (2, 4) and i[1, 2:].tolist() == [-1, -1] and torch.isneginf(s[1, 2:]).all()
    s, i = search(emb[0].half(), emb.half(), k=3, backend="faiss")
    assert int(i[0]) == 0


def test_faiss_missing_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    emb = unit(10, DIM)
    with pytest.raises(ImportError, match=r'pip install "relsim\[faiss\]"'):
        search(emb[0], emb, backend="faiss")


def test_dedup_by_hash() -> None:
    hashes = ["h0", "h1", "h0", "h2", "h1"]
    idx, scores = dedup_by_hash(torch.tensor([2, 0, 4, 3, -1]), torch.tensor([0.9, 0.9, 0.5, 0.4, 0.0]), hashes)
    assert idx == [2, 4, 3]
    assert scores == pytest.approx([0.9, 0.5, 0.4])
    with pytest.raises(ValueError):
        dedup_by_hash([1, 2], [0.5], hashes)


# ------------------------------------------------------------------------------------------ store search


@pytest.fixture
def image_store(tmp_path: Path) -> tuple[EmbeddingStore, list[Path], torch.Tensor]:
    """Six files; b.jpg and b-copy.jpg are byte-identical (same hash, same embedding)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    contents = {"a": b"A", "b": b"B", "c": b"C", "b-copy": b"B", "d": b"D", "e": b"E"}
    files = []
    for name, data in contents.items():
        (folder / f"{name}.jpg").write_bytes(data * 10)
        files.append(folder / f"{name}.jpg")
    emb = unit(6, DIM)
    emb[3] = emb[1]
    store = EmbeddingStore.create(tmp_path / "store", FP, dim=DIM, dtype="float32")
    store.add([FileRecord.from_path(p) for p in files[:3]], emb[:3], rank=0)
    store.add([FileRecord.from_path(p) for p in files[3:]], emb[3:], rank=1)
    return EmbeddingStore.open(store.path), files, emb


def test_search_store_results(image_store) -> None:
    store, files, emb = image_store
    hits = search_store(store, emb[0], k=3, dedup=False)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(files[0].resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["sha256"] == store.record(0).sha256
    expected = brute(emb[0], emb, 3)[1][0].tolist()
    assert [h["path"] for h in hits] == [str(files[i].resolve()) for i in expected]


def test_search_store_dedup_and_exclude_self(image_store) -> None:
    store, files, emb = image_store
    b, copy = str(files[1].resolve()), str(files[3].resolve())
    hits = search_store(store, emb[1], k=6)
    paths = [h["path"] for h in hits]
    assert len(hits) == 5 and paths[0] == b and copy not in paths
    assert hits[0]["duplicates"] == [copy] and hits[1]["duplicates"] == []
    undeduped = [h["path"] for h in search_store(store, emb[1], k=6, dedup=False)]
    assert set(undeduped[:2]) == {b, copy}

    # Excluding b also excludes its byte-identical copy, and k stays filled.
    hits = search_store(store, emb[1], k=4, exclude_self_path=files[1])
    assert len(hits) == 4 and not {b, copy} & {h["path"] for h in hits}
    # A query path that is not in the store is matched by content.
    outside = files[0].parent.parent / "elsewhere.jpg"
    outside.write_bytes(files[1].read_bytes())
    hits = search_store(store, emb[1], k=4, exclude_self_path=outside, dedup=False)
    assert not {b, copy} & {h["path"] for h in hits}


def test_search_store_many_queries(image_store) -> None:
    store, files, emb = image_store
    results = search_store(store, emb[[0, 2]], k=2, exclude_self_path=[files[0], files[2]])
    assert len(results) == 2 and all(len(r) == 2 for r in results)
    assert results[0][0]["path"] != str(files[0].resolve())
    assert results[1][0]["path"] != str(files[2].resolve())
    with pytest.raises(ValueError, match="2 queries"):
        search_store(store, emb[[0, 2]], k=2, exclude_self_path=[files[0]])


def test_search_store_checks_the_model(image_store) -> None:
    store, _, emb = image_store
    search_store(store, emb[0], k=1, fingerprint=FP)
    with pytest.raises(StoreMismatchError, match="mode native"):
        search_store(store, emb[0], k=1, fingerprint={**FP, "mode": "native"})


def test_search_store_faiss(image_store) -> None:
    pytest.importorskip("faiss")
    store, files, emb = image_store
    exact = search_store(store, emb[[1, 4]], k=3, exclude_self_path=[files[1], None])
    fast = search_store(store, emb[[1, 4]], k=3, exclude_self_path=[files[1], None], backend="faiss")
    assert [[h["path"] for h in r] for r in exact] == [[h["path"] for h in r] for r in fast]


def test_search_empty_store(tmp_path: Path) -> None:
    store = EmbeddingStore.create(tmp_path / "empty", FP, dim=DIM)
    assert search_store(store, unit(DIM), k=5) == []
    assert search_store(store, unit(2, DIM), k=5) == [[], []]
