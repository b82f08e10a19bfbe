"""Hugging Face transformers CLIP weights in open_clip's layout.

``CLIPModel``, ``CLIPTextModelWithProjection`` and ``CLIPVisionModelWithProjection`` state dicts (or
``save_pretrained`` folders) hold the same architecture as open_clip's ``CLIP`` under other names, with
the attention's query, key and value projections apart and the output projections as ``nn.Linear``
weights. :func:`hf_clip_to_open_clip` renames and reshapes them; nothing else changes, so the converted
model's embeddings equal the HF model's (OpenAI's models use QuickGELU: build ``*-quickgelu``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["hf_clip_config", "hf_clip_to_open_clip", "is_hf_clip", "read_hf_folder"]

_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
          "self_attn.out_proj": "attn.out_proj"}
_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def is_hf_clip(state: dict[str, Tensor]) -> bool:
    """Whether a state dict is in transformers' CLIP layout."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in state)


def hf_clip_to_open_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename and reshape a transformers CLIP state dict into open_clip's ``CLIP`` layout.

    Args:
        state: ``CLIPModel`` (both towers), ``CLIPTextModelWithProjection`` (text) or
            ``CLIPVisionModelWithProjection`` (image) weights.

    Returns:
        open_clip keys: ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.i.*``,
        ``ln_final``, ``text_projection`` and ``visual.*``; the tower that was absent is absent.

    Shapes:
        q/k/v_proj (C, C) x 3 -> in_proj (3C, C); text_projection (E, C) -> (C, E); visual_projection
        (E, C) -> visual.proj (C, E).
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # (E, C) -> (C, E): open_clip multiplies x @ proj
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.T.contiguous()
        elif (match := _LAYER.match(key)) is not None:
            tower, index, part, kind = match.groups()
            base = ("" if tower == "text_model" else "visual.") + f"transformer.resblocks.{index}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((base, kind, tower), {})[part[-6]] = value
            elif part in _BLOCK:
                out[f"{base}{_BLOCK[part]}.{kind}"] = value
            else:
                raise ValueError(f"unexpected transformers CLIP key {key!r}")
        elif not key.endswith("position_ids"):  # a buffer of older transformers releases
            raise ValueError(f"unexpected transformers CLIP key {key!r}")
    for (base, kind, _), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{base}: the checkpoint lacks one of q_proj / k_proj / v_proj")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3C, ...)
    return out


def read_hf_folder(folder: str | Path) -> dict[str, Tensor]:
    """The weights of a ``save_pretrained`` folder (``model.safetensors`` or ``pytorch_model.bin``)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin (a save_pretrained folder)")


def hf_clip_config(folder: str | Path) -> dict | None:
    """open_clip's config for a ``save_pretrained`` folder's ``config.json`` (CLIPModel), or None if absent.

    Returns:
        ``{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}``.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text(encoding="utf-8"))
    text, vision = cfg.get("text_config", {}), cfg.get("vision_config", {})
    if not text or not vision:
        return None
    return {
        "embed_dim": cfg.get("projection_dim", 512),
        "quick_gelu": text.get("hidden_act", "quick_gelu") == "quick_gelu",
        "vision_cfg": {"image_size": vision["image_size"], "patch_size": vision["patch_size"],
                       "width": vision["hidden_size"], "layers": vision["num_hidden_layers"],
                       "head_width": vision["hidden_size"] // vision["num_attention_heads"],
                       "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"]},
        "text_cfg": {"context_length": text.get("max_position_embeddings", 77), "vocab_size": text["vocab_size"],
                     "width": text["hidden_size"], "heads": text["num_attention_heads"],
                     "layers": text["num_hidden_layers"], "mlp_ratio": text["intermediate_size"] / text["hidden_size"]},
    }
