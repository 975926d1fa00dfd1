"""Request-rate history from Prometheus range queries (``prometheus-api-client``).

Owns: running the demand queries (:mod:`forecaster.demand`: a preset or a free query each) and
combining their counts per model id (``sum``, or ``max`` for sources that see the same requests),
zero-filling a vanished series, range queries split into chunks under Prometheus's
11,000-points-per-series limit, incremental fetching (each poll asks only for steps after the last
complete one it has), the conversion of a per-second rate sampled at ``t`` into the count of the
step ``[t - step, t)``, how much history exists (:meth:`PrometheusSource.report`), typed errors,
and retries with exponential backoff. Authentication is :mod:`forecaster.sources.prometheus_auth`.
Must not: forecast, or hide a failure: after the retries it raises :class:`TemporaryError` (down,
slow, 5xx, 429, garbage) or :class:`InvalidInput` (400: a bad query) or :class:`PermissionDenied`
(401/403), and the caller skips the cycle (see :class:`forecaster.sources.PollingSource`).

Quirks handled here:
- A range query evaluates the expression at ``start, start+step, ...``; ``rate(x[1m])`` at ``t``
  covers ``(t-1m, t]``, so the sample at ``t`` is the step *ending* at ``t``.
- Counter resets are handled by ``rate()`` in the query; a negative value (a query without
  ``rate``, or a reset straddled by ``delta``) is not a count and is stored as missing (NaN).
- ``"NaN"``/``"+Inf"`` sample values (division by zero in PromQL) are missing, not zero. Absent
  points (no series at that step) are missing too, unless the query zero-fills (below).
- Zero-fill: an engine's counter exists only while a replica does, so a model scaled to zero has
  no series at all, which would read as "unknown" rather than "no requests". A zero-filling query
  (every preset by default) reads an absent step as 0 requests once the model's series has been
  present at an earlier step of the same query, in this poll or an earlier one, and until it has
  been absent for a whole history window (then the model is forgotten). Steps before the first
  sample stay missing (the model did not exist, or history does not reach back). Caveat: a scrape
  outage also reads as 0 for the affected models; Prometheus itself being down is an error, not 0.
- Several queries: per model and step, ``sum`` adds the counts of the queries that have one;
  a step is missing only where every query is missing. Overlapping sources (an engine and its own
  gateway) count a request twice under ``sum``: use ``combine: max`` for those.
- A series without the model label cannot be attributed: it is dropped, and the query is reported
  as a :class:`~forecaster.sources.SourceIssue` (``InvalidInput``); the other series and queries go
  on. A query Prometheus rejects (400) is an issue too when other queries answered; when none did,
  the poll raises :class:`InvalidInput`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from common.errors import InvalidInput, PermissionDenied, TemporaryError
from common.ids import ModelId
from forecaster import demand
from forecaster.config import PrometheusSourceConfig
from forecaster.sources import SourceIssue, SourceReport
from forecaster.sources.prometheus_auth import PrometheusAuth, configure_session
from forecaster.types import SeriesBatch

_Parsed = list[tuple[ModelId, np.ndarray, np.ndarray]]

DEFAULT_MIN_RATE_WINDOW_S = 120
"""rate() needs two samples in its window; four at the common 30 s scrape interval keep one missed
scrape from reading as an absent (zero-filled) step."""


class PrometheusSource:
    """Per-model request counts per step from one or more demand queries.

    ``session`` and ``sleep`` are the I/O boundaries (a ``requests.Session`` and the retry sleep);
    production defaults are used when omitted. ``auth`` sets the credentials on every request
    (default: from ``config``, secrets re-read from their files at each request).
    """

    def __init__(
        self,
        config: PrometheusSourceConfig,
        *,
        history_window_s: float = 14 * 86400.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
        auth: requests.auth.AuthBase | None = None,
    ) -> None:
        self.config = config
        self.step_s = float(config.step_s)
        self.history_window_s = history_window_s
        window = config.rate_window_s or max(config.step_s, DEFAULT_MIN_RATE_WINDOW_S)
        self.queries: tuple[demand.DemandQuery, ...] = tuple(
            demand.resolve(
                preset=q.preset,
                query=q.query,
                model_label=q.model_label,
                matchers=q.matchers,
                zero_fill=q.zero_fill,
                rate_window_s=window,
            )
            for q in config.demand_queries()
        )
        self.query = self.queries[0].promql
        session = session if session is not None else requests.Session()
        configure_session(session, config)
        default_auth = PrometheusAuth(config)
        # Retries are ours (typed, with backoff), so the client's own urllib3 retries are off.
        self._client = PrometheusConnect(
            url=config.url.rstrip("/"),
            retry=urllib3.util.retry.Retry(total=False, raise_on_status=False),
            session=session,
            timeout=config.timeout_s,
            auth=auth if auth is not None else (default_auth if default_auth.active else None),
        )
        self._sleep = sleep
        self._next_start_s: float | None = None
        # Per (query, model): the last step end with a present sample (zero-fill's "seen").
        self._last_present_s: dict[tuple[int, ModelId], float] = {}
        # Per model: the oldest step start with a present sample, in any query.
        self._first_present_s: dict[ModelId, float] = {}
        self._issues: tuple[SourceIssue, ...] = ()
        self._report_end_s: float | None = None

    # -- public ------------------------------------------------------------------------------

    def fetch(self, *, start_s: float, end_s: float) -> SeriesBatch:
        """Counts for the steps ``[start_s, end_s)`` (aligned down to whole steps), all models.

        Steps with no usable sample are NaN (zero-filling queries: see the module docstring).
        Raises typed errors after retries; scoped failures are in :meth:`report`'s issues.
        """
        step = self.step_s
        first = math.floor(start_s / step) * step
        stop = math.floor(end_s / step) * step
        steps = round((stop - first) / step)
        if steps <= 0:
            return SeriesBatch(models=(), start_s=first, step_s=step, counts=np.zeros((0, 0)))
        issues: list[SourceIssue] = []
        per_query: list[dict[ModelId, np.ndarray]] = []
        rejected: list[InvalidInput] = []
        # Zero-fill's memory changes only when the whole fetch succeeds (a failed poll is retried).
        last_present = dict(self._last_present_s)
        for index, query in enumerate(self.queries):
            try:
                rows, present = self._fetch_query(query, first, steps, issues)
            except InvalidInput as error:
                if len(self.queries) == 1:
                    raise
                rejected.append(error)
                issues.append(SourceIssue("InvalidInput", query.promql, str(error)))
                continue
            if query.zero_fill:
                self._zero_fill(index, rows, present, first=first, steps=steps, seen=last_present)
            per_query.append(rows)
        if rejected and len(rejected) == len(self.queries):
            raise rejected[0]
        self._last_present_s = last_present
        self._issues = tuple(issues)
        models = tuple(sorted({m for rows in per_query for m in rows}))
        counts = np.full((len(models), steps), np.nan)
        for row, model in enumerate(models):
            stack = np.stack([rows[model] for rows in per_query if model in rows])
            known = np.isfinite(stack).any(axis=0)
            with np.errstate(invalid="ignore"):
                combined = (
                    np.nansum(stack, axis=0)
                    if self.config.combine == "sum"
                    else np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0)
                )
            counts[row] = np.where(known, combined, np.nan)
            present_steps = np.flatnonzero(known)
            if present_steps.size:
                oldest = first + float(present_steps[0]) * step
                self._first_present_s[model] = min(self._first_present_s.get(model, oldest), oldest)
        self._report_end_s = first + steps * step
        return SeriesBatch(models=models, start_s=first, step_s=step, counts=counts)

    def poll(self, *, now_s: float) -> SeriesBatch:
        """The steps completed since the last successful poll (the whole window the first time).

        Only advances its position when the fetch succeeds, so a failed cycle is retried in full
        by the next poll.
        """
        start = self._next_start_s
        if start is None:
            start = now_s - self.history_window_s
        batch = self.fetch(start_s=start, end_s=now_s)
        if batch.steps:
            self._next_start_s = batch.end_s
        return batch

    def report(self) -> SourceReport:
        """History depth per model and the scoped issues of the latest successful fetch."""
        end = self._report_end_s
        window = float(self.history_window_s)
        history: dict[ModelId, float] = {}
        if end is not None:
            for model, oldest in self._first_present_s.items():
                history[model] = min(window, end - oldest)
        return SourceReport(
            window_s=window,
            step_s=self.step_s,
            available_s=max(history.values()) if history else None,
            history_s=history,
            issues=self._issues,
        )

    # -- zero-fill and one query -------------------------------------------------------------

    def _zero_fill(
        self,
        index: int,
        rows: dict[ModelId, np.ndarray],
        present: dict[ModelId, np.ndarray],
        *,
        first: float,
        steps: int,
        seen: dict[tuple[int, ModelId], float],
    ) -> None:
        """Absent steps after a model's first present one (here, or in ``seen`` from an earlier
        poll) read 0; a model absent for a whole window is forgotten (absent, not zero).

        ``seen`` maps (query index, model) to the end of the model's last present step and is
        updated in place.
        """
        step = self.step_s
        end = first + steps * step
        for (query, model), last in list(seen.items()):
            if query != index or model in rows:
                continue
            if end - last > self.history_window_s:
                del seen[(query, model)]
                continue
            # Seen before, no series at all now: the whole range is a scale-to-zero gap.
            rows[model] = np.full(steps, np.nan)
            present[model] = np.zeros(steps, dtype=bool)
        for model, row in rows.items():
            mask = present[model]
            hits = np.flatnonzero(mask)
            if (index, model) in seen:
                start = 0
            elif hits.size:
                start = int(hits[0])
            else:
                continue  # never present: nothing is known
            absent = ~mask
            absent[:start] = False
            row[absent] = 0.0
            if hits.size:
                seen[(index, model)] = first + (int(hits[-1]) + 1) * step

    def _fetch_query(
        self,
        query: demand.DemandQuery,
        first: float,
        steps: int,
        issues: list[SourceIssue],
    ) -> tuple[dict[ModelId, np.ndarray], dict[ModelId, np.ndarray]]:
        """Counts per model of one query and the mask of steps that had a sample at all."""
        step = self.step_s
        rows: dict[ModelId, np.ndarray] = {}
        present: dict[ModelId, np.ndarray] = {}
        unlabelled: list[dict[str, Any]] = []
        chunk = self.config.max_points_per_query
        for offset in range(0, steps, chunk):
            count = min(chunk, steps - offset)
            # The sample at t is the step ending at t: evaluate at the ends of the steps.
            eval_start = first + (offset + 1) * step
            eval_end = first + (offset + count) * step
            result = self._query_range(query.promql, eval_start, eval_end)
            for model, times, values in self._parse(query, result, unlabelled):
                row = rows.get(model)
                if row is None:
                    row = np.full(steps, np.nan)
                    rows[model] = row
                    present[model] = np.zeros(steps, dtype=bool)
                index = np.round((times - first) / step).astype(np.int64) - 1
                inside = (index >= offset) & (index < offset + count)
                row[index[inside]] = values[inside]
                present[model][index[inside]] = True
        if unlabelled:
            label = query.model_label
            issues.append(
                SourceIssue(
                    "InvalidInput",
                    query.promql,
                    f"query {query.promql!r} returned {len(unlabelled)} series without the label "
                    f"{label!r} (e.g. {unlabelled[0]}); they are ignored, the rest is used. Keep "
                    f"the label: aggregate with 'sum by ({label}) (...)', or set model_label",
                )
            )
        return rows, present

    # -- internals ---------------------------------------------------------------------------

    def _query_range(self, promql: str, start_s: float, end_s: float) -> list[dict[str, Any]]:
        sleep = self._sleep if self._sleep is not None else time.sleep
        retrying = Retrying(
            stop=stop_after_attempt(self.config.retries + 1),
            # Delay: initial * 2^attempt plus up to ``initial`` of jitter, capped at backoff_max_s.
            wait=wait_exponential_jitter(
                multiplier=self.config.backoff_initial_s,
                max=self.config.backoff_max_s,
                jitter=self.config.backoff_initial_s,
            ),
            retry=retry_if_exception_type(TemporaryError),
            reraise=True,
            sleep=sleep,
        )
        try:
            result: list[dict[str, Any]] = retrying(self._query_once, promql, start_s, end_s)
        except RetryError as error:  # pragma: no cover - reraise=True makes this unreachable
            raise TemporaryError(str(error)) from error
        return result

    def _query_once(self, promql: str, start_s: float, end_s: float) -> list[dict[str, Any]]:
        where = f"Prometheus at {self.config.url}"
        try:
            result = self._client.custom_query_range(
                promql,
                start_time=datetime.fromtimestamp(start_s, tz=UTC),
                end_time=datetime.fromtimestamp(end_s, tz=UTC),
                step=f"{self.step_s:g}s",
            )
        except requests.exceptions.Timeout as error:
            raise TemporaryError(
                f"{where} did not answer within {self.config.timeout_s:g} s; it is slow or "
                "overloaded (raise forecaster.prometheus.timeout_s if it is just slow)"
            ) from error
        except requests.exceptions.ConnectionError as error:
            raise TemporaryError(f"{where} is unreachable: {error}") from error
        except requests.exceptions.RequestException as error:
            # Includes requests' JSONDecodeError: a 200 whose body is not JSON.
            raise TemporaryError(f"{where} returned an unreadable answer: {error}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # With urllib3 retries off, a refused connection surfaces as urllib3's own error.
            raise TemporaryError(f"{where} is unreachable: {error}") from error
        except ValueError as error:
            raise TemporaryError(f"{where} returned an unreadable answer: {error}") from error
        except (KeyError, TypeError) as error:
            raise TemporaryError(
                f"{where} returned JSON without data.result (partial or not Prometheus): {error}"
            ) from error
        except PrometheusApiClientException as error:
            raise _status_error(where, str(error), promql) from error
        if not isinstance(result, list):
            raise TemporaryError(f"{where} returned data.result that is not a list")
        return result

    def _parse(
        self,
        query: demand.DemandQuery,
        result: list[dict[str, Any]],
        unlabelled: list[dict[str, Any]],
    ) -> _Parsed:
        label = query.model_label
        out: _Parsed = []
        merged: dict[ModelId, list[tuple[float, float]]] = {}
        for series in result:
            try:
                metric = series["metric"]
                values = series["values"]
            except (KeyError, TypeError) as error:
                raise TemporaryError(
                    f"Prometheus answer has a series without metric/values: {error}"
                ) from error
            if not isinstance(metric, dict) or label not in metric:
                # A series without the model label cannot be attributed to a model.
                unlabelled.append(metric if isinstance(metric, dict) else {"metric": metric})
                continue
            points = merged.setdefault(ModelId(str(metric[label])), [])
            for pair in values:
                try:
                    stamp, text = float(pair[0]), float(pair[1])
                except (TypeError, ValueError, IndexError) as error:
                    raise TemporaryError(f"Prometheus answer has a bad sample {pair!r}") from error
                points.append((stamp, text))
        for model, points in merged.items():
            array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            counts = array[:, 1] * self.step_s
            counts = np.where(np.isfinite(counts) & (counts >= 0), counts, np.nan)
            out.append((model, array[:, 0], counts))
        return out


def _status_error(where: str, message: str, query: str) -> Exception:
    """The typed error for a non-200 answer (the client puts the status in its message)."""
    if "HTTP Status Code 400" in message or "HTTP Status Code 422" in message:
        return InvalidInput(f"{where} rejected the query {query!r}: {message}")
    if "HTTP Status Code 401" in message or "HTTP Status Code 403" in message:
        return PermissionDenied(
            f"{where} refused access (check forecaster.prometheus bearer_token, basic_auth, "
            f"tls, tenant or sigv4): {message}"
        )
    if "HTTP Status Code 404" in message:
        return InvalidInput(f"{where} has no query API at that URL (404); check the URL")
    return TemporaryError(f"{where} failed: {message}")
