"""Offline, a model missing from the cache is an error that names the exact ``relsim download`` command that
fetches it, without huggingface_hub's "pass local_files_only=False" tail; that command, run online, fetches
exactly that repo (issue 21 item 9). No network: an empty offline HF cache for the errors, a recording
``snapshot_download`` for the downloads."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

import relsim
import relsim.hub as hub
from relsim.cli import main
from relsim.eval.baselines import HFImageEncoder
from relsim.registry import DEFAULT_BASE_MODEL, DEFAULT_CAPTIONER, DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, DOWNLOADS
from relsim.text import TextEncoder

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


@pytest.fixture
def fetched(tmp_path, monkeypatch) -> list[dict]:
    """Online, with ``snapshot_download`` replaced by one that records each call and files a small snapshot
    (an adapter names the default base model); offline it raises what huggingface_hub raises."""
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    calls: list[dict] = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        if kwargs.get("local_files_only") or hub_constants.HF_HUB_OFFLINE:  # as huggingface_hub says it
            raise LocalEntryNotFoundError(
                "Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and "
                "outgoing traffic has been disabled. To enable repo look-ups and downloads online, pass "
                "'local_files_only=False' as input."
            )
        calls.append({"repo": repo_id, "revision": revision, "patterns": allow_patterns})
        folder = tmp_path / "snapshots" / repo_id.replace("/", "--") / COMMIT
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": DEFAULT_BASE_MODEL}))
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


def _command(message: str) -> list[str]:
    (command,) = re.findall(r"fetch it once online with `(relsim download[^`]*)`", message)
    return shlex.split(command)


LOADERS = {
    "embedder": (lambda: relsim.load("nobody/embedder", device="cpu"), "nobody/embedder", None),
    "captioner": (lambda: relsim.load_captioner(device="cpu"), DEFAULT_CAPTIONER, None),
    "text": (lambda: TextEncoder.from_pretrained("nobody/minilm", revision="v2", device="cpu"), "nobody/minilm", "v2"),
    "clip": (lambda: HFImageEncoder("clip", device="cpu"), DEFAULT_CLIP_MODEL, None),
    "dino": (lambda: HFImageEncoder("dino", "nobody/dino", device="cpu"), "nobody/dino", None),
}


@pytest.mark.parametrize("what", list(LOADERS))
def test_offline_error_names_the_command_that_fetches_the_model(what, empty_offline_cache, fetched, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # `fetched` went online; the load is offline
    load, repo, revision = LOADERS[what]
    with pytest.raises(relsim.ModelNotFoundError) as caught:
        load()
    message = str(caught.value)
    assert "\n" not in message and repr(repo) in message
    assert "local_files_only=False" not in message and "Offline mode is on" in message
    argv = _command(message)
    assert argv[:3] == ["relsim", "download", what]

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    assert main(argv[1:]) == 0
    assert {"repo": repo, "revision": revision} in [{k: c[k] for k in ("repo", "revision")} for c in fetched]
    assert fetched[0]["repo"] == repo  # the model asked for comes first (an adapter's base follows)


def test_a_missing_base_names_its_own_command(empty_offline_cache, adapter_dir):
    with pytest.raises(relsim.ModelNotFoundError) as caught:
        relsim.load(adapter_dir, base_model="nobody/base", base_revision="v1", device="cpu")
    expected = "relsim download base --base-model nobody/base --base-revision v1"
    assert _command(str(caught.value)) == shlex.split(expected)
    assert "local_files_only=False" not in str(caught.value)  # huggingface_hub's own offline error, tail dropped
    with pytest.raises(relsim.ModelNotFoundError) as caught:
        relsim.load(adapter_dir, device="cpu")  # the base the adapter names
    assert _command(str(caught.value)) == ["relsim", "download", "base"]


def test_download_all_fetches_every_model_relsim_can_use(fetched, capsys):
    from relsim.caption import CAPTIONER_FILES
    from relsim.eval.baselines import HF_FILES
    from relsim.text import HUB_FILES

    assert main(["download", "all", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["role"] for e in entries] == ["adapter", "base", "captioner", "text", "clip", "dino"]
    patterns = {c["repo"]: c["patterns"] for c in fetched}
    assert patterns == {
        DOWNLOADS["embedder"][2]: hub.ADAPTER_FILES,
        DEFAULT_BASE_MODEL: hub.BASE_FILES,
        DEFAULT_CAPTIONER: CAPTIONER_FILES,
        DOWNLOADS["text"][2]: HUB_FILES,
        DEFAULT_CLIP_MODEL: HF_FILES,
        DEFAULT_DINO_MODEL: HF_FILES,
    }
    fetched.clear()
    assert main(["download", "clip", "--clip-model", "me/clip", "--clip-revision", "v3"]) == 0
    assert [(c["repo"], c["revision"]) for c in fetched] == [("me/clip", "v3")]
    assert "clip     me/clip @ " + COMMIT in capsys.readouterr().out


def test_download_refuses_an_unknown_what(fetched, capsys):
    assert main(["download", "sift"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown WHAT 'sift'" in err and "clip" in err
    assert fetched == []


def test_download_command_lines():
    assert hub.download_command("embedder") == "relsim download embedder"
    assert hub.download_command("embedder", "me/x y", "v1") == "relsim download embedder --model 'me/x y' --revision v1"
    assert hub.download_command("dino", DEFAULT_DINO_MODEL) == "relsim download dino"
    assert set(DOWNLOADS) == {"embedder", "base", "captioner", "text", "clip", "dino"}
    assert Path(hub.__file__).read_text().count("local_files_only=False") <= 1  # only the comment saying why
