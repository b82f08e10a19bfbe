"""NT-Xent over the union of anchors and queries (RTD's target-anchored loss)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import nt_xent_union


def test_two_pair_example_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # q_1 at 45 degrees, q_2 = a_2
    t = 0.5
    z = F.normalize(torch.cat([a, q]), dim=-1)
    expected = 0.0
    for i in range(4):  # -log exp(z_i . partner / t) / sum_{j != i} exp(z_i . z_j / t)
        partner = (i + 2) % 4
        num = math.exp(float(z[i] @ z[partner]) / t)
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(4) if j != i)
        expected += -math.log(num / den) / 4
    assert float(nt_xent_union(a, q, t)) == pytest.approx(expected, rel=1e-6)


def test_aligned_orthogonal_pairs_give_near_zero_and_scale_invariance():
    a = torch.eye(8)
    assert float(nt_xent_union(a, a.clone(), 0.01)) < 1e-6
    torch.manual_seed(0)
    a, q = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(nt_xent_union(3.0 * a, 0.1 * q), nt_xent_union(a, q))


def test_positives_are_partners_and_frozen_anchors_get_no_gradient():
    torch.manual_seed(0)
    a, q = torch.randn(4, 8), torch.randn(4, 8, requires_grad=True)
    loss = nt_xent_union(a, q)  # anchors come from a frozen encoder: no grad path
    loss.backward()
    assert q.grad is not None and a.grad is None
    # swapping the partners (a_i <-> q_j, j != i) must change the loss: the pairing is by index
    assert not torch.allclose(nt_xent_union(a, q.detach()), nt_xent_union(a, q.detach().roll(1, 0)))
    with pytest.raises(ValueError):
        nt_xent_union(a, q[:3])
