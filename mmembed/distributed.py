"""Rank/world helpers and the two cross-device gathers used by mmembed.

This is the only module that talks to :mod:`torch.distributed`. Losses call
:func:`gather_with_grad` (training, differentiable) and evaluators call
:func:`gather_for_eval` (no grad, uneven sizes, de-duplicated by sample index).
Every function degrades to a cheap local operation when no process group is
initialised, so the same code runs unchanged on a laptop and under DDP.

Shapes:
    ``B`` local batch, ``G`` world size, ``D`` embedding width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "gather_with_grad",
    "gather_for_eval",
]

# Length of the fixed-size shape record exchanged by ``check_sizes`` (ndim + dims).
_MAX_SHAPE_RECORD = 9


def is_distributed() -> bool:
    """Return True when :mod:`torch.distributed` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Return this process's global rank, or 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Return the number of processes ``G``, or 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def _check_equal_shapes(x: Tensor) -> None:
    """All-gather every rank's shape of ``x`` and raise if they differ.

    The record has a fixed length so that the collective itself can never hang
    on mismatched sizes (which is exactly what an unchecked ``all_gather`` does).
    """
    if x.dim() >= _MAX_SHAPE_RECORD:
        raise ValueError(f"check_sizes supports at most {_MAX_SHAPE_RECORD - 1} dims, got {x.dim()}")
    record = torch.full((_MAX_SHAPE_RECORD,), -1, dtype=torch.long, device=x.device)
    record[0] = x.dim()
    record[1 : 1 + x.dim()] = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    records = [torch.empty_like(record) for _ in range(get_world_size())]
    dist.all_gather(records, record)
    shapes = [tuple(int(v) for v in r[1 : 1 + int(r[0])].tolist()) for r in records]
    if any(s != shapes[0] for s in shapes):
        per_rank = ", ".join(f"rank {i}: {s}" for i, s in enumerate(shapes))
        raise ValueError(
            "gather_with_grad needs the same tensor shape on every rank, got "
            f"{per_rank}. Use drop_last=True in training loaders so that every rank "
            "holds the same local batch size B."
        )


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward is ``all_reduce(SUM)`` + own slice.

    Forward: ``(B, ...) -> (G*B, ...)`` with rank ``r``'s rows at ``[r*B, (r+1)*B)``.

    Backward: the incoming gradient ``dL_r/dX_all`` differs per rank (each rank
    computed its own loss ``L_r`` on the gathered tensor). Summing it over ranks
    and keeping rows ``[r*B, (r+1)*B)`` gives ``sum_s dL_s/dx_r``: the gradient that
    *every* rank's loss sends to this rank's rows. (``reduce_scatter`` would move
    fewer bytes, but the gloo backend does not implement it; all_reduce works on
    gloo and NCCL alike.)
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # noqa: D102
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.local_rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)  # (B, ...) -> (G*B, ...)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        grad = grad_output.contiguous().clone()  # never modify autograd's buffer in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.local_rows
        return grad[start : start + ctx.local_rows], None  # (G*B, ...) -> (B, ...)


def gather_with_grad(x: Tensor, check_sizes: bool = False, group: Any = None) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the autograd graph.

    This is the one autograd-aware all-gather of the project. It works on the
    gloo (CPU) and NCCL (CUDA) backends.

    Gradient semantics: the backward pass all-reduces (sums) the gradient of the
    gathered tensor over ranks and returns this rank's slice, i.e. rank ``r``
    receives ``sum_s dL_s/dx_r`` where ``L_s`` is the loss computed on rank ``s``.
    DDP then *averages* parameter gradients over the ``G`` ranks. Together:

    * local loss (each rank: mean over its own ``B`` rows against all ``G*B``
      columns): ``L = (1/G) sum_s L_s`` is the single-process loss on the
      concatenated batch, and the averaged gradient is exactly ``dL/dtheta``;
    * global loss (each rank computes the same full ``L`` on gathered tensors):
      the all-reduce yields ``G * dL/dx_r`` and DDP's ``1/G`` cancels it, so this
      is also exactly ``dL/dtheta`` (at ``G`` times the compute).

    Args:
        x: Local tensor; every rank must pass the same shape.
        check_sizes: First all-gather the shapes and raise a ``ValueError`` naming
            each rank's shape if they differ, instead of hanging or crashing inside
            the collective. Costs one small extra collective; use when debugging.
        group: Optional process group (default: the world group).

    Returns:
        The concatenation over ranks, or ``x`` itself when not distributed or
        when the world size is 1.

    Shapes:
        x: ``(B, ...)`` -> ``(G*B, ...)``.
    """
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    if check_sizes:
        _check_equal_shapes(x)
    return _AllGatherWithGrad.apply(x, group)


def _dedupe_sorted(indices: Tensor, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Sort rows by ``indices`` (stable) and keep the first row of each index."""
    order = torch.sort(indices, stable=True).indices  # (N,)
    sorted_idx = indices[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return (sorted_idx[keep], *(t[order][keep] for t in tensors))  # (N, ...) -> (U, ...)


def dedupe_by_index(indices: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Sort rows by sample index and keep the first row of each index (no communication).

    Shapes:
        indices: (B,); each tensor (B, ...) -> (U,) and (U, ...).
    """
    return _dedupe_sorted(indices, tensors)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """Zero-pad ``t`` along dim 0 up to ``rows`` rows."""
    if t.shape[0] == rows:
        return t.contiguous()
    pad = t.new_zeros((rows - t.shape[0], *t.shape[1:]))
    return torch.cat([t, pad], dim=0)  # (n, ...) -> (rows, ...)


@torch.no_grad()
def gather_for_eval(indices: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Gather ``(index, tensors...)`` from all ranks, de-duplicate and sort by index.

    Distributed samplers give ranks different numbers of samples and pad the
    last shards with repeated samples. This helper copes with both: local sizes
    are exchanged first, every tensor is zero-padded to the largest size, gathered,
    and the padding is stripped again. Rows are then sorted by sample index and
    only the first occurrence of every index is kept. Without a process group it
    only sorts and de-duplicates. No autograd graph is recorded.

    Args:
        indices: Integer sample indices of the local rows.
        *tensors: Per-sample tensors (embeddings, labels, ...) whose first
            dimension matches ``indices``.

    Returns:
        ``(unique_sorted_indices, *tensors_in_the_same_order)``.

    Shapes:
        indices: ``(B,)``; each tensor ``(B, ...)`` -> ``(U,)`` and ``(U, ...)``
        where ``U`` is the number of distinct indices across all ranks.

    Raises:
        ValueError: If ``indices`` is not 1-D or a tensor's first dim differs.
    """
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D (B,), got shape {tuple(indices.shape)}")
    for i, t in enumerate(tensors):
        if t.shape[0] != indices.shape[0]:
            raise ValueError(
                f"tensor {i} has {t.shape[0]} rows but indices has {indices.shape[0]}"
            )
    if is_distributed() and get_world_size() > 1:
        world = get_world_size()
        size = torch.tensor([indices.shape[0]], dtype=torch.long, device=indices.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        max_rows = max(counts)
        gathered: list[Tensor] = []
        for t in (indices, *tensors):
            padded = _pad_rows(t, max_rows)  # (B, ...) -> (max_B, ...)
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            gathered.append(torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0))
        indices, tensors = gathered[0], tuple(gathered[1:])  # (sum_r B_r, ...)
    return _dedupe_sorted(indices, tuple(tensors))
