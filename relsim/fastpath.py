"""Exact speed-ups for a loaded Qwen2.5-VL body: batched vision attention, optional ``torch.compile``.

transformers' ``Qwen2_5_VLVisionAttention`` (SDPA or eager) splits the packed patch sequence at ``cu_seqlens``
and calls attention once per chunk in a Python loop. A train-mode batch of 32 images has 16 windows per
image in 28 windowed layers and one chunk per image in 4 full-attention layers: about 14,500 small attention
calls per forward, each with its own launch and host overhead, and a device sync per layer for the split
sizes. :func:`optimize` replaces that loop, per module instance, with one batched
``scaled_dot_product_attention`` call per distinct chunk length: a single call when all chunks have the same
length (every train-mode layer), a handful in native mode where the windows at the right and bottom edges
are smaller. No padding and no mask are involved, so every chunk attends to exactly the keys it did before
(the function is unchanged; float32 results agree to rounding, see tests/test_fastpath.py). The chunk layout
is read from the device once per ``cu_seqlens`` tensor and shared by all layers of a forward.

flash-attention (``flash_attention_2`` and other varlen kernels) already makes one call per layer: patched
modules hand those implementations, and anything but SDPA, to the original ``forward``.

Example:
    >>> body = fastpath.optimize(model.body)          # doctest: +SKIP
    >>> fastpath.compile_body(model.body)             # doctest: +SKIP  (optional; fixed shapes: train mode)
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ArgumentError

__all__ = ["optimize", "restore", "is_optimized", "compile_body"]

_PATCHED_ATTR = "_relsim_fastpath"
_CACHE_ATTR = "_relsim_plans"


@dataclass(frozen=True)
class _Plan:
    """How to batch the chunks of one ``cu_seqlens``: runs of equal-length chunks, in ``perm`` order.

    ``segments`` holds ``(n_chunks, length)`` per run. ``perm``/``inverse`` reorder the packed tokens so
    that equal-length chunks are adjacent (both ``None`` when all chunks already have one length).
    """

    segments: tuple[tuple[int, int], ...]
    perm: torch.Tensor | None
    inverse: torch.Tensor | None


def _make_plan(cu_seqlens: torch.Tensor) -> _Plan:
    bounds = [int(x) for x in cu_seqlens.tolist()]
    lengths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    if len(set(lengths)) <= 1:
        return _Plan(((len(lengths), lengths[0] if lengths else 0),), None, None)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # stable: chunks keep their order per length
    segments = tuple((sum(1 for _ in run), length) for length, run in itertools.groupby(order, key=lengths.__getitem__))
    starts = torch.tensor([bounds[i] for i in order])
    sizes = torch.tensor([lengths[i] for i in order])
    # token ids of the chunks in sorted order: start of its chunk + offset inside the chunk
    offsets = torch.arange(int(sizes.sum())) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
    perm = torch.repeat_interleave(starts, sizes) + offsets
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    device = cu_seqlens.device
    return _Plan(segments, perm.to(device), inverse.to(device))


class _PlanCache:
    """Plans of the last few ``cu_seqlens`` tensors, shared by all vision layers of one body.

    A forward passes the same two tensors (windows, full images) to every layer, so the chunk sizes are
    read from the device twice per forward instead of once per layer. Entries are keyed by identity and
    hold a reference, so a key cannot be recycled while it is cached.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: list[tuple[torch.Tensor, _Plan]] = []

    @torch.compiler.disable
    def get(self, cu_seqlens: torch.Tensor) -> _Plan:
        for tensor, plan in self.entries:
            if tensor is cu_seqlens:
                return plan
        plan = _make_plan(cu_seqlens)
        self.entries = [(cu_seqlens, plan), *self.entries[: self.size - 1]]
        return plan


def _batched_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: _Plan, scale: float, dropout: float
) -> torch.Tensor:
    """Block-diagonal attention over packed (S, heads, head_dim) tensors -> (S, heads * head_dim)."""
    seq, heads, dim = q.shape
    if plan.perm is not None:
        q, k, v = (t.index_select(0, plan.perm) for t in (q, k, v))
    outputs, start = [], 0
    for n_chunks, length in plan.segments:
        stop = start + n_chunks * length
        qs, ks, vs = (t[start:stop].view(n_chunks, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, scale=scale)
        outputs.append(out.transpose(1, 2).reshape(n_chunks * length, heads * dim))
        start = stop
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out if plan.inverse is None else out.index_select(0, plan.inverse)


class _BatchedVisionAttention:
    """Mixin placed in front of a vision attention class: SDPA over all equal-length chunks in one call."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        rotary_pos_emb: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.config._attn_implementation != "sdpa" or kwargs.get("output_attentions"):
            if rotary_pos_emb is not None:  # transformers < 4.54 signature
                kwargs["rotary_pos_emb"] = rotary_pos_emb
            return super().forward(hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
        seq = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        if position_embeddings is None:  # transformers < 4.54 passed the angles
            emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
            position_embeddings = (emb.cos(), emb.sin())
        cos, sin = position_embeddings
        q, k = self._relsim_rope(q, k, cos, sin)
        plan = getattr(self, _CACHE_ATTR).get(cu_seqlens)
        dropout = self.attention_dropout if self.training else 0.0
        return self.proj(_batched_attention(q, k, v, plan, self.scaling, dropout))


_CLASSES: dict[type, type] = {}


def _batched_class(cls: type) -> type:
    if cls not in _CLASSES:
        rope = sys.modules[cls.__module__].apply_rotary_pos_emb_vision  # the model file's own RoPE
        attrs = {_PATCHED_ATTR: True, "_relsim_original": cls, "_relsim_rope": staticmethod(rope)}
        _CLASSES[cls] = type(f"Batched{cls.__name__}", (_BatchedVisionAttention, cls), attrs)
    return _CLASSES[cls]


def _vision_attentions(body: nn.Module) -> list[nn.Module]:
    found = []
    for module in body.modules():
        cls = getattr(type(module), "_relsim_original", type(module))
        if cls.__name__.endswith("VisionAttention") and "qwen2_5_vl" in cls.__module__ and hasattr(module, "qkv"):
            found.append(module)
    return found


def optimize(body: nn.Module) -> nn.Module:
    """Batch the vision attention of a Qwen2.5-VL body in place (idempotent); returns ``body``.

    Each vision attention module gets a subclass of its own class whose ``forward`` runs one SDPA call per
    distinct chunk length. Raises ``ValueError`` when ``body`` has no Qwen2.5-VL vision attention.
    """
    modules = _vision_attentions(body)
    if not modules:
        raise ArgumentError(f"{type(body).__name__} has no Qwen2.5-VL vision attention modules to optimise")
    cache = _PlanCache()
    for module in modules:
        if not getattr(module, _PATCHED_ATTR, False):
            module.__class__ = _batched_class(type(module))
        setattr(module, _CACHE_ATTR, cache)
    return body


def restore(body: nn.Module) -> nn.Module:
    """Undo :func:`optimize` (the original per-chunk loop); returns ``body``."""
    for module in _vision_attentions(body):
        if getattr(module, _PATCHED_ATTR, False):
            module.__class__ = module._relsim_original
            delattr(module, _CACHE_ATTR)
    return body


def is_optimized(body: nn.Module) -> bool:
    """Whether every vision attention module of ``body`` runs the batched path."""
    modules = _vision_attentions(body)
    return bool(modules) and all(getattr(m, _PATCHED_ATTR, False) for m in modules)


def compile_body(body: nn.Module, *, mode: str | None = None, dynamic: bool | None = False) -> nn.Module:
    """``torch.compile`` each vision block, the merger and each decoder layer in place; returns ``body``.

    Meant for train mode, where every batch of the same size has the same shapes (``dynamic=False``
    specialises on them; each new batch size compiles once more). Layers are compiled one by one, so the 32
    vision blocks share one compiled graph and the 28 decoder layers another; the control flow around them
    (windowing, the chunk plan, masks, RoPE tables) stays eager. Call :func:`optimize` first. The first
    batch of each shape pays the compilation (about a minute for the 7B model on a GPU).
    """
    visual, text = body.visual, body.language_model
    for module in (*visual.blocks, visual.merger, *text.layers):
        module.compile(mode=mode, dynamic=dynamic)
    return body
