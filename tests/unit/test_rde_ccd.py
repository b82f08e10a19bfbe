"""Unit tests for RDE's Confident Consensus Division."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmembed.methods.rde.ccd import (
    GMM_LIGHT,
    GMM_STRICT,
    CCDResult,
    GMMSettings,
    clean_posterior,
    confident_consensus_division,
    consensus,
    divide,
    label_precision_recall,
    minmax,
)


def bimodal(n: int = 2000, clean_frac: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Losses from two well separated Gaussians; returns (losses, clean flags)."""
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < clean_frac
    losses = np.where(clean, rng.normal(1.0, 0.3, n), rng.normal(5.0, 0.6, n))
    return losses, clean


# ----------------------------------------------------------------- min-max
def test_minmax_range_and_inputs():
    x = np.random.default_rng(1).normal(3.0, 10.0, 500)
    y = minmax(x)
    assert y.dtype == np.float64 and y.shape == (500,)
    assert y.min() == 0.0 and y.max() == 1.0 and np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(y, (x - x.min()) / (x.max() - x.min()))
    # torch input (float32, requires grad) gives the same numbers
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    np.testing.assert_allclose(minmax(t), y, atol=1e-6)
    # order is preserved
    assert np.array_equal(np.argsort(y, kind="stable"), np.argsort(x, kind="stable"))


def test_minmax_constant_and_bad_input():
    assert np.array_equal(minmax(np.full(7, 2.5)), np.zeros(7))
    assert minmax(np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        minmax(np.array([0.0, np.nan, 1.0]))


# --------------------------------------------------------------- settings
def test_presets_and_defaults():
    assert GMMSettings() == GMM_LIGHT
    assert (GMM_LIGHT.max_iter, GMM_LIGHT.tol, GMM_LIGHT.reg_covar) == (10, 1e-2, 5e-4)
    assert (GMM_STRICT.max_iter, GMM_STRICT.tol, GMM_STRICT.reg_covar) == (100, 1e-4, 1e-6)
    assert GMM_STRICT.n_init == 1 and GMM_STRICT.init_params == "kmeans"
    with pytest.raises(dataclasses.FrozenInstanceError):
        GMM_LIGHT.max_iter = 3  # type: ignore[misc]


def test_gmm_settings_passed_through(monkeypatch):
    import sklearn.mixture
    from sklearn.exceptions import ConvergenceWarning

    fitted = []

    class Recording(sklearn.mixture.GaussianMixture):
        def fit(self, X, y=None):
            fitted.append(self)
            return super().fit(X, y)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", Recording)
    losses, _ = bimodal(400)
    settings = GMMSettings(max_iter=2, tol=1e-12, reg_covar=1e-3, n_init=2, init_params="random", seed=7)
    with pytest.warns(ConvergenceWarning):  # max_iter=2 cannot reach tol=1e-12
        clean_posterior(minmax(losses), settings)
    (gmm,) = fitted
    assert gmm.n_components == 2
    assert (gmm.max_iter, gmm.tol, gmm.reg_covar, gmm.n_init) == (2, 1e-12, 1e-3, 2)
    assert gmm.init_params == "random" and gmm.random_state == 7
    assert 1 <= gmm.n_iter_ <= 2


def test_seed_makes_fit_reproducible():
    losses, _ = bimodal(300, seed=3)
    s = GMMSettings(init_params="random", seed=11)
    np.testing.assert_array_equal(clean_posterior(minmax(losses), s), clean_posterior(minmax(losses), s))


# -------------------------------------------------------------- posterior
@pytest.mark.parametrize("settings", [GMM_LIGHT, GMM_STRICT])
def test_low_mean_component_is_clean(settings):
    losses, clean = bimodal(2000, 0.7, seed=0)
    p = clean_posterior(minmax(losses), dataclasses.replace(settings, seed=0))
    assert p.shape == (2000,) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    accuracy = np.mean((p > 0.5) == clean)
    assert accuracy > 0.99
    assert p[clean].mean() > 0.95 and p[~clean].mean() < 0.05
    # flipping the loss order flips which samples are called clean
    q = clean_posterior(minmax(-losses), dataclasses.replace(settings, seed=0))
    assert np.mean((q > 0.5) == ~clean) > 0.99


def test_clean_posterior_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        clean_posterior(np.array([0.3]))


# ----------------------------------------------------------------- divide
def test_divide_plain_threshold():
    p = np.array([0.1, 0.5, 0.50001, 0.9, 0.0, 1.0])
    np.testing.assert_array_equal(divide(p), [False, False, True, True, False, True])
    assert divide(p).dtype == bool


@pytest.mark.parametrize("n", [50, 100, 250, 1000, 1234])
def test_divide_fallback_exact(n):
    rng = np.random.default_rng(n)
    p = 0.5 + 0.5 * rng.random(n) + 1e-9  # all strictly > 0.5
    assert p.min() > 0.5
    threshold = np.sort(p)[n // 100]
    pred = divide(p)
    np.testing.assert_array_equal(~pred, p <= threshold)
    assert (~pred).sum() == n // 100 + 1  # distinct values: exactly the N//100 + 1 smallest
    assert np.array_equal(np.flatnonzero(~pred), np.sort(np.argsort(p)[: n // 100 + 1]))


def test_divide_fallback_with_ties_and_not_triggered():
    p = np.array([0.7] * 5 + [0.9] * 5)
    np.testing.assert_array_equal(divide(p), [False] * 5 + [True] * 5)  # ties at t are all noisy
    assert not divide(np.full(10, 0.8)).any()  # constant p: everything noisy (reference behaviour)
    p = np.array([0.5] + [0.9] * 9)  # min == 0.5 is not > 0.5, so no fallback
    np.testing.assert_array_equal(divide(p), [False] + [True] * 9)
    assert divide(np.zeros(0)).shape == (0,)


# -------------------------------------------------------------- consensus
def test_consensus_mapping_and_randomness():
    n = 20000
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    a[: n // 4], b[: n // 4] = True, True  # agree clean
    a[n // 4 : n // 2] = True  # a clean, b noisy
    b[n // 2 : 3 * n // 4] = True  # a noisy, b clean
    # last quarter: both noisy
    for gen in (torch.Generator().manual_seed(0), np.random.default_rng(0)):
        labels = consensus(a, b, gen)
        assert labels.dtype == np.float32 and set(np.unique(labels)) <= {0.0, 1.0}
        assert np.all(labels[: n // 4] == 1) and np.all(labels[3 * n // 4 :] == 0)
        uncertain = labels[n // 4 : 3 * n // 4]
        assert abs(uncertain.mean() - 0.5) < 0.02  # 10k fair coins: std 0.005
        assert 0.45 < uncertain[: n // 4].mean() < 0.55 and 0.45 < uncertain[n // 4 :].mean() < 0.55


def test_consensus_agreements_deterministic_and_draws_redrawn():
    a = np.array([1, 1, 0, 0, 1, 0] * 50, dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 0] * 50, dtype=bool)
    draws = np.stack([consensus(a, b, torch.Generator().manual_seed(s)) for s in range(40)])
    agree = a == b
    assert np.all(draws[:, agree] == a[agree].astype(np.float32))  # never random
    assert draws[:, ~agree].std(axis=0).min() > 0  # every uncertain entry varies across draws
    # the same generator state gives the same draw; int/float inputs work like bools
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(consensus(a.astype(int), b.astype(float), g1), consensus(a, b, g2))
    # no uncertain entries: the generator is not used
    g = torch.Generator().manual_seed(3)
    state = g.get_state().clone()
    np.testing.assert_array_equal(consensus(a, a, g), a.astype(np.float32))
    assert torch.equal(g.get_state(), state)


def test_consensus_errors():
    with pytest.raises(ValueError, match="length"):
        consensus(np.ones(3, bool), np.ones(4, bool), np.random.default_rng(0))
    with pytest.raises(TypeError, match="generator"):
        consensus(np.ones(3, bool), np.zeros(3, bool), 0)  # type: ignore[arg-type]


# -------------------------------------------------------------- pipeline
def test_confident_consensus_division_end_to_end():
    loss_bge, clean = bimodal(3000, 0.7, seed=1)
    rng = np.random.default_rng(2)
    # TSE losses: same split, but 10% of the noisy pairs look clean to TSE only
    fooled = ~clean & (rng.random(3000) < 0.1)
    loss_tse = np.where(clean | fooled, rng.normal(0.5, 0.2, 3000), rng.normal(3.0, 0.4, 3000))
    res = confident_consensus_division(
        torch.tensor(loss_bge), loss_tse, dataclasses.replace(GMM_STRICT, seed=0), torch.Generator().manual_seed(0)
    )
    assert isinstance(res, CCDResult)
    for field in (res.labels, res.p_clean_bge, res.p_clean_tse, res.pred_bge, res.pred_tse):
        assert field.shape == (3000,)
    np.testing.assert_array_equal(res.pred_bge, divide(res.p_clean_bge))
    np.testing.assert_array_equal(res.uncertain, res.pred_bge != res.pred_tse)
    assert np.all(res.labels[res.pred_bge & res.pred_tse] == 1)
    assert np.all(res.labels[~res.pred_bge & ~res.pred_tse] == 0)
    assert abs(res.uncertain.sum() - fooled.sum()) <= 0.02 * 3000
    stats = label_precision_recall(res.labels, clean)
    assert stats["recall"] > 0.98 and stats["precision"] > 0.95


def test_bge_only_division_is_one_fit_without_coin_flips():
    loss, _ = bimodal(2000, 0.5, seed=3)
    settings = dataclasses.replace(GMM_STRICT, seed=None)  # unseeded: two fits could differ
    res = confident_consensus_division(loss, None, settings, np.random.default_rng(0))
    np.testing.assert_array_equal(res.labels, divide(res.p_clean_bge).astype(np.float32))
    assert res.p_clean_tse is res.p_clean_bge and not res.uncertain.any()


# ------------------------------------------------------- precision/recall
def test_label_precision_recall_hand_counts():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 1], dtype=np.float32)
    clean = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1], dtype=bool)
    # TP = 4 (0,1,5,9), FP = 1 (2), FN = 2 (4,8), TN = 3 (3,6,7)
    out = label_precision_recall(labels, torch.tensor(clean))
    assert out["precision"] == pytest.approx(4 / 5)
    assert out["recall"] == pytest.approx(4 / 6)
    assert out["noisy_precision"] == pytest.approx(3 / 5)
    assert out["noisy_recall"] == pytest.approx(3 / 4)
    assert out["accuracy"] == pytest.approx(7 / 10)
    assert out["clean_fraction"] == pytest.approx(5 / 10)


def test_label_precision_recall_zero_division():
    out = label_precision_recall(np.zeros(4), np.ones(4, bool))  # nothing predicted clean, nothing noisy
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["noisy_recall"] == 0.0
    assert out["noisy_precision"] == 0.0 and out["accuracy"] == 0.0
    nan = label_precision_recall(np.ones(4), np.ones(4, bool), zero_division=float("nan"))
    assert nan["precision"] == 1.0 and nan["recall"] == 1.0 and np.isnan(nan["noisy_recall"])
    with pytest.raises(ValueError, match="length"):
        label_precision_recall(np.ones(3), np.ones(4, bool))


def test_import_does_not_load_sklearn():
    import subprocess
    import sys

    code = "import sys, mmembed.methods.rde.ccd; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
