"""``relsim push-to-hub``: upload a trained checkpoint with a generated model card.

The card's YAML front matter says ``library_name: relsim``, the base model, tags and licence; the body
has a usage snippet, the training configuration and the held-out numbers from ``relsim_config.json``.
The resume state (``trainer_state/``) is never uploaded.

Example:
    >>> push_to_hub("run/final", "me/relsim-my-run")            # doctest: +SKIP
    'https://huggingface.co/me/relsim-my-run/commit/...'
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from ..checkpoint import RELSIM_CONFIG
from .checkpoints import STATE_DIR

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


def model_card(config: dict[str, Any], *, repo_id: str | None = None, license: str = "apache-2.0") -> str:
    """The README.md of a relsim checkpoint, from its ``relsim_config.json``."""
    base = str(config.get("base_model") or "")
    recipe = config.get("recipe") or {}
    front = ["---", "library_name: relsim"]
    if _REPO_ID.match(base):  # the Hub rejects a base_model that is not a repo id (e.g. a local path)
        front.append(f"base_model: {_yaml_str(base)}")
    front.append(f"license: {_yaml_str(license)}")
    front.append("pipeline_tag: image-feature-extraction")
    front += ["tags:"] + [f"- {t}" for t in TAGS] + ["---", ""]
    name = repo_id or "path/to/this/checkpoint"
    body = [
        f"# {repo_id.split('/')[-1] if repo_id else 'relsim checkpoint'}",
        "",
        "A relsim relational visual similarity model (Nguyen et al., arXiv 2512.07833): "
        f"{base or 'Qwen2.5-VL'} with LoRA on the language model's q_proj/v_proj and a "
        f"{config.get('projection_dim', 384)}-d projection of the `<|query|>` token's last hidden state, trained "
        "so that an image's embedding matches the all-MiniLM-L6-v2 embedding of its anonymous caption.",
        "",
        "## Usage",
        "",
        "```python",
        "import relsim",
        "",
        f'model = relsim.load("{name}")',
        'score = model.score("a.jpg", "b.jpg")        # cosine in [-1, 1], higher = more similar',
        'embeddings = model.embed(["a.jpg", "b.jpg"])  # (2, 384), L2-normalised',
        "```",
        "",
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
    ]
    return "\n".join(front + body)


def write_model_card(directory: str | Path, *, repo_id: str | None = None, license: str = "apache-2.0") -> Path:
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
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    write_model_card(directory, repo_id=repo_id, license=license)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=[f"{STATE_DIR}/*", f"{STATE_DIR}/**", ".*"],
    )
    return str(getattr(info, "commit_url", info))
