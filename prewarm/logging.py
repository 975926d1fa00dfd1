"""Structured logging for every prewarm process (structlog over the standard library).

Call :func:`configure_logging` once at start-up; then ``structlog.get_logger(__name__)`` (fields
as keyword arguments) or a stdlib logger (fields as ``extra=``): both reach the same handler and
every field is written. Two formats:

- console (the default): one human line per event, ``<time> <level> <event>  key=value ...``,
  values quoted when they hold spaces (logfmt), a traceback on the lines after when there is one;
- JSON (``--log-json``, ``logging.json_format``; what the Helm chart runs): one object per line
  with every field, the logger's name and the traceback as a string.

Logs go to stderr so that ``--json`` output on stdout stays machine-readable. Also installs
:class:`prewarm.retry_logs.RetryFolder` on urllib3, so an unreachable endpoint's retries are one
warning per outage, not one per retry.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from common.errors import InvalidInput
from prewarm.retry_logs import RetryFolder, install_retry_folder

LEVELS = ("debug", "info", "warning", "error")
"""The levels ``--log-level`` and ``logging.level`` accept."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_CONSOLE_FIRST = ("timestamp", "level", "event", "logger", "exception")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (not at configuration time), so a
    replaced stderr (a test runner's capture, a CLI runner) never leaves a dead stream behind."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        del value  # always the current sys.stderr


def add_record_extras(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Copy a stdlib record's ``extra=`` fields into the event (structlog's own events carry
    theirs already). Attributes starting with ``_`` are libraries' private markers (urllib3 tags
    its retry warning with ``__urllib3-retry-warning``) and stay out."""
    del logger, method
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and not event_dict.get("_from_structlog"):
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in event_dict:
                event_dict[key] = value
    return event_dict


class ConsoleLine:
    """Renders an event as one line: ``<time> <level> <event>  key=value ...`` (logfmt fields)."""

    def __init__(self) -> None:
        self._fields = structlog.processors.LogfmtRenderer(bool_as_flag=False)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        head = (
            f"{event_dict.get('timestamp', '')} {event_dict.get('level', '')!s:<7} "
            f"{event_dict.get('event', '')}"
        )
        rest = {k: v for k, v in event_dict.items() if k not in _CONSOLE_FIRST}
        line = f"{head}  {self._fields(logger, method, rest)}" if rest else head
        exception = event_dict.get("exception")
        return f"{line}\n{exception}" if exception else line


def log_level(name: str) -> int:
    """The numeric level of ``name``; :class:`InvalidInput` naming the choices otherwise."""
    if name.lower() not in LEVELS and name.lower() not in ("warn", "critical"):
        raise InvalidInput(f"log level must be one of {', '.join(LEVELS)}, got {name!r}")
    return logging.getLevelNamesMapping()[name.upper()]


def configure_logging(
    level: str = "info", *, json_format: bool = False, retry_summary_s: float = 60.0
) -> RetryFolder:
    """Route stdlib and structlog records to stderr at ``level``, as JSON lines or console lines;
    fold urllib3's retry warnings (one summary every ``retry_summary_s`` while an endpoint stays
    unreachable). Returns the folder, to name endpoints (:meth:`RetryFolder.name_host`).

    May be called again (a command that reads the settings' ``logging`` section re-applies it);
    the last call wins."""
    numeric = log_level(level)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_format else ConsoleLine()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                add_record_extras,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Python warnings (a library's DeprecationWarning, ...) become records too, so that with
    # JSON logs every line of stderr is JSON.
    logging.captureWarnings(True)
    return install_retry_folder(level=numeric, summary_interval_s=retry_summary_s)
