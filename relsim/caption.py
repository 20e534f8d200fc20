"""The anonymous captioner: the paper's second LoRA on Qwen2.5-VL, sharing the embedder's base in memory.

An anonymous caption states an image's relational logic with the objects left out ("{Fruit} cut open to show
its layers"). The captioner (``thaoshibe/relsim-anonymous-caption-qwen25vl-lora``: LoRA r16/alpha32 on the
language model's q_proj/v_proj) wrote the paper's training captions; here it also explains a score.

Sharing the base: the embedder's body holds the base weights with the embedder's LoRA merged into q_proj/v_proj
(and maybe some input-embedding rows replaced). The captioner keeps the base's values of exactly those tensors,
read from the base's safetensors shards, plus the LM head and its own LoRA factors. While it runs, the merged
weights are swapped for the base's (a pointer swap, no copy) and its LoRA runs unmerged as peft runs it
(``W x + scale * B(A x)``); the swap is undone afterwards and the embedder's forward holds the same lock, so
embeddings stay bit for bit what they were. Greedy decoding by default, with the base model's
``generation_config.json`` merged in as ``generate()`` does (see relsim.generation).

Example:
    >>> model = relsim.load()                                        # doctest: +SKIP
    >>> model.caption("peach.jpg")                                   # doctest: +SKIP
    Caption(text='A {Fruit} cut open to reveal its layered interior.', placeholders=('Fruit',), truncated=False)
    >>> captioner = relsim.load_captioner()   # standalone: its own base  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, fastpath, generation, preprocess
from .backbone import (
    ModelCache,
    canonical_device,
    image_tokens,
    load_body,
    load_tokenizer,
    parse_dtype,
    resolve_base,
    weights_lock,
)
from .batching import decode_ahead, is_single, progress_bar
from .caption_inputs import IMAGE_SIZE, TRAINING_PROMPT, CaptionPrompt, build_batch, prepare_image
from .checkpoint import (
    BaseShards,
    LoraWeights,
    read_adapter_config,
    read_lm_head,
    read_lora,
    read_relsim_config,
)
from .errors import ArgumentError, CheckpointError, ImageInputError
from .hub import ResolvedRepo, download_advice, resolve
from .registry import CAPTIONERS, DEFAULT_CAPTIONER

#: The only files of a captioner repo relsim fetches or reads. Upstream's checkpoint folder also holds trainer
#: state (optimizer.pt, rng_state.pth, scheduler.pt, scaler.pt, training_args.bin: pickles): never touched.
CAPTIONER_FILES = ["adapter_config.json", "adapter_model.safetensors", "relsim_config.json"]

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_ROWS_PER_READ = 8192  # embedding rows compared with the base per read (bounded host memory)


@dataclass(frozen=True)
class Caption:
    """An anonymous caption: the generated text (whitespace stripped, otherwise as generated: upstream's
    training captions carry literal quotes) and its ``{...}`` placeholders in order of appearance."""

    text: str
    placeholders: tuple[str, ...]
    truncated: bool = False
    """True when ``max_new_tokens`` ended the caption before the model's end-of-turn token."""

    @classmethod
    def from_text(cls, text: str, *, truncated: bool = False) -> Caption:
        """A caption from generated text: whitespace stripped, ``{...}`` slots collected.

        >>> Caption.from_text(" A {Fruit} cut open next to a {Planet}. ").placeholders
        ('Fruit', 'Planet')
        """
        text = text.strip()
        return cls(text, tuple(m.strip() for m in _PLACEHOLDER.findall(text)), truncated)

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------------------
# The captioner


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scale: float):
    """peft's unmerged LoRA forward as a hook: ``result + B(A(x.to(A.dtype))) * scale``, back in result's dtype."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(a.dtype)
        return (output + nn.functional.linear(nn.functional.linear(x, a), b) * scale).to(output.dtype)

    return hook


class Captioner:
    """Anonymous captions from a Qwen2.5-VL body + LM head + an unmerged LoRA.

    Build it with :func:`relsim.load_captioner` (its own base) or ``model.load_captioner()`` / ``model.caption()``
    (on a loaded RelSimModel's base). The constructor takes everything in memory:

    - ``base_weights``: module name -> the base's weight, for the body's modules that hold something else
      (the embedder's merged LoRA); swapped in while captioning;
    - ``embedding_rows``: ``(ids, rows)``, the input-embedding rows the captioner sees instead of the body's;
    - ``generation_config``: the base model's ``GenerationConfig`` (what ``generate()`` would merge in).
    """

    def __init__(
        self,
        body: nn.Module,
        tokenizer,
        lm_head: torch.Tensor,
        lora: LoraWeights,
        *,
        base_weights: dict[str, torch.Tensor] | None = None,
        embedding_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
        generation_config=None,
        fingerprint: dict | None = None,
        default_prompt: str | None = None,
    ) -> None:
        self.body = body
        #: the prompt used when none is given: the one the checkpoint was trained with when relsim trained it
        #: (``relsim_config.json``), else upstream's training prompt
        self.default_prompt = default_prompt or TRAINING_PROMPT
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.fingerprint = dict(fingerprint or {})
        modules = dict(body.named_modules())
        _check_lora(modules, lora)
        base_weights = dict(base_weights or {})
        for name, weight in base_weights.items():
            module = modules.get(name)
            if not isinstance(module, nn.Linear) or module.weight.shape != weight.shape:
                raise CheckpointError(f"the base weight for {name!r} does not fit the body's module")
        self.lora = lora
        self._lm_head = lm_head
        self._factors = {name: (a.float(), b.float()) for name, (a, b) in lora.factors.items()}
        self._base_weights = base_weights
        self._embedding_rows = embedding_rows
        self._prompts: dict[str, CaptionPrompt] = {}
        self.image_token_id = int(body.config.image_token_id)
        pad = getattr(generation_config, "pad_token_id", None)
        pad = pad if pad is not None else tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self._placed: tuple | None = None
        self._sync()

    # -- properties -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the body it runs on."""
        return self.body.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the body it runs on."""
        return self.body.language_model.embed_tokens.weight.dtype

    @property
    def lock(self) -> threading.Lock:
        """The body's weights lock (``relsim.backbone.weights_lock``), held while it generates."""
        return weights_lock(self.body)

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes this captioner adds to the body it runs on, by part (``total`` = their sum)."""

        def size(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors)

        parts = {
            "lm_head": size([self._lm_head]),
            "base_weights": size(self._base_weights.values()),
            "lora": size(t for pair in self._factors.values() for t in pair),
            "embedding_rows": 0 if self._embedding_rows is None else size(self._embedding_rows),
        }
        parts["total"] = sum(parts.values())
        return parts

    def prompt(self, text: str) -> CaptionPrompt:
        """The tokenized chat for prompt ``text`` (cached)."""
        if text not in self._prompts:
            self._prompts[text] = CaptionPrompt.from_tokenizer(self.tokenizer, text, self.image_token_id)
        return self._prompts[text]

    # -- running on the shared body ---------------------------------------------------------------------
    def _sync(self) -> None:
        """Follow the body to another device or dtype (e.g. a metric's ``.to()``)."""
        placed = (self.device, self.dtype)
        if placed == self._placed:
            return
        device, dtype = placed
        self._lm_head = self._lm_head.to(device, dtype)
        self._factors = {k: (a.to(device), b.to(device)) for k, (a, b) in self._factors.items()}
        self._base_weights = {
            k: nn.Parameter(w.detach().to(device, dtype), requires_grad=False) for k, w in self._base_weights.items()
        }
        if self._embedding_rows is not None:
            ids, rows = self._embedding_rows
            self._embedding_rows = (ids.to(device), rows.to(device, dtype))
        self._placed = placed

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The body as the captioner: base weights in, LoRA hooks on, compiled layers bypassed; all undone after."""
        with self.lock:
            self._sync()
            modules = dict(self.body.named_modules())
            swapped: dict[str, nn.Parameter] = {}
            handles = []
            compiled: dict[nn.Module, Any] = {}
            try:
                for name, weight in self._base_weights.items():
                    swapped[name] = modules[name].weight
                    modules[name].weight = weight
                for name, (a, b) in self._factors.items():
                    handles.append(modules[name].register_forward_hook(_lora_hook(a, b, self.lora.scale)))
                for module in modules.values():
                    # torch.compile'd layers were specialised on fixed shapes; a growing KV cache would recompile
                    # them at every step.
                    if getattr(module, "_compiled_call_impl", None) is not None:
                        compiled[module] = module._compiled_call_impl
                        module._compiled_call_impl = None
                yield
            finally:
                for handle in handles:
                    handle.remove()
                for name, weight in swapped.items():
                    modules[name].weight = weight
                for module, impl in compiled.items():
                    module._compiled_call_impl = impl

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings as the captioner sees them (the base's rows where the body holds others)."""
        out = self.body.language_model.embed_tokens(ids)
        if self._embedding_rows is None:
            return out
        patch_ids, rows = self._embedding_rows
        where = torch.searchsorted(patch_ids, ids).clamp(max=len(patch_ids) - 1)
        hit = patch_ids[where] == ids
        return torch.where(hit.unsqueeze(-1), rows[where], out)

    # -- public API -----------------------------------------------------------------------------------
    def caption(
        self,
        images,
        *,
        prompt: str | Sequence[str] | None = None,
        sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int | None = None,
        seed: int | None = None,
        num_captions: int = 1,
        max_new_tokens: int = 128,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: bool | None = None,
    ) -> Caption | list[Caption] | list[list[Caption]]:
        """Anonymous captions of ``images`` (paths, PIL images, numpy HWC arrays, CHW tensors, or lists of them).

        Greedy by default (deterministic; upstream's evaluation setting). ``sample=True`` with the defaults
        ``temperature=0.7, top_p=0.9`` reproduces upstream's batch script (top-k 50, repetition penalty 1.05 from
        the base's generation config); ``seed`` makes it reproducible: image ``i``'s caption ``k`` samples from
        its own generator seeded ``seed + i * num_captions + k``, whatever the batch size. ``num_captions=N``
        (sampling only) gives N captions per image. ``prompt``: the text (default: upstream's training prompt,
        see ``relsim.caption_inputs.PROMPTS``) or one per image. ``batch_size`` counts sequences.

        Returns a :class:`Caption` for one image, a list for a list; with ``num_captions > 1`` a list of N
        captions per image.

        >>> captioner.caption(["a.jpg", "b.jpg"])                         # doctest: +SKIP
        [Caption(text='...', placeholders=(...), truncated=False), Caption(...)]
        """
        options = dict(locals())
        del options["self"], options["images"]
        return self._collect(images, self._decode, options)

    def generate_ids(self, images, **options) -> list[int] | list[list[int]] | list[list[list[int]]]:
        """The generated token ids, stop token included when one ended the text (what upstream's ``generate()``
        returns after the prompt): same options and shapes as :meth:`caption`."""
        return self._collect(images, _token_ids, options)

    def stream(self, images, *, skip_unreadable: bool = False, **options) -> Iterator[list[tuple[int, Any]]]:
        """Captions batch by batch, as they are made: lists of ``(index, caption)`` (a list of captions with
        ``num_captions > 1``), in input order. For long jobs that save as they go (``relsim caption -o``).

        ``skip_unreadable=True`` gives ``(index, ImageInputError)`` for an image that cannot be read instead
        of raising. ``options``: those of :meth:`caption` but ``progress``.

        >>> for batch in captioner.stream(paths, skip_unreadable=True):     # doctest: +SKIP
        ...     save(batch)
        """
        return self._stream(preprocess.as_image_list(images), self._decode, skip_unreadable, **options)

    def _decode(self, generated: generation.Generated) -> Caption:
        text = self.tokenizer.decode(generated.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Caption.from_text(text, truncated=not generated.stopped)

    def _collect(self, images, finish, options: dict):
        single = is_single(images)
        items = preprocess.as_image_list(images)
        progress = options.pop("progress", None)
        out: list[Any] = [None] * len(items)
        bar = progress_bar(len(items), progress, "relsim caption")
        for batch in self._stream(items, finish, False, **options):
            for index, result in batch:
                out[index] = result
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out[0] if single else out

    def _stream(
        self,
        items: list,
        finish,
        skip_unreadable: bool,
        *,
        prompt: str | Sequence[str] | None = None,
        sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int | None = None,
        seed: int | None = None,
        num_captions: int = 1,
        max_new_tokens: int = 128,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> Iterator[list[tuple[int, Any]]]:
        prompts = _prompt_list(self.default_prompt if prompt is None else prompt, len(items))
        if not isinstance(num_captions, int) or num_captions < 1:
            raise ArgumentError(f"num_captions must be an integer >= 1, got {num_captions!r}")
        if num_captions > 1 and not sample:
            raise ArgumentError("num_captions > 1 needs sample=True: greedy decoding gives the same caption every time")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        settings = generation.GenerationSettings.from_config(
            self.generation_config,
            do_sample=bool(sample),
            max_new_tokens=max_new_tokens,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=top_k if sample else None,
        )
        if sample and seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())  # follows torch.manual_seed
        chats = {text: self.prompt(text) for text in dict.fromkeys(prompts)}  # bad prompts fail before any work
        return self._batches(
            items, finish, skip_unreadable, prompts, chats, settings, seed, num_captions, batch_size, num_workers
        )

    def _batches(self, items, finish, skip_unreadable, prompts, chats, settings, seed, n, batch_size, num_workers):
        for chunk in _prepared_chunks(items, max(1, batch_size // n), num_workers, skip_unreadable):
            good = {i: p for i, p in chunk if isinstance(p, torch.Tensor)}
            done: dict[int, list] = {i: [None] * n for i in good}
            if good:
                rows = [(i, k) for i in good for k in range(n)]
                seeds = [seed + i * n + k for i, k in rows] if settings.do_sample else None
                with torch.inference_mode():
                    generated = self._generate_rows(rows, good, [chats[prompts[i]] for i, _ in rows], settings, seeds)
                for (i, k), row in zip(rows, generated, strict=True):
                    done[i][k] = finish(row)
            # an unreadable image (skip_unreadable) keeps its error in place of captions
            yield [(i, (done[i] if n > 1 else done[i][0]) if i in done else p) for i, p in chunk]

    # -- internals ------------------------------------------------------------------------------------
    def _generate_rows(self, rows, pixels, prompts, settings, seeds) -> list[generation.Generated]:
        """Generate for rows ``(image index, caption index)``; on CUDA out-of-memory, halve and retry."""
        try:
            with self.active():
                return self._generate(rows, pixels, prompts, settings, seeds)
        except torch.cuda.OutOfMemoryError:
            if len(rows) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(rows) // 2
            first, second = (None, None) if seeds is None else (seeds[:half], seeds[half:])
            return self._generate_rows(rows[:half], pixels, prompts[:half], settings, first) + self._generate_rows(
                rows[half:], pixels, prompts[half:], settings, second
            )

    def _generate(self, rows, pixels, prompts, settings, seeds) -> list[generation.Generated]:
        images = list(dict.fromkeys(i for i, _ in rows))
        pixel_values, grids = preprocess.patchify([pixels[i] for i in images], device=self.device, dtype=self.dtype)
        visual = self.body.visual(pixel_values, grid_thw=grids)
        features = getattr(visual, "pooler_output", visual)  # transformers >= 5 returns a model output
        per_image = features.split([image_tokens(g.tolist()) for g in grids])
        slot = {i: n for n, i in enumerate(images)}
        row_grids = torch.stack([grids[slot[i]] for i, _ in rows])
        batch = build_batch(prompts, row_grids, self.pad_token_id)
        ids = batch.input_ids.to(self.device)
        embeds = self.embed_tokens(ids)
        image_features = torch.cat([per_image[slot[i]] for i, _ in rows]).to(embeds.dtype)
        embeds = embeds.masked_scatter((ids == self.image_token_id).unsqueeze(-1), image_features)
        model = generation.StepModel(self.body.language_model, self._lm_head, self.embed_tokens)
        positions = batch.positions.to(self.device)
        mask = None if batch.attention_mask is None else batch.attention_mask.to(self.device)
        return generation.generate(model, embeds, positions, mask, ids, settings, seeds=seeds)


def _check_lora(modules: dict[str, nn.Module], lora: LoraWeights) -> None:
    for name, (a, b) in lora.factors.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            found = "nothing" if module is None else type(module).__name__
            raise CheckpointError(f"LoRA weights for {name!r} match {found} in the base model, not a Linear layer")
        if (b.shape[0], a.shape[1]) != (module.out_features, module.in_features):
            raise CheckpointError(
                f"LoRA for {name!r} is {b.shape[0]}x{a.shape[1]}, "
                f"the base layer is {module.out_features}x{module.in_features}"
            )


def _prompt_list(prompt: str | Sequence[str], n: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n:
        raise ArgumentError(f"got {len(prompts)} prompts for {n} images: give one prompt, or one per image")
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ArgumentError(f"prompt[{i}] is {type(text).__name__}, expected str")
    return prompts


def _prepared_chunks(
    items: list, size: int, num_workers: int | None, skip_unreadable: bool = False
) -> Iterator[list[tuple[int, torch.Tensor | ImageInputError]]]:
    """``(index, uint8 (3, 448, 448))`` in chunks of ``size``, decoded ahead in worker threads, in order; with
    ``skip_unreadable`` an unreadable image gives its ``ImageInputError`` instead of raising it."""

    def prepare(i: int):
        try:
            return i, prepare_image(items[i], i)
        except ImageInputError as err:
            if not skip_unreadable:
                raise
            return i, err

    prepared = decode_ahead(prepare, len(items), num_workers=num_workers, ahead=2 * size)
    while chunk := list(itertools.islice(prepared, size)):
        yield chunk


def _token_ids(generated: generation.Generated) -> list[int]:
    return generated.tokens + ([generated.stop_token] if generated.stopped else [])


# ---------------------------------------------------------------------------------------------------------
# Loading


def _hub_kwargs(cache_dir, local_files_only, token) -> dict:
    return {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}


def _read_adapter(path: Path) -> tuple[dict, LoraWeights, torch.Tensor | None, torch.Tensor | None]:
    config = read_adapter_config(path)
    lora, table = read_lora(path, config)
    return config, lora, table, read_lm_head(path)


@torch.no_grad()
def _embedding_patch(
    body: nn.Module, shards: BaseShards, replaced_rows: int, table: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The input-embedding rows where the body differs from what the captioner must see: the base's rows,
    overlaid with the captioner adapter's own table when it has one. Compared in blocks of rows."""
    weight = body.language_model.embed_tokens.weight
    covered = max(replaced_rows, 0 if table is None else int(table.shape[0]))
    if covered == 0:
        return None
    if table is not None and (table.shape[0] > weight.shape[0] or table.shape[1] != weight.shape[1]):
        raise CheckpointError(
            f"the captioner's embedding table is {tuple(table.shape)}, the base model's is {tuple(weight.shape)}"
        )
    ids, rows = [], []
    for start in range(0, covered, _ROWS_PER_READ):
        stop = min(start + _ROWS_PER_READ, covered)
        wanted = shards.tensor("language_model.embed_tokens.weight", (start, stop)).to(weight.device, weight.dtype)
        if table is not None and start < table.shape[0]:
            end = min(stop, table.shape[0])
            wanted[: end - start] = table[start:end].to(weight.device, weight.dtype)
        differ = (wanted != weight[start:stop]).any(dim=1).nonzero().flatten()
        ids.append(differ + start)
        rows.append(wanted[differ])
    patch_ids = torch.cat(ids)
    return None if len(patch_ids) == 0 else (patch_ids, torch.cat(rows))


def _lm_head(body: nn.Module, shards: BaseShards, head: torch.Tensor | None, patch) -> torch.Tensor:
    """The adapter's own LM head table when it carries one (upstream's resized model), else the base's."""
    weight = body.language_model.embed_tokens.weight
    if head is not None:
        if head.shape[1] != weight.shape[1]:
            raise CheckpointError(f"the captioner's lm_head is {tuple(head.shape)}, hidden size {weight.shape[1]}")
        return head.to(weight.device, weight.dtype)
    if shards.key("lm_head.weight") is not None:
        return shards.tensor("lm_head.weight").to(weight.device, weight.dtype)
    if getattr(body.config, "tie_word_embeddings", False) or getattr(
        body.config.get_text_config(), "tie_word_embeddings", False
    ):
        if patch is None:
            return weight  # tied to the input embedding, which the captioner sees unchanged: shared, no copy
        return shards.tensor("language_model.embed_tokens.weight").to(weight.device, weight.dtype)
    raise CheckpointError(f"the base model in {str(shards.path)!r} has no lm_head.weight to generate text with")


def trained_prompt(adapter_path: str | os.PathLike) -> str:
    """The prompt a captioner checkpoint was trained with, its default: the one relsim's training recorded in
    ``relsim_config.json``, else (an upstream checkpoint) upstream's training prompt. Reads no weights.

    >>> trained_prompt(adapter.path) == TRAINING_PROMPT                  # doctest: +SKIP
    True
    """
    prompt = read_relsim_config(Path(adapter_path)).get("prompt")
    return TRAINING_PROMPT if prompt is None else prompt


def build_captioner(
    body: nn.Module,
    base_path: Path,
    adapter_path: Path,
    *,
    merged_modules: Sequence[str] = (),
    replaced_rows: int = 0,
    fingerprint: dict | None = None,
) -> Captioner:
    """A captioner on ``body``, whose weights are the base's in ``base_path`` except ``merged_modules`` (a merged
    LoRA) and the first ``replaced_rows`` input-embedding rows. Reads the base's values of exactly those."""
    _, lora, table, head = _read_adapter(adapter_path)
    prompt = trained_prompt(adapter_path)
    shards = BaseShards(base_path)
    weight = body.language_model.embed_tokens.weight
    base_weights = {
        name: shards.tensor(f"{name}.weight").to(weight.device, weight.dtype) for name in dict.fromkeys(merged_modules)
    }
    patch = _embedding_patch(body, shards, replaced_rows, table)
    return Captioner(
        body,
        load_tokenizer(base_path),
        _lm_head(body, shards, head, patch),
        lora,
        base_weights=base_weights,
        embedding_rows=patch,
        generation_config=generation.base_generation_config(base_path, body),
        fingerprint=fingerprint,
        default_prompt=prompt,
    )


_CACHE = ModelCache()


def load_captioner(
    model: str | os.PathLike = DEFAULT_CAPTIONER,
    *,
    base_model: str | os.PathLike | None = None,
    revision: str | None = None,
    base_revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Captioner:
    """Load the anonymous captioner on its own base model (Hub repo id or local directory of the LoRA adapter).

    The same Hub, offline and pinning behaviour as :func:`relsim.load`: ``base_model=None`` takes the base the
    adapter names; ``revision`` / ``base_revision`` pin commits (recorded in ``captioner.fingerprint``); only
    ``adapter_config.json``, ``adapter_model.safetensors`` and (when relsim trained it, for the prompt it was
    trained with) ``relsim_config.json`` are fetched or read (never trainer-state pickles);
    no remote code. To share a loaded embedder's base instead, use ``model.caption(...)``.

    >>> captioner = relsim.load_captioner(device="cuda")                  # doctest: +SKIP
    >>> captioner.caption("peach.jpg").text                               # doctest: +SKIP
    """
    device = canonical_device(device)
    dtype = parse_dtype(dtype, device)
    hub = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    revisions = {"revision": revision, "base_revision": base_revision}
    adapter, base = resolve_captioner(model, base_model=base_model, **revisions, **hub)
    # revisions identify content (Hub commits, or content hashes of local directories)
    key = (adapter.path, adapter.revision, base.path, base.revision, dtype)

    def build(device: torch.device) -> Captioner:
        body = load_body(base.path, device, dtype)
        fastpath.optimize(body)
        fingerprint = {**captioner_fingerprint(adapter, base, dtype), "relsim_version": __version__}
        return build_captioner(body, base.path, adapter.path, fingerprint=fingerprint)

    return _CACHE.get(key, device, build)


def resolve_captioner(
    model: str | os.PathLike = DEFAULT_CAPTIONER,
    *,
    base_model: str | os.PathLike | None = None,
    revision: str | None = None,
    base_revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> tuple[ResolvedRepo, ResolvedRepo]:
    """The captioner adapter's and its base model's files, as :func:`load_captioner` finds them, without loading
    any weights: cheap, so a cache can be keyed by :func:`captioner_fingerprint` before deciding to load.

    >>> adapter, base = resolve_captioner()                               # doctest: +SKIP
    >>> captioner_fingerprint(adapter, base, "bfloat16")["revision"]      # doctest: +SKIP
    '<commit>'
    """
    pinned = CAPTIONERS.get(str(model), {})
    revision = revision if revision is not None else pinned.get("revision")
    hub = _hub_kwargs(cache_dir, local_files_only, token)
    advice = download_advice("captioner", model, revision)
    adapter = resolve(model, revision=revision, allow_patterns=CAPTIONER_FILES, offline_advice=advice, **hub)
    config = read_adapter_config(adapter.path)
    base_name = base_model
    if base_name is None:
        base_name = config.get("base_model_name_or_path") or pinned.get("base_model")
    if base_name is None:
        raise CheckpointError(f"{adapter.name!r} names no base model; pass base_model=")
    if base_revision is None and base_model is None:
        base_revision = pinned.get("base_revision")
    base = resolve_base(base_name, base_revision, named_by=None if base_model is not None else adapter.name, **hub)
    return adapter, base


def captioner_fingerprint(adapter: ResolvedRepo, base: ResolvedRepo, dtype: torch.dtype | str) -> dict[str, str | None]:
    """What a standalone captioner's captions depend on: adapter and base (names and content revisions), dtype."""
    return {
        "model": adapter.name,
        "revision": adapter.revision,
        "base_model": base.name,
        "base_revision": base.revision,
        "dtype": str(dtype).removeprefix("torch."),
    }


def attach_captioner(
    embedder,
    model: str | os.PathLike = DEFAULT_CAPTIONER,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Captioner:
    """The captioner on a loaded RelSimModel's body (see ``RelSimModel.load_captioner``)."""
    source = getattr(embedder, "base_source", None)
    if source is None:
        raise ArgumentError(
            "this RelSimModel was not built by relsim.load, so relsim does not know its base checkpoint; "
            "use relsim.load_captioner() for a standalone captioner"
        )
    pinned = CAPTIONERS.get(str(model), {})
    revision = revision if revision is not None else pinned.get("revision")
    hub = _hub_kwargs(
        cache_dir if cache_dir is not None else source.cache_dir,
        local_files_only if local_files_only is not None else source.local_files_only,
        token,
    )
    advice = download_advice("captioner", model, revision)
    adapter = resolve(model, revision=revision, allow_patterns=CAPTIONER_FILES, offline_advice=advice, **hub)
    named = read_adapter_config(adapter.path).get("base_model_name_or_path")
    # a base loaded from a directory is compared through the base the embedder's adapter names
    expected = source.name if _is_hub_id(source.name) else source.adapter_base
    if _is_hub_id(named) and _is_hub_id(expected) and named != expected:
        raise CheckpointError(
            f"the captioner {adapter.name!r} was trained on {named!r}, this model's base is {expected!r}; "
            "load it on its own base with relsim.load_captioner()"
        )
    fingerprint = {
        "model": adapter.name,
        "revision": adapter.revision,
        "base_model": embedder.fingerprint.get("base_model", source.name),
        "base_revision": embedder.fingerprint.get("base_revision"),
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "relsim_version": __version__,
        "shared_with": embedder.fingerprint.get("model"),
    }
    return build_captioner(
        embedder.body,
        source.path,
        adapter.path,
        merged_modules=source.merged_modules,
        replaced_rows=source.embedding_rows,
        fingerprint=fingerprint,
    )


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(str(name)).expanduser().exists() and str(name).count("/") == 1


__all__ = [
    "Caption",
    "Captioner",
    "DEFAULT_CAPTIONER",
    "CAPTIONERS",
    "CAPTIONER_FILES",
    "IMAGE_SIZE",
    "attach_captioner",
    "build_captioner",
    "captioner_fingerprint",
    "load_captioner",
    "resolve_captioner",
    "trained_prompt",
]
