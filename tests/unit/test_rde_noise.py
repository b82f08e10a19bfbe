"""RDE synthetic noise index: reference noise counts, permutation, nesting, legacy-RNG equality and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmembed.methods.rde.noise import (
    apply_noise,
    clean_flags,
    count_train_records,
    main,
    noise_candidates,
    noise_index,
)

SIZES = {"CUHK-PEDES": 68_126, "ICFG-PEDES": 34_674, "RSTPReid": 37_010}
NOISY = {
    "CUHK-PEDES": {0.2: 13_624, 0.5: 34_062, 0.8: 54_500},
    "ICFG-PEDES": {0.2: 6_933, 0.5: 17_337, 0.8: 27_737},
    "RSTPReid": {0.2: 7_400, 0.5: 18_505, 0.8: 29_605},
}
RATES = (0.2, 0.5, 0.8)


def legacy_global(n: int, rate: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The reference recipe with the *global* legacy RNG; restores the global state afterwards."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        perm = np.arange(n)
        np.random.shuffle(perm)
        cand = perm[: int(rate * n)]
        moved = np.array(cand)
        np.random.shuffle(moved)
        idx = np.arange(n)
        idx[cand] = moved
        return idx, cand
    finally:
        np.random.set_state(saved)


def noisy_set(idx: np.ndarray) -> set[int]:
    return set(np.flatnonzero(~clean_flags(idx)).tolist())


@pytest.mark.parametrize("name", SIZES)
def test_spec_counts_permutation_and_legacy_equality(name):
    n = SIZES[name]
    for rate in RATES:
        idx = noise_index(n, rate)
        assert idx.dtype == np.int64 and idx.shape == (n,)
        assert np.array_equal(np.sort(idx), np.arange(n))  # a permutation
        assert n - int(clean_flags(idx).sum()) == NOISY[name][rate]  # noisy = n - #fixed points
        ref_idx, ref_cand = legacy_global(n, rate)
        assert np.array_equal(idx, ref_idx)
        assert np.array_equal(noise_candidates(n, rate), ref_cand)


@pytest.mark.parametrize("name", SIZES)
def test_rates_are_nested(name):
    n = SIZES[name]
    cands = [set(noise_candidates(n, r).tolist()) for r in RATES]
    noisy = [noisy_set(noise_index(n, r)) for r in RATES]
    for lo, hi in ((0, 1), (1, 2)):
        assert cands[lo] < cands[hi]  # the shared perm makes candidate sets strictly nested
        assert noisy[lo] <= cands[lo] and noisy[lo] < cands[hi]
    if name == "RSTPReid":
        # three records moved at 50% happen to be fixed points of the 80% inner shuffle
        assert noisy[0] < noisy[1] and len(noisy[1] - noisy[2]) == 3
    else:
        assert noisy[0] < noisy[1] < noisy[2]


def test_global_rng_is_untouched_and_results_are_deterministic():
    np.random.seed(1234)
    expected = np.random.rand(3)
    np.random.seed(1234)
    a = noise_index(1000, 0.5, seed=7)
    assert np.array_equal(np.random.rand(3), expected)
    assert np.array_equal(a, noise_index(1000, 0.5, seed=7))
    assert not np.array_equal(a, noise_index(1000, 0.5, seed=8))
    assert np.array_equal(a, legacy_global(1000, 0.5, seed=7)[0])


def test_rate_zero_is_identity_and_edge_sizes():
    assert np.array_equal(noise_index(500, 0.0), np.arange(500))
    assert noise_index(0, 0.5).shape == (0,)
    idx = noise_index(50, 1.0)
    assert np.array_equal(np.sort(idx), np.arange(50)) and np.array_equal(idx, legacy_global(50, 1.0)[0])


@pytest.mark.parametrize(
    "kwargs", [{"n": -1, "rate": 0.2}, {"n": 10, "rate": 1.5}, {"n": 10, "rate": -0.1}, {"n": 10, "rate": float("nan")},
               {"n": 2.5, "rate": 0.2}, {"n": 10, "rate": 0.2, "seed": -3}]
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        noise_index(**kwargs)


def test_clean_flags_and_apply_noise():
    idx = np.array([0, 2, 1, 3, 5, 4])
    assert clean_flags(idx).tolist() == [True, False, False, True, False, False]
    caps = ["a", "b", "c", "d", "e", "f"]
    assert apply_noise(caps, idx) == ["a", "c", "b", "d", "f", "e"]
    assert caps == ["a", "b", "c", "d", "e", "f"]  # input unchanged
    idx = noise_index(200, 0.5)
    caps = [f"c{i}" for i in range(200)]
    noisy = apply_noise(caps, idx)
    assert sorted(noisy) == sorted(caps)
    assert [noisy[i] == caps[i] for i in range(200)] == clean_flags(idx).tolist()
    with pytest.raises(ValueError, match="entries"):
        apply_noise(caps[:3], idx)
    with pytest.raises(ValueError, match="lie in"):
        apply_noise(["a", "b"], np.array([0, 2]))
    with pytest.raises(ValueError, match="1-D"):
        clean_flags(np.zeros((2, 2), dtype=np.int64))


# ---------------------------------------------------------------- command line




def write_rstp(root: Path) -> Path:
    entries = [
        {"id": pid, "img_path": f"{pid}_{k}.jpg", "captions": [f"cap {pid} {k} a", f"cap {pid} {k} b"], "split": split}
        for pid, split in [(0, "train"), (1, "train"), (2, "train"), (3, "val"), (4, "test")]
        for k in range(2)
    ]
    root.mkdir(parents=True)
    (root / "imgs").mkdir()
    (root / "data_captions.json").write_text(json.dumps(entries))
    return root


def test_command_writes_the_index(tmp_path, capsys):
    out = tmp_path / "idx" / "cuhk_0.5.npy"
    assert main(["--n", "68126", "--rate", "0.5", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), noise_index(68_126, 0.5))
    assert "noisy=34062" in capsys.readouterr().out
    assert main(["--n", "68126", "--rate", "0.5", "--out", str(out)]) == 1  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["--n", "100", "--rate", "0.2", "--seed", "3", "--out", str(out), "--force"]) == 0
    assert np.array_equal(np.load(out), noise_index(100, 0.2, seed=3))
    assert sorted(p.name for p in out.parent.iterdir()) == ["cuhk_0.5.npy"]  # no temporary left behind


def test_command_counts_dataset_records_and_never_writes_inside_it(tmp_path, capsys, folder_digest):
    root = write_rstp(tmp_path / "RSTPReid")
    assert count_train_records(root, "RSTPReid") == 12  # 3 train ids x 2 images x 2 captions
    before = folder_digest(root)
    for inside in (root / "noise.npy", root / "imgs" / "noise.npy", root / ".." / "RSTPReid" / "n.npy"):
        assert main(["--pedes-root", str(root), "--flavour", "RSTPReid", "--rate", "0.5", "--out", str(inside)]) == 1
        assert "dataset folder" in capsys.readouterr().err
    assert folder_digest(root) == before
    out = tmp_path / "noiseindex" / "RSTPReid_0.5.npy"
    assert main(["--pedes-root", str(root), "--flavour", "RSTPReid", "--rate", "0.5", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), noise_index(12, 0.5))
    assert folder_digest(root) == before


def test_command_reports_bad_requests(tmp_path, capsys):
    out = str(tmp_path / "x.npy")
    assert main(["--n", "10", "--rate", "2", "--out", out]) == 1
    assert "rate" in capsys.readouterr().err
    assert main(["--n", "10", "--rate", "0.2", "--out", str(tmp_path / "x.txt")]) == 1
    assert main(["--pedes-root", str(tmp_path), "--rate", "0.2", "--out", out]) == 1  # --flavour missing
    assert main(["--pedes-root", str(tmp_path / "none"), "--flavour", "CUHK-PEDES", "--rate", "0.2", "--out", out]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()
    with pytest.raises(SystemExit):
        main(["--n", "10", "--pedes-root", str(tmp_path), "--rate", "0.2", "--out", out])  # mutually exclusive
