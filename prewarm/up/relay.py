"""The daemon's own metrics in Prometheus, on the stack's clock.

Owns: reading the daemon's ``/metrics`` (Prometheus text format) and turning every sample into a
remote-write :class:`~prewarm.up.remote_write.Sample` stamped with the stack's clock, so the
dashboards' queries, which join the daemon's metrics with the traffic, see one clock (a scrape
would stamp them with the wall clock, and could not be stored beside the traffic: see
:mod:`prewarm.up.remote_write`). Must not: change a value or a name.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from common.errors import TemporaryError
from prewarm.up.remote_write import Sample


def parse_samples(text: str, *, at_s: float, job: str) -> list[Sample]:
    """Every sample of the exposition ``text``, labelled ``job`` and stamped ``at_s``."""
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {"__name__": sample.name, "job": job, **sample.labels}
            samples.append(Sample(labels, float(sample.value), at_s))
    return samples


def daemon_samples(url: str, *, at_s: float, job: str = "prewarm") -> list[Sample]:
    """The samples of ``url`` (the daemon's ``/metrics``) now, stamped ``at_s``;
    :class:`TemporaryError` while it does not answer (not started yet, or stopping)."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            text = answer.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise TemporaryError(f"daemon metrics at {url}: {error}") from error
    return parse_samples(text, at_s=at_s, job=job)
