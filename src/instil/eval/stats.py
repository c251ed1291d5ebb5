"""The statistics of evaluation and of the promotion gate: confidence intervals, paired tests, Holm, power.

Pure functions on per-example score arrays (one float per holdout example, in [0, 1] by convention).

    from instil.eval.stats import bootstrap_ci, gate_decision

    bootstrap_ci([1, 0, 1, 1])                      # Interval(estimate=0.75, low=..., high=...)
    decision = gate_decision(
        (old_label_pass, new_label_pass, "binary"),  # the primary grader: must improve
        {"format": (old_format, new_format)},        # the others: must not drop by more than the margin
        primary_name="label", alpha=0.05, margin=0.02, min_effect=0.05,
    )
    decision.promoted, decision.reasons, decision.warnings

How the gate decides (``gate_decision``), for candidate A (current) and B (new), on the same holdout examples:

* Superiority on the primary grader, H0: mean(B - A) <= 0 against H1: > 0.
  Pass/fail scores use the exact McNemar test (one-sided binomial test on the discordant pairs); its interval is
  the Clopper-Pearson interval of the discordant split, scaled to a difference of pass rates, conditional on the
  observed number of discordant pairs. Continuous scores use the paired bootstrap of the mean difference.
* Non-inferiority on every other grader, H0: mean(B - A) <= -margin against H1: > -margin, by the paired bootstrap.
* The superiority test and the non-inferiority tests form one family of m tests, corrected with Holm. A test
  passes when its Holm-adjusted p-value is below ``alpha``. The gate promotes only when every test passes.
* Every test is one-sided, and its reported interval (``low``, ``high``) is the two-sided (1 - 2 * level)
  interval, where ``level`` is the test's Holm threshold ``alpha / (m - rank + 1)`` (rank of its raw p-value,
  ascending). Each test is built so that ``low > threshold`` exactly when ``p_value < level``: the bootstrap
  p-value is the share of resampled means at or below the threshold, and the bound is their ``level`` quantile
  (the inverse empirical CDF); Clopper-Pearson inverts the exact binomial test. Holm's step-down adds one
  condition: a test passes only when every test with a smaller p-value passes too, so a gate that promotes
  always has every lower bound above its threshold.
* Power check: the exact power of the one-sided McNemar test at ``alpha`` (binary primary) or the normal
  approximation of the paired mean test (continuous primary) to detect a gain of ``min_effect`` on a holdout of
  this size; below 0.8 it adds a warning with the minimum detectable effect. Power uses ``alpha`` itself, the
  Holm threshold the primary gets when the non-inferiority tests pass with smaller p-values (the usual case).

Bootstrap p-values have a resolution of 1 / n_resamples: 0.0 means "below 1 / n_resamples".
Bootstrap results are deterministic for a given seed; every bootstrap here with the same seed and number of
examples draws the same example indices, so all graders of one comparison are resampled jointly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from instil.errors import DataError

__all__ = [
    "Comparison",
    "GateDecision",
    "HolmResult",
    "Interval",
    "McNemarResult",
    "PairedResult",
    "bootstrap_ci",
    "gate_decision",
    "holm",
    "mcnemar_exact",
    "min_detectable_effect",
    "paired_bootstrap",
    "power_paired_binary",
    "power_paired_continuous",
    "wilson_interval",
]

ScoreKind = Literal["binary", "continuous"]

# Bootstrap resamples are drawn in blocks of about this many indices, so memory stays bounded for large holdouts.
_BLOCK_INDICES = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    """The statistic on the data itself (for a bootstrap: the sample mean)."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval."""
    confidence: float
    """Coverage of the interval, such as 0.95."""
    method: str
    """How it was computed: ``percentile``, ``bca`` or ``wilson``."""


@dataclass(frozen=True)
class PairedResult:
    """The paired bootstrap of the mean difference B - A, with a one-sided test against a threshold."""

    mean_diff: float
    """Mean of B - A over the examples."""
    low: float
    """Lower end of the two-sided interval of the mean difference at ``confidence``."""
    high: float
    """Upper end of that interval."""
    p_value_one_sided: float
    """Share of resampled mean differences at or below ``threshold`` (H1: the mean difference is above it)."""
    confidence: float
    """Coverage of the interval."""
    threshold: float
    """The null value of the one-sided test: 0 for superiority, minus the margin for non-inferiority."""
    n: int
    """Number of paired examples."""


@dataclass(frozen=True)
class McNemarResult:
    """The exact McNemar test on paired pass/fail outcomes."""

    b_only: int
    """Examples that B passes and A fails."""
    a_only: int
    """Examples that A passes and B fails."""
    p_value_one_sided: float
    """P(X >= b_only) for X ~ Binomial(b_only + a_only, 1/2); H1: B passes more often than A."""
    p_value_two_sided: float
    """min(1, 2 * P(X <= min(b_only, a_only))), as in statsmodels' ``mcnemar(exact=True)``."""
    n: int
    """Number of paired examples (concordant ones included)."""


@dataclass(frozen=True)
class HolmResult:
    """Holm-adjusted p-values, in the order given."""

    adjusted: list[float]
    """Holm-adjusted p-values (step-down, monotone, capped at 1)."""
    reject: list[bool]
    """Whether each null hypothesis is rejected at ``alpha`` (adjusted p <= alpha, as statsmodels does)."""
    alpha: float
    """The family-wise error rate controlled."""


@dataclass(frozen=True)
class Comparison:
    """One test of the gate, with every number behind its verdict."""

    name: str
    """The grader's name."""
    hypothesis: Literal["superiority", "non_inferiority"]
    """What B must show: a gain (primary grader) or no loss beyond the margin (other graders)."""
    test: Literal["mcnemar_exact", "paired_bootstrap"]
    """The one-sided paired test used."""
    threshold: float
    """The null value of the difference: 0 for superiority, minus the margin for non-inferiority."""
    estimate: float
    """Mean of B - A (for pass/fail: the difference of pass rates)."""
    low: float
    """Lower end of the two-sided (1 - 2 * level) interval of the difference: the one-sided bound at ``level``."""
    high: float
    """Upper end of that interval."""
    level: float
    """This test's Holm threshold, alpha / (m - rank + 1)."""
    p_value: float
    """Raw one-sided p-value."""
    p_adjusted: float
    """Holm-adjusted p-value."""
    passed: bool
    """Whether the Holm-adjusted p-value is below alpha."""


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict on candidate B against the current model A."""

    promoted: bool
    """True when every comparison passed."""
    comparisons: list[Comparison]
    """The superiority test first, then the non-inferiority tests in the order given."""
    reasons: list[str]
    """One line per failed comparison, with the numbers that failed."""
    warnings: list[str]
    """Advisory lines, such as a holdout too small to detect ``min_effect``."""
    n: int
    """Number of holdout examples both candidates were scored on."""
    alpha: float
    """Family-wise significance level."""
    margin: float
    """Non-inferiority margin."""
    min_effect: float
    """The gain on the primary grader the power check is for."""
    power: float
    """Power of the primary test to detect ``min_effect`` on this holdout."""
    min_detectable_effect: float | None
    """Smallest gain detected with power 0.8 on this holdout; None when no gain up to the maximum can be."""
    extra: dict[str, float] = field(default_factory=dict)
    """Other numbers of the power check (``p_discordant`` or ``sd_diff``), for reports."""


# ---------------------------------------------------------------- input checks


def _scores(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise DataError(f"{what}: expected a flat list of per-example scores, got an array of shape {arr.shape}.")
    if arr.size == 0:
        raise DataError(f"{what}: no scores; score the holdout before computing statistics.")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DataError(
            f"{what}: score at index {int(bad[0])} is {arr[bad[0]]} ({bad.size} non-finite in all); "
            "every example needs a finite score: check the grader's output for these examples."
        )
    return arr


def _paired(a: ArrayLike, b: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _scores(a, f"{what} (A)"), _scores(b, f"{what} (B)")
    if a_arr.size != b_arr.size:
        raise DataError(
            f"{what}: A has {a_arr.size} scores and B has {b_arr.size}; paired statistics need both candidates "
            "scored on the same holdout examples, in the same order."
        )
    return a_arr, b_arr


def _binary(values: np.ndarray, what: str) -> np.ndarray:
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise DataError(
            f"{what}: score at index {int(bad[0])} is {values[bad[0]]}, but pass/fail scores must be 0 or 1; "
            "use kind='continuous' for graded scores."
        )
    return values.astype(bool)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (such as 0.95), got {confidence}.")


# ---------------------------------------------------------------- intervals


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` resamples with replacement, drawn in blocks to bound memory."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    rng = np.random.default_rng(seed)
    n = values.size
    rows = max(1, _BLOCK_INDICES // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _lower_quantile(boot: np.ndarray, q: float) -> float:
    # The inverse empirical CDF: Q(q) > t exactly when mean(boot <= t) < q, which keeps bounds and p-values in step.
    return float(np.quantile(boot, q, method="inverted_cdf"))


def _upper_quantile(boot: np.ndarray, q: float) -> float:
    # Mirror of _lower_quantile, so the upper bound is below t exactly when mean(boot >= t) < 1 - q.
    return float(-np.quantile(-boot, 1.0 - q, method="inverted_cdf"))


def bootstrap_ci(
    values: ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: Literal["percentile", "bca"] = "percentile",
) -> Interval:
    """Bootstrap confidence interval of the mean of ``values`` (per-example scores, pass rates, win indicators).

    ``percentile`` takes quantiles of the resampled means; ``bca`` corrects them for bias and skew (Efron and
    Tibshirani 1993, 14.3; the jackknife acceleration of the mean has a closed form). Constant values give a
    zero-width interval.
    """
    _check_confidence(confidence)
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}.")
    x = _scores(values, "bootstrap_ci")
    if np.all(x == x[0]):
        # Report the value itself: a float mean of identical values can be off in the last bit.
        value = float(x[0])
        return Interval(value, value, value, confidence, method)
    estimate = float(x.mean())
    boot = _bootstrap_means(x, n_resamples, seed)
    tail = (1.0 - confidence) / 2.0
    q_low, q_high = tail, 1.0 - tail
    if method == "bca":
        q_low, q_high = _bca_levels(x, boot, estimate, q_low, q_high)
    return Interval(estimate, _lower_quantile(boot, q_low), _upper_quantile(boot, q_high), confidence, method)


def _bca_levels(x: np.ndarray, boot: np.ndarray, estimate: float, q_low: float, q_high: float) -> tuple[float, float]:
    # Bias: where the estimate falls among the resampled means (ties count half, as scipy does).
    share = (np.count_nonzero(boot < estimate) + np.count_nonzero(boot <= estimate)) / (2.0 * boot.size)
    if share <= 0.0 or share >= 1.0:
        raise DataError(
            f"bootstrap_ci: the BCa interval is undefined for these {x.size} values: every resampled mean falls "
            "on one side of the estimate; use method='percentile' or more examples."
        )
    z0 = special.ndtri(share)
    # Acceleration from the jackknife; leave-one-out means of a mean are (sum - x_i) / (n - 1).
    n = x.size
    jack = (x.sum() - x) / (n - 1)
    u = jack.mean() - jack
    accel = float((u**3).sum() / (6.0 * (u**2).sum() ** 1.5))

    def adjust(q: float) -> float:
        z = z0 + special.ndtri(q)
        return float(special.ndtr(z0 + z / (1.0 - accel * z)))

    return adjust(q_low), adjust(q_high)


def wilson_interval(passed: int, n: int, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a pass rate ``passed / n``; a closed form, well behaved near 0 and 1."""
    _check_confidence(confidence)
    if n < 1 or not 0 <= passed <= n:
        raise DataError(f"wilson_interval: need 0 <= passed <= n and n >= 1, got passed={passed}, n={n}.")
    z = float(special.ndtri(1.0 - (1.0 - confidence) / 2.0))
    p = passed / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamped to the estimate: at p = 0 or 1 rounding can put center -/+ half a hair past it (2.8e-17 at 0/6).
    return Interval(p, min(p, max(0.0, center - half)), max(p, min(1.0, center + half)), confidence, "wilson")


# ---------------------------------------------------------------- paired tests


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    *,
    threshold: float = 0.0,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of mean(B - A), resampling examples jointly, with a one-sided test of H1: mean > threshold.

    The p-value is the share of resampled mean differences at or below ``threshold``. The interval is the
    percentile interval on the inverse empirical CDF, so ``low > threshold`` exactly when
    ``p_value_one_sided < (1 - confidence) / 2``.
    """
    _check_confidence(confidence)
    a_arr, b_arr = _paired(a, b, "paired_bootstrap")
    # Resampling example indices jointly for A and B is resampling their per-example differences.
    diff = b_arr - a_arr
    mean_diff = float(diff.mean())
    tail = (1.0 - confidence) / 2.0
    if np.all(diff == diff[0]):
        # No variation to resample: every resample gives the same mean, so the interval has zero width.
        return PairedResult(
            mean_diff, mean_diff, mean_diff, float(mean_diff <= threshold), confidence, threshold, diff.size
        )
    boot = _bootstrap_means(diff, n_resamples, seed)
    return PairedResult(
        mean_diff=mean_diff,
        low=_lower_quantile(boot, tail),
        high=_upper_quantile(boot, 1.0 - tail),
        p_value_one_sided=float(np.mean(boot <= threshold)),
        confidence=confidence,
        threshold=threshold,
        n=diff.size,
    )


def mcnemar_exact(a_pass: ArrayLike, b_pass: ArrayLike) -> McNemarResult:
    """Exact McNemar test on paired pass/fail outcomes (0/1 or booleans) of candidates A and B."""
    a_arr, b_arr = _paired(a_pass, b_pass, "mcnemar_exact")
    a_ok, b_ok = _binary(a_arr, "mcnemar_exact (A)"), _binary(b_arr, "mcnemar_exact (B)")
    b_only = int(np.count_nonzero(b_ok & ~a_ok))
    a_only = int(np.count_nonzero(a_ok & ~b_ok))
    return McNemarResult(b_only, a_only, *_mcnemar_p(b_only, a_only), n=a_arr.size)


def _mcnemar_p(b_only: int, a_only: int) -> tuple[float, float]:
    m = b_only + a_only
    if m == 0:
        return 1.0, 1.0
    one = float(stats.binom.sf(b_only - 1, m, 0.5))
    two = float(min(1.0, 2.0 * stats.binom.cdf(min(b_only, a_only), m, 0.5)))
    return one, two


def _mcnemar_interval(b_only: int, a_only: int, n: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson bounds of the discordant split at one-sided ``level``, as a difference of pass rates.

    Given m discordant pairs, the difference of pass rates is (m / n) * (2 * pi - 1), with pi the chance that a
    discordant pair favours B. Clopper-Pearson inverts the exact binomial test, so the lower bound is above 0
    exactly when the one-sided McNemar p-value is below ``level``.
    """
    m = b_only + a_only
    if m == 0:
        return 0.0, 0.0
    pi_low = 0.0 if b_only == 0 else float(stats.beta.ppf(level, b_only, m - b_only + 1))
    pi_high = 1.0 if b_only == m else float(stats.beta.ppf(1.0 - level, b_only + 1, m - b_only))
    scale = m / n
    return scale * (2.0 * pi_low - 1.0), scale * (2.0 * pi_high - 1.0)


def holm(p_values: Sequence[float], *, alpha: float = 0.05) -> HolmResult:
    """Holm's step-down correction; adjusted p-values match statsmodels' ``multipletests(method="holm")``."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or p.size == 0 or np.any((p < 0) | (p > 1) | ~np.isfinite(p)):
        raise ValueError(f"holm: need a non-empty list of p-values in [0, 1], got {list(p_values)!r}.")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * np.arange(m, 0, -1))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return HolmResult([float(v) for v in adjusted], [bool(v <= alpha) for v in adjusted], alpha)


# ---------------------------------------------------------------- power


def power_paired_binary(n: int, p_discordant: float, effect: float, alpha: float) -> float:
    """Exact power of the one-sided exact McNemar test at ``alpha``.

    The model: each of ``n`` examples is discordant with probability ``p_discordant`` (= p10 + p01), and a
    discordant example favours B with probability (p_discordant + effect) / (2 * p_discordant), so that
    ``effect`` = p01 - p10 is the gain in pass rate. Power sums, over the binomial number m of discordant pairs,
    the chance that B's share reaches the test's critical value at m; no normal approximation is involved.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if not 0.0 < p_discordant <= 1.0:
        raise ValueError(f"p_discordant must be in (0, 1], got {p_discordant}.")
    if not 0.0 <= effect <= p_discordant:
        raise ValueError(
            f"effect must be between 0 and p_discordant ({p_discordant}), got {effect}: a gain in pass rate "
            "cannot exceed the share of examples on which the candidates disagree."
        )
    m = np.arange(n + 1)
    # Critical value c_m: the smallest c with P(X >= c | m, 1/2) < alpha (the test passes when p < alpha).
    c = stats.binom.isf(alpha, m, 0.5) + 1  # smallest c with P(X >= c) <= alpha
    at_alpha = stats.binom.sf(c - 1, m, 0.5) >= alpha  # equality: the test needs one more
    c = np.where(at_alpha, c + 1, c)
    favour_b = (p_discordant + effect) / (2.0 * p_discordant)
    p_reach = np.where(c > m, 0.0, stats.binom.sf(c - 1, m, favour_b))
    return float(np.sum(stats.binom.pmf(m, n, p_discordant) * p_reach))


def power_paired_continuous(n: int, sd_diff: float, effect: float, alpha: float) -> float:
    """Power of a one-sided paired mean test at ``alpha`` by the normal approximation: Phi(effect*sqrt(n)/sd - z).

    The paired bootstrap behaves like this z-test for holdouts of a few dozen examples and more.
    """
    if n < 1 or sd_diff < 0:
        raise ValueError(f"need n >= 1 and sd_diff >= 0, got n={n}, sd_diff={sd_diff}.")
    if sd_diff == 0:
        return 1.0 if effect > 0 else float(alpha)
    z_alpha = special.ndtri(1.0 - alpha)
    return float(special.ndtr(effect * math.sqrt(n) / sd_diff - z_alpha))


def min_detectable_effect(
    n: int,
    *,
    alpha: float,
    power: float = 0.8,
    p_discordant: float | None = None,
    sd_diff: float | None = None,
) -> float | None:
    """Smallest gain detected with ``power`` on ``n`` paired examples; None when even the largest cannot be.

    Give ``p_discordant`` for pass/fail scores (exact McNemar power, solved by bisection, since power grows with
    the effect), or ``sd_diff`` for continuous scores (closed form of the normal approximation).
    """
    if (p_discordant is None) == (sd_diff is None):
        raise ValueError("give exactly one of p_discordant (pass/fail scores) or sd_diff (continuous scores).")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be between 0 and 1, got {power}.")
    if sd_diff is not None:
        if sd_diff == 0:
            return 0.0
        return float((special.ndtri(1.0 - alpha) + special.ndtri(power)) * sd_diff / math.sqrt(n))
    assert p_discordant is not None
    if power_paired_binary(n, p_discordant, p_discordant, alpha) < power:
        return None
    low, high = 0.0, p_discordant
    while high - low > 1e-4:
        mid = (low + high) / 2.0
        if power_paired_binary(n, p_discordant, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


# ---------------------------------------------------------------- the gate


def gate_decision(
    primary: tuple[ArrayLike, ArrayLike, ScoreKind],
    others: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    primary_name: str = "primary",
    alpha: float = 0.05,
    margin: float = 0.02,
    min_effect: float = 0.05,
    target_power: float = 0.8,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> GateDecision:
    """Decide whether B replaces A: a significant gain on the primary grader and no loss beyond ``margin`` elsewhere.

    ``primary`` is (A's scores, B's scores, kind) with kind "binary" (pass/fail, exact McNemar) or "continuous"
    (paired bootstrap); ``others`` maps each other grader's name to (A's scores, B's scores). All scores are per
    example of the same holdout, in the same order. See the module docstring for how the tests and Holm combine.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be between 0 and 0.5, got {alpha}.")
    if margin < 0 or min_effect <= 0:
        raise ValueError(f"need margin >= 0 and min_effect > 0, got margin={margin}, min_effect={min_effect}.")
    a_primary, b_primary, kind = primary
    if kind not in ("binary", "continuous"):
        raise ValueError(f"primary kind must be 'binary' or 'continuous', got {kind!r}.")
    a_p, b_p = _paired(a_primary, b_primary, primary_name)
    pairs = {name: _paired(a, b, name) for name, a, b in ((k, *v) for k, v in others.items())}
    n = a_p.size
    for name, (a, _) in pairs.items():
        if a.size != n:
            raise DataError(
                f"{name}: {a.size} scores but the primary grader '{primary_name}' has {n}; every grader must be "
                "scored on the same holdout version for both candidates."
            )

    # Raw one-sided p-values first: Holm's thresholds depend on all of them.
    # Keyed by position, as another grader may share the primary's name.
    boots: dict[int, np.ndarray] = {}
    mcnemar: McNemarResult | None = None
    if kind == "binary":
        mcnemar = mcnemar_exact(a_p, b_p)
        raw = [mcnemar.p_value_one_sided]
    else:
        boots[0] = _bootstrap_means(b_p - a_p, n_resamples, seed)
        raw = [float(np.mean(boots[0] <= 0.0))]
    for i, (a, b) in enumerate(pairs.values(), start=1):
        boots[i] = _bootstrap_means(b - a, n_resamples, seed)
        raw.append(float(np.mean(boots[i] <= -margin)))
    corrected = holm(raw, alpha=alpha)
    ranks = np.empty(len(raw), dtype=int)
    ranks[np.argsort(raw, kind="stable")] = np.arange(len(raw))
    levels = [alpha / (len(raw) - int(r)) for r in ranks]

    comparisons: list[Comparison] = []
    names = [primary_name, *pairs]
    for i, name in enumerate(names):
        is_primary = i == 0
        threshold = 0.0 if is_primary else -margin
        if is_primary and mcnemar is not None:
            estimate = (mcnemar.b_only - mcnemar.a_only) / n
            low, high = _mcnemar_interval(mcnemar.b_only, mcnemar.a_only, n, levels[i])
            test = "mcnemar_exact"
        else:
            a, b = (a_p, b_p) if is_primary else pairs[name]
            estimate = float((b - a).mean())
            low, high = _lower_quantile(boots[i], levels[i]), _upper_quantile(boots[i], 1.0 - levels[i])
            test = "paired_bootstrap"
        comparisons.append(
            Comparison(
                name=name,
                hypothesis="superiority" if is_primary else "non_inferiority",
                test=test,
                threshold=threshold,
                estimate=estimate,
                low=low,
                high=high,
                level=levels[i],
                p_value=raw[i],
                p_adjusted=corrected.adjusted[i],
                # Strictly below alpha, so a bound that only touches the threshold does not pass.
                passed=corrected.adjusted[i] < alpha,
            )
        )

    reasons = [_reason(c, alpha) for c in comparisons if not c.passed]
    power, mde, extra = _power_check(a_p, b_p, mcnemar, alpha, min_effect, target_power)
    warnings = []
    if power < target_power:
        found = f"{mde:.3f}" if mde is not None else "none up to the largest possible gain"
        warnings.append(
            f"{primary_name}: a holdout of {n} examples has power {power:.2f} < {target_power:.2f} to detect a gain "
            f"of {min_effect:g} at alpha {alpha:g}; the smallest gain it detects with power {target_power:.2f} is "
            f"{found}. Add examples to the holdout, or raise gate.min_effect."
        )
    return GateDecision(
        promoted=not reasons,
        comparisons=comparisons,
        reasons=reasons,
        warnings=warnings,
        n=n,
        alpha=alpha,
        margin=margin,
        min_effect=min_effect,
        power=power,
        min_detectable_effect=mde,
        extra=extra,
    )


def _reason(c: Comparison, alpha: float) -> str:
    bound = f"lower bound {c.low:+.4f} (one-sided {1 - c.level:.1%})"
    if c.hypothesis == "superiority":
        what = f"no significant gain: difference {c.estimate:+.4f}, {bound} is not above 0"
    else:
        what = (
            f"possible regression beyond the margin: difference {c.estimate:+.4f}, {bound} is not above "
            f"{c.threshold:+.4f}"
        )
    return f"{c.name}: {what}; p={c.p_adjusted:.4g} >= alpha {alpha:g} (Holm-adjusted; raw p={c.p_value:.4g}, {c.test})"


def _power_check(
    a: np.ndarray,
    b: np.ndarray,
    mcnemar: McNemarResult | None,
    alpha: float,
    min_effect: float,
    target_power: float,
) -> tuple[float, float | None, dict[str, float]]:
    n = a.size
    if mcnemar is not None:
        observed = (mcnemar.b_only + mcnemar.a_only) / n
        # A gain of min_effect needs at least that much disagreement; plan with whichever is larger.
        p_disc = min(1.0, max(observed, min_effect))
        effect = min(min_effect, p_disc)
        power = power_paired_binary(n, p_disc, effect, alpha)
        mde = min_detectable_effect(n, alpha=alpha, power=target_power, p_discordant=p_disc)
        return power, mde, {"p_discordant": p_disc}
    sd = float(np.std(b - a, ddof=1)) if n > 1 else 0.0
    power = power_paired_continuous(n, sd, min_effect, alpha)
    mde = min_detectable_effect(n, alpha=alpha, power=target_power, sd_diff=sd)
    return power, mde, {"sd_diff": sd}
