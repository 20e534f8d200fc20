"""Publishing: convert an upstream checkpoint to relsim's layout, write its model card, push it to the Hub.

The read side (resolving repo ids and revisions) is relsim.hub.

Example:
    >>> convert("thaoshibe/relsim-qwenvl25-lora", "relsim-converted")      # doctest: +SKIP
    >>> push_to_hub("run/final", "me/relsim-my-run")                       # doctest: +SKIP
    'https://huggingface.co/me/relsim-my-run/commit/...'
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from . import __version__
from .checkpoint import (
    CAPTIONER_KIND,
    RELSIM_CONFIG,
    STUDENT_KIND,
    TRAINER_STATE_DIR,
    read_checkpoint,
    write_projection,
    write_relsim_config,
)
from .errors import ArgumentError, DestinationExistsError, MissingFileError
from .hub import ADAPTER_FILES, LIBRARY, resolve
from .registry import CAPTIONERS, PRETRAINED


def convert(
    source: str | Path,
    destination: str | Path | None = None,
    *,
    revision: str | None = None,
    base_model: str | None = None,
    base_revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the relsim layout of an upstream checkpoint (a local directory or Hub repo id) to ``destination``.

    Adds ``projection.safetensors`` (the head, read from the pickle with ``weights_only=True``, same dtype)
    and ``relsim_config.json`` (base id and revision, query token, dims, version); everything else is copied
    unchanged, so upstream tools still read the result. The checkpoint is validated first (every adapter key
    must land on a Qwen2.5-VL module). Without ``destination`` a local ``source`` is converted in place.

    >>> convert("thaoshibe/relsim-qwenvl25-lora", "relsim-converted")      # doctest: +SKIP
    """
    repo = resolve(source, revision=revision, allow_patterns=ADAPTER_FILES)
    if destination is None:
        if not repo.is_local:
            raise ArgumentError("a Hub checkpoint needs a destination directory")
        out = repo.path
    else:
        out = Path(destination)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise DestinationExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    checkpoint = read_checkpoint(repo.path)
    if out != repo.path:
        out.mkdir(parents=True, exist_ok=True)
        for file in repo.path.iterdir():
            if file.is_file():
                shutil.copy(file, out / file.name)
    write_projection(out, checkpoint.projection_weight, checkpoint.projection_bias)
    previous = checkpoint.config
    write_relsim_config(
        out,
        {
            **previous,
            "base_model": base_model or checkpoint.base_model,
            "base_revision": base_revision if base_model or base_revision else previous.get("base_revision"),
            "query_token_id": checkpoint.query_token_id,
            "hidden_size": int(checkpoint.projection_weight.shape[1]),
            "projection_dim": int(checkpoint.projection_weight.shape[0]),
            "mode": "train",
            "converted_from": {"source": str(source), "revision": repo.revision},
            "relsim_version": __version__,
        },
    )
    return out


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


def usage_section(code: str, *, since: str = "0.2") -> list[str]:
    """``## Usage``: how to install relsim (``since``: the first version that loads this kind of checkpoint) and
    a Python example (tests run it against a tiny checkpoint)."""
    return [
        "## Usage",
        "",
        f"Needs relsim {since} or later (PyPI's relsim 0.1.0 is the paper's research release, without `relsim.load`):",
        "",
        "```bash",
        f'pip install "relsim>={since}"',
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
        *usage_section(EMBEDDER_USAGE.format(repo=name), since="0.3"),  # students load from 0.3 on
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
        raise MissingFileError(f"{directory} has no {RELSIM_CONFIG}: not a relsim checkpoint (see `relsim convert`)")
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


__all__ = [
    "convert",
    "TAGS",
    "CARD_KEYS",
    "card_front_matter",
    "usage_section",
    "EMBEDDER_USAGE",
    "model_card",
    "CAPTIONER_TAGS",
    "CAPTIONER_CARD_KEYS",
    "CAPTIONER_USAGE",
    "captioner_card",
    "student_card",
    "LICENSE_SECTION",
    "license_section",
    "write_model_card",
    "push_to_hub",
]
