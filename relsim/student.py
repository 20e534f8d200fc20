"""Students: a small vision backbone distilled from the 7B relsim embedder, with the embedder's API.

A student is any vision backbone transformers loads by Hub id or directory without remote code (DINOv2,
SigLIP / SigLIP2 fixed-resolution vision towers, CLIP vision towers, ...), pooled to one vector, a
``Linear(hidden, 384)`` projection and L2 normalisation in float32: it lands in the teacher's MiniLM space, so
``embed_text`` queries work with it too. Pooling per family (:data:`POOLING`): the backbone's own pooled output
where it has one (DINOv2: the layer-normed ``[CLS]``; CLIP: the post-layernorm ``[CLS]``; SigLIP: its attention
pooling head), otherwise the mean of the last hidden states.

Images are prepared as the backbone's ``preprocessor_config.json`` says (size, centre crop, rescale, mean/std,
resample), read as data and run in torch (:class:`ImagePreparation`): Pillow's resize (bit-exact for uint8
inputs, differentiable for float tensors that require grad, see :mod:`relsim.resample`).

A student checkpoint is a directory::

    config.json, model.safetensors        the backbone (transformers' own layout)
    preprocessor_config.json              the backbone's image preparation
    projection.safetensors                the head, float32
    relsim_config.json                    kind "student", teacher fingerprint, backbone id + revision, recipe,
                                          agreement with the teacher
    README.md                             the model card

``relsim.load(directory or Hub id)`` returns a :class:`StudentModel` for it.

Example:
    >>> student = relsim.load("run/final")                          # doctest: +SKIP
    >>> student.score("a.jpg", "b.jpg")                             # doctest: +SKIP
    0.58
    >>> fresh = build_student("facebook/dinov2-small")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import preprocess, resample
from .backbone import ModelCache, quiet_transformers
from .batching import decode_ahead
from .checkpoint import RELSIM_CONFIG, STUDENT_KIND, read_json, read_projection, write_projection, write_relsim_config
from .errors import ArgumentError, CheckpointError, NonFiniteError, RemoteCodeError
from .preprocess import ImageInput, ImageInputError
from .similarity import ImageEmbedder, project

__all__ = [
    "STUDENT_KIND",
    "STUDENT_FILES",
    "POOLING",
    "ImagePreparation",
    "StudentModel",
    "build_student",
    "check_backbone",
    "load_student",
    "pool",
    "is_student",
    "write_student",
]

#: Files of a student (or backbone) repo that relsim reads: configs and safetensors weights, never pickles.
STUDENT_FILES = ["*.json", "*.safetensors", "*.txt", "*.md"]
PREPROCESSOR_CONFIG = "preprocessor_config.json"
#: How each family's output becomes one vector (``model_type`` of the backbone's config -> pooling).
POOLING = {
    "dinov2": "pooler_output (layer-normed [CLS])",
    "dinov2_with_registers": "pooler_output (layer-normed [CLS])",
    "clip_vision_model": "pooler_output (post-layernorm [CLS])",
    "siglip_vision_model": "pooler_output (attention-pooling head)",
}
#: Full two-tower configs whose vision tower is the student (the rest of the checkpoint is not read).
_VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
#: Pillow's resample codes relsim implements (``preprocessor_config.json``'s ``resample``).
_RESAMPLE = {1: "lanczos", 3: "bicubic"}
_PIL_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


# ---------------------------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class ImagePreparation:
    """The image preparation of a ``preprocessor_config.json``, in torch.

    >>> prep = ImagePreparation.from_config({"size": {"height": 224, "width": 224}, "resample": 3,
    ...     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255})
    >>> prep(torch.zeros(3, 30, 40, dtype=torch.uint8)).shape
    torch.Size([3, 224, 224])
    """

    size: dict[str, int] | None
    crop: dict[str, int] | None
    kernel: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = PREPROCESSOR_CONFIG) -> ImagePreparation:
        """Read the options transformers' CLIP / BiT / SigLIP image processors use; anything else is refused."""
        size = config.get("size") if config.get("do_resize", True) else None
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if size is not None and not (set(size) == {"shortest_edge"} or set(size) == {"height", "width"}):
            raise CheckpointError(f"{where}: size {size!r} is not supported (shortest_edge, or height and width)")
        crop = config.get("crop_size") if config.get("do_center_crop", False) else None
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        code = config.get("resample", 3)
        if code not in _RESAMPLE:
            raise CheckpointError(f"{where}: resample {code!r} is not supported (1 lanczos, 3 bicubic)")
        normalize = config.get("do_normalize", True)
        mean = tuple(config.get("image_mean", (0.0, 0.0, 0.0))) if normalize else (0.0, 0.0, 0.0)
        std = tuple(config.get("image_std", (1.0, 1.0, 1.0))) if normalize else (1.0, 1.0, 1.0)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise CheckpointError(f"{where}: image_mean and image_std must be three numbers (std > 0)")
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        return cls(size, crop, _RESAMPLE[code], rescale, mean, std)  # type: ignore[arg-type]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, as transformers computes it."""
        if self.size is None:
            return height, width
        if "shortest_edge" in self.size:
            short, long = (height, width) if height <= width else (width, height)
            edge = self.size["shortest_edge"]
            new_long = int(edge * long / short)
            return (edge, new_long) if height <= width else (new_long, edge)
        return self.size["height"], self.size["width"]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) (exact Pillow resize) or float (3, H, W) in [0, 1] (differentiable) -> normalised float32."""
        size = self.output_size(*image.shape[-2:])
        if image.dtype == torch.uint8:
            if tuple(image.shape[-2:]) != size:
                image = resample.resize_uint8(image, size, self.kernel)
            image = self._crop(image).to(torch.float32) * self.rescale_factor
        else:
            if tuple(image.shape[-2:]) != size:
                image = resample.resize_float(image.to(torch.float32), size, self.kernel)
            image = self._crop(image.to(torch.float32)) * (self.rescale_factor * 255)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=image.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=image.device)[:, None, None]
        return (image - mean) / std

    def _crop(self, image: torch.Tensor) -> torch.Tensor:
        if self.crop is None:
            return image
        height, width = image.shape[-2:]
        h, w = self.crop["height"], self.crop["width"]
        if h > height or w > width:  # transformers pads with zeros; no real config resizes below its crop
            image = F.pad(
                image,
                (
                    max(0, (w - width) // 2),
                    max(0, w - width - (w - width) // 2),
                    max(0, (h - height) // 2),
                    max(0, h - height - (h - height) // 2),
                ),
            )
            height, width = image.shape[-2:]
        top, left = (height - h) // 2, (width - w) // 2
        return image[..., top : top + h, left : left + w]

    def prepare(self, item: ImageInput, index: int) -> torch.Tensor:
        """Decode (relsim's decoding: EXIF, alpha on white, checks) and prepare one image.

        A decoded image is resized by Pillow itself (the same pixels as :func:`relsim.resample.resize_uint8`, which
        the tensor path uses, at a fraction of its CPU time); a float tensor that requires grad stays in torch."""
        image = preprocess.decode(item, index)
        if isinstance(image, Image.Image):
            height, width = self.output_size(image.height, image.width)
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), resample=_PIL_FILTERS[self.kernel])
        return self(preprocess.to_pixel_tensor(image))


# ------------------------------------------------------------------------------------------------- backbone


def _backbone_config(path: Path, where: str) -> dict[str, Any]:
    config = read_json(path / "config.json")
    if config.get("auto_map") or not config.get("model_type"):
        raise RemoteCodeError(
            f"{where} needs its own code (trust_remote_code: its config.json has "
            f"{'auto_map' if config.get('auto_map') else 'no model_type'}); relsim never runs a checkpoint's code"
        )
    return config


def _backbone_class(config: dict[str, Any], where: str):
    import transformers
    from transformers import AutoConfig

    model_type = config["model_type"]
    if model_type in _VISION_TOWERS:
        return getattr(transformers, _VISION_TOWERS[model_type])
    if model_type.startswith("siglip2"):
        raise CheckpointError(
            f"{where} is a SigLIP2 NaFlex model (variable patches); use a fixed-resolution SigLIP or SigLIP2 "
            "checkpoint (model_type siglip) as a student"
        )
    try:
        AutoConfig.for_model(model_type)
    except ValueError:
        raise RemoteCodeError(
            f"{where}: model_type {model_type!r} is unknown to transformers {transformers.__version__}; it would need "
            "its own code (trust_remote_code), which relsim never runs"
        ) from None
    from transformers import AutoModel

    return AutoModel


def _load_backbone(path: Path, where: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    config = _backbone_config(path, where)
    cls = _backbone_class(config, where)
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{where} has no safetensors weights; relsim reads safetensors only")
    try:
        with quiet_transformers():
            backbone, info = cls.from_pretrained(
                path, dtype=dtype, trust_remote_code=False, use_safetensors=True, output_loading_info=True
            )
    except (OSError, ValueError) as err:
        raise CheckpointError(f"the backbone in {where} cannot be loaded: {str(err).splitlines()[0]}") from None
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(f"the backbone in {where} does not fit its config: missing {sorted(missing)[:5]}")
    model_type = backbone.config.model_type
    return backbone, POOLING.get(model_type, "pooler_output, else the mean of the last hidden states")


def _hidden_size(backbone: nn.Module) -> int:
    config = backbone.config
    size = getattr(config, "hidden_size", None) or getattr(getattr(config, "vision_config", None), "hidden_size", None)
    if not isinstance(size, int):
        raise CheckpointError(f"cannot tell the width of the backbone {type(backbone).__name__}")
    return size


def pool(output: Any) -> torch.Tensor:
    """One vector per image: the backbone's pooled output where it has one, else the mean of its last states."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    return output.last_hidden_state.mean(dim=1)


# ------------------------------------------------------------------------------------------------- the model


class StudentModel(ImageEmbedder):
    """A distilled student: backbone -> pooling -> Linear(hidden, 384) -> L2 norm (float32).

    The embedder's API (``embed``, ``embed_stream``, ``score``, ``pairwise``, ``embed_text``, ``fingerprint``).
    Gradients flow to float tensor inputs that require grad, so the metric works as a loss.

    >>> student = relsim.load("run/final")                           # doctest: +SKIP
    >>> student.embed(["a.jpg"]).shape                               # doctest: +SKIP
    torch.Size([1, 384])
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection: nn.Linear,
        preparation: ImagePreparation,
        *,
        fingerprint: dict | None = None,
        pooling: str = "",
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.preparation = preparation
        self.pooling = pooling
        self.fingerprint = dict(fingerprint or {})
        self.config = dict(config or {})
        """``relsim_config.json`` of a loaded checkpoint (teacher, backbone, recipe, agreement)."""
        self.mode = "train"  # one preparation only; the name keeps collections' fingerprint rule
        self.eval()
        self.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype (embeddings are always float32)."""
        return next(self.backbone.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 384) float32 L2-normalised embeddings of prepared images (B, 3, H, W)."""
        output = self.backbone(pixel_values=pixel_values.to(self.device, self.dtype))
        return project(pool(output), self.projection)

    def _embedded_batches(self, items: list, batch_size: int, num_workers: int | None, needs_grad: bool):
        """Batches in order, prepared ahead in threads: :meth:`embed`'s work."""
        workers = 0 if needs_grad else num_workers  # grad mode is per thread: prepare a loss's inputs right here
        for indices, pixels in self._prepared(items, batch_size, workers):
            yield indices, self._checked(self(pixels), indices)

    def embed_stream(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        *,
        num_workers: int | None = None,
        on_error: Callable[[int, ImageInputError], None] | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Embed images batch by batch: yields ``(indices, embeddings)`` (CPU, float32); with ``on_error`` an image
        that cannot be decoded is reported as ``on_error(index, error)`` and left out (as the teacher's)."""
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode():
            for indices, pixels in self._prepared(list(images), batch_size, num_workers, on_error):
                yield indices, self._checked(self(pixels), indices).cpu()

    def _prepared(self, items: list, batch_size: int, num_workers: int | None, on_error=None):
        """``(indices, pixels)`` batches, each image prepared ahead in worker threads (``batching.decode_ahead``);
        with ``on_error`` an image that cannot be prepared is reported and left out."""

        def prepare(i: int):
            try:
                return i, self.preparation.prepare(items[i], i)
            except ImageInputError as err:
                if on_error is None:
                    raise
                return i, err

        indices: list[int] = []
        pixels: list[torch.Tensor] = []
        for i, prepared in decode_ahead(prepare, len(items), num_workers=num_workers, ahead=2 * batch_size):
            if isinstance(prepared, ImageInputError):
                on_error(i, prepared)
                continue
            indices.append(i)
            pixels.append(prepared)
            if len(indices) == batch_size:
                yield indices, torch.stack(pixels)
                indices, pixels = [], []
        if indices:
            yield indices, torch.stack(pixels)

    def _checked(self, embeddings: torch.Tensor, indices: list[int]) -> torch.Tensor:
        bad = ~torch.isfinite(embeddings).all(dim=-1)
        if bad.any():
            which = [indices[i] for i in bad.nonzero().flatten().tolist()]
            raise NonFiniteError(f"the student produced non-finite embeddings for images at indices {which}")
        return embeddings


# ---------------------------------------------------------------------------------------------- build / load


def _preparation(path: Path, where: str) -> ImagePreparation:
    file = path / PREPROCESSOR_CONFIG
    if not file.is_file():
        raise CheckpointError(f"{PREPROCESSOR_CONFIG} is missing from {where}: a student prepares images as it says")
    return ImagePreparation.from_config(read_json(file), str(file))


def check_backbone(backbone: str | os.PathLike, *, revision: str | None = None, **hub):
    """Resolve a backbone and check it loads without remote code (config only: cheap). Returns the resolved repo."""
    from .hub import resolve

    repo = resolve(backbone, revision=revision, allow_patterns=STUDENT_FILES, **hub)
    where = repr(repo.name)
    _backbone_class(_backbone_config(repo.path, where), where)
    _preparation(repo.path, where)
    return repo


def build_student(
    backbone: str | os.PathLike,
    *,
    revision: str | None = None,
    projection_dim: int = 384,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **hub,
) -> StudentModel:
    """A fresh student: a pretrained backbone (Hub id or directory) and a random projection (seeded).

    >>> student = build_student("facebook/dinov2-small")           # doctest: +SKIP
    """
    repo = check_backbone(backbone, revision=revision, **hub)
    where = repr(repo.name)
    module, pooling = _load_backbone(repo.path, where, dtype)
    generator = torch.Generator().manual_seed(seed)
    hidden = _hidden_size(module)
    projection = nn.Linear(hidden, projection_dim)
    with torch.no_grad():
        bound = 1 / hidden**0.5
        projection.weight.copy_(torch.empty(projection_dim, hidden).uniform_(-bound, bound, generator=generator))
        projection.bias.copy_(torch.empty(projection_dim).uniform_(-bound, bound, generator=generator))
    fingerprint = {
        "model": f"untrained-student:{repo.name}",
        "revision": repo.revision,
        "base_model": repo.name,
        "base_revision": repo.revision,
        "mode": "train",
        "dtype": str(dtype).removeprefix("torch."),
        "kind": STUDENT_KIND,
    }
    model = StudentModel(module, projection, _preparation(repo.path, where), fingerprint=fingerprint, pooling=pooling)
    model.source = repo
    return model.to(device)


def is_student(path: str | os.PathLike) -> bool:
    """Whether the directory holds a student checkpoint (``relsim_config.json`` with ``kind: student``)."""
    file = Path(path) / RELSIM_CONFIG
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("kind") == STUDENT_KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_student(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **hub,
) -> StudentModel:
    """Load a student checkpoint (directory or Hub id); :func:`relsim.load` calls this for ``kind: student``.
    Loading the same checkpoint twice in one process returns the same instance (as :func:`relsim.load`).

    >>> student = load_student("run/final", device="cpu")          # doctest: +SKIP
    """
    from .hub import resolve

    repo = resolve(model, revision=revision, allow_patterns=STUDENT_FILES, **hub)
    dtype = dtype or torch.float32
    return _CACHE.get((repo.path, repo.revision, dtype), device, lambda device: _read_student(repo, device, dtype))


_CACHE = ModelCache()  # the one model-cache rule (relsim.backbone): normalised device, weak references


def _read_student(repo, device: torch.device, dtype: torch.dtype) -> StudentModel:
    from . import __version__

    where = repr(repo.name)
    config = read_json(repo.path / RELSIM_CONFIG)
    if config.get("kind") != STUDENT_KIND:
        raise CheckpointError(f"{where} is not a student checkpoint (relsim_config.json kind {config.get('kind')!r})")
    backbone, pooling = _load_backbone(repo.path, where, dtype)
    weight, bias, _ = read_projection(repo.path)
    hidden = _hidden_size(backbone)
    if weight.ndim != 2 or weight.shape[1] != hidden or bias.shape != (weight.shape[0],):
        raise CheckpointError(f"{where}: projection {tuple(weight.shape)} does not fit the backbone's width {hidden}")
    projection = nn.Linear(hidden, weight.shape[0])
    with torch.no_grad():
        projection.weight.copy_(weight.float())
        projection.bias.copy_(bias.float())
    fingerprint = {
        "model": repo.name,
        "revision": repo.revision,
        "base_model": config.get("backbone"),
        "base_revision": config.get("backbone_revision"),
        "mode": "train",
        "dtype": str(dtype).removeprefix("torch."),
        "kind": STUDENT_KIND,
        "relsim_version": __version__,
    }
    student = StudentModel(
        backbone, projection, _preparation(repo.path, where), fingerprint=fingerprint, pooling=pooling, config=config
    )
    return student.to(device)


def write_student(
    path: str | os.PathLike,
    student: StudentModel,
    *,
    backbone_path: str | os.PathLike,
    backbone: str,
    backbone_revision: str | None,
    teacher: dict[str, Any],
    recipe: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a student checkpoint (the layout in the module docstring); ``relsim.load(path)`` reads it back.

    ``student.backbone`` must be a plain transformers model (LoRA merged).
    """
    from . import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        student.backbone.save_pretrained(str(path), safe_serialization=True)
    source = Path(backbone_path) / PREPROCESSOR_CONFIG
    shutil.copy(source, path / PREPROCESSOR_CONFIG)
    write_projection(path, student.projection.weight.float(), student.projection.bias.float())
    write_relsim_config(
        path,
        {
            "kind": STUDENT_KIND,
            "backbone": backbone,
            "backbone_revision": backbone_revision,
            "pooling": student.pooling,
            "projection_dim": student.embedding_dim,
            "teacher": teacher,
            "recipe": recipe,
            "relsim_version": __version__,
            **(extra or {}),
        },
    )
    return path
