"""Tiny random CLIP and DINOv2 checkpoints for the evaluation tests, built in code with transformers configs.

They are saved like the real Hub repos (``openai/clip-vit-large-patch14``: a full ``CLIPModel`` with the
text tower; ``facebook/dinov2-large``: a ``Dinov2Model``), with the real repos' ``preprocessor_config.json``
values, so relsim's baselines load them exactly as they load the real ones.

Example:
    >>> clip_dir = build_clip(tmp / "clip")
    >>> dino_dir = build_dino(tmp / "dino")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_REPO = "openai/clip-vit-large-patch14"
DINO_REPO = "facebook/dinov2-large"

# The values of the real repos' preprocessor_config.json files.
CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
DINO_PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}


def build_clip(directory: str | Path, seed: int = 0) -> Path:
    """A CLIPModel (ViT-L/14 geometry: 224 px, patch 14; tiny widths) with both towers, as the Hub repo has."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=14,
        ),
        projection_dim=24,
    )  # fmt: skip
    directory = Path(directory)
    CLIPModel(config).eval().save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2))
    return directory


def build_dino(directory: str | Path, seed: int = 1) -> Path:
    """A Dinov2Model (518 px position table, patch 14, as dinov2-large; tiny widths)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=518, patch_size=14
    )
    directory = Path(directory)
    Dinov2Model(config).eval().save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(DINO_PREPROCESSOR, indent=2))
    return directory
