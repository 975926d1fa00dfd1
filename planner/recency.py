"""Idle-time evidence: P(next request within a window | the model has been idle for tau).

Rarely used models are where cold starts happen, and their demand forecast per step is nearly flat
(a small constant ``p_active``). What the forecast cannot say is *when* in the idle period the next
request tends to come; each model's own record of idle times (gaps between requests) can: with
``G`` its gap distribution and ``tau`` the time since its last request,

    P(next request in [tau, tau + w]) = P(tau <= G < tau + w) / P(G >= tau).

Gaps are kept in a histogram of 1-minute bins over 4 hours (longer gaps in one overflow bin, as in
Shahrad et al.'s idle-time histograms), spread a little to the neighbouring bins (timing jitter)
and shrunk, with few observations, towards the model's *base rate*: P of a request in the window
for a Poisson process at the rate the model has returned from idleness over its whole record,

    rate = (returns + 1) / (idle seconds + PRIOR_EXPOSURE_S)

(a Gamma prior of one return per :data:`PRIOR_EXPOSURE_S`). Past the histogram's range, where the
record has no timing evidence, P is the base rate alone. So P is never exactly 0 for a model with
request history: a model idle for longer than any gap it has shown still returns at some rate,
which its lifetime says, and a P of 0 would rank it below every model with any evidence at all
(on the Azure Functions sample, idle models given P = 0 had a request in the window 5.5 % of the
time, more than models given P of 1-5 %). Pure numpy over all models at once; the caller feeds the
requests it observed, time comes from the caller.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

BIN_S = 60.0
BINS = 240
PRIOR_WEIGHT = 2.0
"""Pseudo-observations at the base rate that each model's gap histogram is shrunk toward (a model
with few gaps is taken mostly at its base rate)."""
PRIOR_EXPOSURE_S = BINS * BIN_S
"""Idle seconds of the base rate's prior, which counts one return in them: a model seen once is
expected back within about the histogram's range, and its own record soon outweighs that."""
JITTER_SHARE = 0.15
"""Share of each in-range gap counted in each neighbouring 1-minute bin: timers drift by a tick or
so, and a gap seen at 9 minutes says the next may come at 8, so such a timer is pre-loaded a
minute earlier (fewer late starts, a little more memory held)."""


class IdleTimeRecord:
    """Gap histograms of ``size`` models (index = model position); mutable, updated per tick."""

    def __init__(self, size: int) -> None:
        self.hist = np.zeros((size, BINS + 1), np.float64)
        """Counts of gaps per 1-minute bin; the last bin holds every gap of 4 hours or more.
        Changed only by :meth:`observe` (:meth:`p_within` keeps what it derives from it)."""
        self.last_s = np.full(size, -np.inf)
        """End of each model's latest interval with requests (``-inf``: none yet)."""
        self.returns = np.zeros(size, np.float64)
        """Times each model had requests after a silent stretch (idle -> active)."""
        self.idle_s = np.zeros(size, np.float64)
        """Seconds of those silent stretches, summed (the ongoing one is not included)."""
        self._cumulative: FloatArray | None = None
        """Per model, 0 then the running sum of the jittered histogram (what :meth:`p_within`
        reads), kept between calls: a tick changes the histograms of the models that had
        requests after a gap, a small share of a large fleet."""
        self._changed = np.ones(size, np.bool_)
        """Rows of :attr:`hist` changed since ``_cumulative`` was computed."""

    def resized(self, size: int) -> IdleTimeRecord:
        """A record of ``size`` models: this one's rows first, new rows empty (``size`` at least
        the current size)."""
        grown = IdleTimeRecord(size)
        rows = self.last_s.size
        grown.hist[:rows] = self.hist
        grown.last_s[:rows] = self.last_s
        grown.returns[:rows] = self.returns
        grown.idle_s[:rows] = self.idle_s
        return grown

    def observe(
        self, active: NDArray[np.bool_], *, end_s: float, start_s: float | None = None
    ) -> None:
        """Models in ``active`` had requests in the interval ``[start_s, end_s)`` (default: the
        minute ending at ``end_s``)."""
        start = end_s - BIN_S if start_s is None else start_s
        rows = np.flatnonzero(active & np.isfinite(self.last_s))
        if rows.size:
            gap = (end_s - self.last_s[rows]) / BIN_S - 1.0
            bins = np.clip(np.floor(np.maximum(gap, 0.0)), 0, BINS).astype(np.int64)
            np.add.at(self.hist, (rows, bins), 1.0)
            self._changed[rows] = True
            silent = np.maximum(start - self.last_s[rows], 0.0)
            self.returns[rows] += silent > 0
            self.idle_s[rows] += silent
        self.last_s[active] = end_s

    def base_rate(self, now_s: float) -> FloatArray:
        """Requests per second at which each model has returned from idleness, over its record
        and the idle time since its latest request (0 without a request)."""
        known = np.isfinite(self.last_s)
        ongoing = np.where(known, np.maximum(now_s - self.last_s, 0.0), 0.0)
        rate = (self.returns + 1.0) / (self.idle_s + ongoing + PRIOR_EXPOSURE_S)
        result: FloatArray = np.where(known, rate, 0.0)
        return result

    def gaps(self) -> FloatArray:
        """Gaps recorded per model."""
        result: FloatArray = self.hist.sum(axis=1)
        return result

    def p_within(self, now_s: float, window_s: FloatArray) -> FloatArray:
        """P(a request in ``[now, now + window]``) per model from its gap record and base rate;
        0 only for a model without a request."""
        tau = (now_s - self.last_s) / BIN_S
        known = np.isfinite(tau)
        tau_bin = np.clip(np.floor(np.where(known, tau, 0.0)), 0, BINS).astype(np.int64)
        end_bin = np.clip(
            np.ceil(np.where(known, tau, 0.0) + window_s / BIN_S), 0, BINS + 1
        ).astype(np.int64)
        cumulative = self._cumulative_jittered()
        rows = np.arange(self.hist.shape[0])
        total = cumulative[:, -1]
        at_least = total - cumulative[rows, tau_bin]
        inside = cumulative[rows, end_bin] - cumulative[rows, tau_bin]
        base = -np.expm1(-self.base_rate(now_s) * np.maximum(window_s, 0.0))
        # Past the 4-hour range every later gap sits in the overflow bin: no timing evidence.
        beyond = tau_bin >= BINS
        p = np.where(beyond, base, (inside + PRIOR_WEIGHT * base) / (at_least + PRIOR_WEIGHT))
        return np.where(known, np.clip(p, 0.0, 1.0), 0.0)

    def _cumulative_jittered(self) -> FloatArray:
        """0 then the running sum of each model's jittered histogram, recomputed for the rows
        that changed (a running sum along a row reads only that row: the same numbers as
        recomputing every row)."""
        if self._cumulative is None:
            self._cumulative = np.zeros((self.hist.shape[0], self.hist.shape[1] + 1))
        changed = np.flatnonzero(self._changed)
        if changed.size == self.hist.shape[0]:
            np.cumsum(_jittered(self.hist), axis=1, out=self._cumulative[:, 1:])
        elif changed.size:
            self._cumulative[changed, 1:] = np.cumsum(_jittered(self.hist[changed]), axis=1)
        self._changed[:] = False
        return self._cumulative


def _jittered(hist: FloatArray) -> FloatArray:
    """``hist`` with :data:`JITTER_SHARE` of every in-range bin moved to each neighbour (mass kept;
    at the edges the share stays put); the overflow bin is left alone."""
    inner = hist[:, :BINS]
    spread = inner * (1.0 - 2.0 * JITTER_SHARE)
    spread[:, 1:] += inner[:, :-1] * JITTER_SHARE
    spread[:, :-1] += inner[:, 1:] * JITTER_SHARE
    spread[:, 0] += inner[:, 0] * JITTER_SHARE
    spread[:, -1] += inner[:, -1] * JITTER_SHARE
    result: FloatArray = np.concatenate([spread, hist[:, BINS:]], axis=1)
    return result
