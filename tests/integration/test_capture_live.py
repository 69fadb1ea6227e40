"""Captures at a pod's network boundary, on a real embedded mesh, checked against tshark and
tcpdump: readable HTTP before mTLS, only TLS records after."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from meshlab.capture import Capture
from meshlab.errors import NotFoundError
from tests.conftest import DEPLOYMENTS, NS

SNI = "outbound_.8080_._.service-b-v1.istio-meshlab.svc.cluster.local"
PLAIN_NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: istio-meshlab\n"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def call_b_from_a(mesh) -> None:
    result = mesh.call("service-a", "http://localhost:8080/call-b", NS)
    assert result.status == 200, result.error


def call_b_from_legacy(mesh):
    return mesh.call("legacy-client", "http://service-b-v1.istio-meshlab:8080/hello", "legacy")


def tshark(*args: str) -> str:
    done = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def captures(mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Plaintext, then STRICT, then PERMISSIVE captures of the same calls."""
    out: dict[str, object] = {"dir": tmp_path_factory.mktemp("pcaps")}
    mesh.apply(PLAIN_NAMESPACE)
    for name in ("service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml"):
        mesh.apply(DEPLOYMENTS / name)
    with mesh.capture("service-b-v1", NS, port=8080) as plain:
        call_b_from_a(mesh)
    out["plain"] = plain

    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.rollout_restart("service-a", NS)
    mesh.rollout_restart("service-b-v1", NS)
    mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    with mesh.capture("service-b-v1", NS, port=8080) as strict:
        call_b_from_a(mesh)
    out["strict"] = strict
    with mesh.capture("service-b-v1", NS, port=8080) as refused:
        assert call_b_from_legacy(mesh).error == "connection reset by peer"
    out["refused"] = refused

    mesh.delete(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    with mesh.capture("service-b-v1", NS, port=8080) as mixed:
        call_b_from_a(mesh)
        assert call_b_from_legacy(mesh).status == 200
    out["mixed"] = mixed
    return out


def test_plaintext_shows_the_request_and_the_body(captures):
    cap = captures["plain"]
    assert cap.readable_http
    assert "GET /hello HTTP/1.1" in cap.http_request_lines
    wire = b"".join(f.payload("s2c") for f in cap.flows)
    assert b"Hello from Service B v1" in wire
    assert cap.verdict == "plaintext: HTTP request and response readable"
    assert not cap.tls


def test_strict_shows_only_tls_records(captures):
    cap = captures["strict"]
    encrypted = [f for f in cap.flows if f.analysis.protocol == "tls"]
    assert encrypted, cap.verdict
    flow = encrypted[0]
    types = {record[1] for record in flow.analysis.tls_records}
    assert {"handshake", "application_data"} <= types
    assert flow.analysis.client_hello["sni"] == SNI
    assert "istio" in flow.analysis.client_hello["alpn"]
    assert not cap.readable_http
    wire = b"".join(f.payload("c2s") + f.payload("s2c") for f in cap.flows)
    assert b"HTTP/1.1" not in wire and b"Hello from Service B" not in wire


def test_refused_plaintext_still_crossed_the_wire(captures):
    """The legacy client's request reached B's pod in clear before the sidecar reset it."""
    cap = captures["refused"]
    assert len(cap.flows) == 1
    flow = cap.flows[0]
    assert flow.closed_by == "reset"
    assert flow.analysis.http_requests == ["GET /hello HTTP/1.1"]
    assert flow.payload("s2c") == b""


def test_permissive_tells_flows_apart(captures):
    cap = captures["mixed"]
    kinds = sorted(f.analysis.protocol for f in cap.flows)
    assert kinds == ["http", "tls"], cap.verdict
    assert cap.verdict == "mixed: 1 encrypted flow, 1 plaintext flow"
    by_kind = {f.analysis.protocol: f for f in cap.flows}
    assert by_kind["tls"].analysis.client_hello["sni"] == SNI
    assert by_kind["http"].analysis.http_requests == ["GET /hello HTTP/1.1"]


@needs_tshark
def test_pcaps_open_in_tshark(captures):
    folder: Path = captures["dir"]
    before = captures["plain"].to_pcap(folder / "before.pcap")
    after = captures["strict"].to_pcap(folder / "after.pcap")
    uris = tshark("-r", str(before), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri")
    assert "/hello" in uris.split()
    decode = ["-d", "tcp.port==8080,tls"]
    assert tshark("-r", str(after), *decode, "-Y", "http").strip() == ""
    sni = tshark(
        "-r", str(after), *decode, "-Y", "tls.handshake.type==1",
        "-T", "fields", "-e", "tls.handshake.extensions_server_name",
    )  # fmt: skip
    assert SNI in sni.split()


@pytest.mark.root
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("tcpdump"), reason="needs root and tcpdump"
)
def test_same_bytes_as_tcpdump(mesh, captures, tmp_path: Path):
    b_ip = next(p.ip for p in mesh.pods(NS) if p.workload == "service-b-v1")
    pcap = tmp_path / "tcpdump.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap),
         f"host {b_ip} and tcp port 8080"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # tcpdump needs a moment before it captures
        with mesh.capture("service-b-v1", NS, port=8080) as ours:
            call_b_from_a(mesh)
            assert call_b_from_legacy(mesh).status == 200
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    theirs = Capture.from_pcap(pcap, port=8080)

    def payloads(cap: Capture) -> dict[tuple[str, int], tuple[bytes, bytes]]:
        return {
            f.client: (f.payload("c2s"), f.payload("s2c")) for f in cap.flows if f.client[0] != b_ip
        }

    mine = payloads(ours)
    seen = payloads(theirs)
    assert mine, "the embedded capture recorded nothing"
    for client, data in mine.items():
        assert client in seen, f"tcpdump did not see the flow from {client}"
        assert seen[client] == data


def test_empty_capture_says_so(mesh, captures):
    with mesh.capture("service-b-v1", NS, port=8080) as cap:
        pass
    assert cap.flows == []
    assert cap.verdict == "nothing captured"


def test_unknown_workload_or_port(mesh, captures):
    with pytest.raises(NotFoundError, match="no pod of workload 'nope'"), mesh.capture("nope", NS):
        pass
    with (
        pytest.raises(NotFoundError, match="no container port 9999"),
        mesh.capture("service-b-v1", NS, port=9999),
    ):
        pass
