"""SigLIP sigmoid loss: reference double loop, invariants, gradcheck, module and two gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import SigLipLoss, siglip_loss

from gloo_ranks import run_ranks

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g, dtype=DT), dim=-1)


def _reference(image, text, scale: float, bias: float, positives: int | None = None) -> float:
    """Slow, obviously correct loop: pair (i, j) is positive iff i == j (and j < positives)."""
    rows = image.shape[0]
    positives = rows if positives is None else positives
    total = 0.0
    for i in range(rows):
        for j in range(text.shape[0]):
            label = 1.0 if (i == j and j < positives) else -1.0
            z = scale * float(image[i] @ text[j]) + bias
            total += -math.log(1.0 / (1.0 + math.exp(-label * z)))
    return total / rows


# ------------------------------------------------------------------ the function
@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (3.0, 0.5), (1.0, 0.0)])
def test_matches_reference_loop(rows, scale, bias):
    image, text = _unit(rows, 6, seed=rows), _unit(rows, 6, seed=100 + rows)
    got = siglip_loss(image, text, scale, bias)
    assert got.shape == () and got.dtype == DT
    torch.testing.assert_close(got, torch.tensor(_reference(image, text, scale, bias), dtype=DT), **TOL)
    # 0-dim tensors for scale and bias give the same value
    as_tensors = siglip_loss(image, text, torch.tensor(scale, dtype=DT), torch.tensor(bias, dtype=DT))
    torch.testing.assert_close(as_tensors, got, **TOL)


def test_closed_form_small_cases():
    e = torch.eye(2, dtype=DT)
    # B = 1, identical unit vectors: only the positive pair, z = s + b
    expected_one = torch.tensor(math.log1p(math.exp(-1.0)), dtype=DT)
    torch.testing.assert_close(siglip_loss(e[:1], e[:1], 1.0, 0.0), expected_one)
    # B = 2, orthogonal: diagonal z = s + b, off-diagonal z = b; sum of 4 terms / 2
    s, b = 2.0, -1.0
    expected = (2 * math.log1p(math.exp(-(s + b))) + 2 * math.log1p(math.exp(b))) / 2
    torch.testing.assert_close(siglip_loss(e, e, s, b), torch.tensor(expected, dtype=DT))


@pytest.mark.parametrize(("rows", "extra"), [(1, 3), (4, 4), (3, 7)])
def test_negatives_match_reference_over_concatenated_texts(rows, extra):
    image, text, neg = _unit(rows, 5, 1), _unit(rows, 5, 2), _unit(extra, 5, 3)
    got = siglip_loss(image, text, 7.0, -4.0, negatives=neg)
    ref = _reference(image, torch.cat([text, neg]), 7.0, -4.0, positives=rows)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=DT), **TOL)
    # an empty negatives tensor changes nothing
    torch.testing.assert_close(siglip_loss(image, text, 7.0, -4.0, negatives=neg[:0]),
                               siglip_loss(image, text, 7.0, -4.0), **TOL)


def test_row_permutation_and_argument_swap_invariance():
    image, text = _unit(6, 4, 7), _unit(6, 4, 8)
    base = siglip_loss(image, text, 5.0, -2.0)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(siglip_loss(image[perm], text[perm], 5.0, -2.0), base, **TOL)
    torch.testing.assert_close(siglip_loss(text, image, 5.0, -2.0), base, **TOL)
    # a mismatched permutation breaks the pairing and changes the loss
    assert not torch.allclose(siglip_loss(image, text[perm], 5.0, -2.0), base)


def test_gradcheck_float64():
    image = _unit(3, 4, 11).requires_grad_()
    text = _unit(3, 4, 12).requires_grad_()
    neg = _unit(2, 4, 13).requires_grad_()
    scale = torch.tensor(2.5, dtype=DT, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(siglip_loss, (image, text, scale, bias))
    assert torch.autograd.gradcheck(lambda i, t, s, b, n: siglip_loss(i, t, s, b, negatives=n),
                                    (image, text, scale, bias, neg))


def test_shape_errors():
    a = _unit(3, 4, 0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        siglip_loss(a, a[:2], 1.0, 0.0)
    with pytest.raises(ValueError, match="negatives"):
        siglip_loss(a, a, 1.0, 0.0, negatives=_unit(2, 5, 0))
    with pytest.raises(ValueError, match="non-empty"):
        siglip_loss(a[:0], a[:0], 1.0, 0.0)


# ------------------------------------------------------------------ the module
def test_module_init_and_value():
    loss = SigLipLoss().double()
    # LogitScale stores log(10) as a float32 number, so the scale is 10 up to float32 rounding
    torch.testing.assert_close(loss.logit_scale(), torch.tensor(10.0, dtype=DT), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss.logit_bias.detach(), torch.tensor(-10.0, dtype=DT))
    assert isinstance(loss.logit_bias, torch.nn.Parameter)
    assert loss.logit_scale.max_scale == 100.0
    image, text = _unit(4, 5, 21), _unit(4, 5, 22)
    for module in (loss, SigLipLoss(init_temperature=0.5, init_bias=1.0).double()):
        expected = siglip_loss(image, text, module.logit_scale(), module.logit_bias)
        torch.testing.assert_close(module(image, text), expected, **TOL)


def test_module_gradients_reach_temperature_and_bias():
    loss = SigLipLoss(init_temperature=0.25, init_bias=-2.0).double()
    image = _unit(4, 5, 31).requires_grad_()
    text = _unit(4, 5, 32).requires_grad_()
    loss(image, text).backward()
    for p in (loss.logit_scale.log_scale, loss.logit_bias, image, text):
        assert p.grad is not None and p.grad.abs().max() > 0
    # d loss / d log_scale = scale * d loss / d scale, checked against the function
    scale = loss.logit_scale().detach().clone().requires_grad_()
    bias = torch.tensor(-2.0, dtype=DT, requires_grad=True)
    siglip_loss(image.detach(), text.detach(), scale, bias).backward()
    torch.testing.assert_close(loss.logit_scale.log_scale.grad, scale.detach() * scale.grad, **TOL)
    torch.testing.assert_close(loss.logit_bias.grad, bias.grad, **TOL)


# ------------------------------------------------------------------ two gloo ranks
WORLD, B, D = 2, 3, 4


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _unit(WORLD * B, D, 41), _unit(WORLD * B, D, 42)


def _run_rank(rank: int, gather: bool) -> dict:
    image_all, text_all = _global_batch()
    rows = slice(rank * B, (rank + 1) * B)
    image = image_all[rows].clone().requires_grad_()
    text = text_all[rows].clone().requires_grad_()
    loss_fn = SigLipLoss(init_temperature=0.2, init_bias=-1.0, gather=gather, check_sizes=True).double()
    loss = loss_fn(image, text)
    loss.backward()
    return {
        "loss": loss.detach(),
        "image": image.grad.clone(),
        "text": text.grad.clone(),
        "log_scale": loss_fn.logit_scale.log_scale.grad.clone(),
        "bias": loss_fn.logit_bias.grad.clone(),
    }


def _worker(rank: int) -> dict:
    return {"gather": _run_rank(rank, gather=True), "local": _run_rank(rank, gather=False)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(_worker, WORLD, tmp_path_factory.mktemp("siglip_dist"))


def _single_process() -> dict:
    image_all, text_all = _global_batch()
    image, text = image_all.clone().requires_grad_(), text_all.clone().requires_grad_()
    loss_fn = SigLipLoss(init_temperature=0.2, init_bias=-1.0).double()
    loss = loss_fn(image, text)
    loss.backward()
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad,
            "log_scale": loss_fn.logit_scale.log_scale.grad, "bias": loss_fn.logit_bias.grad}


def test_two_ranks_match_single_process(ranks):
    """Per-rank losses (each divided by its local B) sum to G x the global loss, i.e. their mean
    is the global loss; embedding gradients are G x the global ones (DDP's 1/G averaging of
    encoder gradients cancels that), and the mean of the scale/bias gradients is the global one."""
    ref = _single_process()
    got = [r["gather"] for r in ranks]
    torch.testing.assert_close(sum(r["loss"] for r in got), WORLD * ref["loss"], **TOL)
    for key in ("image", "text"):
        torch.testing.assert_close(torch.cat([r[key] for r in got]) / WORLD, ref[key], **TOL, msg=key)
    for key in ("log_scale", "bias"):
        assert ref[key].abs() > 0
        torch.testing.assert_close(sum(r[key] for r in got) / WORLD, ref[key], **TOL, msg=key)


def test_two_ranks_without_gather_differ(ranks):
    """The comparison has teeth: local in-batch negatives only is a different loss."""
    ref = _single_process()
    assert not torch.allclose(sum(r["local"]["loss"] for r in ranks), WORLD * ref["loss"])
    # and each rank's local value is the plain function on its own half
    image_all, text_all = _global_batch()
    for rank, r in enumerate(ranks):
        rows = slice(rank * B, (rank + 1) * B)
        scale = SigLipLoss(init_temperature=0.2).double().logit_scale()  # 5 up to float32 rounding
        expected = siglip_loss(image_all[rows], text_all[rows], scale, -1.0)
        torch.testing.assert_close(r["local"]["loss"], expected, **TOL)
