"""RelationalSimilarity: relsim as a torchmetrics metric, where LPIPS or CLIPScore would go.

The 7B backbone is held beside the metric, never inside it: it is not a submodule, not a metric state,
not in ``state_dict()``, never synced, never copied by ``deepcopy`` and never pickled (a pickle stores how
to load it). See docs/metric.md.

Example:
    >>> from relsim import RelationalSimilarity
    >>> metric = RelationalSimilarity()                      # doctest: +SKIP
    >>> metric.update(generated, reference)                  # doctest: +SKIP
    >>> metric.compute()                                     # doctest: +SKIP
    tensor(0.6132)
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.exceptions import TorchMetricsUserError
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from .encoder import RelSimModel
from .errors import ArgumentError, WrongTypeError
from .functional import (
    ImageBatch,
    ModelArg,
    Reduction,
    check_reduction,
    relational_similarity_compute,
    relational_similarity_update,
    resolve_model,
)
from .pretrained import load
from .similarity import ImageEmbedder


class _PairScores:
    """Scores that ``forward`` computed once and hands to ``update`` (which torchmetrics may call twice)."""

    __slots__ = ("scores",)

    def __init__(self, scores: Tensor) -> None:
        self.scores = scores


class RelationalSimilarity(Metric):
    """Relational similarity of image pairs: cosine of relsim embeddings, in [-1, 1], higher = more similar.

    Args:
        model: a loaded :class:`relsim.RelSimModel` (shared, never copied), a Hub id or local directory (loaded
            with :func:`relsim.load`, which returns the instance already loaded in this process for the same
            model, revision, mode, dtype and device), or None for the default model.
        reduction: ``"mean"`` (default) or ``"sum"`` over all pairs seen, or ``"none"`` for every score.
        batch_size: images per forward of the backbone.
        revision: the branch, tag or commit of ``model`` (when it is a Hub id), for :func:`relsim.load`.
        dtype: the backbone's dtype when loading; with a loaded model, checked against it (a mismatch is an error).
        device: the backbone's device when loading; with a loaded model, checked against it.
        mode: ``"train"`` or ``"native"`` preprocessing when loading; with a loaded model, checked against it.
        base_model: the base Qwen2.5-VL of an adapter directory or id (default: the one its
            ``adapter_config.json`` names), for :func:`relsim.load`.
        load_kwargs: :func:`relsim.load`'s other keyword arguments, e.g. ``base_revision``, ``cache_dir``.
        move_model: whether ``.to(device)`` / ``.cuda()`` / ``.cpu()`` on the metric also move the backbone.
            Set it to False to keep the backbone where it was loaded, e.g. when Lightning's teardown calls
            ``.cpu()`` on the LightningModule after ``fit``.
        kwargs: torchmetrics' metric arguments (``dist_sync_on_step``, ``process_group``, ``sync_on_compute``, ...).

    ``update(img1, img2)`` takes two batches of the same length N, paired by index: (N, C, H, W) tensors (C in
    1, 3, 4; uint8 0-255 or float 0-1), (N, H, W, C) numpy arrays, or lists of images (paths, PIL images, HWC
    arrays, CHW tensors; sizes may differ). ``forward`` returns the batch value and is differentiable w.r.t.
    float tensor inputs that require grad (under the caller's grad mode); ``update`` never builds a graph.

    Device and dtype: ``.to(device)`` / ``.cuda()`` / ``.cpu()`` move the metric states and the backbone (which
    is shared: every holder sees it move; ``move_model=False`` keeps it in place). ``.half()``, ``.float()``,
    ``.double()``, ``.to(dtype)`` change no dtype: the states stay float32 and the backbone keeps the dtype it
    was loaded in (choose it with ``dtype=``). ``set_dtype(dtype)`` casts the metric states only.

    Example:
        >>> import torch, relsim
        >>> model = relsim.load()                                          # doctest: +SKIP
        >>> metric = RelationalSimilarity(model=model)                     # doctest: +SKIP
        >>> metric.update(torch.rand(4, 3, 448, 448), ["ref.jpg"] * 4)     # doctest: +SKIP
        >>> metric.compute()                                               # doctest: +SKIP
        tensor(0.5871)
    """

    is_differentiable: bool = True
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: float = -1.0
    plot_upper_bound: float = 1.0
    #: where ``torchmetrics.wrappers.FeatureShare`` finds the network to share
    feature_network: str = "model"

    score_sum: Tensor
    total: Tensor
    scores: list[Tensor]

    def __init__(
        self,
        model: ModelArg = None,
        *,
        reduction: Reduction = "mean",
        batch_size: int = 32,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        mode: str | None = None,
        base_model: str | os.PathLike | None = None,
        load_kwargs: dict | None = None,
        move_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_reduction(reduction)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"Expected argument `batch_size` to be a positive integer, got {batch_size!r}")
        self.reduction = reduction
        self.batch_size = batch_size
        self.move_model = move_model
        self.model = resolve_model(
            model,
            revision=revision,
            dtype=dtype,
            device=device,
            mode=mode,
            base_model=base_model,
            load_kwargs=load_kwargs,
        )
        if reduction == "none":
            self.add_state("scores", [], dist_reduce_fx="cat")
        else:
            self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    # -- the backbone, kept out of the module tree ----------------------------------------------------------
    @property
    def model(self) -> RelSimModel:
        """The backbone (shared, frozen, in eval mode). After unpickling it is loaded again on first use."""
        model = self.__dict__.get("_model")
        if model is None:
            spec = self.__dict__.get("_model_spec")
            if spec is None:
                raise RuntimeError("this RelationalSimilarity holds no model")
            model = _load_from_spec(spec)
            self.__dict__["_model"] = model
            del self.__dict__["_model_spec"]
        return model

    @model.setter
    def model(self, model: RelSimModel) -> None:
        network = getattr(model, "network", None)
        if not isinstance(model, ImageEmbedder) and isinstance(network, ImageEmbedder):
            # torchmetrics' FeatureShare hands us its NetworkCache: keep the model it wraps, and undo the
            # lru_cache it put on the model's forward (keyed by tensor identity it never hits for relsim, and
            # it would keep the last outputs, autograd graphs included, alive).
            if hasattr(network.__dict__.get("forward"), "cache_clear"):
                del network.__dict__["forward"]
            model = network
        if not isinstance(model, ImageEmbedder):
            raise WrongTypeError(f"Expected `model` to be a relsim.RelSimModel or student, got {type(model).__name__}")
        self.__dict__["_model"] = model
        self.__dict__.pop("_model_spec", None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "model":
            # Through the property: nn.Module.__setattr__ would register the model as a submodule, which puts
            # it in state_dict(), .train(), .half(), parameters() and DDP's parameter broadcast.
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> nn.Module:
        """``.to(device)`` & co. move the states and the backbone; dtype casts reach neither (see the class doc)."""
        probes = [fn(torch.zeros(1, dtype=dtype, device=self.device)) for dtype in (torch.float32, torch.float64)]
        if not self._dtype_convert and [p.dtype for p in probes] != [torch.float32, torch.float64]:
            # .to(dtype) slips through torchmetrics' own guard (which catches .half() & co. by name): keep the
            # device move, drop the cast.
            fn = _device_only(probes[0].device)
        old_device = self.device
        this = super()._apply(fn, exclude_state)
        if self.move_model:
            self._move_model(fn, moved=self.device != old_device)
        return this

    def __deepcopy__(self, memo: dict) -> RelationalSimilarity:
        """Copy the metric and its states; the copy shares the backbone (gigabytes of frozen weights)."""
        model = self.__dict__.get("_model")
        if model is not None:
            memo[id(model)] = model
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(Metric.__getstate__(self), memo))
        return new

    def __copy__(self) -> RelationalSimilarity:
        new = self.__class__.__new__(self.__class__)
        new.__setstate__(Metric.__getstate__(self))
        return new

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the states and how to load the backbone (its fingerprint and device), not its weights."""
        state = super().__getstate__()
        model = state.pop("_model", None)
        if model is not None:
            state["_model_spec"] = _load_spec(model)
        return state

    # -- torchmetrics API -----------------------------------------------------------------------------------
    def forward(self, img1: ImageBatch, img2: ImageBatch) -> Tensor:
        """Score a batch, add it to the state and return its value (``reduction`` applied to this batch).

        The backbone runs once. Gradients reach float tensor inputs that require grad unless the caller
        disabled grad (``torch.no_grad()`` is honoured, unlike torchmetrics' default forward).
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        pair = _PairScores(self._score(img1, img2))
        value = super().forward(pair, pair)
        # Neither the accumulated states nor the forward cache may keep the batch's autograd graph alive.
        self._detach_states()
        self._forward_cache = value.detach()
        return value

    def update(self, img1: ImageBatch, img2: ImageBatch) -> None:
        """Score the pairs ``(img1[i], img2[i])`` and add them to the state (no autograd graph is built)."""
        scores = img1.scores if isinstance(img1, _PairScores) else self._score(img1, img2)
        if self.reduction == "none":
            self.scores.append(scores)
        else:
            self.score_sum = self.score_sum + scores.sum().to(self.score_sum.dtype)
            self.total = self.total + scores.numel()

    def compute(self) -> Tensor:
        """Mean or sum of all scores seen (across processes under DDP), or all of them for ``"none"``."""
        if self.reduction == "none":
            if isinstance(self.scores, list) and not self.scores:
                return torch.zeros(0, device=self.device)
            return dim_zero_cat(self.scores)
        return relational_similarity_compute(self.score_sum, self.total, self.reduction)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value or a sequence of values (from ``forward`` or ``compute``); needs matplotlib.

        Example:
            >>> metric.update(img1, img2)                                  # doctest: +SKIP
            >>> fig, ax = metric.plot()                                    # doctest: +SKIP
            >>> values = [metric(a, b) for a, b in loader]                 # doctest: +SKIP
            >>> fig, ax = metric.plot(values)                              # doctest: +SKIP
        """
        return self._plot(val, ax)

    def extra_repr(self) -> str:
        """The model and reduction, for ``repr(metric)``."""
        model = self.__dict__.get("_model")
        info = model.fingerprint if model is not None else self.__dict__.get("_model_spec", {})
        return f"model={info.get('model')!r}, mode={info.get('mode')!r}, reduction={self.reduction!r}"

    # -- internals ------------------------------------------------------------------------------------------
    def _score(self, img1: ImageBatch, img2: ImageBatch) -> Tensor:
        scores = relational_similarity_update(img1, img2, self.model, batch_size=self.batch_size)
        return scores.to(self.device)

    def _move_model(self, fn: Callable[[Tensor], Tensor], moved: bool) -> None:
        model = self.__dict__.get("_model")
        if model is not None:
            target = fn(torch.zeros(1, device=model.device)).device  # where fn sends the model's tensors
            if target != model.device and target.type != "meta":  # never wipe a shared model's weights
                model.to(target)
        elif moved and "_model_spec" in self.__dict__:  # unpickled, not loaded yet: load it there
            self.__dict__["_model_spec"]["device"] = str(self.device)

    def _detach_states(self) -> None:
        for name in self._defaults:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                if value.requires_grad:
                    setattr(self, name, value.detach())
            else:
                value[:] = [v.detach() for v in value]


def _device_only(device: torch.device) -> Callable[[Tensor], Tensor]:
    def move(t: Tensor) -> Tensor:
        return t.to(device)

    return move


def _load_spec(model: RelSimModel) -> dict[str, str | None]:
    """What :func:`relsim.load` needs to load this model again (in this process: the same instance)."""
    info = model.fingerprint
    missing = [key for key in ("model", "base_model", "mode", "dtype") if not info.get(key)]
    if missing:
        raise pickle.PicklingError(
            f"cannot pickle a RelationalSimilarity whose model has no {missing} in its fingerprint (it was not "
            "built by relsim.load), and its weights are not pickled: use relsim.load, or pickle the states only "
            "(metric.metric_state)"
        )
    return {
        "model": info["model"],
        "revision": info.get("revision"),
        "base_model": info["base_model"],
        "base_revision": info.get("base_revision"),
        "mode": info["mode"],
        "dtype": info["dtype"],
        "device": str(model.device),
    }


def _load_from_spec(spec: dict[str, str | None]) -> RelSimModel:
    return load(
        spec["model"],
        revision=spec["revision"],
        base_model=spec["base_model"],
        base_revision=spec["base_revision"],
        mode=spec["mode"],
        dtype=spec["dtype"],
        device=spec["device"],
    )


__all__ = ["RelationalSimilarity"]
