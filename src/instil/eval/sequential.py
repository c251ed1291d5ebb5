"""An anytime-valid test for a canary: is the candidate failing more often than production, looked at after every
request?

    from instil.eval.sequential import CanaryGuard
    guard = CanaryGuard(alpha=0.05, margin=0.0)
    for arm, failed in outcomes_in_arrival_order:      # arm: "candidate" or "production"
        if guard.update(arm, failed):
            print("stop:", guard.reason())

Why not a fixed-sample test: a z-test or Fisher's exact test checked after every request, stopping at the first
p < 0.05, stops a canary that is exactly as good as production far more often than 5% of the time (the more looks,
the more often). A guard left running needs a test whose error bound holds at every look.

The test is a betting martingale (Waudby-Smith and Ramdas, "Estimating means of bounded random variables by
betting", JRSS-B 2023). Outcomes (1 = failed) are grouped in arrival order: as soon as both arms have had at least one
outcome since the last group, the group gives one observation ``d = mean(candidate's) - mean(production's)``, in
[-1, 1]. Requests are assigned to arms before their outcome is known, so given the arms' sequence the groups are
independent with ``E[d] = p_candidate - p_production``. Under the null hypothesis (the candidate fails at most
``margin`` more often than production), for every fixed bet ``lam`` in [0, 1 / (1 + margin)) the wealth
``prod(1 + lam * (d - margin))`` is a nonnegative supermartingale starting at 1, and so is the average of several of
them (here a fixed grid of bets, which adapts to small and large differences alike). By Ville's inequality the wealth
ever reaches ``1 / alpha`` with probability at most ``alpha``, however long the canary runs and however often it is
looked at: the guard stops when it does.

What it assumes: requests are independent given their arm (a user whose requests all go to one arm, as a sticky
canary sends them, makes them less so; the error bound is then approximate), and the order outcomes are fed in is
their arrival order, not the order they were graded in (a slow, failing answer graded last must not move groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ARMS", "BETS", "CanaryGuard"]

ARMS = ("candidate", "production")
BETS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
"""The grid of bets (as fractions of the largest the margin allows) whose wealths are averaged."""


@dataclass
class CanaryGuard:
    """The running test: feed ``update`` each outcome in arrival order; ``stopped`` once the candidate shows worse."""

    alpha: float = 0.05
    """The chance, at most, that a candidate no worse than production (plus ``margin``) is ever stopped."""
    margin: float = 0.0
    """How much higher the candidate's failure rate may be before it counts as worse (0.02: two points)."""
    n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    """Outcomes seen per arm."""
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ARMS, 0))
    groups: int = 0
    """Observations the wealth is made of (each one group of outcomes from both arms)."""
    stopped: bool = False
    stopped_at: int | None = None
    """The number of outcomes (both arms) seen when it stopped."""
    _log_wealth: list[float] = field(default_factory=lambda: [0.0] * len(BETS), repr=False)
    _pending: dict[str, list[int]] = field(default_factory=lambda: {a: [0, 0] for a in ARMS}, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha ({self.alpha}) must be between 0 and 1")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin ({self.margin}) must be in [0, 1)")

    @property
    def threshold(self) -> float:
        """The wealth at which the guard stops: ``1 / alpha``."""
        return 1.0 / self.alpha

    @property
    def wealth(self) -> float:
        """The evidence that the candidate is worse, as an e-value: 1 at the start, ``threshold`` to stop."""
        top = max(self._log_wealth)
        return math.exp(top) * sum(math.exp(w - top) for w in self._log_wealth) / len(BETS)

    def rate(self, arm: str) -> float | None:
        """The arm's observed failure rate (None before its first outcome)."""
        return self.failures[arm] / self.n[arm] if self.n[arm] else None

    def update(self, arm: str, failed: bool) -> bool:
        """Take one outcome (``arm``: ``candidate`` or ``production``); returns whether the guard has stopped."""
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, not {arm!r}")
        self.n[arm] += 1
        self.failures[arm] += int(failed)
        pending = self._pending[arm]
        pending[0] += int(failed)
        pending[1] += 1
        cand, prod = self._pending["candidate"], self._pending["production"]
        if cand[1] and prod[1]:
            d = cand[0] / cand[1] - prod[0] / prod[1]
            self._pending = {a: [0, 0] for a in ARMS}
            self.groups += 1
            top = 1.0 / (1.0 + self.margin)
            for i, bet in enumerate(BETS):
                self._log_wealth[i] += math.log1p(bet * top * (d - self.margin))
            if not self.stopped and self.wealth >= self.threshold:
                self.stopped, self.stopped_at = True, self.n["candidate"] + self.n["production"]
        return self.stopped

    def reason(self) -> str:
        """Why it stopped (or where it stands), in a sentence with the figures behind it."""
        c, p = self.rate("candidate"), self.rate("production")
        rates = (
            f"candidate failed {self.failures['candidate']}/{self.n['candidate']}"
            + (f" ({c:.1%})" if c is not None else "")
            + f", production {self.failures['production']}/{self.n['production']}"
            + (f" ({p:.1%})" if p is not None else "")
        )
        worse = "worse than production" + (f" by more than {self.margin:.1%}" if self.margin else "")
        if self.stopped:
            return (
                f"the candidate is {worse} with {1 - self.alpha:.0%} confidence (anytime-valid test: evidence "
                f"{self.wealth:.1f} reached {self.threshold:.0f}): {rates}"
            )
        evidence = f"evidence {self.wealth:.2f} of {self.threshold:.0f}"
        return f"no evidence yet that the candidate is {worse} ({evidence}): {rates}"
