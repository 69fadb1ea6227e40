"""Real bytes for the capture tests: TLS handshakes made by OpenSSL, HTTP made by http.server.

Not hand-typed fixtures: a throwaway CA issues SPIFFE certificates shaped like istiod's
(empty subject, critical URI SAN), Python's ``ssl`` module runs both ends of an mTLS
handshake through memory BIOs, and every byte each side emits is recorded as a ``Chunk``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import http.server
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlab.capture import Chunk, Flow

SNI = "outbound_.8080_._.service-b-v1.istio-meshlab.svc.cluster.local"
ALPN = ["istio-peer-exchange", "istio"]
SERVER_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"
CLIENT_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
CLIENT = ("127.0.0.1", 40312)
SERVER = ("127.0.0.12", 8080)
REQUEST = (
    b"GET /hello HTTP/1.1\r\nHost: service-b-v1:8080\r\nUser-Agent: meshlab-test\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n"
    b'{"message":"hello from b1"}'
)


@functools.cache
def pki() -> dict[str, bytes]:
    """PEM files for a root CA and two workload certificates (server, client)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=2))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": ca.public_bytes(serialization.Encoding.PEM)}
    for role, spiffe in (("server", SERVER_ID), ("client", CLIENT_ID)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=2))
            .not_valid_after(now + datetime.timedelta(hours=24))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        out[f"{role}_cert"] = cert.public_bytes(serialization.Encoding.PEM)
        out[f"{role}_key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return out


def _contexts(
    version: ssl.TLSVersion, client_cert: bool = True
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    files = pki()
    folder = Path(tempfile.mkdtemp(prefix="meshlab-pki-"))
    for name, pem in files.items():
        (folder / f"{name}.pem").write_bytes(pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx, role in ((server, "server"), (client, "client")):
        if role == "server" or client_cert:
            ctx.load_cert_chain(folder / f"{role}_cert.pem", folder / f"{role}_key.pem")
        ctx.load_verify_locations(folder / "ca.pem")
        ctx.maximum_version = version
        ctx.set_alpn_protocols(ALPN)
    server.verify_mode = ssl.CERT_REQUIRED  # like Envoy's require_client_certificate
    client.check_hostname = False  # SPIFFE certs have no DNS name; the chain is verified
    return server, client


def tls_flow(
    version: ssl.TLSVersion,
    request: bytes = REQUEST,
    response: bytes = RESPONSE,
    start: float = 1_700_000_000.0,
) -> Flow:
    """A complete mTLS exchange (handshake, one request, one response, close_notify)."""
    server_ctx, client_ctx = _contexts(version)
    return _exchange(server_ctx, client_ctx, request, response, start)


def failed_tls_flow(version: ssl.TLSVersion, start: float = 1_700_000_000.0) -> Flow:
    """A client without a certificate meets a server that requires one (Istio's STRICT)."""
    server_ctx, client_ctx = _contexts(version, client_cert=False)
    return _exchange(server_ctx, client_ctx, None, None, start)


def _exchange(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    request: bytes | None,
    response: bytes | None,
    start: float,
) -> Flow:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=SNI)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    chunks: list[Chunk] = []
    clock = [start]

    def pump() -> bool:
        moved = False
        for out, into, direction in ((c_out, s_in, "c2s"), (s_out, c_in, "s2c")):
            data = out.read()
            if data:
                clock[0] += 0.001
                chunks.append(Chunk(direction, clock[0], data))
                into.write(data)
                moved = True
        return moved

    failed: list[ssl.SSLError] = []

    def step(obj: ssl.SSLObject) -> bool:
        try:
            obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as err:
            failed.append(err)
            return False

    done = {"c": False, "s": False}
    for _ in range(20):
        done["c"] = done["c"] or step(client)
        pump()
        done["s"] = done["s"] or step(server)
        pump()
        if (done["c"] and done["s"]) or failed:
            break
    if request is None:
        assert failed, "the handshake was expected to fail"
        return Flow(CLIENT, SERVER, start, clock[0] + 0.001, chunks, "server")
    assert done["c"] and done["s"], f"handshake did not finish: {failed}"
    assert response is not None
    client.write(request)
    pump()
    assert _read_all(server) == request
    server.write(response)
    pump()
    assert _read_all(client) == response
    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()
    pump()
    return Flow(CLIENT, SERVER, start, clock[0] + 0.001, chunks, "client")


def _read_all(obj: ssl.SSLObject) -> bytes:
    data = b""
    while True:
        try:
            part = obj.read(65536)
        except ssl.SSLWantReadError:
            return data
        if not part:
            return data
        data += part


BIG = bytes(range(256)) * 800  # 204800 bytes: several segments, even on loopback


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        bodies = {"/hello": b'{"message":"hello from b1"}', "/big": BIG}
        body = bodies.get(self.path, b"{}")
        self.send_response(200 if self.path in bodies else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class RecordingRelay:
    """A TCP relay that records every chunk it passes on, as the mesh's capture relay does."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.listener = socket.create_server((host, port))
        self.address = self.listener.getsockname()[:2]
        self.flows: list[Flow] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            flow = Flow(peer[:2], self.address, time.time(), None, [])
            with self._lock:
                self.flows.append(flow)
            threading.Thread(target=self._serve, args=(conn, flow), daemon=True).start()

    def _serve(self, client: socket.socket, flow: Flow) -> None:
        upstream = socket.create_connection(self.target)
        done = threading.Event()

        def pipe(src: socket.socket, dst: socket.socket, direction: str) -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if flow.closed_by is None:
                        flow.closed_by = "client" if direction == "c2s" else "server"
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                with self._lock:
                    flow.chunks.append(Chunk(direction, time.time(), data))  # type: ignore[arg-type]
                dst.sendall(data)
            if direction == "s2c":
                done.set()

        thread = threading.Thread(target=pipe, args=(client, upstream, "c2s"), daemon=True)
        thread.start()
        pipe(upstream, client, "s2c")
        thread.join(5)
        done.wait(5)
        flow.end = time.time()
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


class HelloServer:
    """http.server answering GET /hello on 127.0.0.1, in a thread."""

    def __init__(self, port: int = 0) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Hello)
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def http_get(address: tuple[str, int], paths: list[str]) -> list[tuple[int, bytes]]:
    """GET each path on one keep-alive connection, then close it (client side)."""
    import http.client

    conn = http.client.HTTPConnection(*address, timeout=5)
    results = []
    for path in paths:
        conn.request("GET", path, headers={"User-Agent": "meshlab-test"})
        response = conn.getresponse()
        results.append((response.status, response.read()))
    conn.close()
    return results


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
