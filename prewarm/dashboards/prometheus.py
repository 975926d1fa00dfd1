"""The two Prometheus HTTP API calls a dashboard needs: range queries and label values.

Owns: checking the base URL (a bad one is :class:`InvalidInput`), ``GET /api/v1/query_range`` and
``GET /api/v1/label/<name>/values``, turning their JSON into :class:`Series`, and turning every
failure into one sentence: :class:`QueryRejected` (Prometheus answered with an error: the query is
wrong, or too expensive) or :class:`TemporaryError` (cannot reach it, timeout, 5xx, not JSON).
Must not: retry (a page is drawn once; the caller shows the error at the panel), or draw.

Quirks handled here:
- Sample values are strings; ``"NaN"``, ``"+Inf"`` and ``"-Inf"`` (a division by zero in PromQL)
  are parsed as floats and left to the chart, which draws only finite points.
- Prometheus answers a query that does not parse with 400 and one that fails while running with
  422, both with a JSON body ``{"status": "error", "errorType": ..., "error": ...}``; 503 is a
  timeout or an overloaded server (temporary).
- Once a connection fails, every later call fails at once with the same sentence: an unreachable
  server would otherwise cost one connect timeout per panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

from common.errors import InvalidInput, PrewarmError, TemporaryError


class QueryRejected(PrewarmError):
    """Prometheus answered and refused the query (it does not parse, or failed to run)."""


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and its samples (epoch seconds, values)."""

    labels: dict[str, str]
    times_s: np.ndarray
    values: np.ndarray


def check_url(url: str) -> str:
    """The base URL without a trailing slash; :class:`InvalidInput` unless it is http(s)://host."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"--prometheus must be an http:// or https:// URL with a host, e.g. "
            f"http://127.0.0.1:9090; got {url!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise InvalidInput(f"--prometheus has an invalid port: {url!r}") from None
    return text.rstrip("/")


class PrometheusHttp:
    """Range queries and label values against one Prometheus server.

    ``session`` is the I/O boundary (a ``requests.Session``; tests may pass one with adapters);
    ``timeout_s`` bounds each request.
    """

    def __init__(
        self, url: str, *, session: requests.Session | None = None, timeout_s: float = 15.0
    ) -> None:
        self.url = check_url(url)
        self._session = session if session is not None else requests.Session()
        self._timeout_s = timeout_s
        self._down: str | None = None

    def query_range(
        self, expr: str, *, start_s: float, end_s: float, step_s: float
    ) -> list[Series]:
        """Every series ``expr`` returns at ``start_s, start_s + step_s, ... <= end_s``."""
        data = self._get(
            "/api/v1/query_range",
            {
                "query": expr,
                "start": f"{start_s:.3f}",
                "end": f"{end_s:.3f}",
                "step": f"{step_s:g}",
            },
        )
        if not isinstance(data, dict) or data.get("resultType") != "matrix":
            raise TemporaryError(
                f"Prometheus at {self.url} answered a range query without a matrix"
            )
        found = []
        for item in data.get("result", []):
            samples = item.get("values", [])
            found.append(
                Series(
                    labels={str(k): str(v) for k, v in item.get("metric", {}).items()},
                    times_s=np.array([float(t) for t, _ in samples], dtype=np.float64),
                    values=np.array([_value(v) for _, v in samples], dtype=np.float64),
                )
            )
        return found

    def label_values(self, label: str, *, match: str | None = None) -> list[str]:
        """The values ``label`` takes (on the series ``match`` selects, when given), sorted."""
        params = {"match[]": match} if match else {}
        data = self._get(f"/api/v1/label/{label}/values", params)
        if not isinstance(data, list):
            raise TemporaryError(f"Prometheus at {self.url} answered label values without a list")
        return sorted(str(value) for value in data)

    def _get(self, path: str, params: dict[str, str]) -> Any:
        if self._down is not None:
            raise TemporaryError(self._down)
        try:
            answer = self._session.get(self.url + path, params=params, timeout=self._timeout_s)
        except requests.Timeout:
            self._down = f"Prometheus at {self.url} did not answer within {self._timeout_s:g} s"
            raise TemporaryError(self._down) from None
        except requests.RequestException as error:
            self._down = f"cannot reach Prometheus at {self.url}: {_reason(error)}"
            raise TemporaryError(self._down) from None
        try:
            body = answer.json()
        except ValueError:
            raise TemporaryError(
                f"Prometheus at {self.url}{path} answered HTTP {answer.status_code} that is not "
                "JSON: is this a Prometheus server?"
            ) from None
        if not isinstance(body, dict):
            raise TemporaryError(f"Prometheus at {self.url}{path} answered an unexpected body")
        if body.get("status") != "success":
            message = f"{body.get('errorType', 'error')}: {body.get('error', 'no message')}"
            if answer.status_code in (400, 422):
                raise QueryRejected(f"Prometheus rejected the query ({message})")
            raise TemporaryError(f"Prometheus answered HTTP {answer.status_code} ({message})")
        return body.get("data")


def _value(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _reason(error: requests.RequestException) -> str:
    """A short cause for a failed connection (requests nests the socket error deep inside)."""
    text = str(error)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused (is it running, on that port?)"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host name"
    if "ssl" in lowered or "certificate" in lowered:
        return "TLS handshake failed (http vs https, or an untrusted certificate)"
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:200]
