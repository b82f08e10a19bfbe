"""Confident Consensus Division (CCD): split training pairs into clean, noisy and uncertain.

CCD runs once per epoch over per-sample losses collected in eval mode (see the RDE
module). Each embedding (BGE and TSE) gives one loss vector; every vector is min-max
normalised, a two-component 1-D Gaussian mixture is fitted to it, and the posterior of
the lower-mean component is the probability that a pair is clean. The two divisions
are then combined: both clean -> 1, both noisy -> 0, disagreement -> a fair coin.

Everything here is a pure function of its inputs (plus an explicit random generator);
scikit-learn is imported lazily inside :func:`clean_posterior`.

References:
    Qin et al., "Noisy-Correspondence Learning for Text-to-Image Person
    Re-identification", CVPR 2024, https://arxiv.org/abs/2308.09911, Sec. 3.3.1 and
    Alg. 1; official code ``QinYang79/RDE``, ``processor/processor.py`` (``get_loss``,
    ``split_prob``, the consensus lines of ``do_train``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GMM_LIGHT", "GMM_STRICT", "CCDResult", "GMMSettings", "clean_posterior",
    "confident_consensus_division", "consensus", "divide", "label_precision_recall", "minmax",
]


def _to_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """Detach a tensor (any device) or view an array, as a flat float64 array."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def minmax(x: Tensor | np.ndarray) -> np.ndarray:
    """Min-max normalise a loss vector to [0, 1] over the whole training set.

    Args:
        x: Per-sample losses (tensor on any device, or array).

    Returns:
        ``(x - min) / (max - min)`` as float64. A constant vector (``max == min``, which
        would divide by zero in the reference code) maps to all zeros.

    Shapes:
        x: (N,) -> (N,).
    """
    v = _to_numpy(x)
    if v.size == 0:
        return v
    lo, hi = float(v.min()), float(v.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("minmax needs finite losses; got NaN or inf")
    if hi == lo:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


@dataclass(frozen=True)
class GMMSettings:
    """Hyper-parameters of the two-component 1-D Gaussian mixture used by CCD.

    The official code picks one of two presets from the *true* noise rate (strict when
    ``noise_rate > 0.4`` or the dataset is RSTPReid), i.e. oracle tuning. Here the
    preset is a configuration choice: use :data:`GMM_LIGHT` or :data:`GMM_STRICT`.

    Args:
        max_iter: EM iterations per initialisation.
        tol: Convergence threshold on the lower-bound gain.
        reg_covar: Non-negative regularisation added to each variance.
        n_init: Number of initialisations (best kept).
        init_params: sklearn initialisation method (``"kmeans"``, ``"k-means++"``,
            ``"random"``, ``"random_from_data"``).
        seed: ``random_state`` for sklearn. ``None`` uses numpy's global RNG, as the
            reference code does (so results then depend on the global seed).
    """

    max_iter: int = 10
    tol: float = 1e-2
    reg_covar: float = 5e-4
    n_init: int = 1
    init_params: str = "kmeans"
    seed: int | None = None


#: Low-noise preset of the official code (noise <= 0.4, CUHK-PEDES / ICFG-PEDES).
GMM_LIGHT = GMMSettings(max_iter=10, tol=1e-2, reg_covar=5e-4)
#: High-noise / RSTPReid preset of the official code.
GMM_STRICT = GMMSettings(max_iter=100, tol=1e-4, reg_covar=1e-6)


def clean_posterior(losses_normalised: np.ndarray, settings: GMMSettings = GMM_LIGHT) -> np.ndarray:
    """Fit a two-component 1-D GMM and return each sample's posterior of being clean.

    Clean pairs have small loss, so "clean" is the component with the **lower mean**.

    Args:
        losses_normalised: Per-sample losses, usually the output of :func:`minmax`.
        settings: Mixture hyper-parameters.

    Returns:
        Posterior probability of the lower-mean component (float64).

    Shapes:
        losses_normalised: (N,) -> (N,), N >= 2.

    References:
        RDE, Sec. 3.3.1 ("clean probability"); ``get_loss`` in the official code.
    """
    from sklearn.mixture import GaussianMixture

    x = _to_numpy(losses_normalised)
    if x.size < 2:
        raise ValueError(f"clean_posterior needs at least 2 samples, got {x.size}")
    gmm = GaussianMixture(
        n_components=2,
        max_iter=settings.max_iter,
        tol=settings.tol,
        reg_covar=settings.reg_covar,
        n_init=settings.n_init,
        init_params=settings.init_params,
        random_state=settings.seed,
    )
    data = x.reshape(-1, 1)  # (N,) -> (N, 1)
    gmm.fit(data)
    prob = gmm.predict_proba(data)  # (N, 2)
    return np.asarray(prob[:, int(np.argmin(gmm.means_.reshape(-1)))], dtype=np.float64)


def divide(p_clean: np.ndarray) -> np.ndarray:
    """Turn clean posteriors into a clean (True) / noisy (False) division.

    ``pred = p > 0.5``. Fallback (from NCR, kept by RDE): if **every** ``p > 0.5``
    (``min(p) > 0.5``), the threshold becomes ``t = sort(p)[N // 100]`` and
    ``pred = p > t``, so exactly the entries ``<= t`` are called noisy. That is about 1%
    of the data (the ``N // 100 + 1`` smallest), more when values tie at ``t``: a
    constant ``p`` makes every sample noisy, exactly as in the reference code.

    Args:
        p_clean: Posterior of the clean component per sample.

    Returns:
        Boolean array, True = predicted clean.

    Shapes:
        p_clean: (N,) -> (N,).

    References:
        ``split_prob`` in the official RDE code; Huang et al., NCR, NeurIPS 2021.
    """
    p = _to_numpy(p_clean)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = 0.5
    if p.min() > threshold:
        threshold = float(np.sort(p)[p.size // 100])
    return p > threshold


def consensus(
    pred_a: np.ndarray, pred_b: np.ndarray, generator: torch.Generator | np.random.Generator
) -> np.ndarray:
    """Combine two divisions into consensus labels.

    With ``c = pred_a + pred_b``: ``c = 2`` -> 1 (clean), ``c = 0`` -> 0 (noisy) and
    ``c = 1`` (uncertain) -> an independent Bernoulli(0.5) draw. Random numbers are
    drawn only for the uncertain entries, in index order, so agreements never consume
    or depend on randomness.

    Args:
        pred_a: Division of the first embedding (True / 1 = clean).
        pred_b: Division of the second embedding.
        generator: Source of the coin flips (``torch.Generator`` on CPU, or a numpy
            ``Generator``). Pass a fresh state each epoch to redraw, as RDE does.

    Returns:
        float32 labels in {0, 1}.

    Shapes:
        pred_a, pred_b: (N,) -> (N,).

    References:
        RDE, Alg. 1 (consensus division), and ``do_train`` in the official code.
    """
    a = _to_numpy(pred_a) > 0.5
    b = _to_numpy(pred_b) > 0.5
    if a.shape != b.shape:
        raise ValueError(f"divisions differ in length: {a.shape} vs {b.shape}")
    labels = (a & b).astype(np.float32)
    uncertain = a ^ b
    n = int(uncertain.sum())
    if n:
        if isinstance(generator, torch.Generator):
            coins = torch.randint(0, 2, (n,), generator=generator).numpy().astype(np.float32)
        elif isinstance(generator, np.random.Generator):
            coins = generator.integers(0, 2, size=n).astype(np.float32)
        else:
            raise TypeError(f"generator must be a torch.Generator or numpy Generator, got {type(generator).__name__}")
        labels[uncertain] = coins
    return labels


@dataclass
class CCDResult:
    """Output of :func:`confident_consensus_division`.

    Attributes:
        labels: Consensus labels ``l_hat`` in {0, 1} (float32), 1 = train as anchor.
        p_clean_bge: Clean posterior from the BGE losses (float64).
        p_clean_tse: Clean posterior from the TSE losses (float64).
        pred_bge: BGE division, True = clean.
        pred_tse: TSE division, True = clean.

    Shapes:
        every field: (N,).
    """

    labels: np.ndarray
    p_clean_bge: np.ndarray
    p_clean_tse: np.ndarray
    pred_bge: np.ndarray
    pred_tse: np.ndarray

    @property
    def uncertain(self) -> np.ndarray:
        """True where the two divisions disagree (these labels were coin flips)."""
        return self.pred_bge != self.pred_tse


def confident_consensus_division(
    loss_bge: Tensor | np.ndarray,
    loss_tse: Tensor | np.ndarray | None,
    settings: GMMSettings,
    rng: torch.Generator | np.random.Generator,
) -> CCDResult:
    """Run CCD on the per-sample losses of both embeddings.

    Steps per embedding: :func:`minmax` -> :func:`clean_posterior` -> :func:`divide`;
    then :func:`consensus` of the two divisions.

    Args:
        loss_bge: Per-sample TAL of the global (BGE) embedding, indexed by dataset index.
        loss_tse: Per-sample TAL of the token-selection (TSE) embedding, same indexing. None
            (a BGE-only model) divides by BGE alone: one GMM fit, whose division is the label
            (the TSE fields repeat the BGE ones, and no coin is flipped).
        settings: Mixture hyper-parameters, shared by both fits (chosen by config,
            e.g. :data:`GMM_LIGHT` or :data:`GMM_STRICT`).
        rng: Generator for the coin flips of uncertain pairs.

    Returns:
        :class:`CCDResult`.

    Shapes:
        loss_bge, loss_tse: (N,) -> every result field (N,).

    References:
        RDE, Sec. 3.3.1 and Alg. 1.
    """
    p_bge = clean_posterior(minmax(loss_bge), settings)
    p_tse = p_bge if loss_tse is None else clean_posterior(minmax(loss_tse), settings)
    if p_bge.shape != p_tse.shape:
        raise ValueError(f"loss vectors differ in length: {p_bge.shape} vs {p_tse.shape}")
    pred_bge, pred_tse = divide(p_bge), divide(p_tse)
    labels = consensus(pred_bge, pred_tse, rng)
    return CCDResult(labels, p_bge, p_tse, pred_bge, pred_tse)


def label_precision_recall(
    labels: Tensor | np.ndarray, clean_flags: Tensor | np.ndarray, zero_division: float = 0.0
) -> dict[str, float]:
    """Quality of consensus labels against ground-truth clean flags (logging only).

    Args:
        labels: Consensus labels, 1 (or True) = predicted clean.
        clean_flags: Ground truth, True = the pair is clean.
        zero_division: Value reported when a ratio's denominator is 0 (no sample
            predicted / truly in that class).

    Returns:
        ``precision`` and ``recall`` of the clean class (label 1), ``noisy_precision``
        and ``noisy_recall`` of the noisy class (label 0), ``accuracy`` and
        ``clean_fraction`` (share of labels equal to 1).

    Shapes:
        labels, clean_flags: (N,).
    """
    pred = _to_numpy(labels) > 0.5
    true = _to_numpy(clean_flags) > 0.5
    if pred.shape != true.shape:
        raise ValueError(f"labels and clean_flags differ in length: {pred.shape} vs {true.shape}")

    def ratio(num: int, den: int) -> float:
        return float(num) / float(den) if den else float(zero_division)

    tp = int((pred & true).sum())
    tn = int((~pred & ~true).sum())
    n_pred_clean, n_true_clean = int(pred.sum()), int(true.sum())
    n = pred.size
    return {
        "precision": ratio(tp, n_pred_clean),
        "recall": ratio(tp, n_true_clean),
        "noisy_precision": ratio(tn, n - n_pred_clean),
        "noisy_recall": ratio(tn, n - n_true_clean),
        "accuracy": ratio(tp + tn, n),
        "clean_fraction": ratio(n_pred_clean, n),
    }
