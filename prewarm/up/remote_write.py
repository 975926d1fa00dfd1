"""Samples pushed into Prometheus with the remote-write protocol, stamped with the stack's clock.

Owns: encoding a remote-write ``WriteRequest`` (protobuf, by hand: three small messages) in a
snappy block (literals only: valid snappy, no compression library needed), POSTing it to
Prometheus's ``/api/v1/write`` (``--web.enable-remote-write-receiver``), and a pusher thread that
sends a set of series every interval.

Why not scrape: with ``--speed`` above 1 the stack's clock runs ahead of the wall clock, and a
scrape cannot carry it. Prometheus refuses scraped samples more than 10 minutes ahead of its wall
clock, and it stamps each scrape's report series (``up``, ``scrape_duration_seconds``) with the wall
clock, which the history backfilled up to the stack's clock makes "out of bounds"; a failed report
rolls the whole scrape back. A remote write carries only the samples it is given, with their
stamps. Must not: send a sample older than the last one of its series (Prometheus refuses it).
"""

from __future__ import annotations

import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from common.errors import TemporaryError

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of one series: its labels (``__name__`` included), value and time."""

    labels: Labels
    value: float
    at_s: float


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_request(samples: Iterable[Sample]) -> bytes:
    """``prometheus.WriteRequest`` with one ``TimeSeries`` per sample (labels sorted by name, as
    Prometheus requires)."""
    body = bytearray()
    for sample in samples:
        series = bytearray()
        for name, value in sorted(sample.labels.items()):
            label = _field(1, name.encode()) + _field(2, value.encode())
            series += _field(1, label)
        # Sample: value (field 1, double, wire type 1), timestamp in ms (field 2, varint).
        point = (
            b"\x09" + struct.pack("<d", sample.value) + b"\x10" + _varint(int(sample.at_s * 1000))
        )
        series += _field(2, point)
        body += _field(1, bytes(series))
    return bytes(body)


def snappy_block(data: bytes) -> bytes:
    """``data`` as a snappy block of literals: its length, then chunks of at most 64 KiB, each a
    literal tag with a two-byte length (tag 61 << 2). Any snappy decoder reads it."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        out += bytes([61 << 2]) + struct.pack("<H", len(chunk) - 1) + chunk
    return bytes(out)


def push(url: str, samples: Sequence[Sample], *, timeout_s: float = 5.0) -> None:
    """POST ``samples`` to ``url`` (``.../api/v1/write``); :class:`TemporaryError` on failure."""
    request = urllib.request.Request(
        url,
        data=snappy_block(write_request(samples)),
        method="POST",
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace").strip()
        raise TemporaryError(f"remote write to {url}: {error.code} {detail}") from error
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise TemporaryError(f"remote write to {url}: {error}") from error


class Pusher:
    """Every ``interval_s`` wall seconds, pushes what ``collect()`` returns to ``url`` (a failed
    push is counted and retried at the next interval, with fresh samples)."""

    def __init__(
        self,
        url: str,
        collect: Callable[[], Sequence[Sample]],
        *,
        interval_s: float,
        name: str,
    ) -> None:
        self._url = url
        self._collect = collect
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0
        self.last_error: str | None = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                samples = self._collect()
                if samples:
                    push(self._url, samples)
            except TemporaryError as error:
                self.failures += 1
                self.last_error = str(error)

    def start(self) -> None:
        """Start pushing in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop (the push in flight finishes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
