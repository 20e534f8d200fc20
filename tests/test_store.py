"""relsim.store: format round trips, atomicity, incremental updates, ranks, superseding, mismatches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from relsim import store as store_mod
from relsim.store import (
    EmbeddingStore,
    FileRecord,
    StoreError,
    StoreMismatchError,
    file_sha256,
    parse_shard,
    shard_from_env,
    shard_of,
)

FP = {
    "model": "thaoshibe/relsim-qwenvl25-lora",
    "revision": "a" * 40,
    "base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "base_revision": "b" * 40,
    "mode": "train",
    "relsim_version": "0.1.0",
}
DIM = 16


def unit(n: int, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def make_files(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.jpg"
        p.write_bytes(f"image-{i}".encode() * (i + 1))
        out.append(p)
    return out


def recs(paths: list[Path]) -> list[FileRecord]:
    return [FileRecord.from_path(p) for p in paths]


def new_store(tmp_path: Path, dtype: str = "float16", name: str = "store") -> EmbeddingStore:
    return EmbeddingStore.create(tmp_path / name, FP, dim=DIM, dtype=dtype)


def shard_files(store: EmbeddingStore) -> list[str]:
    return sorted(p.name for p in store.path.glob("shard-*.safetensors"))


# ----------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    files = make_files(tmp_path / "imgs", 7)
    emb = unit(7)
    store = new_store(tmp_path, dtype)
    assert len(store) == 0 and store.embeddings().shape == (0, DIM)
    first = store.add(recs(files[:4]), emb[:4])
    store.add(recs(files[4:]), emb[4:], rank=0)
    assert first is not None and first.name == "shard-000-000000.safetensors"
    assert shard_files(store) == ["shard-000-000000.safetensors", "shard-000-000001.safetensors"]

    reopened = EmbeddingStore.open(store.path)
    assert len(reopened) == 7
    got = reopened.embeddings()
    assert got.dtype == getattr(torch, dtype) and got.shape == (7, DIM)
    tol = 1e-3 if dtype == "float16" else 0.0
    assert (got.float() - emb).abs().max().item() <= tol
    assert reopened.embeddings(torch.float32).dtype == torch.float32
    assert reopened.records() == recs(files)
    assert reopened.paths() == [str(p.resolve()) for p in files]
    assert reopened.hashes() == [file_sha256(p) for p in files]
    assert reopened.index_of(files[5]) == 5 and reopened.index_of(tmp_path / "nope") is None
    assert reopened.fingerprint == FP and reopened.dim == DIM and reopened.dtype == dtype

    info = reopened.info()
    assert info["num_embeddings"] == 7 and info["num_rows"] == 7 and info["num_shards"] == 2
    assert info["ranks"] == [0] and info["kind"] == "directory" and info["fingerprint"] == FP
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dtype"] == dtype and meta["created_by"].startswith("relsim ")


def test_records_as_dicts_and_empty_add(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    store = new_store(tmp_path)
    assert store.add([], torch.empty(0, DIM)) is None
    store.add([r.to_dict() for r in recs(files)], unit(2))
    assert store.records() == recs(files)


@pytest.mark.parametrize(
    ("records", "emb", "message"),
    [
        (1, unit(1, DIM + 1), "shape"),
        (2, unit(1), "2 records but 1"),
        (1, unit(1) * 2, "L2-normalised"),
        (1, torch.full((1, DIM), float("nan")), "L2-normalised"),
        (1, torch.ones(1, DIM, dtype=torch.int64), "floating"),
    ],
)
def test_add_validates(tmp_path: Path, records: int, emb: torch.Tensor, message: str) -> None:
    files = make_files(tmp_path / "imgs", records)
    store = new_store(tmp_path)
    with pytest.raises(ValueError, match=message):
        store.add(recs(files), emb)
    assert shard_files(store) == []


def test_add_validates_records(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    good = {"path": "/x.jpg", "size": 1, "mtime_ns": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="sha256"):
        store.add([{**good, "sha256": "xyz"}], unit(1))
    with pytest.raises(ValueError, match=r"records\[1\] lacks size"):
        store.add([good, {"path": "/y.jpg", "mtime_ns": 1, "sha256": "0" * 64}], unit(2))
    with pytest.raises(ValueError, match="rank"):
        store.add([good], unit(1), rank=-1)


# ---------------------------------------------------------------------------------- opening, creating


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a relsim store"):
        EmbeddingStore.open(tmp_path / "plain")
    (tmp_path / "file.bin").write_bytes(b"not safetensors")
    with pytest.raises(StoreError, match="not a relsim store"):
        EmbeddingStore.open(tmp_path / "file.bin")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "meta.json").write_text(
        json.dumps({"format": "relsim-store", "format_version": 99, "dim": 4, "dtype": "float16"})
    )
    with pytest.raises(StoreError, match="format 99"):
        EmbeddingStore.open(tmp_path / "future")


def test_create_errors_and_reuse(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not empty"):
        EmbeddingStore.create(tmp_path / "busy", FP, dim=DIM)
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingStore.create(tmp_path / "s", FP, dtype="bfloat16")
    store = new_store(tmp_path)
    with pytest.raises(FileExistsError):
        new_store(tmp_path)
    again = EmbeddingStore.create(store.path, FP, dim=DIM, exist_ok=True)
    assert again.path == store.path
    with pytest.raises(StoreMismatchError):
        EmbeddingStore.create(store.path, {**FP, "mode": "native"}, dim=DIM, exist_ok=True)
    with pytest.raises(StoreError, match="dim"):
        EmbeddingStore.create(store.path, FP, dim=DIM + 1, exist_ok=True)


# ------------------------------------------------------------------------------------------ atomicity


def test_leftover_tmp_is_ignored_and_cleaned(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 3)
    store = new_store(tmp_path)
    store.add(recs(files[:2]), unit(2))
    # What a writer killed mid-shard leaves: a partial tmp file from a process that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = store_mod._tmp_path(store.path).name.split(".")[2]
    leftover = store.path / f".tmp.{host}.{dead.pid}.abcdef.part"
    leftover.write_bytes(b"\x00" * 100)
    old_other_host = store.path / ".tmp.otherhost.1.abcdef.part"
    old_other_host.write_bytes(b"\x00")
    fresh_other_host = store.path / ".tmp.otherhost.2.abcdef.part"
    fresh_other_host.write_bytes(b"\x00")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_other_host, (two_days_ago, two_days_ago))

    reopened = EmbeddingStore.open(store.path)
    assert len(reopened) == 2 and reopened.info()["skipped_shards"] == {}
    reopened.add(recs(files[2:]), unit(1, seed=1))  # the first write cleans stale tmp files
    assert not leftover.exists() and not old_other_host.exists()
    assert fresh_other_host.exists()  # maybe a live writer on another node
    assert len(EmbeddingStore.open(store.path)) == 3


def test_interrupted_write_leaves_store_intact(tmp_path: Path, monkeypatch) -> None:
    files = make_files(tmp_path / "imgs", 3)
    store = new_store(tmp_path)
    store.add(recs(files[:2]), unit(2))

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        store.add(recs(files[2:]), unit(1))
    monkeypatch.undo()
    assert shard_files(store) == ["shard-000-000000.safetensors"]
    assert not list(store.path.glob(".tmp.*"))
    assert len(EmbeddingStore.open(store.path)) == 2


def test_corrupt_shard_is_skipped_with_warning(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    store = new_store(tmp_path)
    store.add(recs(files), unit(2))
    (store.path / "shard-007-000009.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.warns(UserWarning, match="shard-007-000009"):
        reopened = EmbeddingStore.open(store.path)
    assert len(reopened) == 2
    assert "shard-007-000009.safetensors" in reopened.info()["skipped_shards"]


def test_kill_9_during_writes_never_breaks_the_store(tmp_path: Path) -> None:
    store = new_store(tmp_path, "float32")
    writer = textwrap.dedent(
        f"""
        import sys, torch
        from relsim.store import EmbeddingStore
        store = EmbeddingStore.open({str(store.path)!r})
        rows = 2000
        emb = torch.nn.functional.normalize(torch.randn(rows, {DIM}), dim=1)
        for shard in range(100000):
            records = [dict(path=f"/data/{{shard}}/{{i}}.jpg", size=i, mtime_ns=i, sha256="%064x" % i)
                       for i in range(rows)]
            store.add(records, emb)
            if shard == 2:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reopened = EmbeddingStore.open(store.path)
    shards = shard_files(reopened)
    assert len(shards) >= 3 and reopened.info()["skipped_shards"] == {}
    assert len(reopened) == 2000 * len(shards)
    assert reopened.embeddings().shape == (len(reopened), DIM)


# ------------------------------------------------------------------------------------ incremental runs


def test_needs_embedding(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 5)
    store = new_store(tmp_path)
    store.add(recs(files[:4]), unit(4))
    unchanged, touched, edited, resized, _ = files
    new = files[4]

    later = time.time() + 100
    os.utime(touched, (later, later))  # new mtime, same bytes
    edited.write_bytes(bytes(reversed(edited.read_bytes())))  # same size, new bytes
    os.utime(edited, (later, later))
    resized.write_bytes(resized.read_bytes() + b"more")
    missing = tmp_path / "imgs" / "gone.jpg"
    relative = os.path.relpath(unchanged)

    asked = [unchanged, touched, edited, resized, new, missing, str(new), relative]
    assert store.needs_embedding(asked) == [edited, resized, new, missing]
    assert store.needs_embedding([]) == []


def test_superseding(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 3)
    store = new_store(tmp_path, "float32")
    emb = unit(6)
    store.add(recs(files), emb[:3])
    files[1].write_bytes(b"replaced content")
    store.add(recs(files[1:2]), emb[3:4])
    # Inside one add the last row for a path wins too.
    store.add(recs([files[2], files[2]]), emb[4:6])

    reopened = EmbeddingStore.open(store.path)
    assert len(reopened) == 3 and reopened.info()["num_rows"] == 6
    assert reopened.paths() == [str(files[0].resolve()), str(files[1].resolve()), str(files[2].resolve())]
    assert torch.equal(reopened.embeddings(), torch.stack([emb[0], emb[3], emb[5]]))
    assert reopened.records()[1].sha256 == file_sha256(files[1])
    assert reopened.needs_embedding(files) == []


def test_two_ranks_read_as_one(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 10)
    EmbeddingStore.create(tmp_path / "store", FP, dim=DIM)
    emb = unit(10)
    for rank in range(2):  # each rank is its own process with its own store object
        mine = shard_of(files, rank, 2)
        worker = EmbeddingStore.create(tmp_path / "store", FP, dim=DIM, exist_ok=True)
        for half in (mine[:3], mine[3:]):
            worker.add(recs(half), emb[[files.index(p) for p in half]], rank=rank)

    merged = EmbeddingStore.open(tmp_path / "store")
    assert len(merged) == 10 and merged.info()["ranks"] == [0, 1]
    assert {p.name[:9] for p in merged.path.glob("shard-*")} == {"shard-000", "shard-001"}
    order = [merged.index_of(p) for p in files]
    assert sorted(order) == list(range(10))
    assert (merged.embeddings().float()[order] - emb).abs().max().item() < 1e-3
    assert merged.needs_embedding(files) == []


def test_refresh_sees_other_writers(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    reader = new_store(tmp_path)
    writer = EmbeddingStore.open(reader.path)
    writer.add(recs(files[:1]), unit(1), rank=3)
    assert len(reader) == 0
    reader.refresh()
    assert len(reader) == 1


def test_same_rank_twice_never_overwrites(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    a = new_store(tmp_path)
    b = EmbeddingStore.open(a.path)  # e.g. two runs started by mistake with the same rank
    a.add(recs(files[:1]), unit(1))
    b.add(recs(files[1:]), unit(1, seed=1))
    assert shard_files(a) == ["shard-000-000000.safetensors", "shard-000-000001.safetensors"]
    assert len(EmbeddingStore.open(a.path)) == 2


# ----------------------------------------------------------------------------------------- mismatches


def test_check_compatible_names_both_sides(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.check_compatible(FP)
    store.check_compatible({**FP, "relsim_version": "9.9"})  # package version alone is no mismatch
    other = {**FP, "model": "me/finetuned", "revision": None, "mode": "native"}
    with pytest.raises(StoreMismatchError) as err:
        store.check_compatible(other)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    for part in ("thaoshibe/relsim-qwenvl25-lora", "a" * 40, "me/finetuned@None", "mode train", "mode native"):
        assert part in message
    with pytest.raises(StoreMismatchError, match="base_revision|base Qwen"):
        store.check_compatible({**FP, "base_revision": "c" * 40})


def test_foreign_shard_is_a_mismatch(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 1)
    other = EmbeddingStore.create(tmp_path / "other", {**FP, "mode": "native"}, dim=DIM)
    shard = other.add(recs(files), unit(1))
    store = new_store(tmp_path)
    os.link(shard, store.path / "shard-005-000000.safetensors")
    with pytest.raises(StoreMismatchError, match="shard-005-000000"):
        EmbeddingStore.open(store.path)


# --------------------------------------------------------------------------- failures, compact, export


def test_failure_log(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store.failures() == []
    store.log_failure(tmp_path / "bad.jpg", "cannot identify image file\nsecond line")
    store.log_failure("/x/other.png", "truncated", rank=2)
    entries = store.failures()
    assert [e["path"] for e in entries] == [str(tmp_path / "bad.jpg"), "/x/other.png"]
    assert entries[0]["reason"] == "cannot identify image file\nsecond line" and entries[1]["rank"] == 2
    assert len((store.path / "failures.log").read_text().splitlines()) == 2
    assert store.info()["num_failures"] == 2


def test_compact(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 4)
    store = new_store(tmp_path)
    store.add(recs(files[:2]), unit(2), rank=0)
    store.add(recs(files[2:]), unit(2, seed=1), rank=1)
    store.add(recs(files[:1]), unit(1, seed=2), rank=0)
    before_records, before_emb = store.records(), store.embeddings()
    store.compact()
    assert len(shard_files(store)) == 1
    after = EmbeddingStore.open(store.path)
    assert after.records() == before_records and torch.equal(after.embeddings(), before_emb)
    assert after.info()["num_rows"] == 4


def test_export_single_file(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 3)
    store = new_store(tmp_path)
    store.add(recs(files), unit(3))
    single = EmbeddingStore.open(store.export(tmp_path / "emb.safetensors"))
    assert single.info()["kind"] == "file" and single.fingerprint == FP
    assert single.records() == store.records() and torch.equal(single.embeddings(), store.embeddings())
    assert single.needs_embedding(files) == []
    with pytest.raises(StoreError, match="read-only"):
        single.add(recs(files[:1]), unit(1))
    with pytest.raises(StoreError, match="read-only"):
        single.log_failure("x", "y")


# --------------------------------------------------------------------------------------------- sharding


def test_shard_of_is_a_deterministic_partition() -> None:
    items = [f"/d/{i}.jpg" for i in range(23)]
    parts = [shard_of(items, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(items)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert shard_of(list(reversed(items)), 2, 4) == parts[2]
    assert shard_of(items, 0, 1) == sorted(items)
    for index, count in [(4, 4), (-1, 4), (0, 0)]:
        with pytest.raises(ValueError):
            shard_of(items, index, count)


def test_parse_shard_and_env() -> None:
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 8 ") == (3, 8)
    for bad in ["1/1", "4", "a/b", "-1/2", "1/0"]:
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "x"})


def test_needs_embedding_resolves_symlinks_like_realpath(tmp_path: Path) -> None:
    files = make_files(tmp_path / "real" / "sub", 3)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "file-link.jpg").symlink_to(files[2])
    store = new_store(tmp_path)
    store.add(recs(files), unit(3))
    via_links = [
        tmp_path / "linked" / "sub" / files[0].name,
        tmp_path / "linked" / "sub" / ".." / "sub" / files[1].name,
        tmp_path / "file-link.jpg",
    ]
    resolve = store_mod._path_resolver()
    assert [resolve(p) for p in via_links] == [os.path.realpath(p) for p in via_links]
    assert store.needs_embedding(via_links) == []
    assert store.index_of(via_links[2]) == 2


def test_ranks_creating_the_same_store_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = make_files(tmp_path / "imgs", 8)

    def rank_main(rank: int) -> int:
        store = EmbeddingStore.create(tmp_path / "store", FP, dim=DIM, exist_ok=True)
        store.add(recs(files[rank : rank + 1]), unit(1, seed=rank), rank=rank)
        return rank

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(rank_main, range(8))) == list(range(8))
    merged = EmbeddingStore.open(tmp_path / "store")
    assert len(merged) == 8 and merged.info()["ranks"] == list(range(8))
    assert not list(merged.path.glob(".tmp.*"))
