"""The cluster network for pods without a sidecar (kube-dns and kube-proxy's role).

An app reaches ``http://service-b-v1:8080/hello`` through its HTTP_PROXY. For a pod without
a sidecar that proxy is a ``Forwarder`` on the pod's private address: it resolves the
Service name the Kubernetes way, picks a ready endpoint, connects to it *from the pod's IP*
and turns the proxy-style request line (``GET http://service-b-v1:8080/hello``) back into
the origin form (``GET /hello``) that a direct connection would carry. Everything else
crosses unchanged, so the bytes on the wire are what a pod's own TCP connection would send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

from meshlab.embedded.relay import reset

Resolver = Callable[[str, str], "tuple[str, int] | None"]
MAX_HEAD = 64 * 1024


def _response(status: str, body: str) -> bytes:
    data = body.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + data


def split_target(head: bytes) -> tuple[bytes, str, bytes] | None:
    """Return (rewritten head, authority, method) for a request head, or None if malformed."""
    line_end = head.find(b"\r\n")
    request_line = head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    headers = head[line_end + 2 :]
    if target.startswith((b"http://", b"HTTP://")):
        url = urlsplit(target.decode("latin-1"))
        authority = url.netloc
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        target = path.encode("latin-1")
    else:
        authority = ""
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                authority = value.strip().decode("latin-1")
                break
    if not authority:
        return None
    return b" ".join((method, target, version)) + b"\r\n" + headers, authority, method


def body_framing(head: bytes) -> tuple[str, int]:
    """("length", n), ("chunked", 0) or ("none", 0) for a request head."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"transfer-encoding" and b"chunked" in value.lower():
            return "chunked", 0
        if key == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(value.strip())
    return ("length", length) if length > 0 else ("none", 0)


class Forwarder:
    """The outbound proxy of one pod without a sidecar."""

    def __init__(
        self, address: tuple[str, int], pod_ip: str, namespace: str, resolve: Resolver
    ) -> None:
        self.address = address
        self.pod_ip = pod_ip
        self.namespace = namespace
        self.resolve = resolve
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, self.address[0], self.address[1], reuse_address=True, limit=MAX_HEAD
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        current = ""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                parsed = split_target(head)
                if parsed is None:
                    writer.write(_response("400 Bad Request", "malformed request\n"))
                    break
                new_head, authority, method = parsed
                if method == b"CONNECT":
                    writer.write(_response("501 Not Implemented", "CONNECT is not supported\n"))
                    break
                endpoint = self.resolve(authority, self.namespace)
                if endpoint is None:
                    writer.write(
                        _response(
                            "502 Bad Gateway",
                            f"could not resolve host: {authority.split(':')[0]} "
                            "(no such Service, or no ready endpoint)\n",
                        )
                    )
                    break
                if upstream is None or authority != current:
                    if upstream is not None:
                        upstream.close()
                    try:
                        up_reader, upstream = await asyncio.open_connection(
                            endpoint[0], endpoint[1], local_addr=(self.pod_ip, 0)
                        )
                    except OSError:
                        reset(writer.transport)
                        return
                    current = authority
                    pump = asyncio.create_task(self._pump(up_reader, writer))
                upstream.write(new_head)
                kind, length = body_framing(head)
                if kind == "length":
                    upstream.write(await reader.readexactly(length))
                elif kind == "chunked":
                    await self._copy_chunked(reader, upstream)
                await upstream.drain()
            if upstream is not None and not upstream.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    upstream.write_eof()
            if pump is not None:
                await pump
        except (ConnectionError, asyncio.IncompleteReadError):
            if upstream is not None:
                reset(upstream.transport)
            reset(writer.transport)
        except asyncio.CancelledError:
            # Only stop() cancels us (the pod is going away): end quietly, as a reset.
            reset(writer.transport)
            if upstream is not None:
                reset(upstream.transport)
        finally:
            self.tasks.discard(task)
            if pump is not None and not pump.done():
                pump.cancel()
            if not writer.is_closing():
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            reset(writer.transport)
            return
        except (ConnectionError, OSError):
            pass
        if not writer.is_closing():
            writer.close()

    async def _copy_chunked(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter
    ) -> None:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            upstream.write(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = await reader.readuntil(b"\r\n")
                    upstream.write(line)
                    if line == b"\r\n":
                        return
            upstream.write(await reader.readexactly(size + 2))
