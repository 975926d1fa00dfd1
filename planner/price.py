"""The price of idle GPU memory, in the fleet's own terms. Pure.

A warm hold trades idle GPU memory for cold starts. How many cold requests a GB-second of idle
memory is worth depends on the fleet: a cold start among billions of requests barely moves the
cold-start ratio, and a fleet whose reactive autoscaler already leaves little memory idle has
little to spare. The planner prices idle memory relative to both:

    price (requests per GB-second) = idle_price x fleet request rate / reactive idle GB

where the *reactive idle GB* is the GPU memory the reactive autoscaler itself holds for models
with no traffic now (its scale-down tail, replicas the planner did not ask for). An idle model is
then held when ``P x requests a cold start would delay / GB`` reaches ``price x window``: when
holding it lowers the fleet's cold-start ratio by at least ``idle_price`` times the share by which
it raises the idle memory over what the autoscaler leaves idle anyway. Both terms are measured
on the fleet and averaged with exponential forgetting (:data:`HALF_LIFE_S`), so one default works
for a fleet of rarely called functions and for a few busy LLM endpoints alike.

Measured on the development traces (reactive tail of an HPA-like scaler): requests per idle GB
are 0.027/s on the Azure Functions sample and 3.2/s on ServeGen, a factor of 119, which is the
factor between the hold thresholds that met each trace's targets.

A fleet of rarely used models needs one more term. Where most requests come one or two at a time
after a silence (adapters called a few times an hour), the request rate is about the rate of
*wake-ups* (an idle model's first traffic, each a cold start for the reactive autoscaler), cold
starts are a large share of all requests, and each hold moves the ratio so much that idle memory
looks nearly free: on the rare functions of the Azure Functions sample (0.00056 requests/s per
idle GB; 42 % of its requests come after 5 minutes of silence) the price fell 26 times below
``min_value_density`` at the default ``idle_price``, so that floor decided alone whatever
``idle_price`` said, and the planner held 1.7 to 3 times the idle memory of a 10-minute
keep-alive. So the price counts each wake-up as at least :data:`WAKE_REQUESTS` requests: holds
are bought at the rate of a fleet whose cold starts are 1 % of its requests, never cheaper.
Busy fleets (0.27 % of the 100-function sample's requests come after 5 minutes of silence,
0.0001 % of ServeGen's) stay priced by their requests, except where timers wake models more
often than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HALF_LIFE_S = 6 * 3600.0
"""Half-life of the fleet averages (a quarter of a day: diurnal swings average out slowly)."""
WAKE_REQUESTS = 100.0
"""Requests a wake-up counts for at least in the price (one cold start in a hundred requests)."""


@dataclass(frozen=True, slots=True)
class FleetIdle:
    """Time-weighted averages of the fleet's request rate and reactive idle memory.

    ``requests``, ``idle_gb`` and ``wakes`` are decayed integrals (requests/s x s, GB x s, and a
    count of wake-ups); ``last_s`` is when they were last advanced (``None`` before the first
    observation).
    """

    requests: float = 0.0
    idle_gb: float = 0.0
    last_s: float | None = None
    wakes: float = 0.0

    def observe(
        self, now_s: float, request_rps: float, idle_gb: float, wakes: float = 0.0
    ) -> FleetIdle:
        """Fold in the fleet's state at ``now_s``, held since the previous observation, and the
        ``wakes`` (models that had no traffic then and have some now) seen at ``now_s``.

        Negative or non-finite inputs count as zero; an observation at or before ``last_s``
        changes nothing (it adds no time).
        """
        rate = request_rps if math.isfinite(request_rps) and request_rps > 0 else 0.0
        idle = idle_gb if math.isfinite(idle_gb) and idle_gb > 0 else 0.0
        woken = wakes if math.isfinite(wakes) and wakes > 0 else 0.0
        if self.last_s is None:
            return FleetIdle(requests=0.0, idle_gb=0.0, last_s=now_s)
        elapsed = now_s - self.last_s
        if elapsed <= 0:
            return self
        decay = 0.5 ** (elapsed / HALF_LIFE_S)
        return FleetIdle(
            requests=self.requests * decay + rate * elapsed,
            idle_gb=self.idle_gb * decay + idle * elapsed,
            last_s=now_s,
            wakes=self.wakes * decay + woken,
        )

    def requests_per_idle_gb(self) -> float | None:
        """Average fleet requests per second per reactive idle GB, each wake-up counting for at
        least :data:`WAKE_REQUESTS` requests (the price's basis).

        ``None`` before any traffic was seen (no basis for a price); ``inf`` when there was traffic
        but the reactive autoscaler never left memory idle (nothing is worth holding idle).
        """
        requests = max(self.requests, WAKE_REQUESTS * self.wakes)
        if self.idle_gb > 0:
            return requests / self.idle_gb
        if requests > 0:
            return math.inf
        return None
