"""The policies prewarm is compared with, implemented as their authors describe them.

- :class:`ReactivePolicy`: KEDA-like. Polls every 30 s, scales on observed load, scales to zero
  after 5 minutes without requests (KEDA's default ``cooldownPeriod``). A request at zero waits for
  the next poll before the start begins.
- :class:`KeepAlivePolicy`: a fixed keep-alive after each request (AWS Lambda-like, 10 minutes).
- :class:`HybridHistogramPolicy`: Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020).
- :class:`TychePolicy`: Sui et al., "Accelerating ML Inference via Opportunistic Pre-Loading on
  Serverless Clusters" (IEEE TPDS 2025).

All of them scale above one replica with the same HPA-like load scaler (:mod:`.base`) and run under
the same GPU memory budget. Under memory pressure each evicts by its own ranking: LRU for reactive,
keep-alive and hybrid-histogram (what their platforms do), probability x load latency for Tyche.
"""

from __future__ import annotations

import math

import numpy as np

from prewarm.sim.cluster import FloatArray, IntArray
from prewarm.sim.engine import Decision, Observation, SimSetup
from prewarm.sim.policies.base import ArrivalClock, LoadScaler


class _KeepAliveBase:
    """Load scaling plus "keep one replica while idle for less than ``keep_s``"."""

    name = "keepalive"
    keep_s = 600.0

    def bind(self, setup: SimSetup) -> None:
        self.setup = setup
        self.scaler = LoadScaler(setup.table, setup.dt_s)
        self.clock = ArrivalClock(setup.table.size)

    def decide(self, obs: Observation) -> Decision:
        self.clock.update(obs.arrivals, tick_end_s=obs.now_s)
        load = self.scaler.update(obs.arrivals)
        idle = self.clock.idle_s(obs.now_s)
        keep = idle < self.keep_s
        target = np.maximum(load, keep.astype(np.int64))
        return Decision(target=target, priority=self.clock.last_s.copy())

    def activation_delay_s(self, arrival_s: float) -> float:
        return 0.0


class KeepAlivePolicy(_KeepAliveBase):
    """Keep a replica for ``keep_s`` after each request (Lambda keeps ~10 minutes)."""

    def __init__(self, keep_s: float = 600.0, *, name: str = "keepalive-10m") -> None:
        self.keep_s = keep_s
        self.name = name


class ReactivePolicy(_KeepAliveBase):
    """KEDA-like: poll every ``poll_s``, scale to zero after ``cooldown_s`` without requests."""

    def __init__(self, *, poll_s: float = 30.0, cooldown_s: float = 300.0) -> None:
        self.name = "reactive"
        self.poll_s = poll_s
        self.keep_s = cooldown_s

    def activation_delay_s(self, arrival_s: float) -> float:
        # KEDA notices activity at its next poll of the metric; the scale-up starts then.
        return self.poll_s - math.fmod(arrival_s, self.poll_s)


HISTOGRAM_RANGE_MIN = 240
"""Hybrid-histogram range: 4 hours of 1-minute bins."""


class HybridHistogramPolicy:
    """Shahrad et al. (ATC'20) hybrid histogram policy, per model.

    - Idle times (IT, minutes between the end of one burst of requests and the next request) go into
      a histogram of 1-minute bins over 4 hours; longer ones count as out of bounds (OOB).
    - Representative histogram (at least :attr:`min_samples` ITs, coefficient of variation of the
      bin counts >= :attr:`cv_threshold`): pre-warm window = 5th percentile x 0.9, keep-alive
      window = 99th percentile x 1.1 minus the pre-warm window. After a request the model is
      unloaded when the pre-warm window is not zero and loaded again when it ends.
    - Most ITs OOB: a time-series model on the IT sequence predicts the next IT; pre-warm at 85 % of
      it, keep alive for 30 % of it (the paper's ARIMA; here an AR(1) on log-ITs, fitted in closed
      form, which is what auto-ARIMA selects for most such series and is cheap enough per request).
    - Otherwise (too few ITs, flat histogram): the fixed keep-alive of the histogram range (4 h).

    Adaptation for GPU models, stated so it can be judged: the paper's cold starts last seconds, so
    it loads at the start of the pre-warm window; here loading begins the model's current lead time
    earlier, so a pre-warmed model is *ready* when the window opens (this only helps the baseline).
    """

    def __init__(
        self,
        *,
        head_percentile: float = 5.0,
        tail_percentile: float = 99.0,
        margin: float = 0.1,
        cv_threshold: float = 2.0,
        min_samples: int = 5,
        oob_share: float = 0.5,
    ) -> None:
        self.name = "hybrid-histogram"
        self.head = head_percentile
        self.tail = tail_percentile
        self.margin = margin
        self.cv_threshold = cv_threshold
        self.min_samples = min_samples
        self.oob_share = oob_share

    def bind(self, setup: SimSetup) -> None:
        m = setup.table.size
        self.setup = setup
        self.scaler = LoadScaler(setup.table, setup.dt_s)
        self.clock = ArrivalClock(m)
        self.hist = np.zeros((m, HISTOGRAM_RANGE_MIN), np.int64)
        self.oob = np.zeros(m, np.int64)
        self.its = np.zeros((m, _IT_RING))
        """The last :data:`_IT_RING` idle times (minutes) per model, a ring at ``its_pos``."""
        self.its_pos = np.zeros(m, np.int64)
        self.its_n = np.zeros(m, np.int64)
        self.prewarm_s = np.zeros(m)
        self.keepalive_s = np.full(m, HISTOGRAM_RANGE_MIN * 60.0)
        self.end_s = np.full(m, -np.inf)
        """End of each model's last active tick (the last request)."""

    def _record(self, rows: IntArray, idle_min: FloatArray) -> None:
        self.its[rows, self.its_pos[rows]] = idle_min
        self.its_pos[rows] = (self.its_pos[rows] + 1) % _IT_RING
        self.its_n[rows] = np.minimum(self.its_n[rows] + 1, _IT_RING)
        bins = np.floor(idle_min).astype(np.int64)
        inside = bins < HISTOGRAM_RANGE_MIN
        np.add.at(self.hist, (rows[inside], bins[inside]), 1)
        np.add.at(self.oob, rows[~inside], 1)

    def _update_windows(self, rows: IntArray) -> None:
        """(Re)compute the pre-warm and keep-alive windows (seconds) of models ``rows``."""
        counts = self.hist[rows]
        in_range = counts.sum(axis=1)
        total = in_range + self.oob[rows]
        mean = counts.mean(axis=1)
        cv = np.where(mean > 0, counts.std(axis=1) / np.where(mean > 0, mean, 1.0), 0.0)
        cumulative = np.cumsum(counts, axis=1)
        head_bin = np.argmax(cumulative >= (self.head / 100.0 * in_range)[:, None], axis=1)
        tail_bin = np.argmax(cumulative >= (self.tail / 100.0 * in_range)[:, None], axis=1)
        prewarm_min = np.floor(head_bin * (1.0 - self.margin))
        keep_min = np.maximum(1.0, np.ceil((tail_bin + 1) * (1.0 + self.margin)) - prewarm_min)
        prewarm = prewarm_min * 60.0
        keep = keep_min * 60.0
        fixed = (total < self.min_samples) | (cv < self.cv_threshold)
        prewarm = np.where(fixed, 0.0, prewarm)
        keep = np.where(fixed, HISTOGRAM_RANGE_MIN * 60.0, keep)
        oob = (total >= self.min_samples) & (self.oob[rows] > self.oob_share * total)
        for position in np.flatnonzero(oob):
            i = int(rows[position])
            predicted = _ar1_next(self._ordered_its(i))
            prewarm[position] = 0.85 * predicted * 60.0
            keep[position] = 0.30 * predicted * 60.0
        self.prewarm_s[rows] = prewarm
        self.keepalive_s[rows] = keep

    def _ordered_its(self, i: int) -> list[float]:
        n = int(self.its_n[i])
        ring = np.roll(self.its[i], -int(self.its_pos[i]))
        return [float(value) for value in ring[_IT_RING - n :]]

    def decide(self, obs: Observation) -> Decision:
        dt = self.setup.dt_s
        active = np.flatnonzero(obs.arrivals > 0)
        if active.size:
            seen = active[np.isfinite(self.end_s[active])]
            if seen.size:
                idle_min = np.maximum(0.0, (obs.now_s - dt - self.end_s[seen]) / 60.0)
                self._record(seen, idle_min)
            self.end_s[active] = obs.now_s
            self._update_windows(active)
        self.clock.update(obs.arrivals, tick_end_s=obs.now_s)
        load = self.scaler.update(obs.arrivals)
        idle = obs.now_s - self.end_s
        # Loading starts the current lead time before the pre-warm window opens.
        opens = np.where(self.prewarm_s > 0, self.prewarm_s - obs.lead_s, 0.0)
        warm = (idle >= opens) & (idle < self.prewarm_s + self.keepalive_s)
        target = np.maximum(load, warm.astype(np.int64))
        return Decision(target=target, priority=self.clock.last_s.copy())

    def activation_delay_s(self, arrival_s: float) -> float:
        return 0.0


_IT_RING = 64


def _ar1_next(its: list[float]) -> float:
    """Next idle time (minutes) from an AR(1) fitted to log(1 + IT) by least squares."""
    series = np.log1p(np.asarray(its, dtype=np.float64))
    if series.size < 3:
        return float(np.expm1(series.mean())) if series.size else float(HISTOGRAM_RANGE_MIN)
    x, y = series[:-1], series[1:]
    xm, ym = x.mean(), y.mean()
    var = float(((x - xm) ** 2).sum())
    phi = float(((x - xm) * (y - ym)).sum() / var) if var > 1e-12 else 0.0
    phi = min(max(phi, -0.99), 0.99)
    mu = ym - phi * xm
    return float(max(0.0, np.expm1(mu + phi * series[-1])))


class TychePolicy:
    """Tyche (Sui et al.): Poisson arrival probability from a sliding window of recent requests.

    The rate ``lambda`` of each model comes from its last ``window`` inter-arrival times. With
    ``P(t) = 1 - exp(-lambda t)`` the probability that the next request has arrived ``t`` seconds
    after the last one, a model is pre-loaded once ``P(t) >= p_load`` and unloaded once
    ``P(t) >= p_offload`` (the paper's thresholds: 6 % and 94 %). Pre-loading is opportunistic: it
    only fills memory left idle in the budget; candidates (and, under pressure, what stays) are
    ranked by arrival probability x load latency. As for hybrid-histogram, loading begins the
    model's lead time before the pre-load point.
    """

    def __init__(self, *, window: int = 5, p_load: float = 0.06, p_offload: float = 0.94) -> None:
        self.name = "tyche"
        self.window = window
        self.p_load = p_load
        self.p_offload = p_offload
        self.t_load = -math.log(1.0 - p_load)
        self.t_off = -math.log(1.0 - p_offload)

    def bind(self, setup: SimSetup) -> None:
        m = setup.table.size
        self.setup = setup
        self.scaler = LoadScaler(setup.table, setup.dt_s)
        self.clock = ArrivalClock(m)
        self.times = np.full((m, self.window + 1), np.nan)
        """The last ``window + 1`` request times per model, oldest first."""

    def _record(self, arrivals: IntArray, now_s: float) -> None:
        dt = self.setup.dt_s
        active = np.flatnonzero(arrivals > 0)
        if active.size == 0:
            return
        keep = self.window + 1
        # Arrivals in the tick are spread evenly over it; the last ``keep`` of them are kept.
        n = arrivals[active].astype(np.float64)[:, None]
        index = n - keep + np.arange(keep)[None, :]
        fresh = np.where(index >= 0, now_s - dt + (index + 0.5) * dt / n, -np.inf)
        old = np.where(np.isfinite(self.times[active]), self.times[active], -np.inf)
        merged = np.sort(np.concatenate([old, fresh], axis=1), axis=1)[:, -keep:]
        self.times[active] = np.where(np.isfinite(merged), merged, np.nan)

    def rate_per_s(self) -> FloatArray:
        """Poisson rate per model from the sliding window (0 with fewer than two requests)."""
        known = np.isfinite(self.times)
        first = np.where(known, self.times, np.inf).min(axis=1)
        last = np.where(known, self.times, -np.inf).max(axis=1)
        gaps = known.sum(axis=1) - 1
        span = last - first
        rate: FloatArray = np.where((gaps > 0) & (span > 0), gaps / np.maximum(span, 1e-9), 0.0)
        return rate

    def decide(self, obs: Observation) -> Decision:
        self._record(obs.arrivals, obs.now_s)
        self.clock.update(obs.arrivals, tick_end_s=obs.now_s)
        load = self.scaler.update(obs.arrivals)
        rate = self.rate_per_s()
        idle = self.clock.idle_s(obs.now_s)
        with np.errstate(divide="ignore", invalid="ignore"):
            load_at = np.where(rate > 0, self.t_load / rate, np.inf)
            off_at = np.where(rate > 0, self.t_off / rate, -np.inf)
        warm = (idle + obs.lead_s >= load_at) & (idle < off_at)
        target = np.maximum(load, warm.astype(np.int64))
        horizon = self.setup.dt_s + obs.lead_s
        probability = 1.0 - np.exp(-rate * horizon)
        priority = probability * obs.lead_s
        return Decision(target=target, priority=priority)

    def activation_delay_s(self, arrival_s: float) -> float:
        return 0.0
