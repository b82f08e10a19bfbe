"""RDE losses (TAL, TRL, TRL-S, InfoNCE, SDM) against slow loop references and the paper's properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from mmembed.methods.rde.objective import (
    info_nce_per_sample,
    reduce,
    sdm,
    tal,
    tal_row,
    trl,
    trl_row,
    trl_s,
)

# ---------------------------------------------------------------- loop references (plain Python floats)


def _lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _alpha(row: list[float], pos: list[int], tau: float) -> dict[int, float]:
    z = _lse([row[j] / tau for j in pos])
    return {j: math.exp(row[j] / tau - z) for j in pos}


def ref_rows(S: list[list[float]], pids: list[int], tau: float, m: float, kind: str) -> list[float]:
    """Row terms of TAL ("tal") or TRL ("trl") for each row of S."""
    out = []
    for i, row in enumerate(S):
        pos = [j for j in range(len(row)) if pids[j] == pids[i]]
        neg = [j for j in range(len(row)) if pids[j] != pids[i]]
        if not neg:
            out.append(0.0)
            continue
        alpha = _alpha(row, pos, tau)
        pos_term = sum(alpha[j] * row[j] for j in pos)
        neg_term = tau * _lse([row[j] / tau for j in neg]) if kind == "tal" else max(row[j] for j in neg)
        out.append(max(0.0, m - pos_term + neg_term))
    return out


def ref_tal_columns(S: list[list[float]], pids: list[int], tau: float, m: float) -> list[float]:
    """Image-side TAL term computed directly over the columns of S (no transpose)."""
    n = len(S)
    out = []
    for j in range(n):
        col = [S[i][j] for i in range(n)]
        pos = [i for i in range(n) if pids[i] == pids[j]]
        neg = [i for i in range(n) if pids[i] != pids[j]]
        alpha = _alpha(col, pos, tau)
        out.append(max(0.0, m - sum(alpha[i] * col[i] for i in pos) + tau * _lse([col[i] / tau for i in neg])))
    return out


def ref_trl_s(S: list[list[float]], pids: list[int], m: float) -> list[float]:
    n = len(S)
    return [
        sum(max(0.0, m - S[i][i] + S[i][j]) + max(0.0, m - S[i][i] + S[j][i]) for j in range(n) if pids[j] != pids[i])
        for i in range(n)
    ]


def ref_info_nce(S: list[list[float]], scale: float) -> list[float]:
    n = len(S)
    out = []
    for i in range(n):
        row = -scale * S[i][i] + _lse([scale * S[i][j] for j in range(n)])
        col = -scale * S[i][i] + _lse([scale * S[j][i] for j in range(n)])
        out.append((row + col) / 2)
    return out


def ref_sdm(S: list[list[float]], pids: list[int], scale: float, eps: float) -> list[float]:
    n = len(S)
    out = []
    for i in range(n):
        count = sum(1 for j in range(n) if pids[j] == pids[i])
        q = [(1.0 / count if pids[j] == pids[i] else 0.0) for j in range(n)]
        total = 0.0
        for vec in ([S[i][j] for j in range(n)], [S[j][i] for j in range(n)]):
            z = _lse([scale * v for v in vec])
            for j in range(n):
                logp = scale * vec[j] - z
                total += math.exp(logp) * (logp - math.log(q[j] + eps))
        out.append(total)
    return out


# ---------------------------------------------------------------- fixtures


def random_case(seed: int, n: int = 8, n_ids: int = 4, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    S = (torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    pids = torch.randint(0, n_ids, (n,), generator=g)
    return S, pids


CASES = [(seed, n, k) for seed, (n, k) in enumerate([(8, 4), (7, 7), (9, 3), (6, 2), (10, 5)])]


def close(a: torch.Tensor, ref: list[float], tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, torch.tensor(ref, dtype=a.dtype), rtol=tol, atol=tol)


# ---------------------------------------------------------------- agreement with the loop references


@pytest.mark.parametrize("seed,n,k", CASES)
@pytest.mark.parametrize("tau,m", [(0.015, 0.1), (0.1, 0.3), (1.0, 0.5)])
def test_tal_and_trl_match_loop_reference(seed, n, k, tau, m):
    S, pids = random_case(seed, n, k)
    L, p = S.tolist(), pids.tolist()
    LT = S.T.tolist()
    close(tal_row(S, pids, tau, m), ref_rows(L, p, tau, m, "tal"))
    close(tal(S, pids, tau, m), [a + b for a, b in zip(ref_rows(L, p, tau, m, "tal"), ref_rows(LT, p, tau, m, "tal"))])
    close(trl_row(S, pids, m, tau), ref_rows(L, p, tau, m, "trl"))
    close(trl(S, pids, m, tau), [a + b for a, b in zip(ref_rows(L, p, tau, m, "trl"), ref_rows(LT, p, tau, m, "trl"))])


@pytest.mark.parametrize("seed,n,k", CASES)
def test_trl_s_info_nce_sdm_match_loop_reference(seed, n, k):
    S, pids = random_case(seed, n, k)
    L, p = S.tolist(), pids.tolist()
    close(trl_s(S, pids, 0.2), ref_trl_s(L, p, 0.2))
    for scale in (1.0, 10.0, 50.0):
        close(info_nce_per_sample(S, scale), ref_info_nce(L, scale), tol=1e-9)
        close(sdm(S, pids, scale, 1e-8), ref_sdm(L, p, scale, 1e-8), tol=1e-9)


def test_trl_uses_the_hardest_negative_even_when_all_negatives_are_below_zero():
    S = torch.tensor([[0.5, -0.3], [-0.6, 0.4]], dtype=torch.float64)
    pids = torch.tensor([0, 1])
    # (N * S).max() would give 0; the hardest negative is -0.3 (row) and -0.3 (column of pair 0)
    close(trl_row(S, pids, 1.0), [1.0 - 0.5 - 0.3, 1.0 - 0.4 - 0.6])


# ---------------------------------------------------------------- TAL properties 


@pytest.mark.parametrize("seed,n,k", CASES)
@pytest.mark.parametrize("tau", [0.005, 0.015, 0.1, 1.0])
def test_tal_bounds_trl_and_the_gap_is_at_most_tau_log_negatives(seed, n, k, tau):
    S, pids = random_case(seed, n, k)
    for mat in (S, S.T):
        a, b = tal_row(mat, pids, tau, 0.1), trl_row(mat, pids, 0.1, tau)
        assert torch.all(a >= b - 1e-12)
        a, b = tal_row(mat, pids, tau, 5.0), trl_row(mat, pids, 5.0, tau)  # margin 5: every hinge active
        n_neg = (pids[:, None] != pids[None, :]).sum(1).to(torch.float64)
        active = n_neg > 0
        assert torch.all(b[active] > 0)
        gap = a - b
        assert torch.all(gap >= -1e-12) and torch.all(gap <= tau * torch.log(n_neg.clamp_min(1)) + 1e-12)
    assert torch.all(tal(S, pids, tau) >= trl(S, pids, tau=tau) - 1e-12)


def test_unique_pids_give_identity_alpha():
    S, _ = random_case(3, 6)
    pids = torch.arange(6)
    S.requires_grad_(True)
    tal_row(S, pids, 0.1, 5.0).sum().backward()
    assert torch.all(S.grad.diagonal() == -1.0)  # alpha = I: each row's only positive gets -1
    ref = [5.0 - row[i] + 0.1 * _lse([row[j] / 0.1 for j in range(6) if j != i]) for i, row in enumerate(S.tolist())]
    close(tal_row(S.detach(), pids, 0.1, 5.0), ref)


def test_inactive_hinge_gives_zero_loss_and_zero_gradient():
    pids = torch.tensor([0, 0, 1, 2, 2, 3])
    S = torch.where(pids[:, None] == pids[None, :], 1.0, -1.0).to(torch.float64).requires_grad_(True)
    for fn in (lambda s: tal(s, pids), lambda s: trl(s, pids), lambda s: trl_s(s, pids)):
        loss = fn(S)
        assert torch.all(loss == 0)
        (grad,) = torch.autograd.grad(loss.sum(), S)
        assert torch.all(grad == 0)


@pytest.mark.parametrize("seed,n,k", CASES)
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_tal_gradient_is_negative_softmax_and_minus_detached_alpha(seed, n, k, tau):
    S, pids = random_case(seed, n, k)
    S.requires_grad_(True)
    (grad,) = torch.autograd.grad(tal_row(S, pids, tau, 5.0).sum(), S)
    pos = pids[:, None] == pids[None, :]
    for i, row in enumerate(S.tolist()):
        p_idx = [j for j in range(n) if pos[i, j]]
        n_idx = [j for j in range(n) if not pos[i, j]]
        if not n_idx:
            assert torch.all(grad[i] == 0)
            continue
        z = _lse([row[j] / tau for j in n_idx])
        expected_neg = torch.tensor([math.exp(row[j] / tau - z) for j in n_idx], dtype=torch.float64)
        torch.testing.assert_close(grad[i, n_idx], expected_neg, rtol=1e-10, atol=1e-12)
        assert abs(grad[i, n_idx].sum().item() - 1.0) < 1e-10
        alpha = _alpha(row, p_idx, tau)
        expected_pos = torch.tensor([-alpha[j] for j in p_idx], dtype=torch.float64)
        torch.testing.assert_close(grad[i, p_idx], expected_pos, rtol=1e-10, atol=1e-12)  # alpha is detached


@pytest.mark.parametrize("seed,n,k", CASES)
def test_row_term_on_s_equals_column_term_on_transpose(seed, n, k):
    S, pids = random_case(seed, n, k)
    col = ref_tal_columns(S.tolist(), pids.tolist(), 0.1, 0.5)
    close(tal(S, pids, 0.1, 0.5) - tal_row(S, pids, 0.1, 0.5), col)  # image-side term of S
    close(tal_row(S.T, pids, 0.1, 0.5), col)
    colT = tal(S.T, pids, 0.1, 0.5) - tal_row(S.T, pids, 0.1, 0.5)  # column term on S^T
    torch.testing.assert_close(colT, tal_row(S, pids, 0.1, 0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed,n,k", CASES)
def test_permutation_equivariance(seed, n, k):
    S, pids = random_case(seed, n, k)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100))
    Sp, pp = S[perm][:, perm], pids[perm]
    fns = [
        lambda s, p: tal(s, p, 0.05, 0.3), lambda s, p: tal_row(s, p, 0.05, 0.3), lambda s, p: trl(s, p, 0.3, 0.05),
        lambda s, p: trl_s(s, p), lambda s, p: info_nce_per_sample(s, 20.0), lambda s, p: sdm(s, p, 20.0),
    ]
    for fn in fns:
        torch.testing.assert_close(fn(Sp, pp), fn(S, pids)[perm], rtol=1e-12, atol=1e-12)


def test_no_overflow_at_cosine_one_in_fp32_and_fp16():
    pids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    n_neg = (pids[:, None] != pids[None, :]).sum(1).to(torch.float32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        S = torch.ones(8, 8, dtype=dtype, requires_grad=True)
        loss = tal(S, pids, tau=0.015, margin=0.1)
        assert loss.dtype == torch.float32
        # S = 1 everywhere: each term is m - 1 + tau * (1/tau + log #neg)
        torch.testing.assert_close(loss, 2 * (0.1 + 0.015 * torch.log(n_neg)), rtol=1e-5, atol=1e-6)
        (grad,) = torch.autograd.grad(loss.sum(), S)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
    S32, p = random_case(4, 8, 3, dtype=torch.float32)
    S16 = S32.half()
    torch.testing.assert_close(tal(S16, p), tal(S16.float(), p))
    for fn in (info_nce_per_sample, lambda s: sdm(s, p), lambda s: trl(s, p)):
        assert torch.isfinite(fn(torch.ones(8, 8, dtype=torch.float16))).all()


@pytest.mark.parametrize("seed,n", [(0, 6), (1, 9), (2, 4)])
@pytest.mark.parametrize("tau", [0.015, 0.1, 0.7])
def test_scaled_info_nce_bounds_tal_with_zero_margin(seed, n, tau):
    S, _ = random_case(seed, n)
    pids = torch.arange(n)  # a single positive per row
    info_row = torch.tensor(
        [-row[i] / tau + _lse([v / tau for v in row]) for i, row in enumerate(S.tolist())], dtype=torch.float64
    )
    assert torch.all(tau * info_row >= tal_row(S, pids, tau, 0.0) - 1e-12)
    assert torch.all(tau * info_nce_per_sample(S, 1 / tau) >= tal(S, pids, tau, 0.0) / 2 - 1e-12)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_rows_without_negatives_give_zero_and_finite_zero_gradients(n, dtype):
    pids = torch.full((n,), 7)
    S = (torch.rand(n, n, generator=torch.Generator().manual_seed(n)) * 2 - 1).to(dtype).requires_grad_(True)
    for fn in (tal, tal_row, trl, trl_row, trl_s):
        loss = fn(S, pids)
        assert torch.all(loss == 0)
        (grad,) = torch.autograd.grad(loss.sum(), S)
        assert torch.isfinite(grad).all() and torch.all(grad == 0)


def test_gradcheck_float64():
    S, pids = random_case(11, 5, 3)
    S.requires_grad_(True)
    unique = torch.arange(5)  # alpha = I is constant, so the detach does not change TAL's true gradient
    for fn in (lambda s: tal(s, unique, 0.1, 0.3), lambda s: trl_s(s, pids, 0.5), lambda s: info_nce_per_sample(s, 5.0),
               lambda s: sdm(s, pids, 5.0)):
        assert torch.autograd.gradcheck(fn, (S,))
    # with several positives the detached alpha makes autograd differ from finite differences on purpose
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda s: tal(s, pids, 0.5, 5.0), (S,))


# ---------------------------------------------------------------- reduction and argument checks


def test_reduce_sum_and_weighted_mean():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, 0.0, 1.0, 0.5])
    assert reduce(loss).item() == 10.0
    assert reduce(loss, mode="mean").item() == 2.5
    assert reduce(loss, w).item() == 1 + 3 + 2
    assert reduce(loss, w, "mean").item() == pytest.approx(6 / 2.5)
    assert reduce(loss, torch.tensor([1, 0, 0, 1]), "mean").item() == 2.5  # integer/bool labels are cast
    loss = loss.clone().requires_grad_(True)
    out = reduce(loss, torch.zeros(4), "mean")
    (grad,) = torch.autograd.grad(out, loss)
    assert out.item() == 0 and torch.all(grad == 0)  # no NaN when every weight vanishes
    with pytest.raises(ValueError, match="mode"):
        reduce(loss, mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        reduce(loss, torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        reduce(loss[None])


def test_argument_checks():
    S, pids = random_case(0, 4)
    with pytest.raises(ValueError, match="square"):
        tal(S[:3], pids)
    with pytest.raises(ValueError, match="pids"):
        tal(S, pids[:3])
    with pytest.raises(ValueError, match="tau"):
        tal(S, pids, tau=0.0)
    with pytest.raises(ValueError, match="floating"):
        info_nce_per_sample(torch.ones(3, 3, dtype=torch.long))
