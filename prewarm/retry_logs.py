"""Folds urllib3's per-retry warnings into one warning per outage of an endpoint.

urllib3 (under the official Kubernetes client) logs ``Retrying (Retry(total=2, ...)) after
connection broken by ...`` for every retry of every request: with the API server unreachable that
is three warnings per call, most of the daemon's log. :class:`RetryFolder`, a filter on the
``urllib3.connectionpool`` logger, keeps one outage per host:

- the first retry of an outage is written, rewritten as ``<name> unreachable; retrying`` with the
  error, the host and that further retries are counted;
- the rest are counted; every ``summary_interval_s`` while the outage lasts one of them is
  written as ``<name> unreachable: N retries since T``;
- the host's next response (of any status: it answered) ends the outage with
  ``<name> answers again after N retries since T``.

``<name>`` is what :func:`name_host` gave the host (the daemon names its API server
``kube-apiserver``), else the host itself.

How the end is seen: urllib3 logs each response at DEBUG (``https://host:port "GET ..." 200``).
The filter sets that logger to DEBUG so the records reach it, reads them, and passes on only what
the configured level allows; so the level the user chose still decides what is written.
Must not: change urllib3's retrying, only what is logged of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

URLLIB3_LOGGER = "urllib3.connectionpool"
_RETRY_PREFIX = "Retrying ("
# urllib3 tags its retry warning with the pool's host under this (private) extra key.
_RETRY_HOST_ATTR = "__urllib3-retry-warning"
# urllib3's format of the DEBUG line written for every response: scheme, host, port, ...
_RESPONSE_FORMAT = '%s://%s:%s "%s %s %s" %s %s'


@dataclass(slots=True)
class _Outage:
    since_s: float  # wall clock of the first retry
    retries: int
    reported_mono_s: float  # monotonic time of the last line written about it


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RetryFolder(logging.Filter):
    """Folds urllib3 retry warnings per host; passes other records at ``level`` or above."""

    def __init__(
        self,
        *,
        level: int,
        summary_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.level = level
        self.summary_interval_s = summary_interval_s
        self._clock = clock
        self._mono = monotonic
        self._names: dict[str, str] = {}
        self._outages: dict[str, _Outage] = {}
        self._lock = threading.Lock()

    def name_host(self, host: str, name: str) -> None:
        """Report ``host``'s outages as ``name``'s (e.g. ``kube-apiserver``)."""
        with self._lock:
            self._names[host] = name

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written (a folded retry or a summary is rewritten in place)."""
        if isinstance(record.msg, str) and record.msg.startswith(_RETRY_PREFIX):
            return self._retry(record)
        if record.msg == _RESPONSE_FORMAT and isinstance(record.args, tuple) and record.args[1:]:
            self._answered(str(record.args[1]), record)
        return record.levelno >= self.level

    def _retry(self, record: logging.LogRecord) -> bool:
        tag = getattr(record, _RETRY_HOST_ATTR, None)
        host = str(tag.get("host", "")) if isinstance(tag, dict) else ""
        error = record.args[1] if isinstance(record.args, tuple) and record.args[1:] else ""
        with self._lock:
            name = self._names.get(host, host or "an HTTP endpoint")
            outage = self._outages.get(host)
            now_mono = self._mono()
            if outage is None:
                self._outages[host] = _Outage(self._clock(), 1, now_mono)
                _rewrite(
                    record,
                    logging.WARNING,
                    f"{name} unreachable; retrying (further retries are counted, with a "
                    f"summary every {self.summary_interval_s:g} s)",
                    host=host,
                    error=str(error),
                )
                return self.level <= logging.WARNING
            outage.retries += 1
            if now_mono - outage.reported_mono_s < self.summary_interval_s:
                return False
            outage.reported_mono_s = now_mono
            _rewrite(
                record,
                logging.WARNING,
                f"{name} unreachable: {outage.retries} retries since {_utc(outage.since_s)}",
                host=host,
                retries=outage.retries,
                since=_utc(outage.since_s),
                error=str(error),
            )
            return self.level <= logging.WARNING

    def _answered(self, host: str, record: logging.LogRecord) -> None:
        with self._lock:
            outage = self._outages.pop(host, None)
            if outage is None and host and "" in self._outages:
                # A retry urllib3 did not tag with its host: any answer ends it.
                outage = self._outages.pop("")
            if outage is None:
                return
            name = self._names.get(host, host)
        _rewrite(
            record,
            logging.WARNING,
            f"{name} answers again after {outage.retries} retries since {_utc(outage.since_s)}",
            host=host,
            retries=outage.retries,
            since=_utc(outage.since_s),
        )


def _rewrite(record: logging.LogRecord, level: int, message: str, **fields: object) -> None:
    """Turn ``record`` into ``message`` at ``level`` with ``fields`` (filters may edit records
    in place: the handlers see the edited one)."""
    record.levelno = level
    record.levelname = logging.getLevelName(level)
    record.msg = message
    record.args = ()
    for key, value in fields.items():
        setattr(record, key, value)


def install_retry_folder(*, level: int, summary_interval_s: float = 60.0) -> RetryFolder:
    """Put a new :class:`RetryFolder` on urllib3's connection-pool logger (replacing one put
    there before, keeping the hosts it named) and let that logger's DEBUG records reach it."""
    logger = logging.getLogger(URLLIB3_LOGGER)
    folder = RetryFolder(level=level, summary_interval_s=summary_interval_s)
    for old in [f for f in logger.filters if isinstance(f, RetryFolder)]:
        folder._names.update(old._names)
        logger.removeFilter(old)
    logger.addFilter(folder)
    logger.setLevel(logging.DEBUG)
    return folder


def name_host(host: str, name: str) -> None:
    """Report ``host``'s outages as ``name``'s in the installed folder (none installed: no-op)."""
    for folder in logging.getLogger(URLLIB3_LOGGER).filters:
        if isinstance(folder, RetryFolder):
            folder.name_host(host, name)
