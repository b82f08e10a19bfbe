"""open_clip-backed dual encoder with global and per-token outputs.

open_clip is imported lazily, inside the class, so importing this module is cheap.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmembed.nn.encoders.blocks import run_transformer, timm_tokens
from mmembed.nn.encoders.checkpoints import config_differences, load_state_dict_file, resize_pos_embed, stored_config
from mmembed.nn.encoders.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageResize,
    Interpolation,
    TrainAugment,
    build_image_transforms,
)
from mmembed.types import EmbeddingOutput, Processor, SpecialTokens

# CLIP's BPE (open_clip.SimpleTokenizer): the only place these numbers are spelled.
_CLIP_PAD, _CLIP_SOT, _CLIP_EOT = 0, 49406, 49407
_CLIP_REPURPOSED_MASK = 49405  # the last merge, repurposed as <|mask|> (IRRA's convention)
_CLIP_PSEUDO = 259  # a stand-alone "$" ("$</w>"): the pseudo-word slot of composed queries


class OpenCLIPDualEncoder(nn.Module):
    """Image and text towers of an open_clip CLIP model, built offline.

    The model is built from an open_clip model name (its bundled architecture
    JSON) or from a config dict with ``embed_dim``, ``vision_cfg`` and
    ``text_cfg`` (the open_clip schema; ``vision_cfg.timm_model_name`` selects a
    timm image tower). Weights come only from a local file.

    Args:
        model_name: open_clip architecture name, e.g. ``"ViT-B-16"``.
        model_config: open_clip-style config dict; overrides ``model_name``'s config.
        pretrained: Local path of weights (plain open_clip state dict, open_clip
            training checkpoint, mmembed Lightning checkpoint, safetensors, or transformers CLIP
            weights: a state dict or a ``save_pretrained`` folder, converted on load).
        pretrained_grid: Patch grid (rows, cols) the weights were trained with;
            inferred when ``None`` (square if possible).
        image_size: Input (height, width); position embeddings are interpolated
            when the checkpoint was trained at another size.
        context_length: Text length; a longer checkpoint table is truncated.
        image_mean: Normalisation mean.
        image_std: Normalisation std.
        train_augment: Training image augmentation (see ``build_image_transforms``).
        image_resize: ``squash`` (resize to ``image_size``) or ``shorter_side_crop`` (CLIP's aspect-keeping
            resize and centre crop) for evaluation images (see ``build_image_transforms``).
        image_interpolation: Resampling filter of image resizes (``bicubic``, open_clip's; ``bilinear``,
            the official person-ReID code's).
        pos_embed_interpolation: Filter used when a checkpoint's position grid is resized to this
            model's (``bicubic``; ``bilinear`` as the official person-ReID code).
        strict: Require every weight to be present in ``pretrained``.

    Shapes:
        images: (B, 3, H, W); text: (B, L) token ids; embeddings: (B, D).
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        pretrained_grid: tuple[int, int] | None = None,
        image_size: tuple[int, int] | None = None,
        context_length: int | None = None,
        image_mean: tuple[float, float, float] = OPENAI_MEAN,
        image_std: tuple[float, float, float] = OPENAI_STD,
        train_augment: TrainAugment = "clip",
        image_resize: ImageResize = "squash",
        image_interpolation: Interpolation = "bicubic",
        pos_embed_interpolation: Interpolation = "bicubic",
        strict: bool = True,
    ) -> None:
        super().__init__()
        import open_clip

        if model_config is None and model_name is None:
            raise ValueError("give model_name (an open_clip architecture) or model_config (a config dict)")
        if model_config is not None:
            cfg = copy.deepcopy(dict(model_config))
        else:
            cfg = open_clip.get_model_config(model_name)
            if cfg is None:
                raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
            cfg = copy.deepcopy(cfg)
        cfg.setdefault("vision_cfg", {})
        cfg.setdefault("text_cfg", {})
        if image_size is not None:
            cfg["vision_cfg"]["image_size"] = [int(image_size[0]), int(image_size[1])]
        if context_length is not None:
            cfg["text_cfg"]["context_length"] = int(context_length)
        self.config = cfg
        self.model_name = model_name
        build_cfg = {k: v for k, v in cfg.items() if k not in ("custom_text",)}
        if cfg.get("custom_text"):
            self.model = open_clip.CustomTextCLIP(**build_cfg)
        else:
            self.model = open_clip.CLIP(**build_cfg)
        self._freeze_unused_scalars()
        size = cfg["vision_cfg"].get("image_size", 224)
        self.image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        trunk = getattr(self.model.visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "set_input_size"):
            # open_clip builds timm towers at their default size; timm ViTs can be resized in place.
            trunk.set_input_size(img_size=self.image_size)
        self.context_length = int(cfg["text_cfg"].get("context_length", 77))
        self.export_vocab: int | None = None  # set by add_mask_token: token rows kept on export
        self.image_mean, self.image_std, self.train_augment = image_mean, image_std, train_augment
        self.image_resize, self.image_interpolation = image_resize, image_interpolation
        self.pos_embed_interpolation = pos_embed_interpolation
        self.pretrained = pretrained  # the local weights file, or None (random init)
        if pretrained is not None:
            self.load_pretrained(pretrained, pretrained_grid=pretrained_grid, strict=strict)

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str, pretrained_grid: tuple[int, int] | None = None, strict: bool = True) -> None:
        """Load local weights, resizing the image and text position tables if needed. Warns when the
        config saved beside the weights (an mmembed export) disagrees with the model built, e.g. a
        QuickGELU checkpoint loaded into a GELU tower: the weights load, but every activation differs."""
        stored = stored_config(path)
        differences = config_differences(self.config, stored) if stored is not None else []
        if differences:
            warnings.warn(f"{path}: the checkpoint's config disagrees with the model built "
                          f"({'; '.join(differences[:5])}); check model_name / model_config", stacklevel=2)
        sd = load_state_dict_file(path)
        visual = self.model.visual
        key = "visual.positional_embedding"
        if key in sd and hasattr(visual, "positional_embedding"):
            new_grid = tuple(int(g) for g in visual.grid_size)
            if sd[key].shape != visual.positional_embedding.shape:
                sd[key] = resize_pos_embed(sd[key], new_grid, old_grid=pretrained_grid,  # type: ignore[arg-type]
                                           mode=self.pos_embed_interpolation)
        tkey = "positional_embedding" if "positional_embedding" in sd else "text.positional_embedding"
        if tkey in sd and sd[tkey].shape[0] > self.context_length:
            sd[tkey] = sd[tkey][: self.context_length]
        sd = {k: v for k, v in sd.items() if k not in ("attn_mask", "text.attn_mask")}
        result = self.model.load_state_dict(sd, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("attn_mask")]
        if strict and (missing or result.unexpected_keys):
            raise ValueError(
                f"weights in {path} do not fit this architecture: {len(missing)} missing "
                f"(first: {missing[:5]}), {len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[:5]}). "
                "Check model_name/model_config, or pass strict: false to load what matches."
            )

    def load_text_weights(self, path: str | Path) -> None:
        """Load the text tower's weights from a file (any layout :func:`load_state_dict_file` reads),
        strictly for the text tower; image-tower keys in the file are ignored."""
        sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("visual.")}
        expected = {k for k in self.model.state_dict() if not k.startswith("visual.") and not k.endswith("attn_mask")}
        missing, unexpected = sorted(expected - set(sd) - {"logit_scale", "logit_bias"}), sorted(set(sd) - expected)
        if missing or unexpected:
            raise ValueError(f"text weights in {path} do not fit this text tower: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self.model.load_state_dict(sd, strict=False)

    def export(self, directory: str | Path, stem: str = "open_clip",
               text_from: OpenCLIPDualEncoder | None = None) -> tuple[Path, Path]:
        """Save a plain open_clip state dict and the config it was built from.

        Args:
            directory: Target folder.
            stem: File name stem.
            text_from: Take the text tower's weights from this encoder (a tuned copy made by
                :meth:`text_copy`); the image tower stays this encoder's.

        Returns:
            ``(weights_path, config_path)``: ``<stem>_model.pt`` and ``<stem>_config.json``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights, config = directory / f"{stem}_model.pt", directory / f"{stem}_config.json"
        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if text_from is not None:
            sd.update({k: v.detach().cpu() for k, v in text_from.model.state_dict().items() if not k.startswith("visual.")})
        if self.export_vocab is not None:  # drop the train-only <mask> row(s)
            for key in ("token_embedding.weight", "text.token_embedding.weight"):
                if key in sd:
                    sd[key] = sd[key][: self.export_vocab].clone()
        torch.save(sd, weights)
        config.write_text(json.dumps(self.config, indent=2, sort_keys=True))
        return weights, config

    def add_mask_token(self) -> int:
        """Append a train-only ``<mask>`` row to the text token embedding and pool text at EOT.

        The new id is the old vocabulary size (49408 for CLIP's BPE, the id
        ``SimpleTokenizer(additional_special_tokens=['<mask>'])`` gives it). Argmax pooling would
        pick it as the end of text, so pooling switches to ``eos`` (the first EOT, id 49407),
        which equals argmax pooling on any text without the new id. :meth:`export` drops the row
        again, so the exported weights and config are plain CLIP with the original vocabulary.
        Calling it again returns the same id.

        Returns:
            The mask token id.
        """
        tower = self.text_tower
        if getattr(tower, "cls_emb", None) is not None or not hasattr(tower, "token_embedding"):
            raise NotImplementedError("a <mask> token needs a CLIP-style text transformer")
        if self.export_vocab is not None:
            return self.export_vocab
        old = tower.token_embedding
        vocab, width = old.weight.shape
        eos_id = _CLIP_EOT
        new = nn.Embedding(vocab + 1, width).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight[:vocab] = old.weight
            nn.init.normal_(new.weight[vocab:], std=0.02)  # open_clip's token embedding init
        tower.token_embedding = new
        for owner, (pool_attr, eos_attr) in ((self.model, ("text_pool_type", "text_eos_id")), (tower, ("pool_type", "eos_id"))):
            if hasattr(owner, pool_attr):
                setattr(owner, pool_attr, "eos")
                setattr(owner, eos_attr, eos_id)
        self.config["text_cfg"].update(pool_type="eos", eos_id=eos_id)
        self.export_vocab = vocab
        return vocab

    # ---------------------------------------------------------------- processing
    @property
    def processor(self) -> Processor:
        """Image transforms and tokenizer matching this model."""
        train_tf, eval_tf = build_image_transforms(
            self.image_size, self.image_mean, self.image_std, train_augment=self.train_augment,
            resize=self.image_resize, interpolation=self.image_interpolation
        )
        return Processor(train_tf, eval_tf, self.tokenizer, extras={"context_length": self.context_length},
                         special_tokens=self.special_tokens)

    @property
    def special_tokens(self) -> SpecialTokens:
        """CLIP BPE's special ids by name. ``mask`` is the added ``<mask>`` row after
        :meth:`add_mask_token`, else the repurposed last merge (IRRA's convention)."""
        if self.config["text_cfg"].get("hf_tokenizer_name"):
            raise NotImplementedError("special_tokens are defined for open_clip's CLIP BPE tokenizer only")
        vocab = int(self.text_tower.token_embedding.weight.shape[0])
        mask = self.export_vocab if self.export_vocab is not None else _CLIP_REPURPOSED_MASK
        return SpecialTokens(pad=_CLIP_PAD, sot=_CLIP_SOT, eot=_CLIP_EOT, mask=mask, pseudo=_CLIP_PSEUDO,
                             first_special=_CLIP_REPURPOSED_MASK, vocab_size=vocab)

    @property
    def text_tower(self) -> nn.Module:
        """open_clip's text transformer (``CustomTextCLIP`` keeps it in ``.text``, ``CLIP`` is it)."""
        return getattr(self.model, "text", self.model)

    @property
    def num_prefix_tokens(self) -> int:
        """Image tokens ahead of the patches: open_clip ViTs have a class token; timm towers say how many."""
        visual = self.model.visual
        return int(getattr(visual.trunk, "num_prefix_tokens", 0)) if hasattr(visual, "trunk") else 1

    def encode(self, batch: dict[str, Any], side: str) -> Tensor:
        """Global embeddings of one side of a batch (the :class:`~mmembed.nn.encoders.base.Embedder` call).

        Shapes:
            batch["image"] (B, 3, H, W) or batch["text"] (B, L) -> (B, D).
        """
        if side == "image":
            return self.model.encode_image(batch["image"])
        if side == "text":
            return self.model.encode_text(batch["text"])
        raise ValueError(f"side must be 'image' or 'text', got {side!r}")

    def _freeze_unused_scalars(self) -> None:
        # Temperatures belong to the loss modules; open_clip's own scalars stay frozen (and unused).
        for name in ("logit_scale", "logit_bias"):
            if isinstance(getattr(self.model, name, None), nn.Parameter):
                getattr(self.model, name).requires_grad_(False)

    def text_copy(self, trainable: bool = False) -> OpenCLIPDualEncoder:
        """A deep copy without the image tower (text side only; the tower is never duplicated in memory).

        Args:
            trainable: Make every text weight of the copy trainable (open_clip's unused logit
                scalars stay frozen); False keeps the original's ``requires_grad`` flags.
        """
        visual = self.model.visual
        self.model.visual = nn.Identity()
        try:
            clone = copy.deepcopy(self)
        finally:
            self.model.visual = visual
        if trainable:
            clone.requires_grad_(True)
            clone._freeze_unused_scalars()
        return clone

    @property
    def tokenizer(self) -> Any:
        import open_clip

        if self.model_name is not None and self.config == open_clip.get_model_config(self.model_name):
            return open_clip.get_tokenizer(self.model_name, context_length=self.context_length)
        if self.config["text_cfg"].get("hf_tokenizer_name"):
            return open_clip.get_tokenizer("hf-hub:" + self.config["text_cfg"]["hf_tokenizer_name"])
        return open_clip.SimpleTokenizer(context_length=self.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def text_width(self) -> int:
        """Width W of the text tower's token embedding (a pseudo token's size)."""
        return int(self.text_tower.token_embedding.weight.shape[1])

    # ------------------------------------------------------------------- images
    def encode_image(self, images: Tensor, return_tokens: bool = False, return_attention: bool = False,
                     return_stages: int = 0) -> EmbeddingOutput:
        """Encode images.

        Args:
            images: Normalised image batch.
            return_tokens: Also return every visual token (CLS first) in the joint space.
            return_attention: Also return the last block's head-averaged attention.
            return_stages: Also return the token features of the last ``return_stages`` stages
                of the same forward pass: the outputs of the last blocks of a ViT (without the
                class token), or the last feature maps of a timm tower (flattened).

        Returns:
            :class:`EmbeddingOutput` (embedding not normalised).

        Shapes:
            images: (B, 3, H, W) -> embedding (B, D), tokens (B, 1 + h*w, D), attention (B, 1 + h*w, 1 + h*w),
            stages list of (B, N_k, C_k), shallow to deep.
        """
        if not (return_tokens or return_attention or return_stages):
            return EmbeddingOutput(self.model.encode_image(images))
        visual = self.model.visual
        if hasattr(visual, "trunk"):  # timm tower
            if return_attention:
                raise NotImplementedError("attention maps are only available for open_clip ViT towers")
            stages = None
            if return_stages:
                feats, maps = visual.trunk.forward_intermediates(images, indices=return_stages)
                stages = [m.flatten(2).transpose(1, 2) if m.ndim == 4 else m for m in maps]  # (B, C, h, w) -> (B, hw, C)
            else:
                feats = visual.trunk.forward_features(images)
            pooled = visual.head(visual.trunk.forward_head(feats))  # = visual(images), without a second pass
            tokens = timm_tokens(visual, feats) if return_tokens else None
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if return_tokens else None
            return EmbeddingOutput(pooled, tokens, mask, stages=stages)
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise NotImplementedError("per-token outputs need a ViT tower without attentional pooling")
        if not hasattr(visual, "conv1"):
            raise NotImplementedError(f"per-token outputs are not available for {type(visual).__name__} towers")
        x = visual.conv1(images)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+h*w, C)
        x = visual.ln_pre(visual.patch_dropout(x))
        x, attn, hidden = run_transformer(visual.transformer, x, None, return_attention, return_stages)
        x = visual.ln_post(x)
        tokens = x @ visual.proj if visual.proj is not None else x  # (B, L, C) -> (B, L, D)
        pooled = tokens[:, 1:].mean(1) if visual.pool_type == "avg" else tokens[:, 0]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        stages = [h[:, 1:] for h in hidden] if return_stages else None  # patch tokens only
        return EmbeddingOutput(pooled, tokens if return_tokens else None, mask if return_tokens else None, attn,
                               stages)

    # --------------------------------------------------------------------- text
    def encode_text(self, text: Tensor, return_tokens: bool = False, return_attention: bool = False,
                    pseudo_tokens: Tensor | None = None, pseudo_token_id: int | None = None) -> EmbeddingOutput:
        """Encode token ids, optionally with pseudo-word tokens written into the input.

        Args:
            text: Token ids from :attr:`tokenizer`.
            return_tokens: Also return every position in the joint space, with a
                mask that is True up to and including EOT.
            return_attention: Also return the last block's head-averaged attention.
            pseudo_tokens: One input-embedding vector per caption (composed retrieval: the
                projection of an image). It replaces the token embedding at every position whose
                id is ``pseudo_token_id`` before the positional embedding is added; the rest of the
                pass (causal mask, final norm, EOT pooling, projection) is unchanged.
            pseudo_token_id: The placeholder id (None: ``special_tokens.pseudo``, a stand-alone
                ``$`` in CLIP's BPE: ``"a photo of $ that is red"``).

        Returns:
            :class:`EmbeddingOutput` (embedding not normalised).

        Raises:
            ValueError: If ``pseudo_tokens`` is given and a caption has no placeholder.

        Shapes:
            text: (B, L), pseudo_tokens: (B, W) -> embedding (B, D), tokens (B, L, D), mask (B, L),
            attention (B, L, L).
        """
        if not (return_tokens or return_attention or pseudo_tokens is not None):
            return EmbeddingOutput(self.model.encode_text(text))
        tower = self.text_tower
        if getattr(tower, "cls_emb", None) is not None or not hasattr(tower, "token_embedding"):
            raise NotImplementedError("per-token text outputs and pseudo tokens need a CLIP-style text transformer")
        import open_clip.transformer as oct

        cast = tower.transformer.get_cast_dtype()
        seq_len = text.shape[1]
        x = tower.token_embedding(text)  # (B, L, C)
        if pseudo_tokens is not None:
            pseudo_token_id = self.special_tokens.pseudo if pseudo_token_id is None else pseudo_token_id
            slot = text == pseudo_token_id  # (B, L)
            if pseudo_tokens.shape != (text.shape[0], x.shape[-1]):
                raise ValueError(f"pseudo_tokens must be (batch, text width) = {(text.shape[0], x.shape[-1])}, "
                                 f"got {tuple(pseudo_tokens.shape)}")
            if not slot.any(1).all():
                rows = (~slot.any(1)).nonzero().flatten()[:5].tolist()
                raise ValueError(f"captions {rows} have no pseudo-token placeholder (id {pseudo_token_id}, "
                                 "a stand-alone '$'); write e.g. 'a photo of $ that ...'")
            x = torch.where(slot[..., None], pseudo_tokens[:, None, :].to(x.dtype), x)
        x = x.to(cast) + tower.positional_embedding[:seq_len].to(cast)  # (B, L, C)
        mask = tower.attn_mask[:seq_len, :seq_len] if tower.attn_mask is not None else None
        x, attn, _ = run_transformer(tower.transformer, x, mask, return_attention)
        x = tower.ln_final(x)
        proj = tower.text_projection
        if proj is None:
            tokens = x
        elif isinstance(proj, nn.Linear):
            tokens = proj(x)  # (B, L, C) -> (B, L, D)
        else:
            tokens = x @ proj
        pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        pooled = oct.text_global_pool(tokens, text, pool_type, eos_token_id=eos_id)  # (B, D)
        if pool_type == "eos" and eos_id is not None:
            end = (text == eos_id).int().argmax(dim=-1)
        elif pool_type == "argmax":
            end = text.argmax(dim=-1)
        else:
            end = (text != 0).sum(dim=-1) - 1
        valid = torch.arange(seq_len, device=text.device)[None, :] <= end[:, None]  # (B, L)
        return EmbeddingOutput(pooled, tokens if return_tokens else None, valid if return_tokens else None, attn)

    def forward(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Global image and text embeddings (not normalised). Shapes: (B, D), (B, D)."""
        return self.encode_image(images).embedding, self.encode_text(text).embedding
