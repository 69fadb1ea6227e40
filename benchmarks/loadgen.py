"""Load generators: ``wrk`` (native, closed loop or paced) and a Python client (httpx).

Debian's ``wrk`` 4.1 has no constant-rate mode (wrk2's ``-R``): a paced run approximates a
rate with Lua's ``delay()`` (each connection waits ``connections / rate`` minus the expected
latency between a response and its next request). Its latencies are therefore not corrected
for coordinated omission; at the low loads used here that matters little.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.common import percentile

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MARKER = "BENCHJSON "


@dataclass(frozen=True)
class Target:
    """Where a client connects (``url``) and what it asks for (``path``, ``host``).

    ``path`` is an absolute URL when the client talks to an HTTP proxy (a sidecar's
    ``virtualOutbound``). ``proxy_header`` is sent once at the start of each connection (a
    PROXY protocol v2 header, to reach ``virtualInbound`` without the pod's relay).
    """

    url: str
    path: str
    host: str
    proxy_header: bytes | None = None


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    addresses = (
        socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    )
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addresses


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    binary = wrk_binary()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def _lua_bytes(data: bytes) -> str:
    return "".join(f"\\{b:03d}" for b in data)


def lua_script(target: Target, delay_ms: int | None = None) -> str:
    """A wrk script: request line and Host, optional PROXY header and pacing, JSON summary."""
    lines = [
        f'local req_path = "{target.path}"',
        f'local host = "{target.host}"',
        "local req",
        "local calls = 0",
        "local threads = 0",
        "setup = function(thread) thread:set('tid', threads); threads = threads + 1 end",
        "init = function(args) req = wrk.format('GET', req_path, {Host = host}) end",
    ]
    if target.proxy_header is not None:
        lines += [
            f'local hdr = "{_lua_bytes(target.proxy_header)}"',
            "request = function()",
            "  calls = calls + 1",
            # wrk parses thread 0's first request() with an HTTP parser before the run starts;
            # each thread owns one connection, which starts with the header.
            "  if tid == 0 and calls == 1 then return req end",
            "  if calls == 1 or (tid == 0 and calls == 2) then return hdr .. req end",
            "  return req",
            "end",
        ]
    else:
        lines.append("request = function() return req end")
    if delay_ms is not None:
        lines.append(f"delay = function() return {int(delay_ms)} end")
    lines += [
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write(string.format("{MARKER}'
        '{\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"max\\":%d,\\"requests\\":%d,'
        '\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,'
        '\\"status\\":%d,\\"timeout\\":%d}\\n",',
        "    latency:percentile(50), latency:percentile(90), latency:percentile(99),",
        "    latency.max, summary.requests, summary.duration, e.connect, e.read, e.write,",
        "    e.status, e.timeout))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(
    target: Target,
    seconds: int,
    connections: int = 1,
    threads: int = 1,
    delay_ms: int | None = None,
) -> dict[str, Any]:
    """One wrk run; latencies in ms, plus requests, achieved rate, errors and wrk's own CPU."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    if target.proxy_header is not None and threads != connections:
        raise ValueError("a PROXY header needs one connection per wrk thread")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(lua_script(target, delay_ms))
        script = fh.name
    argv = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s",
        "-s", script, target.url,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    finally:
        os.unlink(script)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in out.stdout.splitlines() if x.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    raw = json.loads(line[len(MARKER) :])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    requests = raw["requests"]
    return {
        "p50_ms": raw["p50"] / 1000,
        "p90_ms": raw["p90"] / 1000,
        "p99_ms": raw["p99"] / 1000,
        "max_ms": raw["max"] / 1000,
        "requests": requests,
        "errors": errors,
        "rps": round(requests / (raw["duration_us"] / 1e6), 1) if raw["duration_us"] else 0.0,
        "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def run_httpx(
    url: str, proxy: str | None, requests: int, warmup: int = 20, host: str | None = None
) -> dict[str, Any]:
    """``requests`` sequential GETs on one keep-alive connection; latencies in ms."""
    headers = {"host": host} if host else None
    samples = []
    errors = 0
    with httpx.Client(proxy=proxy, trust_env=False, timeout=5.0) as client:
        for i in range(warmup + requests):
            start = time.perf_counter()
            try:
                response = client.get(url, headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - start
            if i >= warmup:
                samples.append(took * 1000)
                errors += not ok
    return {
        "p50_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "requests": len(samples),
        "errors": errors,
    }


def raw_get(
    address: tuple[str, int], path: str, host: str, prefix: bytes = b"", timeout: float = 2.0
) -> bytes:
    """One request on a fresh connection; the start of the answer (b"" when reset/closed)."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(
                prefix
                + f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError:  # reset, refused, timed out
        return b""
