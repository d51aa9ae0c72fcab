"""The client's round trip to the endpoint, measured once before a run: TCP connect times to its host:port.

A TCP handshake takes one round trip and involves no server code, so its time is the network between
client and endpoint (plus name resolution, done once first and not timed). It tells a reader how much of
each TTFT is distance: run the client in the endpoint's region, where this is a millisecond or two.
"""

from __future__ import annotations

import socket
import statistics
import time
from urllib.parse import urlsplit


def connect_rtt(url: str, samples: int = 5, timeout_s: float = 5.0) -> dict:
    """{"host", "port", "samples", "median_ms", "min_ms"} or {"host", "port", "error"}; never raises."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    out: dict = {"host": host, "port": port, "method": "tcp connect"}
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    times = []
    for _ in range(samples):
        sock = socket.socket(address[0], address[1], address[2])
        sock.settimeout(timeout_s)
        started = time.perf_counter()
        try:
            sock.connect(address[4])
        except OSError as exc:
            return {**out, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            sock.close()
        times.append((time.perf_counter() - started) * 1000)
    return {**out, "samples": samples, "median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3)}
