"""Small heads shared by methods: learnable logit scale and linear projection.

References:
    CLIP, Radford et al. 2021, https://arxiv.org/abs/2103.00020 (Sec. 2.5: the
    temperature is a learnable log-parameterised scalar, initialised to 0.07 and
    clipped so that the logit scale never exceeds 100).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LogitScale", "Projection"]


class LogitScale(nn.Module):
    """Learnable inverse temperature ``exp(log_scale)``, clamped to ``max_scale``.

    The stored quantity is ``log_scale = log(1 / init_temperature)``; ``forward()``
    returns ``min(exp(log_scale), max_scale)`` as a 0-dim tensor that multiplies
    cosine similarities.

    Clamp gradient: the clamp is applied to the *output*, so while
    ``exp(log_scale) < max_scale`` the gradient flows normally (``d/d log_scale =
    scale``), and once ``exp(log_scale) >= max_scale`` the gradient is exactly zero
    and the effective scale stays at ``max_scale``. The raw parameter may
    therefore drift above the ceiling (e.g. through optimizer momentum) and would
    then need a gradient pointing down to come back, which it will not receive. To
    keep the parameter itself in range, as CLIP does, call :meth:`clamp_` after
    each optimizer step.

    Args:
        init_temperature: Initial temperature ``tau``; the initial scale is ``1/tau``.
        learnable: If True ``log_scale`` is an ``nn.Parameter``; otherwise a
            buffer (saved in the state dict, never updated by the optimizer).
        max_scale: Upper bound on the returned scale.

    Shapes:
        forward: ``() -> ()``.

    References:
        https://arxiv.org/abs/2103.00020 (Sec. 2.5).
    """

    log_scale: Tensor

    def __init__(
        self,
        init_temperature: float = 0.07,
        learnable: bool = True,
        max_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        self.max_scale = float(max_scale)
        self.learnable = learnable
        init = torch.tensor(math.log(1.0 / init_temperature))
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def forward(self) -> Tensor:
        """Return the clamped scale ``min(exp(log_scale), max_scale)`` (0-dim)."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    @property
    def temperature(self) -> float:
        """Current effective temperature ``1 / scale`` as a Python float."""
        return 1.0 / float(self.forward().detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored ``log_scale`` in place to ``[.., log(max_scale)]``."""
        self.log_scale.clamp_(max=math.log(self.max_scale))

    def extra_repr(self) -> str:  # noqa: D102
        return f"learnable={self.learnable}, max_scale={self.max_scale}"


class Projection(nn.Module):
    """Linear projection from an encoder width to the shared embedding width.

    Args:
        in_dim: Input width.
        out_dim: Output (embedding) width ``D``.
        bias: Whether the linear layer has a bias (CLIP's projections do not).

    Shapes:
        x: ``(..., in_dim) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Project ``x`` (no normalisation; L2-normalise downstream if needed)."""
        return self.linear(x)  # (..., in_dim) -> (..., out_dim)
