"""Everything Hub: resolve a repo id or local directory to files on disk (with the exact revision used),
and publish a checkpoint with a generated model card.

Everything goes through ``huggingface_hub``: its cache, ``HF_HUB_OFFLINE``, tokens and progress bars; every
call identifies itself as ``library_name="relsim"`` with relsim's version.

Example:
    >>> repo = resolve("thaoshibe/relsim-qwenvl25-lora")          # doctest: +SKIP
    >>> repo.path, repo.revision                                     # doctest: +SKIP
    (PosixPath('~/.cache/huggingface/hub/models--thaoshibe--.../snapshots/<sha>'), '<sha>')
    >>> push_to_hub("run/final", "me/relsim-my-run")                 # doctest: +SKIP
    'https://huggingface.co/me/relsim-my-run/commit/...'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from . import __version__
from .checkpoint import CAPTIONER_KIND, RELSIM_CONFIG, STUDENT_KIND, TRAINER_STATE_DIR
from .errors import ModelNotFoundError
from .registry import CAPTIONERS, DOWNLOADS, PRETRAINED

#: How relsim identifies itself to the Hub (as open_clip and timm do).
LIBRARY = {"library_name": "relsim", "library_version": __version__}

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: Files a relsim adapter repo needs (no README images, no training logs).
ADAPTER_FILES = [
    "*.json",
    "*.jinja",
    "*.txt",
    "*.model",
    "adapter_model.safetensors",
    "projection.safetensors",
    "projection_and_config.pt",
]
#: Files a base model repo needs: config, weights, tokenizer.
BASE_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]


@dataclass(frozen=True)
class ResolvedRepo:
    """A model directory on disk and where it came from."""

    name: str
    """A Hub repo id, or the absolute path of a local directory."""
    path: Path
    """The directory holding the files."""
    revision: str | None
    """The commit hash of a Hub snapshot; for a local directory its content hash (``sha256:...``, see
    :func:`content_revision`), so a checkpoint rewritten in place is a new revision."""
    is_local: bool = False
    """A local directory rather than a Hub snapshot."""


#: Files larger than this are identified by size and their first and last MiB rather than hashed whole
#: (a 16 GB base shard would take a minute); every relsim adapter file is far smaller.
_FULL_HASH_LIMIT = 1 << 30
_SAMPLE = 1 << 20


def _file_digest(path: Path, size: int) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            digest.update(f.read(_SAMPLE))
    return digest.digest()


def _hash_cache_file() -> Path:
    root = os.environ.get("RELSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "relsim"
    )
    return Path(root) / "content-revisions.json"


def _read_hash_cache() -> dict:
    try:
        cache = json.loads(_hash_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_hash_cache(key: str, entry: dict) -> None:
    """Best effort (a read-only home only costs a re-hash next time); atomic, last writer wins."""
    file = _hash_cache_file()
    try:
        cache = _read_hash_cache()
        cache[key] = entry
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        os.replace(tmp, file)
    except OSError:
        pass


def content_revision(path: str | Path, patterns: list[str] | None = None) -> str:
    """``sha256:<40 hex>`` over the names and contents of the files of ``path`` that match ``patterns``.

    The revision of a local checkpoint: retraining into the same folder changes it, so embeddings computed
    before and after are never mixed. Cached by (name, size, mtime) of each file, so a reload costs nothing.

    >>> content_revision("run/final", ADAPTER_FILES)                 # doctest: +SKIP
    'sha256:6f1c...'
    """
    path = Path(path).resolve()
    files = sorted(
        f for f in path.iterdir() if f.is_file() and (patterns is None or any(fnmatch(f.name, p) for p in patterns))
    )
    stamp = [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]
    key = f"{path}|{','.join(patterns or ['*'])}"
    cached = _read_hash_cache().get(key)
    if isinstance(cached, dict) and cached.get("stamp") == stamp:
        return str(cached["revision"])
    digest = hashlib.sha256()
    for f, (name, size, _) in zip(files, stamp, strict=True):
        digest.update(f"{name}\0{size}\0".encode())
        digest.update(_file_digest(f, size))
    revision = "sha256:" + digest.hexdigest()[:40]
    _write_hash_cache(key, {"stamp": stamp, "revision": revision})
    return revision


#: What to do about a repo missing from the cache in offline mode when nothing says which model it is
#: (``relsim download`` says something else).
OFFLINE_ADVICE = "fetch it once online with `relsim download` (see `relsim download --help`) or pass a local directory."


def download_command(what: str, name: str | Path | None = None, revision: str | None = None) -> str:
    """The ``relsim download`` command line that fetches ``name`` (at ``revision``) as ``what`` (a key of
    :data:`relsim.registry.DOWNLOADS`); the options are left out where they are the defaults.

    >>> download_command("captioner")
    'relsim download captioner'
    >>> download_command("clip", "me/my-clip", "v2")
    'relsim download clip --clip-model me/my-clip --clip-revision v2'
    """
    name_option, revision_option, default = DOWNLOADS[what]
    words = ["relsim", "download", what]
    if name is not None and str(name) != default:
        words += [name_option, str(name)]
    if revision is not None:
        words += [revision_option, revision]
    return shlex.join(words)


def download_advice(what: str, name: str | Path | None = None, revision: str | None = None) -> str:
    """What to do about ``name`` missing from the cache offline: the exact :func:`download_command` to run online.

    >>> download_advice("text")
    'fetch it once online with `relsim download text` or pass a local directory.'
    """
    return f"fetch it once online with `{download_command(what, name, revision)}` or pass a local directory."


def resolve(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
    offline_advice: str | None = None,
) -> ResolvedRepo:
    """Find ``name_or_path`` locally or download it (once, into the HF cache) and report its commit.

    A path that exists is used as it is; its revision is its content hash (:func:`content_revision` over
    the files ``allow_patterns`` selects), and a ``revision`` given for it must be that hash. Anything else
    is a Hub repo id: ``revision`` is a branch, tag or commit hash; ``local_files_only=None`` follows
    ``HF_HUB_OFFLINE``. A repo that is neither cached nor downloadable is a :class:`ModelNotFoundError`; in
    offline mode its message ends with ``offline_advice`` (default: the ``relsim download`` command that fetches
    it, for an embedder adapter or a base model, known by ``allow_patterns``; else :data:`OFFLINE_ADVICE`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None and not revision.startswith("sha256:"):
            raise ValueError(f"revision={revision!r} was given for the local directory {str(path)!r}")
        found = content_revision(path, allow_patterns)
        if revision is not None and revision != found:
            raise ModelNotFoundError(
                f"{str(path.resolve())!r} has changed: its content is {found}, not {revision} "
                "(the checkpoint was rewritten in place)"
            )
        return ResolvedRepo(str(path.resolve()), path.resolve(), found, is_local=True)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name!r} is neither a model directory nor a Hub repo id ('owner/name')")
    if local_files_only is None and constants.HF_HUB_OFFLINE:
        # huggingface_hub 1.3x lists the repo tree online for a commit-hash revision even when offline,
        # unless told to stay local.
        local_files_only = True
    kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        snapshot = Path(
            snapshot_download(
                name,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=allow_patterns,
                **LIBRARY,
                **kwargs,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, ValueError) as err:
        where = f"{name!r} at revision {revision!r}" if revision else repr(name)
        message = f"could not get {where} from the Hugging Face Hub or its cache."
        if constants.HF_HUB_OFFLINE or local_files_only:
            # huggingface_hub's own text only adds "pass 'local_files_only=False'", which is no advice here
            if offline_advice is None:
                known = {"embedder": ADAPTER_FILES, "base": BASE_FILES}
                what = next((key for key, files in known.items() if allow_patterns is files), None)
                offline_advice = OFFLINE_ADVICE if what is None else download_advice(what, name, revision)
            message += f" Offline mode is on (HF_HUB_OFFLINE / local_files_only): {offline_advice}"
        else:
            message += f" ({err})"
        raise ModelNotFoundError(message) from err
    commit = snapshot.name if _COMMIT.match(snapshot.name) else None
    return ResolvedRepo(name, snapshot, commit)


# ------------------------------------------------------------------------------------------- publishing

TAGS = ["relsim", "relational-similarity", "image-similarity", "image-feature-extraction", "qwen2.5-vl", "lora", "peft"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Recipe keys shown in the card's training table, in this order.
CARD_KEYS = [
    "base_model",
    "base_revision",
    "text_model",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "projection_dim",
    "temperature",
    "batch_size",
    "micro_batch_size",
    "epochs",
    "max_steps",
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "precision",
    "seed",
]


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def card_front_matter(
    *, base_model: str = "", license: str = "apache-2.0", tags: list[str], pipeline_tag: str
) -> list[str]:
    """The YAML block a Hub model card starts with: ``library_name: relsim``, the base model (when it is a Hub
    repo id: the Hub rejects a local path), the license, the pipeline tag and ``tags``. One line per item."""
    front = ["---", "library_name: relsim"]
    if _REPO_ID.match(base_model):
        front += [f"base_model: {_yaml_str(base_model)}", "base_model_relation: adapter"]
    front += [f"license: {_yaml_str(license)}", f"pipeline_tag: {pipeline_tag}", "tags:"]
    front += [f"- {t}" for t in tags] + ["---", ""]
    return front


def usage_section(code: str) -> list[str]:
    """``## Usage``: how to install relsim and a Python example (tests run it against a tiny checkpoint)."""
    return [
        "## Usage",
        "",
        "Needs relsim 0.2 or later (PyPI's relsim 0.1.0 is the paper's research release, without `relsim.load`):",
        "",
        "```bash",
        'pip install "relsim>=0.2"',
        "```",
        "",
        "```python",
        code.strip(),
        "```",
        "",
    ]


#: Who owns what: relsim's code, this checkpoint, its base model and the paper authors' published weights.
LICENSE_SECTION = """
## License

- These weights: `{license}`, as chosen by whoever published this repository (see the front matter).
- relsim, the code that trained and loads them, is MIT-licensed; that covers the code, not any weights.
- The base model `{base}` is under its own license, which applies to weights derived from it.
- The weights the paper's authors published (`thaoshibe/relsim-qwenvl25-lora`,
  `thaoshibe/relsim-anonymous-caption-qwen25vl-lora`) are the authors', under their terms: their repository's
  license changed from MIT to CC BY-NC-SA 4.0 (non-commercial, share-alike) on 2025-12-10. A checkpoint
  converted from or trained on top of them carries those terms: check them before any commercial use.
"""


def license_section(license: str, config: dict[str, Any]) -> list[str]:
    """``## License``: these weights' license, relsim's MIT code, the base model's and the paper authors' terms
    (named first when ``relsim convert`` made this checkpoint from the authors' published weights).

    >>> "MIT" in "\\n".join(license_section("apache-2.0", {"base_model": "Qwen/Qwen2.5-VL-7B-Instruct"}))
    True
    """
    base = str(config.get("base_model") or "Qwen/Qwen2.5-VL-7B-Instruct")
    lines = LICENSE_SECTION.format(license=license, base=base).strip("\n").splitlines()
    source = str((config.get("converted_from") or {}).get("source") or "")
    if source in (*PRETRAINED, *CAPTIONERS):
        lines[2:2] = [f"- **This checkpoint was converted from `{source}`, the authors' weights: their terms apply.**"]
    return lines + [""]


#: The usage example of an embedder card; ``{repo}`` is the checkpoint's repo id.
EMBEDDER_USAGE = """
import relsim

model = relsim.load("{repo}")
score = model.score("a.jpg", "b.jpg")  # cosine in [-1, 1], higher = more similar
embeddings = model.embed(["a.jpg", "b.jpg"])  # (2, 384), L2-normalised
"""


def model_card(config: dict[str, Any], *, repo_id: str | None = None, license: str = "apache-2.0") -> str:
    """The README.md of a relsim checkpoint, from its ``relsim_config.json``.

    >>> model_card({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct"}, repo_id="me/relsim-x").splitlines()[1]
    'library_name: relsim'

    An anonymous captioner's config (``kind: anonymous-captioner``) gets :func:`captioner_card`.
    """
    if config.get("kind") == CAPTIONER_KIND:
        return captioner_card(config, repo_id=repo_id, license=license)
    if config.get("kind") == STUDENT_KIND:
        return student_card(config, repo_id=repo_id, license=license)
    base = str(config.get("base_model") or "")
    recipe = config.get("recipe") or {}
    front = card_front_matter(base_model=base, license=license, tags=TAGS, pipeline_tag="image-feature-extraction")
    name = repo_id or "path/to/this/checkpoint"
    body = [
        f"# {repo_id.split('/')[-1] if repo_id else 'relsim checkpoint'}",
        "",
        "A relsim relational visual similarity model (Nguyen et al., arXiv 2512.07833): "
        f"{base or 'Qwen2.5-VL'} with LoRA on the language model's q_proj/v_proj and a "
        f"{config.get('projection_dim', 384)}-d projection of the `<|query|>` token's last hidden state, trained "
        "so that an image's embedding matches the all-MiniLM-L6-v2 embedding of its anonymous caption.",
        "",
        *usage_section(EMBEDDER_USAGE.format(repo=name)),
        "## Training",
        "",
        "| option | value |",
        "| --- | --- |",
    ]
    rows = {**recipe, "base_model": base, "base_revision": config.get("base_revision")}
    for key in CARD_KEYS:
        if key in rows and rows[key] is not None:
            body.append(f"| {key} | `{rows[key]}` |")
    for key in ("step", "train_images", "relsim_version"):
        if config.get(key) is not None:
            body.append(f"| {key} | `{config[key]}` |")
    metrics = config.get("eval") or {}
    body += ["", "## Evaluation", ""]
    if metrics:
        body += [
            "Image -> caption retrieval among the held-out captions "
            f"({int(metrics.get('images', 0))} held-out images):",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        names = sorted((k for k in metrics if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
        names += sorted(k for k in metrics if not k.startswith("recall@") and k not in ("images", "skipped"))
        body += [f"| {k} | {metrics[k]:.4f} |" for k in names]
    else:
        body.append("No held-out evaluation was recorded.")
    body += [
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(recipe, indent=2, sort_keys=True),
        "```",
        "",
        *license_section(license, config),
    ]
    return "\n".join(front + body)


#: Tags of a captioner's card.
CAPTIONER_TAGS = [
    "relsim",
    "anonymous-captioner",
    "relational-similarity",
    "image-to-text",
    "qwen2.5-vl",
    "lora",
    "peft",
]
#: Recipe keys shown in a captioner card's training table, in this order.
CAPTIONER_CARD_KEYS = [
    "base_model",
    "base_revision",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "batch_size",
    "micro_batch_size",
    "epochs",
    "max_steps",
    "lr",
    "lr_schedule",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "precision",
    "seed",
    "eval_fraction",
]
#: The usage example of a captioner card; ``{repo}`` is the checkpoint's repo id.
CAPTIONER_USAGE = """
import relsim

captioner = relsim.load_captioner("{repo}")
caption = captioner.caption("a.jpg")  # greedy decoding, as in the training's evaluation
print(caption.text, caption.placeholders)
"""


def captioner_card(config: dict[str, Any], *, repo_id: str | None = None, license: str = "apache-2.0") -> str:
    """The README.md of an anonymous-captioner checkpoint (``relsim train-captioner``), from its
    ``relsim_config.json``.

    >>> card = captioner_card({"kind": "anonymous-captioner", "base_model": "Qwen/Qwen2.5-VL-7B-Instruct"})
    >>> "pipeline_tag: image-to-text" in card
    True
    """
    base = str(config.get("base_model") or "")
    recipe = config.get("recipe") or {}
    front = card_front_matter(base_model=base, license=license, tags=CAPTIONER_TAGS, pipeline_tag="image-to-text")
    name = repo_id or "path/to/this/checkpoint"
    body = [
        f"# {repo_id.split('/')[-1] if repo_id else 'relsim anonymous captioner'}",
        "",
        'An anonymous captioner in the sense of relsim (Nguyen et al., "Relational Visual Similarity", arXiv '
        f"2512.07833): {base or 'Qwen2.5-VL'} with LoRA on the language model's q_proj/v_proj, fine-tuned on seed "
        "groups (images that share one caption) to write an image's relational logic with the objects left out "
        '("A {Fruit} cut open to show its layers"). Its captions are the training targets of a relsim embedder.',
        "",
        *usage_section(CAPTIONER_USAGE.format(repo=name)),
        "From the command line, JSON lines in the format `relsim data targets` and `relsim train` read:",
        "",
        "```bash",
        f"relsim caption photos/ -r --model {name} -o captions.jsonl",
        "```",
        "",
    ]
    prompt = config.get("prompt")
    if prompt:
        body += [
            "The prompt it was trained with (relsim's default is upstream's training prompt; pass another one to "
            "`caption(prompt=...)` / `relsim caption --prompt`):",
            "",
            "```text",
            prompt.rstrip("\n"),
            "```",
            "",
        ]
    body += ["## Training", "", "| option | value |", "| --- | --- |"]
    rows = {**recipe, "base_model": base, "base_revision": config.get("base_revision")}
    body += [f"| {key} | `{rows[key]}` |" for key in CAPTIONER_CARD_KEYS if rows.get(key) is not None]
    for key, label in (("step", "step"), ("train_images", "train_images"), ("seed_groups", "seed groups")):
        if config.get(key) is not None:
            body.append(f"| {label} | `{config[key]}` |")
    if config.get("relsim_version") is not None:
        body.append(f"| relsim_version | `{config['relsim_version']}` |")
    metrics = config.get("eval") or {}
    body += ["", "## Evaluation", ""]
    if metrics:
        body += [
            "On held-out seed groups: the teacher-forced loss and token accuracy of the caption, and greedy captions "
            "of a fixed sample of held-out images compared with their reference captions by the cosine of their "
            f"all-MiniLM-L6-v2 embeddings ({int(metrics.get('images', 0))} held-out images):",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        body += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if k not in ("images", "skipped")]
    else:
        body.append("No held-out evaluation was recorded.")
    body += ["", "## Training configuration", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    body += license_section(license, config)
    return "\n".join(front + body)


def student_card(config: dict[str, Any], *, repo_id: str | None = None, license: str = "apache-2.0") -> str:
    """The README.md of a distilled student (``relsim distill``), from its ``relsim_config.json``: the backbone, the
    teacher it was distilled from, the recipe and its agreement with the teacher on held-out images.

    >>> "## Agreement with the teacher" in student_card({"kind": "student", "backbone": "facebook/dinov2-small"})
    True
    """
    backbone = str(config.get("backbone") or "")
    recipe = config.get("recipe") or {}
    teacher = config.get("teacher") or {}
    front = card_front_matter(
        base_model=backbone, license=license, tags=[*TAGS, "distillation"], pipeline_tag="image-feature-extraction"
    )
    name = repo_id or "path/to/this/checkpoint"
    fingerprint = teacher.get("fingerprint") or {}
    body = [
        f"# {repo_id.split('/')[-1] if repo_id else 'relsim student'}",
        "",
        f"A small relsim student: {backbone or 'a vision backbone'} ({config.get('pooling', 'pooled')}), a "
        f"{config.get('projection_dim', 384)}-d projection and L2 normalisation, distilled (`relsim distill`) from "
        f"the relsim embedder {fingerprint.get('model', '?')}@{fingerprint.get('revision', '?')} into the same "
        "all-MiniLM-L6-v2 space, so its scores, searches and text queries work as the teacher's, at the cost of "
        "the backbone.",
        "",
        *usage_section(EMBEDDER_USAGE.format(repo=name)),
        "## Agreement with the teacher",
        "",
    ]
    metrics = config.get("agreement") or {}
    if metrics:
        body += [
            f"On {int(metrics.get('images', 0))} held-out images of the teacher's collection (whole images, chosen by "
            "content hash): Spearman and Kendall correlation of all pair scores with the teacher's, the mean overlap "
            "of each image's nearest neighbours with the teacher's, and how often the teacher's nearest neighbour is "
            "among the student's.",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        body += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if k != "images"]
    else:
        body.append("No held-out agreement was recorded.")
    body += ["", "## Training configuration", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    return "\n".join(front + body)


def write_model_card(directory: str | Path, *, repo_id: str | None = None, license: str = "apache-2.0") -> Path:
    """Write ``directory/README.md``, the :func:`model_card` of the checkpoint's ``relsim_config.json``."""
    directory = Path(directory)
    config = json.loads((directory / RELSIM_CONFIG).read_text())
    out = directory / "README.md"
    out.write_text(model_card(config, repo_id=repo_id, license=license))
    return out


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    license: str = "apache-2.0",
    commit_message: str = "Upload relsim checkpoint",
    api: HfApi | None = None,
) -> str:
    """Create ``repo_id`` if needed, write README.md into ``directory`` and upload the checkpoint."""
    directory = Path(directory)
    if not (directory / RELSIM_CONFIG).is_file():
        raise FileNotFoundError(f"{directory} has no {RELSIM_CONFIG}: not a relsim checkpoint (see `relsim convert`)")
    api = api or HfApi(token=token, **LIBRARY)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    write_model_card(directory, repo_id=repo_id, license=license)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=[f"{TRAINER_STATE_DIR}/*", f"{TRAINER_STATE_DIR}/**", ".*"],
    )
    return str(getattr(info, "commit_url", info))
