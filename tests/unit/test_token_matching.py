"""LightCLIP's token matching: valid relaxed assignments, optimality, invariances, gradient, planted recovery."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmembed.losses.token_matching import match_tokens, token_matching_loss


@pytest.mark.parametrize("m,p,r", [(3, 9, 3), (4, 10, None), (5, 5, 1), (6, 4, 2), (2, 7, 5)])
def test_relaxed_assignment_is_valid(m, p, r):
    sim = np.random.default_rng(m * p).normal(size=(m, p))
    a = match_tokens(sim, r)
    r_eff = max(1, p // m) if r is None else r
    assert (a.sum(0) <= 1).all()  # a patch serves at most one word
    assert (a.sum(1) <= r_eff).all()  # a word takes at most r patches
    assert a.sum() == min(r_eff * m, p)


def test_strict_square_is_a_permutation_and_optimal():
    rng = np.random.default_rng(0)
    for n in range(2, 7):
        sim = rng.normal(size=(n, n))
        a = match_tokens(sim, mode="strict")
        assert (a.sum(0) == 1).all() and (a.sum(1) == 1).all()
        best = max(sum(sim[i, perm[i]] for i in range(n)) for perm in itertools.permutations(range(n)))
        assert sim[a].sum() == pytest.approx(best)


def test_assignment_invariant_to_a_constant_shift_and_argmax_mode():
    sim = np.random.default_rng(1).normal(size=(4, 12))
    np.testing.assert_array_equal(match_tokens(sim), match_tokens(sim + 3.7))
    a = match_tokens(sim, mode="argmax")
    np.testing.assert_array_equal(a.argmax(1), sim.argmax(1))
    assert (a.sum(1) == 1).all()
    with pytest.raises(ValueError, match="mode"):
        match_tokens(sim, mode="greedy")


@pytest.mark.parametrize("sigma,min_acc", [(0.1, 1.0), (0.2, 0.99)])
def test_planted_permutation_is_recovered(sigma, min_acc):
    # patch tokens are the word embeddings at random positions (plus noise): strict matching finds them
    rng = np.random.default_rng(2)
    d, m, p, trials, hits = 64, 12, 16, 50, 0
    for _ in range(trials):
        words = rng.normal(size=(m, d))
        words /= np.linalg.norm(words, axis=1, keepdims=True)
        where = rng.permutation(p)[:m]
        patches = rng.normal(size=(p, d))
        patches /= np.linalg.norm(patches, axis=1, keepdims=True)
        patches[where] = words + rng.normal(scale=sigma, size=(m, d))
        a = match_tokens(words @ patches.T, mode="strict")
        hits += int((a.argmax(1) == where).sum())
    assert hits / (trials * m) >= min_acc


def test_loss_gradient_is_softmax_minus_targets_over_tau_m():
    torch.manual_seed(0)
    words, patches = torch.randn(1, 5, 8), torch.randn(1, 9, 8)
    mask = torch.tensor([[False, True, True, True, False]])  # SOT / EOT excluded
    w = F.normalize(words[0][mask[0]], dim=-1)
    v = F.normalize(patches[0], dim=-1)
    sim = (w @ v.T).detach().requires_grad_(True)
    tau = 0.1
    a = torch.as_tensor(match_tokens(sim))
    t = a.float() / a.float().sum(1, keepdim=True)
    loss = -(t * torch.log_softmax(sim / tau, 1)).sum(1).mean()
    (grad,) = torch.autograd.grad(loss, sim)
    expected = (torch.softmax(sim / tau, 1) - t) / (tau * sim.shape[0])
    torch.testing.assert_close(grad, expected)
    # the batch function computes the same value from the raw tokens
    torch.testing.assert_close(token_matching_loss(words, patches, mask, tau=tau), loss.detach())


def test_loss_reaches_the_tokens_and_handles_empty_captions():
    words = torch.randn(3, 6, 8, requires_grad=True)
    patches = torch.randn(3, 4, 8, requires_grad=True)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1:4] = True
    mask[2, 1:3] = True  # pair 1 has no words
    loss = token_matching_loss(words, patches, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert words.grad[0, 1:4].abs().sum() > 0 and words.grad[1].abs().sum() == 0
    empty = token_matching_loss(words, patches, torch.zeros(3, 6, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # keeps the graph connected


@pytest.mark.parametrize("mode", ["relaxed", "strict", "argmax"])
def test_batched_loss_equals_a_per_pair_loop(mode):
    # slow reference: one pair at a time, only its word rows, unmatched words dropped
    torch.manual_seed(1)
    b, length, p, d, tau = 5, 9, 4, 8, 0.1
    words = torch.randn(b, length, d, requires_grad=True)
    patches = torch.randn(b, p, d, requires_grad=True)
    mask = torch.rand(b, length) < 0.7
    mask[3] = False  # a pair without words
    mask[0, :7] = True  # 7 words > 4 patches: some words get no patch under strict / relaxed
    losses, matched = [], []  # matched: cosines of the matched (word, patch) pairs
    for i in range(b):
        if not mask[i].any():
            continue
        sim = F.normalize(words[i][mask[i]], dim=-1) @ F.normalize(patches[i], dim=-1).T
        a = torch.as_tensor(match_tokens(sim, mode=mode))
        matched.append(sim[a])
        keep = a.any(1)
        t = a[keep].float() / a[keep].float().sum(1, keepdim=True)
        losses.append(-(t * torch.log_softmax(sim[keep] / tau, 1)).sum(1).mean())
    expected = torch.stack(losses).mean()
    got, cosine = token_matching_loss(words, patches, mask, tau=tau, mode=mode, return_matched_cosine=True)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cosine, torch.cat(matched).mean().detach())
    g_expected = torch.autograd.grad(expected, (words, patches))
    g_got = torch.autograd.grad(got, (words, patches))
    for a, e in zip(g_got, g_expected, strict=True):
        torch.testing.assert_close(a, e)
