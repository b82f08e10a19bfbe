"""Learning-rate schedules used by the methods (plain torch schedulers)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup: int, total: int, warmup_start_factor: float, min_factor: float) -> float:
    """Multiplier of the base learning rate at ``step``.

    Linear warm-up from ``warmup_start_factor`` to 1 over ``warmup`` steps, then a
    cosine from 1 down to ``min_factor`` at ``total``:
    ``f(e) = s(1 - e/w) + e/w`` for ``e < w``, else
    ``min + (1 - min) * 0.5 * (1 + cos(pi (e - w) / (total - w)))``.
    """
    if step < warmup:
        return warmup_start_factor * (1 - step / warmup) + step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Linear warm-up then cosine decay, stepped per epoch or per step (set by the module).

    Args:
        optimizer: The optimizer (injected by Lightning/CLI).
        warmup: Warm-up length in scheduler steps (epochs for per-epoch stepping).
        total: Total number of scheduler steps. None (the default): the module sets it from the
            trainer's budget (``max_epochs``, or the optimizer steps of the run), so a config never
            copies the budget by hand.
        warmup_start_factor: Multiplier at step 0.
        min_factor: Multiplier reached at ``total``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup: int = 5,
        total: int | None = None,
        warmup_start_factor: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        if (total is not None and total <= 0) or warmup < 0:
            raise ValueError(f"need total > 0 and warmup >= 0, got total={total}, warmup={warmup}")
        self.warmup, self.total = warmup, total
        self.warmup_start_factor, self.min_factor = warmup_start_factor, min_factor
        super().__init__(optimizer, lambda step: self.factor(step))

    def factor(self, step: int) -> float:
        """The learning-rate multiplier at ``step``. Until ``total`` is known only the warm-up applies
        (then 1.0); :meth:`set_total` re-applies the current step's value."""
        if self.total is None:  # min_factor 1: the warm-up ramp, then a flat 1.0
            return warmup_cosine_factor(step, self.warmup, self.warmup + 1, self.warmup_start_factor, 1.0)
        return warmup_cosine_factor(step, self.warmup, self.total, self.warmup_start_factor, self.min_factor)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step; a total that follows the trainer keeps this run's budget (a resumed run
        with more epochs stretches the schedule instead of ending it at the old total)."""
        total, follows = self.total, getattr(self, "follows_trainer", False)
        super().load_state_dict(state_dict)
        if follows:
            self.total, self.follows_trainer = total, True

    def set_total(self, total: int) -> None:
        """Set the budget (called by :class:`~mmembed.lit.module.TrainModule` before training) and
        re-apply the current step's learning rate."""
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total}")
        self.total, self.follows_trainer = int(total), True
        values = [base * self.factor(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = values
