"""Paired comparisons over seeds, and the one rule that turns them into a verdict.

Compared methods share the data split, the subset and the initial weights at each seed, so the unit of
evidence is the per-seed difference d_s = a_s - b_s. Its mean gets a two-sided 95% Student-t interval
(the paired t-test); a verdict needs at least `MIN_SEEDS` pairs and an interval that excludes 0.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

MIN_SEEDS = 5  # the project's standard of evidence: fewer pairs give an interval, not a verdict
LEVEL = 0.95


def paired_test_name(level: float = LEVEL) -> str:
    """The test behind `paired`'s intervals at `level`, as chapters name it."""
    return f"paired t-test, two-sided, {level:.0%} interval"


TEST = paired_test_name()


class Verdict(enum.Enum):
    """What the verdict rule says of a paired comparison a - b (`Paired.verdict`): a value, so no caller
    parses the words a chapter renders it with (`verdict`)."""

    ABOVE = "the whole interval is above 0"
    BELOW = "the whole interval is below 0"
    NEITHER = "the interval includes 0"
    TOO_FEW = f"fewer than {MIN_SEEDS} pairs"

    @property
    def decided(self) -> bool:
        """A difference was detected (either sign)."""
        return self in (Verdict.ABOVE, Verdict.BELOW)

    def flipped(self) -> "Verdict":
        """The verdict on b - a."""
        return {Verdict.ABOVE: Verdict.BELOW, Verdict.BELOW: Verdict.ABOVE}.get(self, self)


@dataclass(frozen=True)
class Paired:
    """The mean per-seed difference a - b, its two-sided Student-t interval [lo, hi] at `level`, the paired
    t-test's p-value and the number of pairs; `test` names the test."""

    mean: float
    lo: float
    hi: float
    p: float
    n: int
    level: float = LEVEL

    @property
    def test(self) -> str:
        return paired_test_name(self.level)

    @property
    def verdict(self) -> Verdict:
        """What the verdict rule says of this comparison (it needs MIN_SEEDS pairs and an interval without 0)."""
        if self.n < MIN_SEEDS:
            return Verdict.TOO_FEW
        return Verdict.BELOW if self.hi < 0 else Verdict.ABOVE if self.lo > 0 else Verdict.NEITHER

    def text(self, scale: float = 100, unit: str = " points") -> str:
        """"-1.2 [-2.0, -0.4] points (5 seeds)", the interval omitted below two pairs. Enough decimals (at least
        one) that the interval's half-width has a significant digit, or the mean two without an interval."""
        half = (self.hi - self.lo) / 2 * scale if self.n > 1 else math.nan
        ref, extra = (half, 0) if half > 0 else (abs(self.mean * scale), 1)
        decimals = 1 if not ref > 0 else int(min(6, max(1, extra - math.floor(math.log10(ref)))))
        f = lambda v: f"{v * scale:+.{decimals}f}"
        interval = f" [{f(self.lo)}, {f(self.hi)}]" if self.n > 1 else ""
        return f"{f(self.mean)}{interval}{unit} ({self.n} seed{'s' if self.n != 1 else ''})"


def paired(a, b, level: float = LEVEL) -> Paired:
    """The paired comparison of two equally long sequences of per-seed results (a[s] and b[s] share seed s).

    With one pair the interval and p-value are NaN; with identical differences the interval is a point.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired needs two equally long, non-empty 1-d sequences, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired: a result is not finite (a failed run has no value to compare)")
    d = a - b
    n, mean = len(d), float(d.mean())
    if n == 1:
        return Paired(mean, math.nan, math.nan, math.nan, 1, level)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Paired(mean, mean, mean, 0.0 if mean != 0 else 1.0, n, level)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * _st.t.sf(abs(mean) / se, n - 1))
    return Paired(mean, mean - half, mean + half, p, n, level)


def verdict(c: Paired, above: str, below: str, neither: str = "no detectable difference") -> str:
    """`c.verdict` in words: `below` when the whole interval is below 0, `above` when it is above 0, else
    `neither`; with fewer than MIN_SEEDS pairs there is no verdict, whatever the interval."""
    if c.verdict is Verdict.TOO_FEW:
        return f"no verdict ({c.n} of {MIN_SEEDS} seeds)"
    return {Verdict.BELOW: below, Verdict.ABOVE: above, Verdict.NEITHER: neither}[c.verdict]
