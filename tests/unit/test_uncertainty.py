"""Bootstrap intervals, split-half stability and causal p-values, checked against scipy and
hand-worked examples (not against themselves)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from workbench.analyzers.uncertainty import (
    bootstrap_interval,
    causal_significance,
    spearman,
    split_half_stability,
    top_k_overlap,
)


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.5, size=(60, 3, 4))
    lo, hi = bootstrap_interval(x, resamples=4000, seed=3)
    assert lo.shape == hi.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            ref = stats.bootstrap(
                (x[:, i, j],), np.mean, n_resamples=4000, method="percentile", random_state=5
            ).confidence_interval
            # two Monte Carlo estimates of the same interval: agree to a small share of the sd
            assert lo[i, j] == pytest.approx(ref.low, abs=0.06)
            assert hi[i, j] == pytest.approx(ref.high, abs=0.06)


def test_bootstrap_interval_width_is_the_normal_theory_width():
    x = np.random.default_rng(0).normal(0.0, 1.0, size=(400, 1))
    lo, hi = bootstrap_interval(x, resamples=3000)
    sd = x.std(ddof=1)
    assert (hi - lo)[0] == pytest.approx(2 * 1.96 * sd / np.sqrt(400), rel=0.1)
    assert lo[0] < x.mean() < hi[0]


def test_bootstrap_interval_skips_nan_items_and_is_reproducible():
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, np.nan], [7.0, 4.0]])
    lo1, hi1 = bootstrap_interval(x, seed=7)
    lo2, hi2 = bootstrap_interval(x, seed=7)
    assert np.array_equal(lo1, lo2) and np.array_equal(hi1, hi2)
    assert 1.0 <= lo1[0] <= hi1[0] <= 7.0 and 2.0 <= lo1[1] <= hi1[1] <= 4.0


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 6, size=50).astype(float)
    b = a + rng.normal(0, 2, size=50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_top_k_overlap_by_hand():
    a = np.array([9.0, 8.0, 7.0, 1.0, 0.0])
    b = np.array([9.0, 0.0, 7.0, 8.0, 1.0])
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,3,2}
    assert top_k_overlap(a, a, 2) == 1.0


def test_split_half_stability_separates_signal_from_noise():
    rng = np.random.default_rng(4)
    signal = np.linspace(0, 5, 30).reshape(1, 5, 6)
    stable = signal + rng.normal(0, 0.05, size=(16, 5, 6))
    noise = rng.normal(0, 1, size=(16, 5, 6))
    s = split_half_stability(stable, k=5)
    n = split_half_stability(noise, k=5)
    assert s["spearman"] > 0.95 and s["top_k_overlap"] >= 0.8
    assert abs(n["spearman"]) < 0.3
    assert s["items_per_half"] == 8 and s["splits"] == 20
    tiny = split_half_stability(stable[:3])
    assert np.isnan(tiny["spearman"]) and tiny["splits"] == 0


def test_causal_significance_by_hand():
    base = [1.0, 1.0, 1.0, 1.0]
    top = [0.0, 0.0, 0.0, 1.0]  # hurts by 0.75 on average
    random = [[1.0, 1.0, 1.0, 0.5]] * 19  # each hurts by 0.125
    out = causal_significance(base, top, random, k=5)
    assert out["effect_top"] == pytest.approx(0.75)
    assert out["effect_random"] == pytest.approx(0.125)
    assert out["ratio"] == pytest.approx(6.0)
    assert out["p_value"] == pytest.approx(1 / 20)  # no random set hurts as much
    assert out["significant"] is False  # 0.05 is not < 0.05
    assert out["verdict"].startswith("no evidence")
    random[0] = [0.0, 0.0, 0.0, 0.0]  # one random set hurts more than the top set
    out = causal_significance(base, top, random + [[1.0] * 4] * 40, k=5)
    assert out["p_value"] == pytest.approx(2 / 60)
    assert out["significant"] is True
    assert out["verdict"].startswith("top-5 hurts") and "(p = 0.033)" in out["verdict"]
    assert out["effect_top_lo"] <= 0.75 <= out["effect_top_hi"]


def test_causal_significance_orientation_and_few_draws():
    # a loss: higher is worse; the top set raises it
    out = causal_significance([2.0, 2.0], [3.0, 3.5], [[2.1, 2.0]] * 3, higher_is_better=False, k=2)
    assert out["effect_top"] == pytest.approx(1.25)
    assert out["p_value"] == pytest.approx(1 / 4)
    assert out["verdict"] == (
        "no evidence yet: top-2 hurts 25.0x more than random-2, but 3 draws cannot reach "
        "p < 0.05 (p = 0.25)"
    )  # random sets hurt by 0.05 each: 1.25 / 0.05 = 25
    some_as_bad = causal_significance(
        [2.0, 2.0], [3.0, 3.5], [[2.1, 2.0], [4.0, 4.0], [2.0, 2.0]], higher_is_better=False, k=2
    )
    assert some_as_bad["p_value"] == pytest.approx(2 / 4)
    assert some_as_bad["verdict"] == (
        "no evidence: top-2 hurts no more than random-2 (p = 0.5, and 3 draws cannot reach "
        "p < 0.05)"
    )
    none = causal_significance([1.0], [1.0], [[1.0]] * 19, k=1)
    assert "does not hurt" in none["verdict"]
