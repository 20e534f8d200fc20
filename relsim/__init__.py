"""relsim: relational visual similarity (Nguyen et al., arXiv 2512.07833) as a drop-in metric.

The public API is what ``__all__`` lists. ``import relsim`` is cheap: torch, transformers and torchmetrics are
imported when a name that needs them is first used (the table ``_LAZY`` says where each name lives).

Example:
    >>> import relsim
    >>> model = relsim.load()                                  # doctest: +SKIP
    >>> model.score("peach.jpg", "earth.jpg")                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

from .errors import (  # noqa: E402  (light: no third-party imports)
    ArgumentError,
    CheckpointError,
    CollectionError,
    CollectionMismatchError,
    CollectionWriteError,
    DestinationExistsError,
    ImageInputError,
    JudgeError,
    MissingFileError,
    ModelNotFoundError,
    NonFiniteError,
    OutputPathError,
    RelSimError,
    WrongTypeError,
)
from .registry import DEFAULT_CAPTIONER, DEFAULT_MODEL, PRETRAINED  # noqa: E402

#: Public name -> (module, attribute); attribute ``None`` is the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "load": ("relsim.pretrained", "load"),
    "RelSimModel": ("relsim.encoder", "RelSimModel"),
    "RelationalSimilarity": ("relsim.metric", "RelationalSimilarity"),
    "functional": ("relsim.functional", None),
    "search": ("relsim.retrieval", "search"),
    # upstream relsim 0.1.0's API (docs/upgrading.md); no submodule is called `relsim`, so nothing is shadowed
    "relsim": ("relsim.relsim_score", "relsim"),
    "preprocess_image": ("relsim.relsim_score", "preprocess_image"),
    "relsim_score": ("relsim.relsim_score", None),
    "load_captioner": ("relsim.caption", "load_captioner"),
    "Caption": ("relsim.caption", "Caption"),
    "Captioner": ("relsim.caption", "Captioner"),
    "Explanation": ("relsim.explain", "Explanation"),
    "Collection": ("relsim.collection", "Collection"),
    "Heatmap": ("relsim.heatmap", "Heatmap"),
}

if TYPE_CHECKING:
    from . import functional
    from .caption import Caption, Captioner, load_captioner
    from .collection import Collection
    from .encoder import RelSimModel
    from .explain import Explanation
    from .heatmap import Heatmap
    from .metric import RelationalSimilarity
    from .pretrained import load
    from .relsim_score import preprocess_image, relsim
    from .retrieval import search


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'relsim' has no attribute {name!r}") from None
    # import_module, not `from . import x`: the latter looks the name up on this package first and would
    # re-enter this function.
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "load",
    "RelSimModel",
    "RelationalSimilarity",
    "functional",
    "search",
    "relsim",
    "preprocess_image",
    "load_captioner",
    "Caption",
    "Captioner",
    "Explanation",
    "Collection",
    "Heatmap",
    "DEFAULT_MODEL",
    "DEFAULT_CAPTIONER",
    "PRETRAINED",
    "RelSimError",
    "ModelNotFoundError",
    "CheckpointError",
    "ImageInputError",
    "CollectionError",
    "CollectionMismatchError",
    "JudgeError",
    "CollectionWriteError",
    "OutputPathError",
    "ArgumentError",
    "MissingFileError",
    "DestinationExistsError",
    "WrongTypeError",
    "NonFiniteError",
]
