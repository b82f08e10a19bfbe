"""Unit tests for mmembed.losses and mmembed.nn.heads against loop-based references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import (
    ClipLoss,
    InfoNCELoss,
    SoftTargetClipLoss,
    clip_loss,
    info_nce,
    kl_distillation,
    soft_target_clip_loss,
    soft_target_cross_entropy,
)
from mmembed.nn.heads import LogitScale, Projection

DT = torch.float64


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=DT), dim=-1)


# ----------------------------------------------------------------- references
def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def ref_ce_row(scores: list[float], target: int) -> float:
    """-log(exp(s_t) / sum_j exp(s_j)), written out."""
    return -math.log(math.exp(scores[target]) / sum(math.exp(s) for s in scores))


def ref_info_nce(q, c, targets, scale) -> float:
    losses = []
    for i in range(q.shape[0]):
        scores = [scale * _dot(q[i], c[j]) for j in range(c.shape[0])]
        losses.append(ref_ce_row(scores, int(targets[i])))
    return sum(losses) / len(losses)


def ref_clip(image, text, scale, image_all=None, text_all=None, offset=0) -> float:
    image_all = image if image_all is None else image_all
    text_all = text if text_all is None else text_all
    i2t, t2i = [], []
    for i in range(image.shape[0]):
        i2t.append(ref_ce_row([scale * _dot(image[i], t) for t in text_all], i + offset))
        t2i.append(ref_ce_row([scale * _dot(text[i], v) for v in image_all], i + offset))
    return 0.5 * (sum(i2t) / len(i2t) + sum(t2i) / len(t2i))


def ref_soft_ce(logits, targets) -> float:
    total = 0.0
    for i in range(logits.shape[0]):
        row = [float(v) for v in logits[i]]
        log_z = math.log(sum(math.exp(v) for v in row))
        total += -sum(float(targets[i, j]) * (row[j] - log_z) for j in range(len(row)))
    return total / logits.shape[0]


def ref_kl(student, teacher, temp) -> float:
    total = 0.0
    for i in range(student.shape[0]):
        s = [float(v) / temp for v in student[i]]
        t = [float(v) / temp for v in teacher[i]]
        zs, zt = sum(math.exp(v) for v in s), sum(math.exp(v) for v in t)
        p = [math.exp(v) / zt for v in t]
        q = [math.exp(v) / zs for v in s]
        total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))
    return total / student.shape[0] * temp**2


# ------------------------------------------------------------ against references
@pytest.mark.parametrize("scale", [1.0, 14.3, torch.tensor(3.0, dtype=DT)])
def test_info_nce_matches_reference(scale):
    q, c = _unit(5, 4, seed=1), _unit(7, 4, seed=2)
    targets = torch.tensor([0, 3, 6, 2, 2])
    got = info_nce(q, c, targets, scale)
    assert got.shape == ()
    assert got.item() == pytest.approx(ref_info_nce(q, c, targets, float(scale)), rel=1e-10)


def test_clip_loss_matches_reference_single_process():
    image, text = _unit(6, 5, seed=3), _unit(6, 5, seed=4)
    got = clip_loss(image, text, 10.0)
    assert got.item() == pytest.approx(ref_clip(image, text, 10.0), rel=1e-10)


def test_clip_loss_with_columns_and_offset_matches_reference():
    image_all, text_all = _unit(8, 3, seed=5), _unit(8, 3, seed=6)
    image, text = image_all[4:7], text_all[4:7]
    got = clip_loss(image, text, 7.0, image_all, text_all, offset=4)
    assert got.item() == pytest.approx(ref_clip(image, text, 7.0, image_all, text_all, 4), rel=1e-10)


def test_clip_local_scheme_averages_to_global():
    """Mean over 'ranks' of the local loss equals the loss on the full batch."""
    image_all, text_all = _unit(12, 4, seed=7), _unit(12, 4, seed=8)
    b = 4
    local = [
        clip_loss(image_all[r * b : (r + 1) * b], text_all[r * b : (r + 1) * b], 5.0,
                  image_all, text_all, offset=r * b)
        for r in range(3)
    ]
    torch.testing.assert_close(torch.stack(local).mean(), clip_loss(image_all, text_all, 5.0))


def test_soft_target_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, 6, generator=g, dtype=DT)
    targets = torch.rand(4, 6, generator=g, dtype=DT)
    targets = targets / targets.sum(-1, keepdim=True)
    got = soft_target_cross_entropy(logits, targets)
    assert got.item() == pytest.approx(ref_soft_ce(logits, targets), rel=1e-10)


def test_kl_distillation_matches_reference():
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(3, 5, generator=g, dtype=DT), torch.randn(3, 5, generator=g, dtype=DT)
    for temp in (1.0, 4.0):
        assert kl_distillation(s, t, temp).item() == pytest.approx(ref_kl(s, t, temp), rel=1e-10)
    assert kl_distillation(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- gradcheck
def _req(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def test_gradcheck_info_nce():
    q, c = _req(_unit(3, 4, seed=11)), _req(_unit(5, 4, seed=12))
    scale = torch.tensor(2.5, dtype=DT, requires_grad=True)
    targets = torch.tensor([4, 0, 2])
    assert torch.autograd.gradcheck(lambda a, b, s: info_nce(a, b, targets, s), (q, c, scale))


def test_gradcheck_clip_loss_local_and_full():
    image, text = _req(_unit(3, 4, seed=13)), _req(_unit(3, 4, seed=14))
    image_all, text_all = _req(_unit(6, 4, seed=15)), _req(_unit(6, 4, seed=16))
    scale = torch.tensor(3.0, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: clip_loss(a, b, s), (image, text, scale))
    assert torch.autograd.gradcheck(
        lambda a, b, aa, bb, s: clip_loss(a, b, s, aa, bb, offset=2),
        (image, text, image_all, text_all, scale),
    )


def test_gradcheck_soft_losses():
    g = torch.Generator().manual_seed(17)
    logits = _req(torch.randn(3, 4, generator=g, dtype=DT))
    targets = torch.softmax(torch.randn(3, 4, generator=g, dtype=DT), -1)
    assert torch.autograd.gradcheck(lambda x: soft_target_cross_entropy(x, targets, validate=False), (logits,))
    image, text = _req(_unit(3, 4, seed=18)), _req(_unit(3, 4, seed=19))
    t3 = torch.softmax(torch.randn(3, 3, generator=g, dtype=DT), -1)
    scale = torch.tensor(2.0, dtype=DT, requires_grad=True)
    t3b = torch.softmax(torch.randn(3, 3, generator=g, dtype=DT), -1)
    assert torch.autograd.gradcheck(lambda a, b, s: soft_target_clip_loss(a, b, s, t3), (image, text, scale))
    assert torch.autograd.gradcheck(lambda a, b, s: soft_target_clip_loss(a, b, s, t3, t3b), (image, text, scale))
    student, teacher = _req(torch.randn(3, 4, generator=g, dtype=DT)), _req(torch.randn(3, 4, generator=g, dtype=DT))
    assert torch.autograd.gradcheck(
        lambda s, t: kl_distillation(s, t, 2.0, detach_teacher=False), (student, teacher)
    )


def test_kl_distillation_detaches_teacher_by_default():
    s, t = _req(torch.randn(2, 3, dtype=DT)), _req(torch.randn(2, 3, dtype=DT))
    kl_distillation(s, t, 2.0).backward()
    assert s.grad is not None and t.grad is None


# --------------------------------------------------------------------- invariants
def test_clip_loss_invariant_to_joint_row_permutation():
    image, text = _unit(7, 5, seed=20), _unit(7, 5, seed=21)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clip_loss(image[perm], text[perm], 8.0), clip_loss(image, text, 8.0))


def test_clip_loss_is_symmetric_in_modalities():
    image, text = _unit(5, 3, seed=22), _unit(5, 3, seed=23)
    torch.testing.assert_close(clip_loss(image, text, 4.0), clip_loss(text, image, 4.0))


@pytest.mark.parametrize("b,d,scale", [(4, 4, 1.0), (3, 8, 10.0), (6, 6, 100.0)])
def test_aligned_orthonormal_pairs_closed_form(b, d, scale):
    # s_ii = 1, s_ij = 0  =>  each row loses log(1 + (B - 1) exp(-scale)).
    basis = torch.eye(d, dtype=DT)[:b]
    expected = math.log1p((b - 1) * math.exp(-scale))
    assert clip_loss(basis, basis.clone(), scale).item() == pytest.approx(expected, rel=1e-10)
    assert info_nce(basis, basis, torch.arange(b), scale).item() == pytest.approx(expected, rel=1e-10)


def test_one_hot_soft_targets_reproduce_hard_losses():
    image, text = _unit(5, 4, seed=24), _unit(5, 4, seed=25)
    eye = torch.eye(5, dtype=DT)
    torch.testing.assert_close(soft_target_clip_loss(image, text, 6.0, eye), clip_loss(image, text, 6.0))
    torch.testing.assert_close(soft_target_clip_loss(image, text, 6.0, eye, eye), clip_loss(image, text, 6.0))
    logits = 6.0 * image @ text.T
    targets = torch.tensor([1, 0, 4, 4, 2])
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, F.one_hot(targets, 5).to(DT)), F.cross_entropy(logits, targets)
    )


def test_soft_clip_default_t2i_is_transpose_for_symmetric_targets():
    image, text = _unit(4, 3, seed=26), _unit(4, 3, seed=27)
    same_id = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=DT)
    targets = same_id / same_id.sum(-1, keepdim=True)
    torch.testing.assert_close(
        soft_target_clip_loss(image, text, 3.0, targets), soft_target_clip_loss(image, text, 3.0, targets, targets)
    )


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "targets,match",
    [
        (torch.tensor([[0.5, 0.6], [0.5, 0.5]], dtype=DT), "sum to 1"),
        (torch.tensor([[1.5, -0.5], [0.5, 0.5]], dtype=DT), "non-negative"),
        (torch.tensor([[float("nan"), 1.0], [0.5, 0.5]], dtype=DT), "NaN"),
    ],
)
def test_bad_soft_targets_raise(targets, match):
    with pytest.raises(ValueError, match=match):
        soft_target_cross_entropy(torch.zeros(2, 2, dtype=DT), targets)


def test_bad_target_validation_can_be_skipped():
    bad = torch.tensor([[0.5, 0.6], [0.5, 0.5]], dtype=DT)
    assert torch.isfinite(soft_target_cross_entropy(torch.zeros(2, 2, dtype=DT), bad, validate=False))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        soft_target_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="zero mass"):
        soft_target_clip_loss(_unit(2, 3), _unit(2, 3, seed=1), 1.0, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT))
    with pytest.raises(ValueError, match="neither"):
        clip_loss(_unit(2, 3), _unit(2, 3), 1.0, image_all=_unit(4, 3))
    with pytest.raises(ValueError, match="exceeds"):
        clip_loss(_unit(2, 3), _unit(2, 3), 1.0, _unit(4, 3), _unit(4, 3), offset=3)
    with pytest.raises(ValueError, match="targets"):
        info_nce(_unit(2, 3), _unit(4, 3), torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        kl_distillation(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


# ------------------------------------------------------------------ heads/modules
def test_logit_scale_init_and_gradient():
    ls = LogitScale(init_temperature=0.07)
    scale = ls()
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert ls.temperature == pytest.approx(0.07, rel=1e-6)
    scale.backward()
    assert ls.log_scale.grad.item() == pytest.approx(1 / 0.07, rel=1e-6)  # d exp(x)/dx


def test_logit_scale_clamp_zero_gradient_and_clamp_():
    ls = LogitScale(init_temperature=0.001, max_scale=100.0)  # raw scale 1000
    scale = ls()
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert ls.log_scale.grad.item() == 0.0
    ls.clamp_()
    assert ls.log_scale.item() == pytest.approx(math.log(100.0))


def test_logit_scale_fixed_is_buffer():
    ls = LogitScale(0.05, learnable=False)
    assert list(ls.parameters()) == [] and "log_scale" in ls.state_dict()
    assert not ls().requires_grad
    with pytest.raises(ValueError):
        LogitScale(init_temperature=0.0)


def test_projection():
    proj = Projection(6, 3)
    assert proj.linear.bias is None and proj(torch.zeros(2, 5, 6)).shape == (2, 5, 3)
    assert Projection(6, 3, bias=True).linear.bias is not None


def test_modules_without_distributed_call_the_functions():
    image, text = _unit(4, 3, seed=28), _unit(4, 3, seed=29)
    loss_fn = ClipLoss(init_temperature=0.1).double()
    loss = loss_fn(image, text)
    torch.testing.assert_close(loss, clip_loss(image, text, 10.0))
    loss.backward()
    assert loss_fn.logit_scale.log_scale.grad is not None
    assert len(list(ClipLoss(local_loss=False, gather=False).parameters())) == 1

    info = InfoNCELoss(init_temperature=0.05).double()
    assert list(info.parameters()) == []
    torch.testing.assert_close(info(image, text), info_nce(image, text, torch.arange(4), 20.0))
    cand = torch.cat([text, _unit(3, 3, seed=30)])  # positives first, then hard negatives
    torch.testing.assert_close(info(image, cand), info_nce(image, cand, torch.arange(4), 20.0))
    with pytest.raises(ValueError, match="at least"):
        info(image, text[:2])

    soft = SoftTargetClipLoss(init_temperature=0.25).double()
    torch.testing.assert_close(soft(image, text, torch.eye(4, dtype=DT)), clip_loss(image, text, 4.0))
