"""The released RDE checkpoints (``QinYang79/RDE``; Hugging Face ``Yangsss/RDE``) in RDEModule's layout.

The official model holds the CLIP under ``base_model`` (open_clip's key names), the image TSE head as
``visul_emb_layer`` and the text one as ``texual_emb_layer``. Each head is ``fc`` (image) or ``linear``
(text) plus an ``MLP`` of ``layers.0 -> bns.0 -> ReLU -> layers.1``; the image head's ``linear`` and both
heads' ``bns.1`` are built but never used in the official forward, and are dropped here.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["read_released_rde", "released_rde_state"]

_HEADS = {"visul_emb_layer": ("tse.image_head", "fc"), "texual_emb_layer": ("tse.text_head", "linear")}
_MLP = {"mlp.layers.0": "mlp.0", "mlp.bns.0": "mlp.1", "mlp.layers.1": "mlp.3"}
_UNUSED = re.compile(r"^(visul_emb_layer\.linear\.|(visul|texual)_emb_layer\.mlp\.bns\.1\.)")


def released_rde_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official RDE state dict to :class:`~mmembed.methods.rde.module.RDEModule`'s keys.

    Returns:
        ``encoder.model.*`` and ``tse.{image,text}_head.*`` keys (``logit_scale`` of the official model,
        a constant, is not a parameter there and is absent).

    Raises:
        ValueError: On a key outside the released layout.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("base_model."):
            out["encoder.model." + key[len("base_model."):]] = value
            continue
        if _UNUSED.match(key):
            continue
        head, _, rest = key.partition(".")
        if head not in _HEADS:
            raise ValueError(f"unexpected key {key!r} for a released RDE checkpoint (base_model.*, visul_emb_layer.*, "
                             "texual_emb_layer.*)")
        target, fc_name = _HEADS[head]
        part, _, leaf = rest.rpartition(".")
        if part == fc_name:
            out[f"{target}.fc.{leaf}"] = value
        elif part in _MLP:
            out[f"{target}.{_MLP[part]}.{leaf}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in the released TSE head {head}")
    return out


def read_released_rde(path: str | Path) -> dict[str, Tensor]:
    """Read an official RDE checkpoint (``{"model": state_dict}`` or a bare state dict) weights-only and rename it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released RDE checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected an RDE state dict")
    return released_rde_state(state)
