"""The paired uncertainty of a transfer's delta, on cases computed by hand."""

from __future__ import annotations

import math

import pytest

from zoo_study.stats import Z95, mcnemar_exact_p, mean_ci, paired_delta_ci, t_975_expansion, t_quantile_975, wilson_interval


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0  # nothing changed: no evidence either way
    assert mcnemar_exact_p(4, 4) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)  # 2 * (1/2)^5
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    # g=12, l=2: 2 * (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 2 * 106 / 16384
    assert mcnemar_exact_p(12, 2) == pytest.approx(212 / 16384)
    assert mcnemar_exact_p(3, 1) == pytest.approx(10 / 16)  # 2 * (1 + 4) / 16
    assert mcnemar_exact_p(6, 1) == pytest.approx(2 * (1 + 7) / 128)


def test_mcnemar_large_counts_use_logs_without_overflow():
    p = mcnemar_exact_p(1500, 1400)
    assert 0.0 < p < 0.1
    assert mcnemar_exact_p(1450, 1450) == 1.0


def test_score_interval_closed_forms():
    n = 100
    # nothing changed: +- z^2 / (n + z^2), whatever the concordant samples are
    lo, hi = paired_delta_ci(0, 0, n)
    assert hi == pytest.approx(Z95**2 / (n + Z95**2), rel=1e-9) and lo == pytest.approx(-hi, rel=1e-9)
    # every sample gained: [(n - z^2) / (n + z^2), 1]
    lo, hi = paired_delta_ci(n, 0, n)
    assert lo == pytest.approx((n - Z95**2) / (n + Z95**2), rel=1e-9) and hi == 1.0
    lo, hi = paired_delta_ci(0, n, n)
    assert hi == pytest.approx(-(n - Z95**2) / (n + Z95**2), rel=1e-9) and lo == -1.0


def test_score_interval_contains_estimate_is_symmetric_and_matches_mcnemar_at_zero():
    lo, hi = paired_delta_ci(12, 2, 50)
    assert lo < 10 / 50 < hi
    assert paired_delta_ci(2, 12, 50) == pytest.approx((-hi, -lo))
    # the score statistic at delta = 0 is McNemar's (g - l) / sqrt(g + l): 0 is inside iff |.| <= z
    for g, l in [(9, 3), (20, 8), (30, 14), (5, 5)]:
        lo, hi = paired_delta_ci(g, l, 3000)
        assert (lo <= 0 <= hi) == (abs(g - l) / math.sqrt(g + l) <= Z95)


def test_score_interval_width_shrinks_with_n():
    w = [paired_delta_ci(g, g // 2, n)[1] - paired_delta_ci(g, g // 2, n)[0] for g, n in [(30, 1000), (300, 10000)]]
    assert w[1] < w[0]


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="gain \\+ loss <= n"):
        paired_delta_ci(6, 5, 10)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_p(-1, 2)


def test_wilson_by_hand():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(Z95**2 / (10 + Z95**2), rel=1e-9)


def test_mean_ci_t_interval():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 * 1.0 / math.sqrt(3)  # t(2) = 0.95 / sqrt(2 * 0.975 * 0.025), sd = 1
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert mean_ci([]) is None
    one = mean_ci([0.5])
    assert one[0] == 0.5 and math.isnan(one[1])
    # closed forms: df 1 is Cauchy, tan(pi (0.975 - 1/2)); df 2: (2p - 1) / sqrt(2 p (1 - p)) at p = 0.975
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert t_quantile_975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    # beyond the old df-30 table it is no longer the normal quantile (df 31: 2.0395, not 1.96)
    assert t_quantile_975(31) == pytest.approx(2.0395134, abs=1e-6) and t_quantile_975(10**9) == pytest.approx(Z95)
    assert t_975_expansion(101) == pytest.approx(t_quantile_975(101), abs=1e-10)
