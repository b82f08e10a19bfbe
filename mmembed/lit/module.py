"""TrainModule: the model-agnostic Lightning training base every mmembed module derives from.

It owns what every method needs and nothing modality-specific: optimizer and scheduler injection
(scheduler budgets follow the trainer unless a config sets them), parameter groups with per-group
``lr_factor`` and a no-decay group, logging of a loss dict, the clamp of learnable temperatures,
an optional exponential moving average (EMA) of the trainable weights, a documented switch to
manual optimisation, and an ``export`` hook for the artifacts a run leaves behind.

Manual optimisation (GradCache: several backward passes per step): set
``self.automatic_optimization = False`` in ``__init__``, override :meth:`training_step`, call
``self.manual_backward(loss)`` as often as needed, then :meth:`manual_step` once per optimizer step;
it steps the (single) configured optimizer, clamps temperatures, updates the EMA, zeroes the
gradients and steps a per-step scheduler, exactly what the automatic loop does through
:meth:`optimizer_step`. A module with several optimizers steps them itself and calls
:meth:`after_optimizer_step`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from mmembed.nn.heads import LogitScale

__all__ = ["TrainModule"]


def _import_path(obj: Any) -> str | None:
    """``module.qualname`` of an importable class or function (None for lambdas and local functions)."""
    qualname = getattr(obj, "__qualname__", "")
    module = getattr(obj, "__module__", None)
    return f"{module}.{qualname}" if module and qualname and "<" not in qualname else None


def _plain(value: Any) -> Any:
    """A hyperparameter as checkpoint-safe plain data: an importable class or function becomes its import
    path, a keyword-only ``functools.partial`` of one a ``{"class_path", "init_args"}`` dict (the CLI's
    form); anything else is returned unchanged."""
    if isinstance(value, functools.partial) and not value.args and _import_path(value.func):
        return {"class_path": _import_path(value.func), "init_args": dict(value.keywords)}
    if (isinstance(value, type) or inspect.isfunction(value) or inspect.isbuiltin(value)) and _import_path(value):
        return _import_path(value)
    return value


def _resolve_factory(value: Any) -> Any:
    """The inverse of :func:`_plain` for optimizer and scheduler factories read back from a checkpoint."""
    if isinstance(value, dict) and "class_path" in value and set(value) <= {"class_path", "init_args"}:
        return functools.partial(_resolve_factory(value["class_path"]), **(value.get("init_args") or {}))
    if isinstance(value, str) and "." in value:
        module, _, name = value.rpartition(".")
        target: Any = importlib.import_module(module.split(".<")[0])
        for part in name.split("."):
            target = getattr(target, part)
        return target
    return value


class TrainModule(pl.LightningModule):
    """Training base: optimisation, logging, EMA, export; knows nothing of images, texts or retrieval.

    Subclasses implement :meth:`compute_loss` (a dict with ``loss`` plus named parts, all logged as
    ``train/<name>``) and may override :meth:`param_groups`, :meth:`export` and the evaluation
    hooks (:meth:`evaluation_start`, :meth:`evaluation_step`, :meth:`evaluation_end`, which serve
    validation and test alike). They declare only
    their own constructor arguments and forward the rest with ``**kwargs``; the CLI resolves the
    forwarded ones against this signature (help, types, typo rejection), and
    ``save_hyperparameters`` records the whole chain.

    Args:
        optimizer: Optimizer factory, called with the parameter groups.
        lr_scheduler: Optional scheduler factory. A scheduler built with ``total=None``
            (:class:`~mmembed.lit.schedulers.WarmupCosineLR`) gets the trainer's budget:
            ``estimated_stepping_batches`` when stepped per step, ``max_epochs`` per epoch.
        lr_scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        no_decay_1d: Default groups: parameters with fewer than 2 dims (biases, norms, scalars)
            get weight decay 0.
        ema_decay: Keep an exponential moving average of the trainable weights with this decay
            (e.g. 0.999), updated after every optimizer step; None: no EMA.
        ema_eval: Validate, test and export with the EMA weights (when ``ema_decay`` is set).
        export_weights: Which weights :meth:`export` writes after ``fit``: ``last`` (the end of training)
            or ``best`` (the checkpoint the run's ``ModelCheckpoint`` ranked best, e.g. by CIRR-val R@1
            as the official LinCIR / RTD code keeps; with EMA, that checkpoint's average).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        no_decay_1d: bool = True,
        ema_decay: float | None = None,
        ema_eval: bool = True,
        export_weights: Literal["last", "best"] = "last",
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        with warnings.catch_warnings():
            # Through the CLI, injected modules are saved as their class_path config (load_from_checkpoint works).
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()  # the whole __init__ chain of the subclass
        for key in [k for k, v in self.hparams.items() if isinstance(v, nn.Module)]:
            self.hparams.pop(key)  # plain-Python construction: module objects are not config
            self._hparams_initial.pop(key, None)
        # Read from attributes, never from hparams: under the CLI, hparams hold what the config gave the
        # subclass, which omits a parent argument the subclass sets itself.
        self.optimizer_factory = _resolve_factory(optimizer)
        self.scheduler_factory = _resolve_factory(lr_scheduler)
        self.lr_scheduler_interval = lr_scheduler_interval
        self.no_decay_1d = no_decay_1d
        self.ema_decay, self.ema_eval = ema_decay, ema_eval
        self.export_weights = export_weights
        self._logit_scales: list[LogitScale] | None = None  # found on the first step
        self._ema: dict[str, Tensor] | None = None
        self._ema_active = False

    # ------------------------------------------------------------------ hooks
    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        """Training objective of one batch: ``{"loss": scalar, **named parts for logging}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer. A group may carry ``lr_factor`` (its lr becomes the
        optimizer's base lr times the factor) or its own ``lr`` / ``weight_decay``."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not self.no_decay_1d:
            return [{"params": params}]
        return [{"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    def export(self, directory: Path) -> list[Path]:
        """Write the run's deployable artifacts into ``directory``; returns the files written.
        Called on rank zero after ``fit`` by :class:`~mmembed.lit.callbacks.ExportArtifacts` where a
        module attaches it (:class:`~mmembed.lit.embedding_module.EmbeddingModule` does, from its
        ``export_encoder`` flag)."""
        return []

    def configure_callbacks(self) -> list[pl.Callback]:
        """With EMA on, a guard that puts the trained weights back if evaluation stops on an exception."""
        from mmembed.lit.callbacks import RestoreTrainedWeights

        return [RestoreTrainedWeights()] if self.ema_decay is not None else []

    # --------------------------------------------------------------- training
    def log_losses(self, out: dict[str, Tensor], stage: str = "train", batch_size: int | None = None) -> None:
        """Log every entry as ``{stage}/{name}`` (``loss`` on the progress bar)."""
        for name, value in out.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=batch_size)

    @staticmethod
    def batch_size_of(batch: Any) -> int | None:
        """Rows of a batch: its ``index`` tensor, else its first tensor or list."""
        if isinstance(batch, dict):
            if isinstance(batch.get("index"), Tensor):
                return int(batch["index"].shape[0])
            for value in batch.values():
                if isinstance(value, Tensor | list):
                    return len(value)
        return None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self.log_losses(out, "train", self.batch_size_of(batch))
        return out["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Keep learnable temperatures in range (as CLIP does) and update the EMA."""
        if self._logit_scales is None:
            self._logit_scales = [m for m in self.modules() if isinstance(m, LogitScale)]
        for module in self._logit_scales:
            module.clamp_()
        self._update_ema()

    def manual_step(self, loss: Tensor | None = None) -> None:
        """One optimizer step under manual optimisation (see the module docstring).

        Args:
            loss: Backpropagated first with ``manual_backward`` when given.
        """
        if self.automatic_optimization:
            raise RuntimeError("manual_step is for manual optimisation: set self.automatic_optimization = False")
        optimizer = self.optimizers()
        if loss is not None:
            self.manual_backward(loss)
        optimizer.step()
        self.after_optimizer_step()
        optimizer.zero_grad()
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.lr_scheduler_interval == "step":
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.lr_scheduler_interval == "epoch":
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        return self.optimize_groups(self.param_groups())

    def optimize_groups(self, groups: list[dict[str, Any]]) -> Any:
        """Build the configured optimizer over parameter groups, then attach the scheduler.

        ``lr_factor`` keys multiply the group's learning rate and are removed; empty groups are dropped.
        """
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_factor", 1.0)
        return self.with_scheduler(optimizer)

    def scheduler_budget(self) -> int:
        """Scheduler steps in this run: optimizer steps (per-step) or epochs (per-epoch)."""
        trainer = self.trainer
        if self.lr_scheduler_interval == "step":
            total = trainer.estimated_stepping_batches
        else:
            total = trainer.max_epochs
        if total is None or total < 0 or total == float("inf"):
            raise ValueError("the scheduler's total follows the trainer's budget, but the trainer has none: set "
                             "trainer.max_epochs (per-epoch schedules) or trainer.max_steps, or the scheduler's total")
        return int(total)

    def with_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Attach the configured scheduler (if any) to ``optimizer``, in Lightning's return format."""
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total") and getattr(scheduler, "total", 0) is None:
            scheduler.set_total(self.scheduler_budget())
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval}}

    # -------------------------------------------------------------------- EMA
    def _ema_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.ema_decay
        if decay is None:
            return
        if self._ema is None:
            self._ema = {n: p.detach().clone() for n, p in self._ema_params()}
            return
        for name, p in self._ema_params():
            ema = self._ema[name]
            if ema.device != p.device:  # restored from a checkpoint before the model moved to its device
                ema = self._ema[name] = ema.to(p.device)
            ema.lerp_(p.detach(), 1.0 - decay)  # ema = decay * ema + (1 - decay) * p

    @property
    def ema_state(self) -> dict[str, Tensor] | None:
        """The EMA weights by parameter name (None before the first step or without EMA)."""
        return self._ema

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside the block the trainable weights are the EMA weights (when EMA is on and ``ema_eval``)."""
        if self._ema is None or not self.ema_eval or self._ema_active:
            yield
            return
        params = dict(self._ema_params())
        saved = {n: params[n].detach().clone() for n in self._ema if n in params}
        with torch.no_grad():
            for n in saved:
                params[n].copy_(self._ema[n])
        self._ema_active = True
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    params[n].copy_(value)
            self._ema_active = False

    @contextlib.contextmanager
    def weights_for_export(self) -> Iterator[None]:
        """Inside the block the weights are the ones :meth:`export` should write (``export_weights``):
        the best checkpoint's (its EMA average under ``ema_eval``) or the current ones (EMA-averaged)."""
        if self.export_weights == "last":
            with self.ema_weights():
                yield
            return
        ranked = [c for c in self.trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
        path = ranked[0].best_model_path if ranked else ""
        if not path:
            raise ValueError("export_weights: best needs a ModelCheckpoint with a monitor in trainer.callbacks "
                             "(it ranks the checkpoints); none recorded a best checkpoint in this run")
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        saved = {k: v.detach().clone() for k, v in self.state_dict().items()}
        best = dict(checkpoint["state_dict"])
        if self.ema_eval and "ema_state" in checkpoint:
            best.update(checkpoint["ema_state"])
        self.load_state_dict(best, strict=True)
        try:
            yield
        finally:
            self.load_state_dict(saved, strict=True)

    def _swap_in_ema(self) -> None:
        if self._ema is not None and self.ema_eval and not self._ema_active:
            self._ema_context = self.ema_weights()
            self._ema_context.__enter__()

    def _swap_out_ema(self) -> None:
        context = getattr(self, "_ema_context", None)
        if context is not None:
            self._ema_context = None
            context.__exit__(None, None, None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # classes and functions among the hyperparameters (a module built in Python) are stored by import
        # path, so every mmembed checkpoint reads with torch.load(weights_only=True)
        if isinstance(checkpoint.get("hyper_parameters"), dict):
            checkpoint["hyper_parameters"] = {k: _plain(v) for k, v in checkpoint["hyper_parameters"].items()}
        if self._ema is not None:
            checkpoint["ema_state"] = {n: t.detach().cpu() for n, t in self._ema.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_state" in checkpoint:
            self._ema = {n: t.to(self.device) for n, t in checkpoint["ema_state"].items()}

    # ------------------------------------------------------------- evaluation
    def evaluation_start(self, stage: str) -> None:
        """Before validation (``stage="val"``) or test: reset the evaluators."""

    def evaluation_step(self, batch: Any, dataloader_idx: int) -> None:
        """Encode one evaluation batch and feed the evaluators."""

    def evaluation_end(self, stage: str) -> None:
        """After validation or test: compute, log and reset the evaluators."""

    # The EMA weights are in place from the evaluation epoch's start to the end of the module's
    # epoch-end hook, so checkpoints (saved after it) keep the trained weights plus ``ema_state``.
    def _begin_evaluation(self, stage: str) -> None:
        self._swap_in_ema()
        self.evaluation_start(stage)

    def _end_evaluation(self, stage: str) -> None:
        try:
            self.evaluation_end(stage)
        finally:
            self._swap_out_ema()

    def on_validation_epoch_start(self) -> None:
        self._begin_evaluation("val")

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._begin_evaluation("test")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation_step(batch, dataloader_idx)

    test_step = validation_step

    # ------------------------------------------------------------------ outputs
    def output_dir(self) -> Path:
        """Where this run writes pictures and exports (the logger's version folder).

        Under DDP ``trainer.log_dir`` broadcasts, so every rank must call this.
        """
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir)
