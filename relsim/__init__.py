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
    "DEFAULT_MODEL",
    "PRETRAINED",
    "CheckpointError",
    "ImageInputError",
]


# `relsim.search(store, image=..., text=..., k=...)` searches a store (relsim.retrieval.search), while
# `relsim.search` stays the module of low-level functions (`from relsim.search import search_store`,
# `import relsim.search as s` keep working): the module is made callable. Setting a module's __class__ to a
# ModuleType subclass is documented Python ("Customizing module attribute access", data model reference).
def _make_search_callable() -> None:
    import functools
    import inspect
    import types

    from . import retrieval, search

    class _CallableSearchModule(types.ModuleType):
        @functools.wraps(retrieval.search)
        def __call__(self, *args, **kwargs):
            return retrieval.search(*args, **kwargs)

    search.__class__ = _CallableSearchModule
    search.__signature__ = inspect.signature(retrieval.search)  # what help() and IDEs show for relsim.search(


_make_search_callable()
__all__.append("search")
