"""Tests of instil.eval.stats against hand-computed answers, scipy, statsmodels and seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import normal_power
from statsmodels.stats.proportion import proportion_confint

from instil.errors import DataError
from instil.eval.stats import (
    bootstrap_ci,
    gate_decision,
    holm,
    mcnemar_exact,
    min_detectable_effect,
    paired_bootstrap,
    power_paired_binary,
    power_paired_continuous,
    wilson_interval,
)


def _pairs(both: int, b_only: int, a_only: int, neither: int) -> tuple[list[int], list[int]]:
    """Pass/fail outcomes of A and B with the given 2x2 table, in a fixed interleaved order."""
    a = [1] * both + [0] * b_only + [1] * a_only + [0] * neither
    b = [1] * both + [1] * b_only + [0] * a_only + [0] * neither
    return a, b


# ---------------------------------------------------------------- McNemar


def test_mcnemar_hand_computed() -> None:
    # 5 discordant pairs, all for B: P(X >= 5 | 5, 1/2) = 1/32; two-sided doubles it.
    r = mcnemar_exact(*_pairs(10, 5, 0, 3))
    assert (r.b_only, r.a_only, r.n) == (5, 0, 18)
    assert r.p_value_one_sided == pytest.approx(1 / 32)
    assert r.p_value_two_sided == pytest.approx(2 / 32)
    # 3 for B, 1 for A: P(X >= 3 | 4) = 5/16; two-sided 2 * P(X <= 1) = 10/16.
    r = mcnemar_exact(*_pairs(0, 3, 1, 0))
    assert r.p_value_one_sided == pytest.approx(5 / 16)
    assert r.p_value_two_sided == pytest.approx(10 / 16)
    # No discordant pairs: no evidence either way.
    r = mcnemar_exact(*_pairs(4, 0, 0, 4))
    assert (r.p_value_one_sided, r.p_value_two_sided) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("both", "b_only", "a_only", "neither"),
    [(50, 12, 3, 35), (7, 9, 9, 1), (0, 1, 30, 2), (100, 40, 25, 60), (3, 0, 6, 3)],
)
def test_mcnemar_matches_statsmodels_and_scipy(both: int, b_only: int, a_only: int, neither: int) -> None:
    r = mcnemar_exact(*_pairs(both, b_only, a_only, neither))
    # statsmodels' table: rows A pass/fail, columns B pass/fail.
    table = [[both, a_only], [b_only, neither]]
    assert r.p_value_two_sided == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)
    one = sps.binomtest(b_only, b_only + a_only, 0.5, alternative="greater").pvalue
    assert r.p_value_one_sided == pytest.approx(one, rel=1e-12)


def test_mcnemar_rejects_non_binary_scores_with_index() -> None:
    with pytest.raises(DataError, match=r"index 2 is 0\.5.*kind='continuous'"):
        mcnemar_exact([1, 0, 1], [1, 0, 0.5])


# ---------------------------------------------------------------- Holm


@pytest.mark.parametrize(
    "p",
    [
        [0.01, 0.04, 0.03, 0.2],
        [0.001, 0.001, 0.5, 0.049],
        [0.3, 0.6, 0.9],
        [0.02],
        [0.01, 0.0125, 0.025, 0.05],
        [0.0, 1.0, 0.026, 0.026],
    ],
)
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_holm_matches_statsmodels(p: list[float], alpha: float) -> None:
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    got = holm(p, alpha=alpha)
    np.testing.assert_allclose(got.adjusted, adjusted, rtol=1e-12)
    assert got.reject == list(reject)


def test_holm_rejects_invalid_p_values() -> None:
    with pytest.raises(ValueError, match="p-values in"):
        holm([0.1, 1.5])


# ---------------------------------------------------------------- intervals


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_ci_matches_scipy(method: str) -> None:
    x = np.random.default_rng(7).exponential(size=80)  # skewed, so BCa and percentile differ
    ours = bootstrap_ci(x, method=method, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((x,), np.mean, method=method, n_resamples=20_000, rng=np.random.default_rng(2))
    assert ours.estimate == pytest.approx(x.mean())
    # Monte Carlo error of a 2.5% quantile of 20k resamples is about 0.005 here; allow a few of those.
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.02)


def test_bca_and_percentile_differ_on_skewed_data() -> None:
    x = np.random.default_rng(7).exponential(size=80)
    pct, bca = bootstrap_ci(x, seed=1), bootstrap_ci(x, seed=1, method="bca")
    # BCa shifts a right-skewed mean's interval to the right.
    assert bca.low > pct.low and bca.high > pct.high


def test_bootstrap_ci_constant_values_give_zero_width() -> None:
    iv = bootstrap_ci([0.7] * 25, method="bca")
    assert (iv.estimate, iv.low, iv.high) == (0.7, 0.7, 0.7)


def test_bootstrap_ci_is_deterministic_with_seed() -> None:
    x = np.random.default_rng(3).random(40)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)


def test_bootstrap_ci_of_pass_rate_agrees_with_normal_and_wilson() -> None:
    rng = np.random.default_rng(11)
    x = (rng.random(3000) < 0.3).astype(float)
    p, n = x.mean(), x.size
    half = 1.959964 * math.sqrt(p * (1 - p) / n)
    boot, wil = bootstrap_ci(x, seed=0), wilson_interval(int(x.sum()), n)
    # At this size the bootstrap, Wald and Wilson intervals coincide to within a few thousandths.
    assert boot.low == pytest.approx(p - half, abs=0.003) and boot.high == pytest.approx(p + half, abs=0.003)
    assert wil.low == pytest.approx(p - half, abs=0.002) and wil.high == pytest.approx(p + half, abs=0.002)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (57, 200)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    iv = wilson_interval(k, n)
    assert iv.low == pytest.approx(low, abs=1e-12) and iv.high == pytest.approx(high, abs=1e-12)


def test_bootstrap_rejects_nan_with_index() -> None:
    with pytest.raises(DataError, match=r"index 1 is nan"):
        bootstrap_ci([0.1, float("nan"), 0.3])


# ---------------------------------------------------------------- paired bootstrap


def test_paired_bootstrap_resamples_pairs_not_margins() -> None:
    # B = A + 0.1 exactly: the pairing removes all the between-example spread, so the interval has zero width.
    a = np.random.default_rng(0).random(50)
    r = paired_bootstrap(a, a + 0.1)
    assert r.mean_diff == pytest.approx(0.1)
    assert r.low == pytest.approx(0.1) and r.high == pytest.approx(0.1)
    assert r.p_value_one_sided == 0.0


def test_paired_bootstrap_interval_and_p_value_agree() -> None:
    rng = np.random.default_rng(4)
    for trial in range(30):
        a = rng.random(60)
        b = a + rng.normal(0.03, 0.2, size=60)
        for threshold in (0.0, -0.02, 0.05):
            r = paired_bootstrap(a, b, threshold=threshold, confidence=0.9, n_resamples=2000, seed=trial)
            assert (r.low > threshold) == (r.p_value_one_sided < 0.05)


def test_paired_bootstrap_p_value_is_near_the_normal_test() -> None:
    rng = np.random.default_rng(9)
    d = rng.normal(0.04, 0.25, size=400)
    r = paired_bootstrap(np.zeros(400), d, n_resamples=20_000)
    z = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert r.p_value_one_sided == pytest.approx(sps.norm.sf(z), abs=0.01)


def test_paired_bootstrap_rejects_unpaired_lengths() -> None:
    with pytest.raises(DataError, match="A has 3 scores and B has 2"):
        paired_bootstrap([1, 0, 1], [1, 0])


# ---------------------------------------------------------------- power


def _simulated_mcnemar_power(n: int, p_disc: float, effect: float, alpha: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    p01, p10 = (p_disc + effect) / 2, (p_disc - effect) / 2
    counts = rng.multinomial(n, [p01, p10, 1 - p_disc], size=reps)
    b_only, m = counts[:, 0], counts[:, 0] + counts[:, 1]
    p = np.where(m == 0, 1.0, sps.binom.sf(b_only - 1, m, 0.5))
    return float(np.mean(p < alpha))


@pytest.mark.parametrize(("n", "p_disc", "effect"), [(100, 0.3, 0.1), (400, 0.2, 0.05), (60, 0.5, 0.2)])
def test_mcnemar_power_matches_simulation(n: int, p_disc: float, effect: float) -> None:
    exact = power_paired_binary(n, p_disc, effect, 0.05)
    reps = 20_000
    sim = _simulated_mcnemar_power(n, p_disc, effect, 0.05, reps, seed=n)
    assert exact == pytest.approx(sim, abs=4 * math.sqrt(sim * (1 - sim) / reps) + 1e-3)


def test_mcnemar_power_is_near_connors_formula_for_large_holdouts() -> None:
    n, psi, delta, alpha = 2000, 0.2, 0.03, 0.05
    connor = sps.norm.cdf((delta * math.sqrt(n) - sps.norm.ppf(1 - alpha) * math.sqrt(psi)) / math.sqrt(psi - delta**2))
    assert power_paired_binary(n, psi, delta, alpha) == pytest.approx(connor, abs=0.03)


def test_mcnemar_power_under_the_null_is_at_most_alpha() -> None:
    assert power_paired_binary(300, 0.25, 0.0, 0.05) <= 0.05


@pytest.mark.parametrize(("n", "sd", "effect"), [(100, 0.3, 0.05), (500, 0.2, 0.02), (30, 0.5, 0.3)])
def test_continuous_power_matches_statsmodels(n: int, sd: float, effect: float) -> None:
    ref = normal_power(effect / sd, n, 0.05, alternative="larger")
    assert power_paired_continuous(n, sd, effect, 0.05) == pytest.approx(ref, rel=1e-9)


def test_min_detectable_effect_inverts_power() -> None:
    mde = min_detectable_effect(300, alpha=0.05, p_discordant=0.2)
    assert mde is not None
    assert power_paired_binary(300, 0.2, mde, 0.05) >= 0.8 > power_paired_binary(300, 0.2, mde - 0.002, 0.05)
    mde_c = min_detectable_effect(300, alpha=0.05, sd_diff=0.3)
    assert power_paired_continuous(300, 0.3, mde_c, 0.05) == pytest.approx(0.8)
    # Two examples can never reach p < 0.05, whatever the gain.
    assert min_detectable_effect(2, alpha=0.05, p_discordant=1.0) is None


# ---------------------------------------------------------------- the gate


def _check_bounds_agree(decision) -> None:
    for c in decision.comparisons:
        assert (c.low > c.threshold) == (c.p_value < c.level), c


def test_gate_promotes_clear_gain_with_equal_others() -> None:
    a, b = _pairs(120, 30, 2, 48)  # 200 examples, B wins 30 of 32 disagreements
    fmt = np.random.default_rng(0).random(200)
    d = gate_decision(
        (a, b, "binary"),
        {"format": (fmt, fmt), "length": (fmt, fmt + 0.01)},
        primary_name="label",
        alpha=0.05,
        margin=0.02,
        min_effect=0.05,
    )
    assert d.promoted and d.reasons == []
    assert [c.name for c in d.comparisons] == ["label", "format", "length"]
    label = d.comparisons[0]
    assert label.test == "mcnemar_exact" and label.estimate == pytest.approx(28 / 200)
    assert label.p_value == pytest.approx(sps.binomtest(30, 32, 0.5, alternative="greater").pvalue)
    assert all(c.low > c.threshold for c in d.comparisons)
    _check_bounds_agree(d)


def test_gate_refuses_without_significant_gain() -> None:
    a, b = _pairs(100, 6, 4, 90)
    d = gate_decision((a, b, "binary"), {}, primary_name="label", alpha=0.05)
    assert not d.promoted
    (reason,) = d.reasons
    p = sps.binomtest(6, 10, 0.5, alternative="greater").pvalue
    assert reason.startswith("label: no significant gain")
    assert f"p={p:.4g} >= alpha 0.05 (Holm-adjusted" in reason
    _check_bounds_agree(d)


def test_gate_refuses_regression_on_secondary_grader() -> None:
    a, b = _pairs(120, 30, 2, 48)
    rng = np.random.default_rng(1)
    old = rng.random(200)
    new = old - 0.06 + rng.normal(0, 0.05, size=200)  # a clear drop of 0.06, beyond the 0.02 margin
    d = gate_decision((a, b, "binary"), {"style": (old, new)}, primary_name="label", margin=0.02)
    assert not d.promoted
    assert d.comparisons[0].passed and not d.comparisons[1].passed
    (reason,) = d.reasons
    assert reason.startswith("style: possible regression beyond the margin")
    assert "is not above -0.0200" in reason
    _check_bounds_agree(d)


def test_gate_allows_a_drop_within_the_margin() -> None:
    a, b = _pairs(120, 30, 2, 48)
    old = np.random.default_rng(2).random(200)
    d = gate_decision((a, b, "binary"), {"style": (old, old - 0.005)}, margin=0.02)
    assert d.promoted


def test_gate_many_disagreements_need_more_evidence() -> None:
    # Both holdouts show the same +0.05 gain in pass rate, but in the first the candidates disagree on half the
    # examples, 110 to 90: McNemar sees a coin flip. In the second they disagree on 20, all for B.
    noisy = gate_decision((*_pairs(100, 110, 90, 100), "binary"), {}, primary_name="label")
    clean = gate_decision((*_pairs(190, 20, 0, 190), "binary"), {}, primary_name="label")
    assert noisy.comparisons[0].estimate == pytest.approx(clean.comparisons[0].estimate) == pytest.approx(0.05)
    assert not noisy.promoted and clean.promoted
    assert noisy.comparisons[0].p_value == pytest.approx(sps.binomtest(110, 200, 0.5, alternative="greater").pvalue)
    # The power check knows: with half the examples discordant, 400 examples cannot resolve a 0.05 gain.
    assert noisy.power < 0.8 and noisy.warnings and "label: a holdout of 400 examples" in noisy.warnings[0]
    assert noisy.extra["p_discordant"] == pytest.approx(0.5)


def test_gate_holm_refuses_what_uncorrected_tests_would_pass() -> None:
    # The primary's raw p (14 of 19 discordant pairs for B) is 0.032 and the non-inferiority test's is about 0.04:
    # each passes alone at 0.05, but Holm compares the smaller one with 0.05 / 2, so both fail.
    a, b = _pairs(40, 14, 5, 41)
    p_primary = sps.binomtest(14, 19, 0.5, alternative="greater").pvalue
    assert 0.025 < p_primary < 0.04
    assert gate_decision((a, b, "binary"), {}).promoted
    z = np.random.default_rng(5).normal(size=100)
    diff = -0.0027 + 0.1 * (z - z.mean()) / z.std(ddof=1)  # mean and spread set exactly: p about 0.042
    old = np.full(100, 0.5)
    d = gate_decision((a, b, "binary"), {"style": (old, old + diff)}, primary_name="label", margin=0.02)
    label, style = d.comparisons
    assert p_primary < style.p_value < 0.05
    assert (label.level, style.level) == (0.025, 0.05)
    assert label.p_adjusted == pytest.approx(2 * p_primary) and not label.passed and not style.passed
    assert not d.promoted and len(d.reasons) == 2
    np.testing.assert_allclose(
        [c.p_adjusted for c in d.comparisons],
        multipletests([c.p_value for c in d.comparisons], method="holm")[1],
    )
    _check_bounds_agree(d)


def test_gate_with_continuous_primary() -> None:
    rng = np.random.default_rng(8)
    old = rng.random(300)
    new = np.clip(old + rng.normal(0.08, 0.1, size=300), 0, 1)
    d = gate_decision((old, new, "continuous"), {}, primary_name="rouge", min_effect=0.05)
    c = d.comparisons[0]
    assert d.promoted and c.test == "paired_bootstrap" and c.low > 0
    assert d.power > 0.99 and "sd_diff" in d.extra
    flat = gate_decision((old, old, "continuous"), {}, primary_name="rouge")
    assert not flat.promoted and flat.comparisons[0].p_value == 1.0


def test_gate_rejects_graders_scored_on_different_holdouts() -> None:
    a, b = _pairs(10, 2, 1, 7)
    with pytest.raises(DataError, match="style: 19 scores but the primary grader 'label' has 20"):
        gate_decision((a, b, "binary"), {"style": ([0.5] * 19, [0.5] * 19)}, primary_name="label")


def test_wilson_bounds_contain_the_estimate_at_the_edges():
    for passed, n in ((0, 6), (6, 6), (0, 1), (1, 1), (0, 1000)):
        ci = wilson_interval(passed, n)
        assert ci.low <= ci.estimate <= ci.high
