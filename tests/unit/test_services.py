"""The two FastAPI services, run for real under uvicorn on loopback (no mesh involved)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.service_b_v1.app import parse_xfcc

SERVICES = Path(__file__).resolve().parents[2] / "services"
XFCC = (
    'By=spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1;Hash=ab12;Subject="";'
    "URI=spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app_dir: str, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(SERVICES / app_dir),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{app_dir} did not start")


@pytest.fixture(scope="module")
def service_b() -> Iterator[int]:
    port = free_port()
    proc = serve("service_b_v1", port)
    yield port
    proc.terminate()
    proc.wait(10)


def test_b_reports_no_caller_without_xfcc(service_b: int) -> None:
    body = httpx.get(f"http://127.0.0.1:{service_b}/hello", trust_env=False).json()
    assert body["service"] == "service-b-v1" and body["caller"] is None and body["xfcc"] is None


def test_b_reports_the_caller_from_xfcc(service_b: int) -> None:
    body = httpx.get(
        f"http://127.0.0.1:{service_b}/hello", headers={"x-forwarded-client-cert": XFCC},
        trust_env=False,
    ).json()  # fmt: skip
    assert body["caller"] == "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
    assert body["xfcc"] == XFCC


def test_xfcc_last_element_wins_and_quotes_are_honoured() -> None:
    header = 'URI=spiffe://a;Subject="CN=x, O=y",By=spiffe://b;URI=spiffe://c'
    elements = parse_xfcc(header)
    assert [e.get("URI") for e in elements] == ["spiffe://a", "spiffe://c"]
    assert elements[0]["Subject"] == "CN=x, O=y"


def test_a_calls_b_through_its_http_proxy(service_b: int) -> None:
    """service-a reaches `service-b-v1:8080` only through HTTP_PROXY (the mesh's way out):
    here a tiny forwarding proxy stands in for the sidecar and records what it was asked."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            upstream = httpx.get(f"http://127.0.0.1:{service_b}/hello", trust_env=False)
            self.send_response(upstream.status_code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = free_port()
    app = serve("service_a", port, {"HTTP_PROXY": f"http://127.0.0.1:{proxy.server_port}"})
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/call-b", trust_env=False).json()
    finally:
        app.terminate()
        app.wait(10)
        proxy.shutdown()
    assert seen == ["http://service-b-v1:8080/hello"]
    assert body["upstream_status"] == 200
    assert body["upstream_body"]["service"] == "service-b-v1"


def test_a_reports_502_when_b_is_unreachable() -> None:
    port = free_port()
    dead = free_port()
    app = serve("service_a", port, {"HTTP_PROXY": f"http://127.0.0.1:{dead}"})
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/call-b", trust_env=False)
    finally:
        app.terminate()
        app.wait(10)
    assert response.status_code == 502
    body = response.json()
    assert body["upstream_status"] is None and body["error"]
