"""Loading local checkpoints into encoders: format detection and position-embedding resizing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict_file(path: str | Path, prefix: str | None = None) -> dict[str, Tensor]:
    """Read a state dict from a local file, whatever wrapper it comes in.

    Accepts a plain state dict, an open_clip training checkpoint
    (``{"state_dict": ...}`` with ``module.`` prefixes), a Lightning checkpoint
    of an mmembed module (keys under ``encoder.model.``), a safetensors file, or
    transformers CLIP weights (a state dict, ``{"CLIPTextModelWithProjection": ...}``
    as RTD releases it, or a ``save_pretrained`` folder), converted to open_clip's
    layout (:mod:`mmembed.nn.encoders.hf_clip`).
    Files are read with ``weights_only=True``.

    Args:
        path: Local file path. Nothing is ever downloaded.
        prefix: Keep only keys under this prefix and strip it. ``None`` detects
            the mmembed Lightning layout (``encoder.model.``) automatically.

    Returns:
        The state dict.
    """
    from mmembed.nn.encoders.hf_clip import hf_clip_to_open_clip, is_hf_clip, read_hf_folder

    path = Path(path)
    if path.is_dir():  # a transformers save_pretrained folder
        sd = read_hf_folder(path)
        return hf_clip_to_open_clip(sd) if is_hf_clip(sd) else sd
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist. mmembed never downloads weights: pass the path of a local file "
            "(an open_clip state dict, an open_clip training checkpoint or an mmembed Lightning checkpoint)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: dict[str, Tensor] = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"could not read {path} as a weights-only torch checkpoint ({exc}). "
                "Re-save it as a plain state dict (torch.save(model.state_dict(), path))."
            ) from exc
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        for released in ("CLIPModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection"):
            if isinstance(sd, dict) and isinstance(sd.get(released), dict):  # RTD's release: {class name: weights}
                sd = sd[released]
        if not isinstance(sd, dict):
            raise ValueError(f"{path} holds a {type(sd).__name__}, expected a state dict")
    for wrapper in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(wrapper) for k in sd):
            sd = {k[len(wrapper) :]: v for k, v in sd.items()}
    if is_hf_clip(sd):
        sd = hf_clip_to_open_clip(sd)
    if prefix is None and any(k.startswith("encoder.model.") for k in sd):
        prefix = "encoder.model."
    if prefix:
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{path} has no keys under the prefix {prefix!r}")
    return sd


def infer_grid(num_patches: int, target_grid: tuple[int, int]) -> tuple[int, int]:
    """Guess the (rows, cols) patch grid a checkpoint was trained with.

    A perfect square is taken as square; otherwise the factorisation whose aspect
    ratio is closest to ``target_grid`` is used.

    Args:
        num_patches: Number of patch positions in the checkpoint (CLS excluded).
        target_grid: The grid of the model being loaded.

    Returns:
        The inferred grid.
    """
    root = math.isqrt(num_patches)
    if root * root == num_patches:
        return root, root
    target_ratio = target_grid[0] / target_grid[1]
    best: tuple[int, int] | None = None
    for rows in range(1, num_patches + 1):
        if num_patches % rows:
            continue
        cand = (rows, num_patches // rows)
        if best is None or abs(math.log(cand[0] / cand[1] / target_ratio)) < abs(
            math.log(best[0] / best[1] / target_ratio)
        ):
            best = cand
    assert best is not None
    return best


def resize_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> Tensor:
    """Interpolate a ViT position-embedding table to another (possibly non-square) grid.

    The prefix (CLS) positions are kept as they are; the patch grid is resized
    with ``F.interpolate``. This is how a 224x224 CLIP is loaded at 384x128
    (a 14x14 grid becomes 24x8).

    Args:
        pos_embed: The checkpoint's table.
        new_grid: Target (rows, cols).
        old_grid: Source (rows, cols); inferred with :func:`infer_grid` if ``None``.
        num_prefix_tokens: Leading non-patch positions (1 for CLS).
        mode: Interpolation mode.

    Returns:
        The resized table.

    Shapes:
        pos_embed: (P + old_rows * old_cols, D) -> (P + new_rows * new_cols, D).
    """
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    if old_grid is None:
        old_grid = infer_grid(grid.shape[0], new_grid)
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(f"old grid {old_grid} does not match {grid.shape[0]} patch positions")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    img = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    img = F.interpolate(img, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = img.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)  # (h'w', D)
    return torch.cat([prefix, grid], dim=0)


def stored_config(path: str | Path) -> dict[str, Any] | None:
    """The architecture config saved beside a weights file, where there is one: ``<stem>_config.json``
    next to ``<stem>_model.pt`` (what :meth:`OpenCLIPDualEncoder.export` writes), else ``<file>.json``."""
    path = Path(path)
    if path.is_dir():  # a transformers save_pretrained folder: its config.json in open_clip's terms
        from mmembed.nn.encoders.hf_clip import hf_clip_config

        return hf_clip_config(path)
    candidates = [path.with_suffix(".json")]
    if path.stem.endswith("_model"):
        candidates.insert(0, path.with_name(path.stem[: -len("_model")] + "_config.json"))
    for candidate in candidates:
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                return None
            return config if isinstance(config, dict) else None
    return None


# Settings a load adapts to (position tables are resized or cut) or that give the same outputs
# (EOT pooling equals argmax pooling on text without an added token).
_ADAPTED = frozenset({"image_size", "context_length", "pool_type", "eos_id", "timm_model_pretrained"})


def config_differences(built: dict[str, Any], stored: dict[str, Any], prefix: str = "") -> list[str]:
    """Architecture settings where a stored config disagrees with the built model's, as
    ``"key: <stored> in the checkpoint's config, <built> built"``. A key only the stored config has is
    compared with open_clip's default for ``quick_gelu`` (False); settings a load adapts to (image size,
    context length, text pooling) are not compared, nor keys missing on one side."""
    out = []
    for key, value in stored.items():
        if key in _ADAPTED:
            continue
        here = built.get(key, False if key == "quick_gelu" else None)
        if isinstance(value, dict) and isinstance(here, dict):
            out += config_differences(here, value, f"{prefix}{key}.")
        elif here is not None and here != value and not (isinstance(here, list | tuple) and list(here) == value):
            out.append(f"{prefix}{key}: {value!r} in the checkpoint's config, {here!r} built")
    if not prefix and "quick_gelu" not in stored and built.get("quick_gelu"):
        out.append("quick_gelu: False in the checkpoint's config, True built")
    return out
