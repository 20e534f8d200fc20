"""The model being trained: Qwen2.5-VL body + peft LoRA on q_proj/v_proj + ``<|query|>`` + projection head.

Its forward is the inference forward of :class:`relsim.RelSimModel` (same token ids and 3-D RoPE
positions from :func:`relsim.encoder.build_inputs`, same last-layer ``<|query|>`` state, same float32
projection and L2 norm), with LoRA as separate factors instead of merged and dropout active in
``train()`` mode. A checkpoint loaded by ``relsim.load`` reproduces ``eval()`` embeddings of this model.

The ``<|query|>`` token: the base embedding matrix has 152064 rows and id 151665 is already one of its
(untrained) padding rows. We keep the full matrix and that row frozen, as upstream effectively did
(its ``resize_token_embeddings(151666)`` shrank the matrix and kept the row), and never save embedding
tables in the adapter.

Example:
    >>> model = build_model("Qwen/Qwen2.5-VL-7B-Instruct", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> pixel_values, grid_thw = patchify(images, device="cuda")                                 # doctest: +SKIP
    >>> model(pixel_values, grid_thw).shape                                                      # doctest: +SKIP
    torch.Size([64, 384])
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import QUERY_TOKEN
from ..encoder import Prompt, multimodal_inputs, query_states
from ..errors import ArgumentError


class HubNames(nn.Module):
    """Holds the body as ``.model`` (and the LM head, when given, as ``.lm_head``) so peft names the LoRA keys as
    upstream's ``Qwen2_5_VLForConditionalGeneration`` did (``base_model.model.model.language_model.layers...``).
    The embedder never loads the 1 GB LM head."""

    def __init__(self, body: nn.Module, lm_head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = body
        if lm_head is not None:
            self.lm_head = lm_head


def load_tokenizer(path: str | Path):
    """The base tokenizer plus ``<|query|>`` (id 151665 on the real vocabulary)."""
    from ..backbone import load_tokenizer as load_checkpoint_tokenizer

    tokenizer = load_checkpoint_tokenizer(Path(path))
    if QUERY_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [QUERY_TOKEN]})
    return tokenizer


class LoraModel(nn.Module):
    """What both trained models share: the peft-wrapped body (:class:`HubNames`), autocast, the trainable
    parameters (float32 master weights) and the zero-loss anchor of an empty micro-batch."""

    def __init__(self, peft_model: nn.Module, autocast: torch.dtype | None) -> None:
        super().__init__()
        self.peft = peft_model
        self.autocast = autocast

    @property
    def body(self) -> nn.Module:
        """The ``Qwen2_5_VLModel`` (with LoRA layers injected in place)."""
        return self.peft.base_model.model.model

    @property
    def device(self) -> torch.device:
        return self.body.language_model.embed_tokens.weight.device

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.body.language_model.embed_tokens.weight.dtype

    def trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def autocast_context(self):
        """bf16 autocast when training in bf16, else nothing."""
        dtype = self.autocast or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast is not None)

    def anchor(self) -> torch.Tensor:
        """A zero that depends on every trainable parameter. A process whose micro-batch was all unreadable
        images still joins the step (DDP needs every trainable parameter in the graph): zero gradients."""
        return sum(p.sum() for p in self.trainable().values()) * 0.0

    def master_weights(self) -> None:
        """The trainable parameters as float32 master weights (the frozen ones keep the base's dtype)."""
        for p in self.trainable().values():
            p.data = p.data.float()


class TrainModel(LoraModel):
    """Trainable relsim model. ``forward(pixel_values, grid_thw)`` -> (B, dim) L2-normalised float32."""

    def __init__(self, peft_model: nn.Module, projection: nn.Linear, prompt: Prompt, autocast: torch.dtype | None):
        super().__init__(peft_model, autocast)
        self.projection = projection
        self.prompt = prompt

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        device = self.device
        if grid_thw.shape[0] == 0:
            return torch.zeros(0, self.projection.out_features, device=device) + self.anchor()
        with self.autocast_context():
            # Nothing before the first LoRA layer is trained: the vision tower and the embedding lookup
            # run without building a graph (same values, less memory).
            with torch.no_grad():
                embeds, positions, query = multimodal_inputs(self.body, self.prompt, pixel_values, grid_thw)
            states = query_states(self.body, embeds, positions, query)
        with torch.autocast(device.type, enabled=False):
            projected = F.linear(states.float(), self.projection.weight, self.projection.bias)
        return F.normalize(projected, dim=-1)


def build_model(
    base_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: list[str] | None = None,
    projection_dim: int = 384,
    seed: int = 0,
    gradient_checkpointing: bool = False,
) -> tuple[TrainModel, object]:
    """Load the base body from a local directory, add LoRA and a fresh head. Returns (model, tokenizer).

    ``dtype`` is the frozen base weights' dtype; LoRA and the head are float32 (master weights).
    Initialisation is a function of ``seed`` only (made on the CPU, then moved).
    """
    from ..backbone import load_body

    require_peft()  # before the base's weights are read
    device = torch.device(device)
    body = load_body(Path(base_path), device, dtype)
    body.requires_grad_(False)
    tokenizer = load_tokenizer(base_path)
    query_id = tokenizer.convert_tokens_to_ids(QUERY_TOKEN)
    rows = body.language_model.embed_tokens.num_embeddings
    if query_id >= rows:
        raise ArgumentError(f"{QUERY_TOKEN} is token {query_id} but the base model has {rows} embedding rows")
    prompt = Prompt.from_tokenizer(tokenizer, QUERY_TOKEN, body.config.image_token_id)

    torch.manual_seed(seed)
    with torch.device("cpu"):
        projection = nn.Linear(body.config.text_config.hidden_size, projection_dim)
    peft_model = add_lora(
        HubNames(body),
        body,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        gradient_checkpointing=gradient_checkpointing,
    )
    model = TrainModel(peft_model, projection.to(device), prompt, autocast)
    model.master_weights()
    return model, tokenizer


def add_lora(
    wrapper: nn.Module,
    body: nn.Module,
    *,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    target_modules: list[str] | None,
    gradient_checkpointing: bool,
):
    """peft LoRA on ``wrapper`` (a :class:`HubNames` around ``body``), on language-model layers only, with
    gradient checkpointing of the body when asked. LoRA's initialisation draws on the global torch RNG."""
    LoraConfig, get_peft_model = require_peft()
    targets = list(target_modules or ["q_proj", "v_proj"])
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, bias="none")
    peft_model = get_peft_model(wrapper, config)
    wrapped = [n for n, m in body.named_modules() if hasattr(m, "lora_A")]
    outside = [n for n in wrapped if not n.startswith("language_model.")]
    if not wrapped or outside:
        raise ArgumentError(f"LoRA target_modules {targets} must match language-model layers only; got {outside[:3]}")
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(body, "activation_checkpointing_enable"):  # the name since transformers 5.x
            body.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            body.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return peft_model


def require_peft():
    """peft's ``LoraConfig`` and ``get_peft_model``, or an ImportError naming the extra to install."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError('training needs peft: pip install "relsim[train]"', name="peft") from err
    return LoraConfig, get_peft_model


__all__ = [
    "HubNames",
    "load_tokenizer",
    "LoraModel",
    "TrainModel",
    "build_model",
    "add_lora",
    "require_peft",
]
