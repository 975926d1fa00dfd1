from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from common.http_endpoints import ProbeServer


async def _request(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_serves_probes_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    ready = {"value": False}
    server = ProbeServer(registry, ready=lambda: ready["value"], host="127.0.0.1", port=0)
    await server.start()
    try:
        assert (await _request(server.port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200
        assert (await _request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 503
        ready["value"] = True
        assert (await _request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 200
        status, body = await _request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200
        assert b"demo_things_total 3.0" in body
    finally:
        await server.stop()


async def test_refuses_what_it_does_not_serve() -> None:
    server = ProbeServer(CollectorRegistry(), host="127.0.0.1", port=0)
    await server.start()
    try:
        assert (await _request(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await _request(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await _request(server.port, b"garbage\r\n\r\n"))[0] == 400
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
        assert (await _request(server.port, huge))[0] == 431
    finally:
        await server.stop()
