"""relsim: relational visual similarity (Nguyen et al., arXiv 2512.07833) as a drop-in metric.

Example:
    >>> import relsim
    >>> model = relsim.load()                                  # doctest: +SKIP
    >>> model.score("peach.jpg", "earth.jpg")                  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError  # noqa: E402
from .encoder import RelSimModel  # noqa: E402
from .preprocess import ImageInputError  # noqa: E402
from .pretrained import DEFAULT_MODEL, PRETRAINED, load  # noqa: E402


def __getattr__(name: str):
    # The metric pulls in torchmetrics (~1 s): import it when first asked for, not with `import relsim`.
    if name == "RelationalSimilarity":
        from .metric import RelationalSimilarity

        return RelationalSimilarity
    if name == "search":
        from .retrieval import search

        return search
    if name == "functional":
        from . import functional

        return functional
    raise AttributeError(f"module 'relsim' has no attribute {name!r}")


__all__ = [
    "__version__",
    "load",
    "RelSimModel",
    "RelationalSimilarity",
    "functional",
    "search",
    "DEFAULT_MODEL",
    "PRETRAINED",
    "CheckpointError",
    "ImageInputError",
]
