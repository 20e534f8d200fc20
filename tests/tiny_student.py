"""Tiny random student backbones (DINOv2, SigLIP vision, CLIP vision) saved with a real-shaped
``preprocessor_config.json``, built in code for the student tests and benchmarks.

Example:
    >>> backbone = build_dinov2(tmp / "dinov2")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_eval import CLIP_PREPROCESSOR, DINO_PREPROCESSOR

#: preprocessor_config.json of facebook/dinov2-* (BitImageProcessor), sizes scaled down for the tiny model.
DINOV2_PREPROCESSOR = {**DINO_PREPROCESSOR, "crop_size": {"height": 56, "width": 56}, "size": {"shortest_edge": 64}}
#: preprocessor_config.json of google/siglip-base-patch16-224 (SiglipImageProcessor), scaled down.
SIGLIP_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 48, "width": 48},
}
#: preprocessor_config.json of the CLIP repos (CLIPImageProcessor), scaled down (an int crop_size, as theirs).
CLIP_STUDENT_PREPROCESSOR = {**CLIP_PREPROCESSOR, "crop_size": 48, "size": 48}


def _save(model, folder: Path, preprocessor: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder


def build_dinov2(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random DINOv2 on 56x56 images (patch 14)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    return _save(Dinov2Model(config), folder, DINOV2_PREPROCESSOR)


def build_siglip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random SigLIP vision tower (attention-pooling head) on 48x48 images (patch 16)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=48, patch_size=16
    )
    return _save(SiglipVisionModel(config), folder, SIGLIP_PREPROCESSOR)


def build_clip(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random CLIP vision tower on 48x48 images (patch 16)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=48, patch_size=16
    )
    return _save(CLIPVisionModel(config), folder, CLIP_STUDENT_PREPROCESSOR)
