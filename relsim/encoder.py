"""RelSimModel: the Qwen2.5-VL body, the ``<|query|>`` token and the projection head.

An embedding is the last layer's hidden state (after the final RMSNorm) at the ``<|query|>`` position,
projected to 384 dimensions and L2-normalised in float32 (docs/architecture.md, §1). The prompt is cut right
after ``<|query|>``: attention is causal, so later tokens cannot change the result.

Example:
    >>> model = relsim.load()                                      # doctest: +SKIP
    >>> model.embed(["a.jpg", "b.jpg"]).shape                      # doctest: +SKIP
    torch.Size([2, 384])
    >>> model.score("a.jpg", "b.jpg")                              # doctest: +SKIP
    0.61
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import preprocess
from .backbone import image_tokens, rope_positions, weights_lock
from .batching import decode_ahead
from .errors import ArgumentError, NonFiniteError
from .preprocess import ImageInput, ImageInputError
from .similarity import ImageEmbedder, project

PATCH = preprocess.PATCH_SIZE


@dataclass(frozen=True)
class Prompt:
    """Token ids around the image: ``prefix + [image_pad] * n + suffix``; ``suffix`` ends with ``<|query|>``."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    image_token_id: int
    query_token_id: int
    pad_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer, query_token: str, image_token_id: int) -> Prompt:
        """Apply the chat template to one user message ``[image, "<|query|>"]`` and split at the image."""
        query_token_id = tokenizer.convert_tokens_to_ids(query_token)
        if query_token_id is None or query_token_id == tokenizer.unk_token_id:
            raise ArgumentError(f"the tokenizer has no {query_token} token")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query_token}]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(image_token_id) != 1 or query_token_id not in ids:
            raise ArgumentError(f"the chat template does not give one image placeholder and {query_token}: {text!r}")
        cut = ids.index(image_token_id)
        end = ids.index(query_token_id) + 1
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(tuple(ids[:cut]), tuple(ids[cut + 1 : end]), image_token_id, query_token_id, pad)

    def length(self, n_image_tokens: int) -> int:
        """Tokens in the prompt of an image with ``n_image_tokens`` visual tokens."""
        return len(self.prefix) + n_image_tokens + len(self.suffix)


def build_inputs(prompt: Prompt, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (B, L), 3-D multimodal RoPE positions (3, B, L) and the query index (B,) for a batch.

    Sequences are padded on the right; the query is each sequence's last real token, so with causal
    attention the padding never reaches it and no attention mask is needed. Positions follow
    transformers 4.57's ``get_rope_index`` for images (:func:`relsim.backbone.rope_positions`).
    """
    seqs, positions = [], []
    for grid in grids.tolist():
        positions.append(rope_positions(len(prompt.prefix), grid, len(prompt.suffix)))
        seqs.append(list(prompt.prefix) + [prompt.image_token_id] * image_tokens(grid) + list(prompt.suffix))
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), prompt.pad_token_id, dtype=torch.long)
    pos = torch.zeros((3, len(seqs), length), dtype=torch.long)
    query = torch.empty(len(seqs), dtype=torch.long)
    for i, (seq, position) in enumerate(zip(seqs, positions, strict=False)):
        ids[i, : len(seq)] = torch.tensor(seq)
        pos[:, i, : len(seq)] = position
        pos[:, i, len(seq) :] = position[:, -1:] + 1 + torch.arange(length - len(seq))
        query[i] = len(seq) - 1
    return ids, pos, query


def multimodal_inputs(
    body: nn.Module,
    prompt: Prompt,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    image_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings (B, L, H) with the vision tower's tokens in place of ``<|image_pad|>``, the 3-D
    positions (3, B, L) and the query index (B,), on the body's device. Shared by inference and training.

    ``image_hook(tokens) -> tokens``, when given, sees the vision merger's output (all images' tokens in order,
    (N, H)) and returns what goes in its place: relsim.heatmap differentiates with respect to it."""
    device = body.language_model.embed_tokens.weight.device
    ids, positions, query = (t.to(device) for t in build_inputs(prompt, grid_thw.cpu()))
    visual = body.visual(pixel_values.to(device, body.visual.dtype), grid_thw=grid_thw.to(device))
    image_embeds = getattr(visual, "pooler_output", visual)  # transformers >= 5 returns a model output
    if image_hook is not None:
        image_embeds = image_hook(image_embeds)
    embeds = body.language_model.embed_tokens(ids)
    mask = (ids == prompt.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, image_embeds.to(embeds.dtype)), positions, query


def query_states(body: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden state after the final norm at each sequence's ``<|query|>`` (B, H)."""
    hidden = body.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False).last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), query]


class RelSimModel(ImageEmbedder):
    """Relational similarity model: images in, 384-d L2-normalised embeddings out.

    Build it with :func:`relsim.load`. ``embed`` / ``score`` / ``pairwise`` take paths, PIL images,
    numpy HWC uint8 arrays or torch tensors (CHW/NCHW, uint8 0-255 or float 0-1); ``score``, ``pairwise`` and
    ``embed_text`` come from :class:`relsim.similarity.ImageEmbedder`, shared with the distilled students.
    """

    def __init__(
        self,
        body: nn.Module,
        projection: nn.Linear,
        prompt: Prompt,
        *,
        mode: str = "train",
        fingerprint: dict | None = None,
    ) -> None:
        super().__init__()
        if mode not in preprocess.MODES:
            raise ArgumentError(f"mode must be one of {preprocess.MODES}, got {mode!r}")
        self.body = body
        self.projection = projection
        self.prompt = prompt
        self.mode = mode
        self.fingerprint = dict(fingerprint or {})
        self.base_source = None  # set by relsim.load: what the captioner needs to share this body
        #: Language-model tokens of a batch, padding included (bounds its activation memory).
        self.max_tokens_per_batch = 65536
        #: Padding a batch may add, as a fraction of its real tokens (native mode mixes sizes; train mode never pads).
        self.max_padding = 0.05
        # None: resize on the model's device when that is not the CPU (workers then only decode); on a CPU,
        # Pillow in the worker threads is faster. Both give the same pixels.
        self.resize_on_device: bool | None = None
        self.eval()
        self.requires_grad_(False)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype (embeddings are always float32)."""
        return self.body.language_model.embed_tokens.weight.dtype

    def train(self, mode: bool = True) -> RelSimModel:
        """The backbone has no training-time behaviour relsim uses: it stays in eval mode."""
        return super().train(False)

    # -- the model ----------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, image_hook=None) -> torch.Tensor:
        """Embeddings (B, 384), float32, L2-normalised, from patchified pixels (see ``preprocess.patchify``).

        ``image_hook``: see :func:`multimodal_inputs` (None for embeddings)."""
        with weights_lock(self.body):
            embeds, positions, query = multimodal_inputs(self.body, self.prompt, pixel_values, grid_thw, image_hook)
            states = query_states(self.body, embeds, positions, query)
        return project(states, self.projection)

    # -- public API -----------------------------------------------------------------------------------
    def _embedded_batches(self, items: list, batch_size: int, num_workers: int | None, needs_grad: bool):
        """The input scheduler's batches (token-length groups, decoded ahead), embedded: :meth:`embed`'s work."""
        for indices, pixels in self._batches(items, batch_size, num_workers):
            yield indices, self._embed_batch(indices, pixels)

    def embed_stream(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        *,
        num_workers: int | None = None,
        on_error: Callable[[int, ImageInputError], None] | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Embed images batch by batch: yields ``(indices, embeddings)`` as each batch is done (CPU, float32).

        The same decode/batch pipeline as :meth:`embed`. With ``on_error``, an image that cannot be decoded or
        that the model refuses is reported as ``on_error(index, error)`` and left out instead of raising, so a
        bulk job goes on; every index is either yielded once or reported once.

        >>> for indices, emb in model.embed_stream(paths, on_error=lambda i, e: print(paths[i], e)):  # doctest: +SKIP
        ...     save(indices, emb)
        """
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
        items = list(images)
        with torch.inference_mode():
            for indices, pixels in self._batches(items, batch_size, num_workers, on_error=on_error):
                if on_error is None:
                    yield indices, self._embed_batch(indices, pixels).cpu()
                else:
                    yield from self._embed_or_report(indices, pixels, on_error)

    def _embed_or_report(self, indices, pixels, on_error) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Embed a batch; should the model refuse it, embed its images one by one so only the culprit is lost."""
        try:
            yield indices, self._embed_batch(indices, pixels).cpu()
        except ImageInputError as err:
            if len(indices) == 1:
                on_error(indices[0], err)
                return
            for i, p in zip(indices, pixels, strict=True):
                yield from self._embed_or_report([i], [p], on_error)

    def heatmap(self, a, b=None, *, text=None, method: str = "gradxinput", batch_size: int = 8, **text_options):
        """Where in image ``a`` its relational similarity to ``b`` (an image, or ``text``) comes from.

        One image ``a`` gives a :class:`relsim.heatmap.Heatmap`; a list gives a list (``b``: one image for all
        or a list of equal length). See :func:`relsim.heatmap.compute` for the method and the options.

        >>> model.heatmap("peach.jpg", "earth.jpg").overlay().save("peach-map.png")     # doctest: +SKIP
        """
        from .heatmap import compute

        return compute(self, a, b, text=text, method=method, batch_size=batch_size, **text_options)

    # -- anonymous captions ---------------------------------------------------------------------------
    def load_captioner(self, model: str | os.PathLike | None = None, **kwargs):
        """Attach the anonymous captioner (default ``thaoshibe/relsim-anonymous-caption-qwen25vl-lora``) to this
        model's base, already in memory: only the LM head, the base's q/v projections and the LoRA are added.

        ``kwargs``: ``revision``, ``cache_dir``, ``local_files_only``, ``token`` (see :func:`relsim.load_captioner`).
        Returns the :class:`relsim.caption.Captioner`, which :meth:`caption` and :meth:`explain` then use.

        >>> model.load_captioner(revision="<commit>")              # doctest: +SKIP
        """
        from .caption import DEFAULT_CAPTIONER, attach_captioner

        captioner = attach_captioner(self, model if model is not None else DEFAULT_CAPTIONER, **kwargs)
        self.__dict__["_captioner"] = captioner
        return captioner

    def caption(self, images, **kwargs):
        """Anonymous captions of images (see :meth:`relsim.caption.Captioner.caption` for the options).

        The captioner is attached on first use (:meth:`load_captioner`); embeddings stay exactly as they were.

        >>> model.caption("peach.jpg").text                        # doctest: +SKIP
        'A {Fruit} cut in half to reveal its layered interior.'
        """
        return self.captioner.caption(images, **kwargs)

    @property
    def captioner(self):
        """The attached :class:`relsim.caption.Captioner`: the one :meth:`load_captioner` attached last, or the
        default captioner, attached on first use.

        >>> model.captioner.fingerprint["model"]                       # doctest: +SKIP
        'thaoshibe/relsim-anonymous-caption-qwen25vl-lora'
        """
        return self.__dict__.get("_captioner") or self.load_captioner()

    def explain(self, a, b, **kwargs):
        """The relational score of ``a`` and ``b`` with both anonymous captions and their MiniLM cosine.

        Single images give an :class:`relsim.explain.Explanation`; equal-length lists give a list of them.
        ``kwargs``: ``text_model``, ``batch_size`` and the options of :meth:`caption`.

        >>> print(model.explain("peach.jpg", "earth.jpg"))         # doctest: +SKIP
        """
        from .explain import explain

        return explain(self, a, b, **kwargs)

    # -- internals ------------------------------------------------------------------------------------
    def _batches(
        self, items: list, batch_size: int, num_workers: int | None, *, on_error=None
    ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """Decoded, resized pixel tensors in batches; the next batch is decoded while this one runs.

        With ``on_error(index, error)``, images that cannot be prepared are reported and left out."""
        prepare = functools.partial(self._prepare, resize=not self.uses_device_resize, report=on_error is not None)
        ahead = 2 * batch_size
        prepared = decode_ahead(lambda i: prepare(i, items[i]), len(items), num_workers=num_workers, ahead=ahead)
        yield from self._group(_report_failures(prepared, on_error), batch_size)

    def _prepare(self, index: int, item, *, resize: bool, report: bool = False) -> tuple[int, torch.Tensor]:
        try:
            return index, preprocess.prepare(item, index, self.mode, resize=resize)
        except ImageInputError as err:
            if not report:
                raise
            return index, err  # type: ignore[return-value]

    @property
    def uses_device_resize(self) -> bool:
        """Whether crop + resize run on the model's device (workers then only decode); see ``resize_on_device``."""
        return self.device.type != "cpu" if self.resize_on_device is None else self.resize_on_device

    def _group(self, prepared, batch_size: int) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """Batches of images whose sequences have (nearly) the same length, in the order they become ready.

        Images of one token count form a batch as soon as there are ``batch_size`` of them (or as many as
        ``max_tokens_per_batch`` allows): no padding at all. The others wait in a window of a few batches;
        when it is full (or the input ends) it is sorted by token count and split wherever a batch's padding
        would exceed ``max_padding`` of its real tokens. A batch is never padded by more than that, so a
        mix of sizes costs at most that much over embedding the images one at a time, and usually less.
        """
        waiting: dict[int, tuple[torch.Tensor, int, tuple]] = {}  # index -> (pixels, sequence length, grid)
        by_length: dict[int, list[int]] = {}
        window, held = max(4 * batch_size, 16), 0
        for index, pixels in prepared:
            grid = self._grid(pixels)
            length = self.prompt.length(image_tokens(grid))
            waiting[index] = (pixels, length, grid)
            held += pixels.numel() * pixels.element_size()
            same = by_length.setdefault(length, [])
            same.append(index)
            if len(same) >= self._batch_cap(length, batch_size):
                del by_length[length]
                pixels_of = [waiting.pop(i)[0] for i in same]
                held -= sum(p.numel() * p.element_size() for p in pixels_of)
                yield same, pixels_of
            elif len(waiting) >= window or held >= _WAITING_BYTES:
                yield from self._pack(waiting, batch_size)
                waiting, by_length, held = {}, {}, 0
        yield from self._pack(waiting, batch_size)

    def _pack(
        self, waiting: dict[int, tuple[torch.Tensor, int, tuple]], batch_size: int
    ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """Split images sorted by sequence length (longest first) into batches within the padding budget.

        Equal lengths keep input order within each model-side size, so equal sizes sit together for
        ``patchify`` and the order does not depend on where the resize runs.
        """
        order = sorted(waiting, key=lambda i: (-waiting[i][1], waiting[i][2], i))
        start = 0
        while start < len(order):
            longest = waiting[order[start]][1]
            cap = self._batch_cap(longest, batch_size)
            stop, real = start + 1, longest
            while stop < len(order) and stop - start < cap:
                length = waiting[order[stop]][1]
                if (stop - start + 1) * longest > (1 + self.max_padding) * (real + length):
                    break  # sorted: every later image would pad even more
                real += length
                stop += 1
            batch = order[start:stop]
            yield batch, [waiting[i][0] for i in batch]
            start = stop

    def _batch_cap(self, length: int, batch_size: int) -> int:
        return max(1, min(batch_size, self.max_tokens_per_batch // max(length, 1)))

    def _grid(self, pixels: torch.Tensor) -> tuple[int, int, int]:
        height, width = preprocess.target_size(*pixels.shape[-2:], self.mode)
        return 1, height // PATCH, width // PATCH

    def _resize_on_device(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crop + resize decoded images on the model's device; equal-sized ones travel and resize as one stack."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault((p.dtype, p.device, tuple(p.shape)), []).append(i)
        out: list[torch.Tensor] = list(pixels)
        for members in groups.values():
            # The resize works in int32: cap a stack at 64 Mpx (1 GiB as int32) so 12 MP photos stay cheap.
            per_stack = max(1, _RESIZE_STACK_PIXELS // pixels[members[0]].numel())
            for start in range(0, len(members), per_stack):
                chunk = members[start : start + per_stack]
                stack = torch.stack([pixels[i] for i in chunk]).to(self.device)
                for i, resized in zip(chunk, preprocess.resize_for_mode(stack, self.mode), strict=True):
                    out[i] = resized
        return out

    def _embed_batch(self, indices: list[int], pixels: list[torch.Tensor]) -> torch.Tensor:
        try:
            if self.uses_device_resize:
                pixels = self._resize_on_device(pixels)
            pixel_values, grid_thw = preprocess.patchify(pixels, device=self.device, dtype=self.dtype)
            embeddings = self(pixel_values, grid_thw)
        except torch.cuda.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(pixels) // 2
            return torch.cat(
                [self._embed_batch(indices[:half], pixels[:half]), self._embed_batch(indices[half:], pixels[half:])]
            )
        bad = ~torch.isfinite(embeddings).all(dim=-1)
        if bad.any():
            which = [indices[i] for i in bad.nonzero().flatten().tolist()]
            raise NonFiniteError(
                f"the model produced non-finite embeddings for images at indices {which} in {self.dtype}; "
                "Qwen2.5-VL overflows in float16: load with dtype=torch.bfloat16 or torch.float32"
            )
        return embeddings


_RESIZE_STACK_PIXELS = 1 << 26
#: Decoded images ``embed`` keeps waiting for company of a similar size (bytes; ~170 photos of 1920x1080).
_WAITING_BYTES = 1 << 30


def _report_failures(prepared, on_error):
    """Pass prepared images on; hand the errors a reporting ``_prepare`` returned to ``on_error``."""
    for index, pixels in prepared:
        if isinstance(pixels, ImageInputError):
            on_error(index, pixels)
        else:
            yield index, pixels


__all__ = ["RelSimModel", "Prompt", "ImageInputError"]
