"""LightCLIP's progressively softened labels: alpha = 0 is CLIP, target invariants, schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import alpha_schedule, progressive_targets, soft_clip_loss


def unit(b: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_alpha_zero_equals_open_clip_clip_loss():
    from open_clip.loss import ClipLoss

    image, text = unit(12, 16, 0).float(), unit(12, 16, 1).float()
    for scale in (1.0, 14.3, 100.0):
        expected = ClipLoss()(image, text, torch.tensor(scale))
        torch.testing.assert_close(soft_clip_loss(image, text, scale, 0.0), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(soft_clip_loss(image, text, scale, 0.0, mode="uniform"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["similarity", "uniform"])
@pytest.mark.parametrize("offset", [0, 3])
def test_targets_are_distributions_with_one_minus_alpha_on_the_positive(mode, offset):
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(2)) * 10
    q = progressive_targets(logits, 0.3, mode, offset=offset)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(5))
    torch.testing.assert_close(q[torch.arange(5), torch.arange(5) + offset], torch.full((5,), 0.7))
    if mode == "uniform":
        off = q.clone()
        off[torch.arange(5), torch.arange(5) + offset] = float("nan")
        torch.testing.assert_close(off[~off.isnan()], torch.full((50,), 0.3 / 10))


def test_similarity_targets_follow_a_slow_reference():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    q = progressive_targets(logits, 0.2)
    for i in range(4):
        others = [k for k in range(6) if k != i]
        z = sum(math.exp(float(logits[i, k])) for k in others)
        for j in range(6):
            expected = 0.8 if j == i else 0.2 * math.exp(float(logits[i, j])) / z
            assert float(q[i, j]) == pytest.approx(expected, rel=1e-12)


def test_targets_carry_no_gradient_and_loss_is_finite_in_fp16():
    logits = torch.randn(6, 6, requires_grad=True)
    assert not progressive_targets(logits, 0.2).requires_grad
    image, text = unit(8, 16, 4), unit(8, 16, 5)
    for alpha in (0.1, 0.5, 1.0):
        loss = soft_clip_loss(image.half().float(), text.half().float(), 100.0, alpha)
        assert torch.isfinite(loss) and loss >= 0
    half = progressive_targets(torch.randn(6, 6).half() * 100, 0.2)
    assert torch.isfinite(half).all() and half.dtype == torch.float32


def test_soft_loss_gradient_matches_autograd_of_the_written_out_formula():
    image = unit(5, 8, 6).requires_grad_(True)
    text = unit(5, 8, 7).requires_grad_(True)
    loss = soft_clip_loss(image, text, 10.0, 0.25)
    logits = 10.0 * image @ text.T
    q1, q2 = progressive_targets(logits, 0.25), progressive_targets(logits.T, 0.25)
    ref = 0.5 * (-(q1 * logits.log_softmax(1)).sum(1).mean() - (q2 * logits.T.log_softmax(1)).sum(1).mean())
    g = torch.autograd.grad(loss, (image, text))
    g_ref = torch.autograd.grad(ref, (image, text))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_alpha_schedule_ramps_from_zero_to_alpha_max():
    for shape in ("linear", "cosine"):
        values = [alpha_schedule(t / 100, 0.2, shape) for t in range(101)]
        assert values[0] == 0.0 and values[-1] == pytest.approx(0.2)
        assert all(b >= a for a, b in itertools.pairwise(values))
    assert alpha_schedule(-1.0) == 0.0 and alpha_schedule(2.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shape"):
        alpha_schedule(0.5, shape="step")
    with pytest.raises(ValueError, match="alpha"):
        progressive_targets(torch.zeros(2, 2), 1.5)
