"""The pod's network boundary: a TCP relay at ``pod.ip:port`` that can record the bytes.

Every connection into a pod crosses a ``Relay``. It passes bytes on unchanged, in both
directions, to the pod's sidecar (``virtualInbound``, prefixed with a PROXY protocol v2
header that carries the real client address and the original destination, as Istio's
iptables redirect keeps them) or straight to the app when the pod has no sidecar.

A reset on one side is passed on as a reset (SO_LINGER 0) on the other, so a client sees
``connection reset by peer`` exactly when the sidecar refused it. While a capture is active
the relay records each chunk with a timestamp; otherwise it only forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HIGH_WATER = 256 * 1024
RESET_GRACE = 0.02  # seconds between forwarding a server's last bytes and passing on its RST


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4)."""
    addresses = (
        socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    )
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addresses


def reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP RST instead of a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


@dataclass
class RecordedFlow:
    client: tuple[str, int]
    server: tuple[str, int]
    start: float
    end: float | None = None
    closed_by: str | None = None
    chunks: list[tuple[str, float, bytes]] = field(default_factory=list)


class Recording:
    """One active capture on one relay."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.flows: dict[int, RecordedFlow] = {}
        self.started = time.time()
        self.stopped: float | None = None
        self.max_bytes = 16 * 1024 * 1024
        self.recorded_bytes = 0
        self.truncated = False

    def add(self, conn_id: int, flow: RecordedFlow, direction: str, data: bytes) -> None:
        if conn_id not in self.flows:
            self.flows[conn_id] = RecordedFlow(flow.client, flow.server, flow.start)
        if self.recorded_bytes + len(data) > self.max_bytes:
            self.truncated = True
            return
        self.recorded_bytes += len(data)
        self.flows[conn_id].chunks.append((direction, time.time(), data))

    def close(self, conn_id: int, closed_by: str) -> None:
        flow = self.flows.get(conn_id)
        if flow is not None and flow.end is None:
            flow.end = time.time()
            flow.closed_by = closed_by

    def note_open(self, conn_id: int, flow: RecordedFlow) -> None:
        self.flows.setdefault(conn_id, RecordedFlow(flow.client, flow.server, flow.start))


class _Upstream(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn.from_server(data)

    def eof_received(self) -> bool:
        self.conn.server_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.server_lost(exc)

    def pause_writing(self) -> None:
        if self.conn.client_transport is not None:
            self.conn.client_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.conn.client_transport is not None:
            self.conn.client_transport.resume_reading()


class _Connection(asyncio.Protocol):
    """One client connection through the relay."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.id = next(relay.conn_ids)
        self.client_transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.client_eof = False
        self.server_eof_seen = False
        self.flow: RecordedFlow | None = None
        self.closed = False
        self.last_s2c = 0.0
        # "tls" or "plaintext", from the client's first byte (0x16 opens a TLS handshake).
        self.transport: str | None = None

    # client side -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client_transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.flow = RecordedFlow((peer[0], peer[1]), self.relay.address, time.time())
        self.relay.connections[self.id] = self
        for rec in self.relay.recordings:
            rec.note_open(self.id, self.flow)
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _Upstream(self), *self.relay.target)
        except OSError:
            # Nothing listens behind the pod address (app or sidecar down): refuse.
            self._finish("reset")
            reset(self.client_transport)
            return
        self.upstream = upstream
        assert upstream.transport is not None
        upstream.transport.set_write_buffer_limits(HIGH_WATER)
        if self.closed:
            reset(upstream.transport)
            return
        if self.relay.proxy_protocol and self.flow is not None:
            upstream.transport.write(proxy_v2_header(self.flow.client, self.relay.address))
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending.clear()
        if self.client_eof:
            upstream.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.transport is None and data:
            self.transport = "tls" if data[0] == 0x16 else "plaintext"
        self._record("c2s", data)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.upstream is not None and self.upstream.transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.upstream.transport.write_eof()
        if self.server_eof_seen:
            self._finish("client")
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ConnectionResetError):
            self._finish("reset")
            if self.upstream is not None:
                reset(self.upstream.transport)
        else:
            self._finish("client")
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.close()
        self.relay.connections.pop(self.id, None)

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # server side -------------------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        self._record("s2c", data)
        self.last_s2c = time.monotonic()
        if self.client_transport is not None:
            self.client_transport.write(data)

    def server_eof(self) -> None:
        self.server_eof_seen = True
        if self.client_transport is not None and not self.client_transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.client_transport.write_eof()
        if self.client_eof:
            self._finish("server")

    def server_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ConnectionResetError):
            self._finish("reset")
            if time.monotonic() - self.last_s2c < RESET_GRACE:
                # The server wrote (e.g. a TLS alert) just before its reset. A direct client
                # would have had those bytes in hand before the RST; a relay that resets at
                # once makes the kernel drop them. Give the client the same moment.
                loop = asyncio.get_running_loop()
                loop.call_later(RESET_GRACE, reset, self.client_transport)
            else:
                reset(self.client_transport)
        else:
            self._finish("server")
            if self.client_transport is not None:
                self.client_transport.close()

    # recording -----------------------------------------------------------------------------
    def _record(self, direction: str, data: bytes) -> None:
        if self.relay.recordings and self.flow is not None:
            for rec in self.relay.recordings:
                rec.add(self.id, self.flow, direction, data)

    def _finish(self, closed_by: str) -> None:
        if self.closed:
            return
        self.closed = True
        for rec in self.relay.recordings:
            rec.close(self.id, closed_by)

    def abort(self) -> None:
        self._finish("reset")
        reset(self.client_transport)
        if self.upstream is not None:
            reset(self.upstream.transport)


class Relay:
    """Listens on ``address`` and relays each connection to ``target``."""

    def __init__(
        self, address: tuple[str, int], target: tuple[str, int], *, proxy_protocol: bool
    ) -> None:
        self.address = address
        self.target = target
        self.proxy_protocol = proxy_protocol
        self.recordings: list[Recording] = []
        self.connections: dict[int, _Connection] = {}
        self.conn_ids = itertools.count(1)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Connection(self), self.address[0], self.address[1], reuse_address=True
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections.values()):
            conn.abort()
        self.connections.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    def reset_connections(self, transports: set[str] | frozenset[str]) -> int:
        """Reset the open connections whose client speaks one of ``transports`` ("tls",
        "plaintext"); returns how many. The cluster calls this when a policy change makes
        the sidecar refuse what these connections carry: Envoy would let them finish their
        drain, but the next request on them must be refused, as on a new connection."""
        cut = [c for c in self.connections.values() if c.transport in transports]
        for conn in cut:
            conn.abort()
            self.connections.pop(conn.id, None)
        return len(cut)

    def start_recording(self) -> Recording:
        rec = Recording()
        self.recordings.append(rec)
        return rec

    def stop_recording(self, rec: Recording) -> Recording:
        if rec in self.recordings:
            self.recordings.remove(rec)
        rec.stopped = time.time()
        return rec


def recording_to_json(rec: Recording) -> dict[str, Any]:
    import base64

    flows = []
    for flow in rec.flows.values():
        flows.append(
            {
                "client": list(flow.client),
                "server": list(flow.server),
                "start": flow.start,
                "end": flow.end,
                "closed_by": flow.closed_by,
                "chunks": [[d, t, base64.b64encode(b).decode()] for d, t, b in flow.chunks],
            }
        )
    return {
        "started": rec.started,
        "stopped": rec.stopped,
        "truncated": rec.truncated,
        "flows": flows,
    }
