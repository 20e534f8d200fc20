"""The paper's baseline image encoders: CLIP and DINOv2 through transformers, DreamSim through its package.

Each is what upstream's ``retrieval/get_embedding_baseline.py`` computes:

- CLIP (default ``openai/clip-vit-large-patch14``): the image features, i.e. the vision tower's pooled output
  through the visual projection (``CLIPModel.get_image_features``), L2-normalised.
- DINOv2 (default ``facebook/dinov2-large``): the ``[CLS]`` token of the last hidden state (after the final
  layer norm), L2-normalised.
- DreamSim (``pip install dreamsim``; its ``ensemble`` model by default): ``model.embed`` of its own
  preprocessing, L2-normalised. Its weights come from the DreamSim project, not the Hugging Face Hub.

Models load with ``trust_remote_code=False`` and from safetensors only; the image processor is transformers'
own (PIL backend when torchvision is missing). Images arrive decoded by relsim (EXIF orientation applied,
transparency on white), the same pixels for every method.

Example:
    >>> clip = HFImageEncoder.load("clip", device="cuda")     # doctest: +SKIP
    >>> clip.encode([Image.open("a.jpg").convert("RGB")]).shape  # doctest: +SKIP
    torch.Size([1, 768])
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ArgumentError
from ..hub import download_advice, resolve
from ..registry import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL

__all__ = ["DEFAULT_CLIP_MODEL", "DEFAULT_DINO_MODEL", "HF_FILES", "HFImageEncoder", "DreamSimEncoder"]
#: Files read from a baseline's Hub repo: configs and safetensors weights (never pickles, TF or Flax files).
HF_FILES = ["*.json", "*.safetensors", "*.txt"]
_DEFAULTS = {"clip": DEFAULT_CLIP_MODEL, "dino": DEFAULT_DINO_MODEL}
_FEATURES = {"clip": "image_embeds (CLIPModel.get_image_features)", "dino": "last_hidden_state[:, 0] (CLS)"}


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFImageEncoder:
    """CLIP or DINOv2 image features through transformers. Resolve first (cheap), load weights on first use.

    Example:
        >>> dino = HFImageEncoder("dino", "facebook/dinov2-large")   # doctest: +SKIP
        >>> dino.fingerprint["revision"]                             # doctest: +SKIP
        '<commit>'
    """

    def __init__(
        self,
        kind: str,
        model: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if kind not in _DEFAULTS:
            raise ArgumentError(f"kind must be one of {sorted(_DEFAULTS)}, got {kind!r}")
        self.kind = kind
        name = model or _DEFAULTS[kind]
        advice = download_advice(kind, name, revision)
        self.repo = resolve(name, revision=revision, allow_patterns=HF_FILES, offline_advice=advice)
        self.device = _device(device)
        self._model: Any = None
        self._processor: Any = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": self.kind,
            "model": self.repo.name,
            "revision": self.repo.revision,
            "features": _FEATURES[self.kind],
            "dtype": "float32",
        }

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel, CLIPModel

        from ..backbone import quiet_transformers

        path = str(self.repo.path)
        with quiet_transformers():  # no "Loading weights" bar, no backend notice from the image processor
            self._processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
            if self.kind == "clip":
                # The Hub repo is a whole CLIPModel; keep the vision tower and its projection, drop the text tower.
                clip = CLIPModel.from_pretrained(
                    path, trust_remote_code=False, use_safetensors=True, dtype=torch.float32
                )
                self._model = torch.nn.ModuleDict({"vision": clip.vision_model, "projection": clip.visual_projection})
            else:
                self._model = AutoModel.from_pretrained(
                    path, trust_remote_code=False, use_safetensors=True, dtype=torch.float32
                )
        self._model.to(self.device).eval()

    def encode(self, images: list) -> torch.Tensor:
        """(B, D) features of RGB PIL images (not yet normalised)."""
        if self._model is None:
            self._load()
        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, torch.float32)
        with torch.inference_mode():
            if self.kind == "clip":  # = CLIPModel.get_image_features
                return self._model["projection"](self._model["vision"](pixel_values=pixels).pooler_output)
            return self._model(pixel_values=pixels).last_hidden_state[:, 0]


class DreamSimEncoder:
    """DreamSim embeddings (``pip install dreamsim``). Raises ImportError with the install line otherwise.

    Example:
        >>> enc = DreamSimEncoder(device="cuda")              # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        dreamsim_type: str = "ensemble",
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        try:
            import dreamsim
        except ImportError as err:
            raise ImportError("DreamSim needs its package: pip install dreamsim") from err
        self._package = dreamsim
        self.dreamsim_type = dreamsim_type
        self.device = _device(device)
        default_cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dreamsim")
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache
        self._model: Any = None
        self._preprocess: Any = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package_version = version("dreamsim")
        except PackageNotFoundError:
            package_version = None
        return {"method": "dreamsim", "dreamsim_type": self.dreamsim_type, "dreamsim_version": package_version}

    def encode(self, images: list) -> torch.Tensor:
        if self._model is None:
            self._model, self._preprocess = self._package.dreamsim(
                pretrained=True, device=str(self.device), cache_dir=self.cache_dir, dreamsim_type=self.dreamsim_type
            )
            self._model.eval()
        tensors = [self._preprocess(image) for image in images]  # each (1, 3, 224, 224)
        batch = torch.cat([t.reshape(-1, *t.shape[-3:]) for t in tensors])
        with torch.inference_mode():
            out = self._model.embed(batch.to(self.device))
        return out.reshape(out.shape[0], -1)
