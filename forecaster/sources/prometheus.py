"""Request-rate history from Prometheus range queries (``prometheus-api-client``).

Owns: the PromQL template (``{model_label}`` in it is replaced by the configured label name), range
queries split into chunks under Prometheus's 11,000-points-per-series limit, incremental fetching
(each poll asks only for steps after the last complete one it has), the conversion of a per-second
rate sampled at ``t`` into the count of the step ``[t - step, t)``, typed errors, and retries with
exponential backoff. Must not: forecast, or hide a failure: after the retries it raises
:class:`TemporaryError` (down, slow, 5xx, 429, garbage) or :class:`InvalidInput` (400: a bad query)
or :class:`PermissionDenied` (401/403), and the caller skips the cycle (see
:class:`forecaster.sources.PollingSource`).

Quirks handled here:
- A range query evaluates the expression at ``start, start+step, ...``; ``rate(x[1m])`` at ``t``
  covers ``(t-1m, t]``, so the sample at ``t`` is the step *ending* at ``t``.
- Counter resets are handled by ``rate()`` in the query; a negative value (a query without
  ``rate``, or a reset straddled by ``delta``) is not a count and is stored as missing (NaN).
- ``"NaN"``/``"+Inf"`` sample values (division by zero in PromQL) and absent points (a series that
  went stale: no sample within the 5-minute lookback) are missing, not zero.
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
from forecaster.config import PrometheusSourceConfig
from forecaster.types import SeriesBatch


class PrometheusSource:
    """Per-model request counts per step from one PromQL query.

    ``session`` and ``sleep`` are the I/O boundaries (a ``requests.Session`` and the retry sleep);
    production defaults are used when omitted.
    """

    def __init__(
        self,
        config: PrometheusSourceConfig,
        *,
        history_window_s: float = 14 * 86400.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.step_s = float(config.step_s)
        self.history_window_s = history_window_s
        self.query = config.query.replace("{model_label}", config.model_label)
        headers = {}
        if config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        # Retries are ours (typed, with backoff), so the client's own urllib3 retries are off.
        self._client = PrometheusConnect(
            url=config.url.rstrip("/"),
            headers=headers or None,
            retry=urllib3.util.retry.Retry(total=False, raise_on_status=False),
            session=session,
            timeout=config.timeout_s,
        )
        self._sleep = sleep
        self._next_start_s: float | None = None

    # -- public ------------------------------------------------------------------------------

    def fetch(self, *, start_s: float, end_s: float) -> SeriesBatch:
        """Counts for the steps ``[start_s, end_s)`` (aligned down to whole steps), all models.

        Steps whose sample is absent or not a count are NaN. Raises typed errors after retries.
        """
        step = self.step_s
        first = math.floor(start_s / step) * step
        stop = math.floor(end_s / step) * step
        steps = round((stop - first) / step)
        if steps <= 0:
            return SeriesBatch(models=(), start_s=first, step_s=step, counts=np.zeros((0, 0)))
        rows: dict[ModelId, np.ndarray] = {}
        chunk = self.config.max_points_per_query
        for offset in range(0, steps, chunk):
            count = min(chunk, steps - offset)
            # The sample at t is the step ending at t: evaluate at the ends of the steps.
            eval_start = first + (offset + 1) * step
            eval_end = first + (offset + count) * step
            result = self._query_range(eval_start, eval_end)
            for model, times, values in self._parse(result):
                row = rows.get(model)
                if row is None:
                    row = np.full(steps, np.nan)
                    rows[model] = row
                index = np.round((times - first) / step).astype(np.int64) - 1
                inside = (index >= offset) & (index < offset + count)
                row[index[inside]] = values[inside]
        models = tuple(sorted(rows))
        counts = np.stack([rows[m] for m in models]) if models else np.zeros((0, steps))
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

    # -- internals ---------------------------------------------------------------------------

    def _query_range(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
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
            result: list[dict[str, Any]] = retrying(self._query_once, start_s, end_s)
        except RetryError as error:  # pragma: no cover - reraise=True makes this unreachable
            raise TemporaryError(str(error)) from error
        return result

    def _query_once(self, start_s: float, end_s: float) -> list[dict[str, Any]]:
        where = f"Prometheus at {self.config.url}"
        try:
            result = self._client.custom_query_range(
                self.query,
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
            raise _status_error(where, str(error), self.query) from error
        if not isinstance(result, list):
            raise TemporaryError(f"{where} returned data.result that is not a list")
        return result

    def _parse(self, result: list[dict[str, Any]]) -> list[tuple[ModelId, np.ndarray, np.ndarray]]:
        label = self.config.model_label
        out: list[tuple[ModelId, np.ndarray, np.ndarray]] = []
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
                # A series without the model label cannot be attributed; the query must keep it.
                raise InvalidInput(
                    f"query {self.query!r} returned a series without the label {label!r} "
                    f"({metric}); aggregate with 'sum by ({label}) (...)'"
                )
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
        return PermissionDenied(f"{where} refused access (check bearer_token): {message}")
    if "HTTP Status Code 404" in message:
        return InvalidInput(f"{where} has no query API at that URL (404); check the URL")
    return TemporaryError(f"{where} failed: {message}")
