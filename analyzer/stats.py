"""The statistics behind ``rtcap precursors``: exact one-sided tests (plain and stratified),
Holm's correction, and cut points taken from the data.

Everything here is about counts of windows: ``failures`` windows that preceded a failure,
``controls`` that preceded a healthy response, and how many of each have a feature.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np


@functools.lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    return np.array([math.lgamma(i + 1) for i in range(n + 1)])


def _log_choose(lg: np.ndarray, n: int | np.ndarray, k: int | np.ndarray) -> np.ndarray:
    return lg[n] - lg[k] - lg[np.subtract(n, k)]


def fisher_greater(a: np.ndarray, failures: int, controls: int, with_feature: np.ndarray) -> np.ndarray:
    """One-sided Fisher exact p: the chance of at least ``a`` of the ``failures`` windows
    having a feature that ``with_feature`` windows of all have, if it were unrelated."""
    total = failures + controls
    lg = _log_factorials(total)
    p = np.zeros(len(a))
    for i, (hits, k) in enumerate(zip(a, with_feature, strict=True)):
        ks = np.arange(hits, min(k, failures) + 1)
        if ks.size == 0:
            continue
        terms = _log_choose(lg, k, ks) + _log_choose(lg, total - k, failures - ks) - _log_choose(lg, total, failures)
        p[i] = min(1.0, float(np.exp(terms).sum()))
    return p


class Strata:
    """Windows in strata (for instance, bands of position in the session), for a test that
    compares failures with controls only within a stratum.

    ``stratum[i]`` is window ``i``'s stratum and ``failed[i]`` whether it preceded a
    failure. :meth:`greater` is the exact conditional test of Mantel-Haenszel's setting
    (Zelen's exact test, one-sided): given how many windows of each stratum have a
    feature, the chance that at least as many failure windows have it as observed, if it
    were unrelated to failing within every stratum. With one stratum it is Fisher's test.
    """

    def __init__(self, stratum: Sequence[int], failed: Sequence[bool]) -> None:
        self.stratum = np.asarray(stratum, dtype=np.int64)
        self.failed = np.asarray(failed, dtype=bool)
        self.count = int(self.stratum.max()) + 1 if len(self.stratum) else 0
        self.windows = np.bincount(self.stratum, minlength=self.count)
        self.failures = np.bincount(self.stratum[self.failed], minlength=self.count)
        self._lg = _log_factorials(int(self.windows.max()) if self.count else 0)
        self._pmfs: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def _pmf(self, s: int, k: int) -> tuple[int, np.ndarray]:
        """The distribution of failure windows with the feature in stratum ``s`` when
        ``k`` of its windows have it: (smallest possible count, probabilities)."""
        key = (s, k)
        if key not in self._pmfs:
            n, f = int(self.windows[s]), int(self.failures[s])
            lo, hi = max(0, f - (n - k)), min(k, f)
            xs = np.arange(lo, hi + 1)
            logs = _log_choose(self._lg, k, xs) + _log_choose(self._lg, n - k, f - xs) - _log_choose(self._lg, n, f)
            self._pmfs[key] = (lo, np.exp(logs))
        return self._pmfs[key]

    def counts(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per stratum: windows with the feature, and failure windows with it
        (``members`` holds the window indexes that have it)."""
        with_feature = np.bincount(self.stratum[members], minlength=self.count)
        failing = np.bincount(self.stratum[members[self.failed[members]]], minlength=self.count)
        return with_feature, failing

    def greater(self, members: np.ndarray) -> float:
        """The one-sided stratified exact p for the feature held by ``members``."""
        with_feature, failing = self.counts(members)
        observed = int(failing.sum())
        offset, dist = 0, np.ones(1)
        for s in np.flatnonzero(with_feature):
            lo, pmf = self._pmf(int(s), int(with_feature[s]))
            offset += lo
            if len(pmf) > 1:
                dist = np.convolve(dist, pmf)
        start = observed - offset
        if start <= 0:
            return 1.0
        return float(min(1.0, dist[start:].sum()))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


MAX_DISTINCT = 12
"""A measure with at most this many distinct values is cut at each of them."""
QUANTILES = np.linspace(0.1, 0.9, 9)
"""Else it is cut at these quantiles of its values (failures and controls pooled)."""


def cut_points(values: Sequence[float]) -> list[float]:
    """Thresholds for a measure, from its observed values: every distinct value when there
    are few, else the deciles; never the smallest (every window is at least that)."""
    distinct = np.unique(np.asarray(values, dtype=float))
    if len(distinct) <= 1:
        return []
    if len(distinct) <= MAX_DISTINCT:
        return [float(v) for v in distinct[1:]]
    cuts = np.unique(np.quantile(np.asarray(values, dtype=float), QUANTILES, method="inverted_cdf"))
    return [float(v) for v in cuts if v > distinct[0]]


def number(value: float) -> str:
    """A threshold as a feature's name shows it: whole numbers as such, else 3 digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def busiest_second(times: Sequence[float]) -> int:
    """The most events inside any one-second span of ``times`` (seconds, ascending)."""
    best = start = 0
    for end in range(len(times)):
        while times[end] - times[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best
