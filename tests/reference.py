"""A straightforward re-implementation of the upstream relsim inference, for parity tests and benchmarks.

What upstream does, one image at a time: chat template + processor, full
``Qwen2_5_VLForConditionalGeneration`` forward with ``output_hidden_states=True``, LoRA applied by peft
(unmerged), ``hidden_states[-1]`` at the ``<|query|>`` position, projection, L2 normalisation.

Two deviations forced by this environment, both neutral: transformers' ``AutoProcessor`` for Qwen2.5-VL
needs torchvision (broken beside the CPU torch wheel), so the tokenizer and ``Qwen2VLImageProcessorPil``
are called separately, exactly as the processor would; and the 3-D RoPE positions are computed by
``rope_index_457`` (transformers 4.57's algorithm, which upstream ran) and passed in.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

QUERY = "<|query|>"


def rope_index_457(input_ids: torch.Tensor, image_grid_thw: torch.Tensor, config) -> torch.Tensor:
    """transformers 4.57 ``Qwen2_5_VLModel.get_rope_index`` for image inputs (no padding), (3, B, L)."""
    spatial_merge_size = config.vision_config.spatial_merge_size
    image_token_id = config.image_token_id
    vision_start_token_id = config.vision_start_token_id
    position_ids = torch.ones(3, input_ids.shape[0], input_ids.shape[1], dtype=input_ids.dtype)
    image_index = 0
    for i, ids in enumerate(input_ids):
        vision_start_indices = torch.argwhere(ids == vision_start_token_id).squeeze(1)
        vision_tokens = ids[vision_start_indices + 1]
        image_nums = (vision_tokens == image_token_id).sum()
        input_tokens = ids.tolist()
        llm_pos_ids_list: list = []
        st = 0
        remain_images = int(image_nums)
        for _ in range(remain_images):
            ed = input_tokens.index(image_token_id, st)
            t, h, w = image_grid_thw[image_index].tolist()
            second_per_grid_t = 0
            image_index += 1
            llm_grid_t, llm_grid_h, llm_grid_w = t, h // spatial_merge_size, w // spatial_merge_size
            text_len = ed - st
            st_idx = llm_pos_ids_list[-1].max() + 1 if len(llm_pos_ids_list) > 0 else 0
            llm_pos_ids_list.append(torch.arange(text_len).view(1, -1).expand(3, -1) + st_idx)
            range_tensor = torch.arange(llm_grid_t).view(-1, 1)
            expanded_range = range_tensor.expand(-1, llm_grid_h * llm_grid_w)
            time_tensor = expanded_range * second_per_grid_t * config.vision_config.tokens_per_second
            t_index = time_tensor.long().flatten()
            h_index = torch.arange(llm_grid_h).view(1, -1, 1).expand(llm_grid_t, -1, llm_grid_w).flatten()
            w_index = torch.arange(llm_grid_w).view(1, 1, -1).expand(llm_grid_t, llm_grid_h, -1).flatten()
            llm_pos_ids_list.append(torch.stack([t_index, h_index, w_index]) + text_len + st_idx)
            st = ed + llm_grid_t * llm_grid_h * llm_grid_w
        if st < len(input_tokens):
            st_idx = llm_pos_ids_list[-1].max() + 1 if len(llm_pos_ids_list) > 0 else 0
            text_len = len(input_tokens) - st
            llm_pos_ids_list.append(torch.arange(text_len).view(1, -1).expand(3, -1) + st_idx)
        position_ids[..., i, :] = torch.cat(llm_pos_ids_list, dim=1).reshape(3, -1)
    return position_ids


def upstream_train_image(image: Image.Image, size: int = 448) -> Image.Image:
    """Upstream ``dataloader.py``: RGB, centre-crop to a square, Lanczos resize to 448x448."""
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return image.resize((size, size), Image.LANCZOS)


def _processor_module():
    """transformers >= 5.x: the PIL backend (no torchvision); older releases: the numpy "slow" processor."""
    try:
        from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as module

        return module, module.Qwen2VLImageProcessorPil
    except ImportError:
        from transformers.models.qwen2_vl import image_processing_qwen2_vl as module

        return module, module.Qwen2VLImageProcessor


def qwen_vl_utils_smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 12845056
) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize`` (what upstream's inference calls; transformers' own version differs for
    sides under ``factor``): each side is at least ``factor`` *before* the pixel bounds are applied."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def upstream_native_image(image: Image.Image) -> Image.Image:
    """qwen-vl-utils ``fetch_image``: its ``smart_resize`` to multiples of 28, then Pillow's default (bicubic)."""
    image = image.convert("RGB")
    h, w = qwen_vl_utils_smart_resize(image.height, image.width)
    return image.resize((w, h), Image.BICUBIC)


def _image_processor():
    return _processor_module()[1](
        min_pixels=3136,
        max_pixels=12845056,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def normalise_adapter_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-4.52 module paths to the ones transformers 5 + peft expect (upstream ran 4.57)."""
    out = {}
    for key, value in state.items():
        if key.startswith("base_model.model.model.") and not key.startswith(
            ("base_model.model.model.language_model.", "base_model.model.model.visual.")
        ):
            key = key.replace("base_model.model.model.", "base_model.model.model.language_model.", 1)
        out[key] = value
    return out


class UpstreamPipeline:
    """relsim inference as upstream runs it. ``embed(image)`` -> (384,) float32."""

    def __init__(self, adapter: str | Path, base: str | Path, *, dtype: torch.dtype = torch.float32):
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        adapter, base = Path(adapter), Path(base)
        self.tokenizer = AutoTokenizer.from_pretrained(adapter)
        self.processor = _image_processor()
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=dtype)
        model.resize_token_embeddings(len(self.tokenizer))
        config = LoraConfig(
            **{
                k: v
                for k, v in json.loads((adapter / "adapter_config.json").read_text()).items()
                if k in LoraConfig.__dataclass_fields__
            }
        )
        model = get_peft_model(model, config)
        state = normalise_adapter_keys(load_file(str(adapter / "adapter_model.safetensors")))
        tables = {k: state.pop(k) for k in list(state) if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
        result = set_peft_model_state_dict(model, state)
        assert not result.unexpected_keys, result.unexpected_keys
        with torch.no_grad():
            for key, table in tables.items():
                if key.endswith("embed_tokens.weight"):
                    model.get_input_embeddings().weight.copy_(table.to(dtype))
        self.model = model.eval()
        blob = torch.load(adapter / "projection_and_config.pt", weights_only=True)
        self.query_id = blob["query_token_id"]
        w, b = blob["projection"]["weight"], blob["projection"]["bias"]
        self.projection = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.projection.weight.copy_(w.float())
            self.projection.bias.copy_(b.float())
        self.dtype = dtype

    def inputs(self, image: Image.Image) -> dict[str, torch.Tensor]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUERY}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        vision = self.processor(images=[image], return_tensors="pt")
        grid = vision["image_grid_thw"]
        n = int(grid.prod()) // 4
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
        ids = self.tokenizer([text], return_tensors="pt")["input_ids"]
        config = self.model.base_model.model.config
        return {
            "input_ids": ids,
            "pixel_values": vision["pixel_values"].to(self.dtype),
            "image_grid_thw": grid,
            "position_ids": rope_index_457(ids, grid, config),
        }

    @torch.no_grad()
    def embed(self, image: Image.Image) -> torch.Tensor:
        inputs = self.inputs(image)
        out = self.model(**inputs, output_hidden_states=True)
        position = (inputs["input_ids"][0] == self.query_id).nonzero()[0, 0]
        hidden = out.hidden_states[-1][0, position].float()
        return F.normalize(self.projection(hidden), dim=-1)


def upstream_caption_image(image: Image.Image, size: int = 448) -> Image.Image:
    """Upstream's captioner input: ``convert('RGB').resize((448, 448), Image.Resampling.LANCZOS)``, a squash."""
    return image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


class UpstreamCaptioner:
    """The anonymous captioner as upstream runs it, one image at a time: the base
    ``Qwen2_5_VLForConditionalGeneration`` (its ``generation_config.json`` loaded with it), the LoRA through peft
    (``PeftModel``, unmerged), the chat template with the generation prompt, ``generate()``, and
    ``batch_decode(skip_special_tokens=True)``. An adapter that carries embedding / LM-head tables (trained on a
    resized vocabulary) gets the resize and the tables, as peft's loading did upstream.

    As in :class:`UpstreamPipeline`, the tokenizer and ``Qwen2VLImageProcessorPil`` stand in for
    ``AutoProcessor`` (torchvision); ``mm_token_type_ids`` is what the transformers 5 processor returns with
    them (1 at image tokens), which ``generate()`` needs for the 3-D positions.
    """

    def __init__(self, adapter: str | Path, base: str | Path, *, dtype: torch.dtype = torch.float32):
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        adapter, base = Path(adapter), Path(base)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.processor = _image_processor()
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=dtype)
        state = normalise_adapter_keys(load_file(str(adapter / "adapter_model.safetensors")))
        tables = {k: state.pop(k) for k in list(state) if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
        if tables:
            model.resize_token_embeddings(next(iter(tables.values())).shape[0])
        config = LoraConfig(
            **{
                k: v
                for k, v in json.loads((adapter / "adapter_config.json").read_text()).items()
                if k in LoraConfig.__dataclass_fields__
            }
        )
        model = get_peft_model(model, config)
        result = set_peft_model_state_dict(model, state)
        assert not result.unexpected_keys, result.unexpected_keys
        with torch.no_grad():
            for key, table in tables.items():
                target = model.get_input_embeddings() if "embed_tokens" in key else model.get_output_embeddings()
                target.weight.copy_(table.to(dtype))
        self.model = model.eval()
        self.dtype = dtype

    def inputs(self, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        vision = self.processor(images=[image], return_tensors="pt")
        grid = vision["image_grid_thw"]
        text = text.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // 4), 1)
        tokens = self.tokenizer([text], return_tensors="pt")
        model = self.model.base_model.model
        inputs = {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "pixel_values": vision["pixel_values"].to(self.dtype),
            "image_grid_thw": grid,
        }
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # transformers >= 5.x's processor
            inputs["mm_token_type_ids"] = (tokens["input_ids"] == model.config.image_token_id).int()
        return inputs

    @torch.no_grad()
    def generate(self, image: Image.Image, prompt: str, **kwargs) -> list[int]:
        """The new token ids, stop token included when there is one (``kwargs`` go to ``generate()``)."""
        inputs = self.inputs(image, prompt)
        out = self.model.generate(**inputs, **kwargs)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    def caption(self, image: Image.Image, prompt: str, **kwargs) -> str:
        ids = self.generate(image, prompt, **kwargs)
        return self.tokenizer.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
