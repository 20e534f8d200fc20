"""relsim.collection on LanceDB: round trips, upserts, the changed-file rule, concurrent writers, kill -9,
mismatches, damaged metadata and rows, repair, prune, umask, captions, filters, indexes, export, migrate."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lancedb")

from relsim.collection import (  # noqa: E402
    Collection,
    CollectionError,
    CollectionMismatchError,
    CollectionWriteError,
)
from relsim.errors import OutputPathError  # noqa: E402
from relsim.files import FileRecord, file_sha256, stale_paths  # noqa: E402
from relsim.upkeep import check, export, migrate, repair  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "store_v0_1"
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


def new(tmp_path: Path, dtype: str = "float16", name: str = "col") -> Collection:
    return Collection.create(tmp_path / name, FP, dim=DIM, dtype=dtype)


def raw_table(col: Collection):
    import lancedb

    return lancedb.connect(col.uri).open_table("embeddings")


# ------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    files = make_files(tmp_path / "imgs", 7)
    emb = unit(7)
    col = new(tmp_path, dtype)
    assert len(col) == 0 and col.vectors().shape == (0, DIM)
    assert col.add(recs(files[:4]), emb[:4], fingerprint=FP) == 4
    col.add(recs(files[4:]), emb[4:])
    reopened = Collection.open(col.uri)
    assert len(reopened) == 7 and reopened.fingerprint == FP and reopened.dim == DIM and reopened.dtype == dtype
    got = reopened.vectors(files)  # in the order asked for
    tol = 1e-3 if dtype == "float16" else 0.0
    assert got.dtype == torch.float32 and (got - emb).abs().max().item() <= tol
    assert (reopened.vectors(files[::-1]) - emb.flip(0)).abs().max().item() <= tol
    assert reopened.records() == sorted(recs(files), key=lambda r: r.path)
    assert reopened.paths() == sorted(str(p.resolve()) for p in files)
    with pytest.raises(KeyError, match="nope"):
        reopened.vectors([tmp_path / "nope.jpg"])
    info = reopened.info()
    assert info["num_embeddings"] == 7 and info["dim"] == DIM and info["fingerprint"] == FP
    assert info["format_version"] == 2 and info["created_by"].startswith("relsim ") and info["bytes"] > 0
    schema = raw_table(col).schema
    assert schema.names == ["path", "size", "mtime_ns", "sha256", "vector", "caption", "embedded_at"]
    assert json.loads(schema.metadata[b"relsim"])["fingerprint"] == FP


@pytest.mark.parametrize(
    ("n", "emb", "message"),
    [
        (1, unit(1, DIM + 1), "shape"),
        (2, unit(1), "2 records but 1"),
        (1, unit(1) * 2, "L2-normalised"),
        (1, torch.full((1, DIM), float("nan")), "finite"),
        (1, torch.ones(1, DIM, dtype=torch.int64), "floating"),
    ],
)
def test_add_validates(tmp_path: Path, n: int, emb: torch.Tensor, message: str) -> None:
    files = make_files(tmp_path / "imgs", n)
    col = new(tmp_path)
    with pytest.raises(ValueError, match=message):
        col.add(recs(files), emb)
    assert len(col) == 0


def test_add_validates_records(tmp_path: Path) -> None:
    col = new(tmp_path)
    good = {"path": "/x.jpg", "size": 1, "mtime_ns": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="sha256"):
        col.add([{**good, "sha256": "xyz"}], unit(1))
    with pytest.raises(ValueError, match=r"records\[1\] lacks size"):
        col.add([good, {"path": "/y.jpg", "mtime_ns": 1, "sha256": "0" * 64}], unit(2))
    assert col.add([good], unit(1)) == 1


def test_open_and_create_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Collection.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CollectionError, match="not a relsim collection"):
        Collection.open(tmp_path / "plain")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(CollectionError, match="not empty"):
        Collection.create(tmp_path / "busy", FP, dim=DIM)
    with pytest.raises(ValueError, match="dtype"):
        Collection.create(tmp_path / "s", FP, dtype="bfloat16")
    col = new(tmp_path)
    with pytest.raises(FileExistsError):
        new(tmp_path)
    assert Collection.create(col.uri, FP, dim=DIM, exist_ok=True).uri == col.uri
    with pytest.raises(CollectionError, match="16-d"):
        Collection.create(col.uri, FP, dim=DIM + 1, exist_ok=True)
    with pytest.raises(CollectionError, match="relsim migrate"):
        Collection.open(FIXTURES / "photos.relsim")


# ------------------------------------------------------------------------------ upserts, changed files


def test_upsert_by_path_keeps_one_row(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 3)
    col = new(tmp_path, "float32")
    emb = unit(6)
    col.add(recs(files), emb[:3])
    col.set_captions([files[1]], ["{Fruit} cut open"])
    files[1].write_bytes(b"replaced content")
    col.add(recs(files[1:2]), emb[3:4])
    col.add(recs([files[2], files[2]]), emb[4:6])  # inside one call the last row for a path wins
    assert len(col) == 3 and len(raw_table(col).to_arrow()) == 3
    assert torch.equal(col.vectors(files), torch.stack([emb[0], emb[3], emb[5]]))
    assert col.records()[1].sha256 == file_sha256(files[1])
    assert col.captions(files) == [None, None, None]  # the content changed: its caption went with it
    assert col.needs_embedding(files) == []


def test_needs_embedding(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 5)
    col = new(tmp_path)
    col.add(recs(files[:4]), unit(4))
    unchanged, touched, edited, resized, new_file = files
    later = time.time() + 100
    os.utime(touched, (later, later))  # new mtime, same bytes: hashed, unchanged
    edited.write_bytes(bytes(reversed(edited.read_bytes())))  # same size, new bytes
    os.utime(edited, (later, later))
    resized.write_bytes(resized.read_bytes() + b"more")
    missing = tmp_path / "imgs" / "gone.jpg"
    relative = os.path.relpath(unchanged)
    asked = [unchanged, touched, edited, resized, new_file, missing, str(new_file), relative]
    assert col.needs_embedding(asked) == [edited, resized, new_file, missing]
    assert col.needs_embedding([]) == []


def test_needs_embedding_resolves_symlinks(tmp_path: Path) -> None:
    files = make_files(tmp_path / "real" / "sub", 2)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    col = new(tmp_path)
    col.add(recs(files), unit(2))
    assert col.needs_embedding([tmp_path / "linked" / "sub" / files[0].name]) == []
    assert col.vectors([tmp_path / "linked" / "sub" / files[1].name]).shape == (1, DIM)


# -------------------------------------------------------------------------------- concurrency, kill -9

_WRITER = """
import sys, torch
from relsim.collection import Collection
from relsim.files import FileRecord
col = Collection.create(sys.argv[1], {fp!r}, dim={dim}, exist_ok=True)
rank, rows, batches = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
emb = torch.nn.functional.normalize(torch.randn(rows, {dim}), dim=1)
for b in range(batches):
    records = [dict(path=f"/data/{{rank}}/{{b}}/{{i}}.jpg", size=i, mtime_ns=i, sha256=f"{{i:064x}}")
               for i in range(rows)]
    col.add(records, emb, fingerprint={fp!r})
    if b == 1:
        print("ready", flush=True)
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    script = _WRITER.format(fp=FP, dim=DIM)
    uri = str(tmp_path / "col")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, uri, str(rank), "50", "12"], stderr=subprocess.PIPE)
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    col = Collection.open(uri)
    assert len(col) == 2 * 50 * 12
    paths = col.paths()
    assert len(set(paths)) == len(paths)
    assert check(uri, exists=lambda _: True) == []


def test_kill_9_during_writes_never_breaks_the_collection(tmp_path: Path) -> None:
    uri = str(tmp_path / "col")
    new(tmp_path)
    script = _WRITER.format(fp=FP, dim=DIM)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, uri, "0", "2000", "100000"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    col = Collection.open(uri)
    assert len(col) >= 4000 and len(col) % 2000 == 0  # whole commits only
    assert col.vectors().shape == (len(col), DIM)
    assert check(uri, exists=lambda _: True) == []


# ----------------------------------------------------------------------------------------- mismatches


def test_mismatching_model_is_refused_or_reembedded(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    col = new(tmp_path)
    col.add(recs(files), unit(2))
    col.check_compatible({**FP, "relsim_version": "9.9"})  # the package version alone is no mismatch
    other = {**FP, "model": "me/finetuned", "revision": None, "mode": "native"}
    with pytest.raises(CollectionMismatchError) as err:
        col.add(recs(files), unit(2), fingerprint=other)
    for part in ("thaoshibe/relsim-qwenvl25-lora", "a" * 40, "me/finetuned@None", "mode train", "mode native"):
        assert part in str(err.value)
    assert "--reembed" in str(err.value)
    with pytest.raises(CollectionMismatchError):
        Collection.create(col.uri, other, dim=DIM, exist_ok=True)
    with pytest.raises(CollectionMismatchError, match="base"):
        col.check_compatible({**FP, "base_revision": "c" * 40})
    assert len(Collection.open(col.uri)) == 2
    # A local checkpoint retrained in place gets a new content-hash revision: same refusal, then --reembed.
    retrained = {**FP, "model": "/ckpt", "revision": "sha256:" + "1" * 16}
    reset = Collection.create(col.uri, retrained, dim=DIM, reembed=True)
    assert len(reset) == 0 and Collection.open(col.uri).fingerprint == retrained
    assert reset.needs_embedding(files) == files


# ------------------------------------------------------------------- damaged metadata and rows (10.3, 10.12)


def _set_metadata(col: Collection, meta: dict | None) -> None:
    """What a foreign tool or a bad edit could leave: the same rows, other schema metadata (a new version)."""
    import lancedb

    table = raw_table(col)
    data = table.to_arrow()
    metadata = {} if meta is None else {b"relsim": json.dumps(meta)}
    lancedb.connect(col.uri).create_table("embeddings", data.replace_schema_metadata(metadata), mode="overwrite")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fingerprint": None}, "fingerprint must be an object"),
        ({"format_version": True}, "format_version must be an integer"),
        ({"format_version": 99}, "format 99 is newer"),
        ({"dim": "16"}, "dim must be a positive integer"),
        ({"dtype": "int8"}, "dtype must be float16 or float32"),
        (None, "no relsim metadata"),
    ],
)
def test_corrupt_metadata_is_rejected_clearly_and_repaired(tmp_path: Path, change, message) -> None:
    files = make_files(tmp_path / "imgs", 2)
    col = new(tmp_path)
    col.add(recs(files), unit(2))
    _set_metadata(col, None if change is None else {**col.meta, **change})
    with pytest.raises(CollectionError, match=message):
        Collection.open(col.uri)
    problems = check(col.uri)
    assert len(problems) == 1 and "relsim repair" in problems[0].fix
    assert any("restored the relsim metadata" in line for line in repair(col.uri))
    healed = Collection.open(col.uri)
    assert healed.fingerprint == FP and len(healed) == 2


def _inject_rows(col: Collection, paths: list[str], vectors: np.ndarray) -> None:
    """Rows relsim itself would refuse to write (bit rot, another tool): written with LanceDB directly."""
    import pyarrow as pa

    schema = Collection.schema_for(col.meta)
    n = len(paths)
    data = pa.table(
        {
            "path": paths,
            "size": [1] * n,
            "mtime_ns": [1] * n,
            "sha256": ["f" * 64] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float16).ravel()), DIM),
            "caption": pa.nulls(n, pa.string()),
            "embedded_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=schema,
    )
    raw_table(col).add(data)


def test_non_finite_and_non_unit_rows_are_never_returned(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 4)
    col = new(tmp_path)
    emb = unit(4)
    col.add(recs(files), emb)
    query = emb[0].numpy()
    _inject_rows(col, ["/bad/inf.jpg", "/bad/long.jpg"], np.stack([np.full(DIM, np.inf), 3 * query]))
    with pytest.warns(UserWarning, match="/bad/long.jpg"):
        hits = col.nearest(emb[0], k=6)[0]
    assert [h.path for h in hits][0] == str(files[0].resolve())
    assert all(h.path.startswith(str(tmp_path)) for h in hits) and len(hits) == 4
    assert all(np.isfinite(h.score) for h in hits)
    with pytest.raises(CollectionError, match="/bad/"):
        col.vectors()
    problems = check(col.uri, exists=lambda _: True)
    assert len(problems) == 1 and sorted(problems[0].paths) == ["/bad/inf.jpg", "/bad/long.jpg"]
    assert any("dropped 2 row(s)" in line for line in repair(col.uri))
    assert check(col.uri, exists=lambda _: True) == [] and len(Collection.open(col.uri)) == 4


def test_duplicate_rows_of_a_path_are_reported_and_repaired(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 2)
    col = new(tmp_path)
    col.add(recs(files), unit(2))
    path = str(files[0].resolve())
    _inject_rows(col, [path], unit(1, seed=7).numpy())  # what two careless writers could leave
    problems = check(col.uri)
    assert [p.paths for p in problems] == [[path]]
    repair(col.uri)
    assert len(Collection.open(col.uri)) == 2 and check(col.uri) == []


def test_unreadable_data_names_the_file_and_repair_rolls_back(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 4)
    col = new(tmp_path)
    col.add(recs(files[:2]), unit(2))
    before = set(Path(col.uri, "embeddings.lance", "data").iterdir())
    col.add(recs(files[2:]), unit(2, seed=1))
    (lost,) = set(Path(col.uri, "embeddings.lance", "data").iterdir()) - before
    lost.unlink()
    with pytest.raises(CollectionError, match=lost.name) as err:
        Collection.open(col.uri).vectors()
    assert "relsim repair" in str(err.value)
    problems = check(col.uri)
    assert len(problems) == 1 and "rolls back" in problems[0].fix
    assert any("rolled back" in line for line in repair(col.uri))
    healed = Collection.open(col.uri)
    assert len(healed) == 2 and healed.needs_embedding(files) == files[2:]


# --------------------------------------------------------------------------------- prune, umask (10.13, 10.15)


def test_prune_drops_rows_of_files_that_are_gone(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 3)
    col = new(tmp_path)
    col.add(recs(files), unit(3))
    files[1].unlink()
    problems = check(col.uri)
    assert len(problems) == 1 and "relsim prune" in problems[0].fix
    assert col.prune() == [str(files[1].resolve())]
    assert len(col) == 2 and check(col.uri) == []


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, torch
        os.umask(0o002)
        from relsim.collection import Collection
        col = Collection.create({str(tmp_path / "col")!r}, {FP!r}, dim={DIM})
        col.add([dict(path="/x.jpg", size=1, mtime_ns=1, sha256="0" * 64)],
                torch.nn.functional.normalize(torch.ones(1, {DIM}), dim=1))
        col.log_failure("/y.jpg", "broken")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "col").rglob("*") if p.is_file()}
    assert modes == {0o664}  # group-writable like everything else this user writes, never 0600


# ---------------------------------------------------------------------------------- captions, filters


def test_captions_api_and_filters(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "2024").mkdir()
    later = make_files(tmp_path / "imgs" / "2024", 2, start=10)
    col = new(tmp_path)
    emb = unit(6)
    col.add(recs(files + later), emb)
    assert col.set_captions([files[0], later[0]], ["{Fruit} cut open to show its layers", "Layers of {Planet}"]) == 2
    assert col.captions([files[0], files[1], later[0]]) == [
        "{Fruit} cut open to show its layers",
        None,
        "Layers of {Planet}",
    ]
    with pytest.raises(KeyError, match="nowhere"):
        col.set_captions([tmp_path / "nowhere.jpg"], ["x"])
    hits = col.nearest(emb[0], k=10, where="path LIKE '%/2024/%'")[0]
    assert sorted(h.path for h in hits) == sorted(str(p.resolve()) for p in later)
    hits = col.nearest(emb[1], k=10, caption_contains="layer")[0]  # stemmed, case-insensitive, full-text index
    assert sorted(h.path for h in hits) == sorted([str(files[0].resolve()), str(later[0].resolve())])
    assert hits[0].caption is not None and hits[0].score >= hits[1].score
    assert col.nearest(emb[1], k=10, caption_contains="planet", where="path LIKE '%/2024/%'")[0][0].path == str(
        later[0].resolve()
    )
    assert col.nearest(emb[1], k=10, caption_contains="zebra")[0] == []
    with pytest.raises(ValueError, match="filter"):
        col.nearest(emb[0], k=3, where="path LIKE")


def test_exact_search_and_dedup(tmp_path: Path) -> None:
    files = make_files(tmp_path / "imgs", 5)
    copy = tmp_path / "imgs" / "zz_copy.jpg"
    copy.write_bytes(files[0].read_bytes())
    col = new(tmp_path, "float32")
    emb = unit(5)
    col.add(recs([*files, copy]), torch.cat([emb, emb[:1]]))
    scores = (emb @ emb[2]).tolist()
    hits = col.nearest(emb[2], k=5)[0]
    order = sorted(range(5), key=lambda i: -scores[i])
    assert [h.path for h in hits] == [str(files[i].resolve()) for i in order]
    np.testing.assert_allclose([h.score for h in hits], sorted(scores, reverse=True), atol=1e-5)
    top = col.nearest(emb[0], k=3)[0][0]
    assert sorted([top.path, *top.duplicates]) == sorted([str(files[0].resolve()), str(copy.resolve())])
    assert len(col.nearest(emb[0], k=10, dedup=False)[0]) == 6
    excluded = col.nearest(emb[0], k=10, exclude_sha256=[[file_sha256(copy)]])[0]
    assert str(files[0].resolve()) not in [h.path for h in excluded] and len(excluded) == 4


def test_ann_index_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, DIM))
    data = centers[rng.integers(0, 8, 2000)] + 0.3 * rng.normal(size=(2000, DIM))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    col = new(tmp_path, "float32")
    records = [dict(path=f"/d/{i}.jpg", size=i, mtime_ns=i, sha256=f"{i:064x}") for i in range(2000)]
    col.add(records, data)
    with pytest.raises(ValueError, match="IVF"):
        col.create_vector_index("FLAT")
    col.create_vector_index("IVF_HNSW_SQ", num_partitions=4)
    assert col.has_vector_index()
    queries = data[:20]
    recall = []
    for q in queries:
        exact = {h.path for h in col.nearest(q, k=10, exact=True, dedup=False)[0]}
        approx = {h.path for h in col.nearest(q, k=10, dedup=False, nprobes=4)[0]}
        recall.append(len(exact & approx) / 10)
    assert np.mean(recall) >= 0.9


# --------------------------------------------------------------------------------- export, interop


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_and_read_with_pandas(tmp_path: Path, fmt: str) -> None:
    import pyarrow.parquet as pq

    files = make_files(tmp_path / "imgs", 3)
    col = new(tmp_path, "float32")
    emb = unit(3)
    col.add(recs(files), emb)
    col.set_captions(files[:1], ["{Fruit} cut open"])
    written = export(col.uri, tmp_path / "out", format=fmt)
    assert json.loads((tmp_path / "out" / "relsim.json").read_text())["fingerprint"] == FP
    if fmt == "npy":
        vectors = np.load(tmp_path / "out" / "img_emb" / "img_emb_0000.npy")
        meta = pq.read_table(tmp_path / "out" / "metadata" / "metadata_0000.parquet").to_pandas()
    else:
        frame = pq.read_table(written[0]).to_pandas()
        vectors, meta = np.stack(frame["vector"].to_numpy()), frame
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    by_path = dict(zip(meta["path"], vectors, strict=True))
    for f, row in zip(files, emb, strict=True):
        np.testing.assert_allclose(by_path[str(f.resolve())], row.numpy(), atol=1e-6)
    assert set(meta["caption"].dropna()) == {"{Fruit} cut open"}


def test_export_never_mixes_two_collections(tmp_path: Path) -> None:
    """Issue 21, item 1: a non-empty target is refused unless overwrite=True, which removes the old export first."""
    big, small = new(tmp_path, "float32", "big"), new(tmp_path, "float32", "small")
    big.add([dict(path=f"/d/{i}.jpg", size=i, mtime_ns=i, sha256=f"{i:064x}") for i in range(9)], unit(9))
    small.add(
        [dict(path=f"/e/{i}.jpg", size=i, mtime_ns=i, sha256=f"{i + 99:064x}") for i in range(2)], unit(2, seed=1)
    )
    for fmt in ("npy", "parquet"):
        out = tmp_path / f"out-{fmt}"
        export(big, out, format=fmt, rows_per_file=2)
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(OutputPathError, match="not empty.*overwrite"):
            export(small, out, format=fmt, rows_per_file=2)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written, nothing removed
        written = export(small, out, format=fmt, rows_per_file=2, overwrite=True)
        assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(written)
        if fmt == "npy":
            assert sum(len(np.load(f)) for f in (out / "img_emb").glob("*.npy")) == 2
        else:
            import pyarrow.parquet as pq

            assert sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet")) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="notes.txt"):
        export(small, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("where", [".", "embeddings.lance", "embeddings.lance/new", "file"])
def test_export_never_writes_inside_a_collection_or_onto_a_file(tmp_path: Path, where: str) -> None:
    col = new(tmp_path, "float32")
    col.add([dict(path="/d/0.jpg", size=1, mtime_ns=1, sha256="0" * 64)], unit(1))
    target = tmp_path / "col" / where
    if where == "file":
        target = tmp_path / "a-file"
        target.write_text("x")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(OutputPathError, match="inside the collection" if where != "file" else "is a file"):
        export(col, target, overwrite=True)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert len(Collection.open(tmp_path / "col")) == 1


def test_read_the_table_with_pandas(tmp_path: Path) -> None:
    """docs/search.md: the table is plain Lance, read by pandas / Polars / DuckDB through LanceDB."""
    files = make_files(tmp_path / "imgs", 2)
    col = new(tmp_path)
    col.add(recs(files), unit(2))
    import lancedb

    frame = lancedb.connect(col.uri).open_table("embeddings").to_pandas()
    assert sorted(frame["path"]) == sorted(str(f.resolve()) for f in files)
    assert list(frame.columns) == ["path", "size", "mtime_ns", "sha256", "vector", "caption", "embedded_at"]
    assert len(frame["vector"][0]) == DIM


# ------------------------------------------------------------------------------------------ migrate


@pytest.mark.parametrize("source", ["photos.relsim", "photos.safetensors"])
def test_migrate_a_relsim_0_1_store(tmp_path: Path, source: str) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())
    vectors = np.load(FIXTURES / "expected_vectors.npy")
    col = migrate(FIXTURES / source, tmp_path / "new")
    assert len(col) == 5 and col.dtype == "float16" and col.dim == 384
    assert col.fingerprint["model"] == "thaoshibe/relsim-qwenvl25-lora" and col.fingerprint["mode"] == "train"
    assert sorted(r.to_dict()["path"] for r in col.records()) == sorted(expected["paths"])
    assert {r.path: r.to_dict() for r in col.records()} == {r["path"]: r for r in expected["records"]}
    got = col.vectors(expected["paths"]).numpy()
    np.testing.assert_array_equal(got, vectors.astype(np.float32))  # float16 to float16: bit for bit
    if source == "photos.relsim":
        assert [f["path"] for f in col.failures()] == ["/photos/broken.jpg"]
    with pytest.raises(FileExistsError):
        migrate(FIXTURES / source, tmp_path / "new")


def test_stale_paths_never_opens_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    known = {str(fifo): (0, 0, "0" * 64), str(tmp_path / "zero.jpg"): (0, 0, "0" * 64)}
    assert stale_paths(known, [fifo, tmp_path / "zero.jpg"]) == [fifo, tmp_path / "zero.jpg"]
    with pytest.raises(OSError, match="FIFO"):
        FileRecord.from_path(fifo)
    with pytest.raises(OSError, match="character device"):
        FileRecord.from_path(tmp_path / "zero.jpg")
    with pytest.raises(OSError, match="FIFO"):
        file_sha256(fifo)  # opened non-blocking and fstat'ed: no hang


def test_disk_full_is_one_line_naming_the_collection(tmp_path: Path) -> None:
    uri = tmp_path / "col"
    col = new(tmp_path)
    col.add([dict(path="/kept.jpg", size=1, mtime_ns=1, sha256="0" * 64)], unit(1))
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from relsim.collection import Collection, CollectionWriteError
        col = Collection.open({str(uri)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
        records = [dict(path=f"/new/{{i}}.jpg", size=i, mtime_ns=i, sha256="%064x" % i) for i in range(200)]
        try:
            col.add(records, torch.nn.functional.normalize(torch.randn(200, {DIM}), dim=1))
        except CollectionWriteError as err:
            print(str(err))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    assert str(uri) in lines[0] and "cannot write" in lines[0]
    assert Collection.open(uri).paths() == ["/kept.jpg"]
    assert CollectionWriteError.__mro__[1] is CollectionError
