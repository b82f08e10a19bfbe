"""RDEModule: Robust Dual Embedding (BGE + TSE, Confident Consensus Division, TAL).

Training scores every batch twice: BGE compares the global CLS/EOT embeddings,
TSE compares max-pooled embeddings of the tokens the last attention layer
selects. Each gets its own per-sample objective (TAL by default); CCD, run at
the start of every epoch over the whole training set, weights each sample by
its consensus clean label. Test similarity is the mean of the two cosines;
BGE-only and TSE-only metrics are logged too (``test/t2i_bge_r1``, ...).

References:
    Qin et al., "Noisy-Correspondence Learning for Text-to-Image Person
    Re-identification", CVPR 2024, https://arxiv.org/abs/2308.09911
    (Sec. 3.2 dual embeddings, Sec. 3.3.1 CCD / Alg. 1, Eq. 5 TAL).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from mmembed.distributed import gather_for_eval
from mmembed.lit.embedding_module import EmbeddingModule
from mmembed.methods.rde import ccd as ccd_lib
from mmembed.methods.rde import objective as obj
from mmembed.methods.rde.augment import augment_tokens
from mmembed.methods.rde.tse import TokenSelectionEmbedding
from mmembed.nn.encoders.base import TokenEmbedder

Objective = Literal["tal", "trl", "trl_s", "info_nce", "sdm"]


class RDEModule(EmbeddingModule):
    """RDE on an open_clip dual encoder.

    Args:
        encoder: Dual encoder returning per-token features and last-layer attention
            (:class:`mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`).
        objective: Per-sample loss for both embeddings: ``tal`` (the paper), ``trl``
            (hardest negative), ``trl_s``, ``info_nce`` or ``sdm`` (ablations).
        tau: TAL temperature.
        margin: TAL / TRL margin.
        scale: Logit scale of ``info_nce`` and ``sdm``.
        reduction: Batch reduction of the weighted per-sample losses: ``sum`` or ``mean`` (the
            label-weighted mean). None (default): the reference's per objective, a sum for TAL, TRL and
            TRL-S and a mean for InfoNCE and SDM.
        use_tse: Train and evaluate the TSE branch (False: BGE only).
        select_ratio: Fraction of tokens TSE selects (R).
        tse_dim: TSE embedding width.
        use_ccd: Weight samples by CCD's consensus clean labels.
        oracle_labels: Weight samples by the ground-truth clean flags of the training set
            instead of CCD (an oracle for studies; noisy pairs still serve as negatives).
        ccd_warmup_epochs: Epochs trained on all samples before CCD starts (the paper: 0).
        ccd_forward_batches: Training-sized batches encoded per forward of the CCD pass. Each
            sample's loss still sees the negatives of its own training-sized group (the
            encoders are in eval mode, so embeddings do not depend on the forward size); larger
            forwards only amortise per-call overhead. 1 reproduces the reference's loop.
        gmm: GMM preset: ``light`` (max_iter 10, tol 1e-2, reg 5e-4) or ``strict``
            (100, 1e-4, 1e-6). The reference picks ``strict`` from the true noise rate
            (> 0.4) or for RSTPReid; here the config chooses.
        gmm_seed: Seed of the GMM's k-means init (None: numpy's global RNG, as the reference).
        bn_train_mode: Train with BatchNorm in train mode. The paper's runs trained in eval
            mode (the reference never switched back after CCD), hence the default False.
        text_aug_p: Probability that a caption token is masked, replaced or deleted (0 disables).
        ccd_augment: The CCD pass reads the training split with the training augmentations, as
            the reference does (False: eval transforms). Its loader comes from the datamodule
            (:meth:`~mmembed.data.base.DataModule.train_pass_dataloader`).
        released_checkpoint: Start from an official RDE checkpoint (``QinYang79/RDE`` / Hugging Face
            ``Yangsss/RDE``: ``base_model``, ``visul_emb_layer``, ``texual_emb_layer``), loaded strictly;
            ``mmembed test`` with it evaluates the released model.
        tse_lr: Learning rate of every TSE parameter.
        bias_lr_factor: Learning-rate multiplier for encoder parameters named ``*bias*``
            (which also get no weight decay).
        optimizer: Optimizer factory (RDE: Adam).
        **kwargs: See :class:`~mmembed.lit.embedding_module.EmbeddingModule` and
            :class:`~mmembed.lit.module.TrainModule`.
    """

    encoder_protocol = TokenEmbedder

    def __init__(
        self,
        encoder: nn.Module,
        objective: Objective = "tal",
        tau: float = 0.015,
        margin: float = 0.1,
        scale: float = 50.0,
        reduction: Literal["sum", "mean"] | None = None,
        use_tse: bool = True,
        select_ratio: float = 0.3,
        tse_dim: int = 1024,
        use_ccd: bool = True,
        oracle_labels: bool = False,
        ccd_warmup_epochs: int = 0,
        ccd_forward_batches: int = 4,
        gmm: Literal["light", "strict"] = "light",
        gmm_seed: int | None = None,
        bn_train_mode: bool = False,
        text_aug_p: float = 0.2,
        ccd_augment: bool = True,
        released_checkpoint: str | None = None,
        tse_lr: float = 1e-3,
        bias_lr_factor: float = 2.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, optimizer=optimizer, **kwargs)
        if ccd_forward_batches < 1:
            raise ValueError(f"ccd_forward_batches must be >= 1, got {ccd_forward_batches}")
        self.tse = TokenSelectionEmbedding(encoder.embed_dim, tse_dim, select_ratio) if use_tse else None
        self.register_buffer("ccd_labels", torch.ones(0), persistent=False)  # (N,) set by CCD each epoch
        self._epoch_start, self._train_seconds = 0.0, None
        self._clean_flags: np.ndarray | None = None  # ground-truth flags of the training set, set per epoch
        if released_checkpoint is not None:
            from mmembed.methods.rde.released import read_released_rde

            result = self.load_state_dict(read_released_rde(released_checkpoint), strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("attn_mask") and "logit_" not in k]
            if missing or result.unexpected_keys:
                raise ValueError(f"{released_checkpoint} does not fit this RDEModule: missing {missing[:5]}, unexpected "
                                 f"{result.unexpected_keys[:5]} (check the encoder's model_name / image_size, tse_dim)")

    # ----------------------------------------------------------------- scoring
    def _per_sample(self, sim: Tensor, pids: Tensor) -> Tensor:
        h = self.hparams
        if h.objective == "tal":
            return obj.tal(sim, pids, tau=h.tau, margin=h.margin)
        if h.objective == "trl":
            return obj.trl(sim, pids, margin=h.margin, tau=h.tau)
        if h.objective == "trl_s":
            return obj.trl_s(sim, pids, margin=h.margin)
        if h.objective == "info_nce":
            return obj.info_nce_per_sample(sim, scale=h.scale)
        return obj.sdm(sim, pids, scale=h.scale)

    def _dual_embeddings(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """L2-normalised (image BGE, text BGE, image TSE, text TSE). Shapes: (B, D), (B, D), (B, T), (B, T)."""
        tokens = self.tse is not None
        img = self.encoder.encode_image(images, return_tokens=tokens, return_attention=tokens)
        txt = self.encoder.encode_text(ids, return_tokens=tokens, return_attention=tokens)
        img_b, txt_b = F.normalize(img.embedding.float(), dim=-1), F.normalize(txt.embedding.float(), dim=-1)
        if self.tse is None:
            return img_b, txt_b, None, None
        img_t = F.normalize(self.tse.encode_image(img).float(), dim=-1)  # (B, T)
        txt_t = F.normalize(self.tse.encode_text(txt, ids).float(), dim=-1)  # (B, T)
        return img_b, txt_b, img_t, txt_t

    def _losses(self, batch: dict[str, Any], group: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample BGE and TSE losses (TSE zeros when disabled) and the BGE text x image cosines.

        Args:
            batch: A training batch (``image``, ``text``, ``label``).
            group: Score the batch as consecutive groups of this many pairs (in-batch negatives
                come from the own group only), so one large forward gives the losses of several
                training-sized batches; None: the whole batch is one group.

        Shapes:
            -> (B,), (B,), (G, G) for the last group of G pairs.
        """
        ids = batch["text"]
        if self.hparams.text_aug_p > 0:
            ids = augment_tokens(ids, self.hparams.text_aug_p, self.encoder.special_tokens)
        img_b, txt_b, img_t, txt_t = self._dual_embeddings(batch["image"], ids)
        pids = batch["label"]
        n = int(pids.shape[0])
        group = n if group is None else group
        loss_b, loss_t = [], []
        # similarities and losses in fp32 under mixed precision too (autocast would run the matmuls in 16 bits)
        with torch.autocast(device_type=img_b.device.type, enabled=False):
            for s in range(0, n, group):
                g = slice(s, s + group)
                sim_b = txt_b[g] @ img_b[g].T  # text x image cosines
                loss_b.append(self._per_sample(sim_b, pids[g]))
                loss_t.append(self._per_sample(txt_t[g] @ img_t[g].T, pids[g]) if img_t is not None
                              else torch.zeros_like(loss_b[-1]))
        return torch.cat(loss_b), torch.cat(loss_t), sim_b

    def reduction_mode(self) -> Literal["sum", "mean"]:
        """The batch reduction in force: the configured one, else the reference's for the objective."""
        if self.hparams.reduction is not None:
            return self.hparams.reduction
        return "mean" if self.hparams.objective in ("info_nce", "sdm") else "sum"

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        loss_b, loss_t, sim_b = self._losses(batch)
        weights = None
        if self.ccd_labels.numel():
            weights = self.ccd_labels[batch["index"]].to(loss_b.dtype)  # (B,) consensus labels
        loss = obj.reduce(loss_b + loss_t, weights, mode=self.reduction_mode())
        out = {"loss": loss, "loss_bge": loss_b.detach().mean(), "loss_tse": loss_t.detach().mean()}
        if weights is not None:
            out["clean_fraction"] = weights.mean()
        self._log_cosines(sim_b.detach(), batch)
        return out

    def _log_cosines(self, sim: Tensor, batch: dict[str, Any]) -> None:
        """Epoch means of the BGE cosines: annotated pairs (split into truly clean / noisy
        when the data has ground-truth flags) and different-identity negatives (mean and
        std), the signals of memorisation (noisy pairs pulled up) and collapse (negatives
        to 1, spread to 0). Shapes: sim (B, B)."""
        pids, bs = batch["label"], int(sim.shape[0])
        diag = sim.diagonal().float()
        neg = sim[pids[:, None] != pids[None, :]].float()
        stats = {"cos_pair": diag.mean()}
        if neg.numel() > 1:
            stats.update(cos_neg=neg.mean(), cos_neg_std=neg.std())
        if self._clean_flags is not None:
            flags = torch.as_tensor(self._clean_flags[batch["index"].cpu().numpy()], device=sim.device)
            for name, mask in (("cos_clean", flags), ("cos_noisy", ~flags)):
                if mask.any():  # weighted by the pairs present, so the epoch mean is per pair
                    self.log(f"train/{name}", diag[mask].mean(), on_step=False, on_epoch=True,
                             batch_size=int(mask.sum()))
        for name, value in stats.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=bs)

    def encode_query_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        txt = self.encoder.encode_text(batch["text"], return_tokens=self.tse is not None,
                                       return_attention=self.tse is not None)
        return self._bge_tse_views(F.normalize(txt.embedding.float(), dim=-1),
                           None if self.tse is None else self.tse.encode_text(txt, batch["text"]))

    def encode_gallery_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        img = self.encoder.encode_image(batch["image"], return_tokens=self.tse is not None,
                                        return_attention=self.tse is not None)
        return self._bge_tse_views(F.normalize(img.embedding.float(), dim=-1),
                           None if self.tse is None else self.tse.encode_image(img))

    @staticmethod
    def _bge_tse_views(bge: Tensor, tse: Tensor | None) -> dict[str, Tensor]:
        if tse is None:
            return {"": bge}
        tse = F.normalize(tse.float(), dim=-1)
        # cat(b, t) . cat(b', t') = cos_b + cos_t, so after the evaluator's normalisation the
        # main view scores (S_bge + S_tse) / 2, the paper's test similarity.
        return {"": torch.cat([bge, tse], dim=-1), "bge": bge, "tse": tse}

    # --------------------------------------------------------------------- CCD
    def on_train_epoch_start(self) -> None:
        h = self.hparams
        # ground-truth flags of the (possibly rebuilt) training set: logging and the oracle only
        clean = getattr(self._train_dataset(), "clean", None)
        self._clean_flags = None if clean is None else np.asarray(clean, dtype=bool)
        if h.oracle_labels:
            if self._clean_flags is None:
                raise ValueError("oracle_labels needs a training set with ground-truth `clean` flags")
            self.ccd_labels = torch.as_tensor(self._clean_flags, dtype=torch.float32, device=self.device)
        elif h.use_ccd and self.current_epoch >= h.ccd_warmup_epochs:
            start = time.perf_counter()
            self.run_ccd()
            self.log("train/ccd_seconds", time.perf_counter() - start, on_step=False, on_epoch=True)
        elif self.ccd_labels.numel():
            self.ccd_labels = torch.ones(0, device=self.device)
        self._epoch_start, self._train_seconds = time.perf_counter(), None
        # the reference trained in eval mode (BatchNorm as a fixed affine); set it explicitly
        # every epoch because Lightning restores modes around validation
        self.train(h.bn_train_mode)

    @torch.no_grad()
    def run_ccd(self) -> dict[str, float]:
        """Confident Consensus Division over the training loader.

        Returns:
            The share of pairs labelled clean, the agreement of the BGE and TSE divisions and,
            when the training set has ground-truth clean flags, the precision / recall of the
            consensus labels and of each embedding's division.
        """
        group = self._datamodule().batch_size
        loader = self._ccd_loader()
        was_training = self.training
        self.eval()
        idx, lb, lt = [], [], []
        with torch.inference_mode(), self.trainer.precision_plugin.forward_context():
            for batch in loader:
                batch = move_data_to_device(batch, self.device)
                loss_b, loss_t, _ = self._losses(batch, group=group)
                idx.append(batch["index"])
                lb.append(loss_b.float())
                lt.append(loss_t.float())
        index, loss_b, loss_t = gather_for_eval(torch.cat(idx), torch.cat(lb), torch.cat(lt))
        n = len(loader.dataset)
        labels = torch.ones(3, n, device=self.device)  # consensus, BGE division, TSE division
        if self.trainer.is_global_zero:
            preset = ccd_lib.GMM_STRICT if self.hparams.gmm == "strict" else ccd_lib.GMM_LIGHT
            settings = ccd_lib.GMMSettings(**{**preset.__dict__, "seed": self.hparams.gmm_seed})
            loss_tse = loss_t.cpu() if self.tse is not None else None  # BGE-only: BGE's own division
            rng = np.random.default_rng(int(self.current_epoch) + 1_000_003 * int(self.hparams.gmm_seed or 0))
            result = ccd_lib.confident_consensus_division(loss_b.cpu(), loss_tse, settings, rng)
            divisions = np.stack([result.labels, result.pred_bge, result.pred_tse]).astype(np.float32)
            labels[:, index] = torch.as_tensor(divisions, device=self.device)
        labels = self.trainer.strategy.broadcast(labels, src=0)
        self.ccd_labels = labels[0].clone()  # out of inference mode
        self.train(was_training)
        divisions = labels.cpu().numpy() > 0.5
        stats: dict[str, float] = {"ccd_clean_fraction": float(divisions[0].mean())}
        if self.tse is not None:
            stats["ccd_agreement"] = float((divisions[1] == divisions[2]).mean())
        clean = self._clean_flags
        if clean is not None:
            pr = ccd_lib.label_precision_recall(divisions[0], clean)
            stats.update({"ccd_precision": pr["precision"], "ccd_recall": pr["recall"]})
            if self.tse is not None:  # each embedding's own division, before the consensus
                for name, pred in (("bge", divisions[1]), ("tse", divisions[2])):
                    pr = ccd_lib.label_precision_recall(pred, clean)
                    stats.update({f"ccd_{name}_precision": pr["precision"], f"ccd_{name}_recall": pr["recall"]})
        for name, value in stats.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=False)
        return stats

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        if self.trainer.training and self._train_seconds is None:  # validation inside fit: stop the clock
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # training time of the epoch, without the CCD pass and validation (CCD overhead = ccd / epoch seconds)
        seconds = self._train_seconds if self._train_seconds is not None else time.perf_counter() - self._epoch_start
        self.log("train/epoch_seconds", seconds, on_step=False, on_epoch=True)

    def _train_dataset(self) -> Any:
        """The training set (the datamodule's; a plain loader's dataset when fit without one)."""
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "train_dataset"):
            return datamodule.train_dataset()
        return getattr(self.trainer.train_dataloader, "dataset", None)

    def _datamodule(self) -> Any:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_pass_dataloader"):
            raise ValueError("RDE needs an mmembed datamodule (mmembed.data.base.DataModule: CCD reads the training "
                             "split through its train_pass_dataloader); pass datamodule= to trainer.fit")
        return datamodule

    def _ccd_loader(self) -> DataLoader:
        """The datamodule's extra pass over the training split (shuffled, every sample, this rank's
        shard, ``ccd_forward_batches`` training batches per forward), built once per training set.

        The trainer's own loader must not be iterated here: with persistent workers its iterator is
        shared, and consuming it would empty the coming epoch.
        """
        datamodule = self._datamodule()
        dataset = datamodule.train_dataset()
        cached = getattr(self, "_ccd_loader_cache", None)
        if cached is None or cached.dataset is not dataset:
            batch = datamodule.batch_size * self.hparams.ccd_forward_batches
            cached = datamodule.train_pass_dataloader(batch, augment=self.hparams.ccd_augment, shuffle=True,
                                                      rank=self.global_rank, world_size=self.trainer.world_size)
            self._ccd_loader_cache = cached
        if isinstance(cached.sampler, DistributedSampler):
            cached.sampler.set_epoch(self.current_epoch)
        return cached

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rde_ccd_labels"] = self.ccd_labels.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.ccd_labels = checkpoint.get("rde_ccd_labels", torch.ones(0))

    # --------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of the reference: encoder weights at the base lr, encoder biases at
        ``bias_lr_factor`` x lr without weight decay, every TSE parameter at ``tse_lr`` (biases
        without weight decay)."""
        groups: dict[str, list[nn.Parameter]] = {"enc_w": [], "enc_b": [], "tse_w": [], "tse_b": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[("tse" if name.startswith("tse.") else "enc") + ("_b" if "bias" in name else "_w")].append(p)
        h = self.hparams
        return [
            {"params": groups["enc_w"]},
            {"params": groups["enc_b"], "weight_decay": 0.0, "lr_factor": h.bias_lr_factor},
            {"params": groups["tse_w"], "lr": h.tse_lr},
            {"params": groups["tse_b"], "lr": h.tse_lr, "weight_decay": 0.0},
        ]
