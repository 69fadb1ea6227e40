"""pcap export checked by tshark, and import of our own files and of real tcpdump captures."""

from __future__ import annotations

import os
import random
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from meshlab.capture import Capture, Chunk, Flow, PcapError
from meshlab.errors import MeshlabError
from tests.unit.test_capture_support import (
    BIG,
    SNI,
    HelloServer,
    RecordingRelay,
    http_get,
    tls_flow,
    wait_for,
)

TSHARK = shutil.which("tshark") or ("/usr/bin/tshark" if Path("/usr/bin/tshark").exists() else None)
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def tshark(*args: str) -> list[str]:
    assert TSHARK is not None
    done = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server() -> Iterator[HelloServer]:
    s = HelloServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def plain_flow(server: HelloServer) -> Flow:
    relay = RecordingRelay(server.address)
    try:
        http_get(relay.address, ["/hello", "/big"])
        assert wait_for(lambda: relay.flows and relay.flows[0].end is not None)
        flow = relay.flows[0]
    finally:
        relay.close()
    # present it as the pod address and port the lesson uses
    return Flow(
        flow.client, ("127.0.0.12", 8080), flow.start, flow.end, flow.chunks, flow.closed_by
    )


@pytest.fixture(scope="module")
def tls13_flow() -> Flow:
    return tls_flow(ssl.TLSVersion.TLSv1_3)


def _same_payloads(a: Capture, b: Capture) -> None:
    assert len(a.flows) == len(b.flows)
    for x, y in zip(a.flows, b.flows, strict=True):
        assert (x.client, x.server) == (y.client, y.server)
        assert x.payload("c2s") == y.payload("c2s")
        assert x.payload("s2c") == y.payload("s2c")


@needs_tshark
def test_tshark_reads_plaintext_http(tmp_path: Path, plain_flow: Flow) -> None:
    path = Capture([plain_flow]).to_pcap(tmp_path / "plain.pcap")
    assert tshark(
        "-r", str(path), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"
    ) == ["/hello", "/big"]
    lengths = tshark(
        "-r", str(path), "-Y", "http.response", "-T", "fields", "-e", "http.content_length"
    )
    assert lengths == ["27", str(len(BIG))]  # the 200 KB body reassembled across segments
    problems = tshark("-r", str(path), "-Y", "tcp.analysis.flags && !tcp.analysis.window_update")
    assert problems == []  # no retransmission, lost-segment or window warnings


@needs_tshark
def test_tshark_reads_tls_sni_and_no_http(tmp_path: Path, tls13_flow: Flow) -> None:
    path = Capture([tls13_flow]).to_pcap(tmp_path / "tls.pcap")
    decode = ["-d", "tcp.port==8080,tls"]
    assert tshark(
        "-r",
        str(path),
        *decode,
        "-Y",
        "tls.handshake.type==1",
        "-T",
        "fields",
        "-e",
        "tls.handshake.extensions_server_name",
    ) == [SNI]
    alpn = tshark(
        "-r",
        str(path),
        *decode,
        "-Y",
        "tls.handshake.type==1",
        "-T",
        "fields",
        "-e",
        "tls.handshake.extensions_alpn_str",
    )
    assert alpn == ["istio-peer-exchange,istio"]
    assert tshark("-r", str(path), *decode, "-Y", "http") == []
    assert len(tshark("-r", str(path), *decode, "-Y", "tls.app_data")) >= 4


@needs_tshark
def test_tshark_sees_reset_and_close(tmp_path: Path, plain_flow: Flow) -> None:
    request = [c for c in plain_flow.chunks if c.direction == "c2s"][:1]
    reset = Flow(("127.0.0.1", 40100), ("127.0.0.12", 8080), 10.0, 10.5, request, "reset")
    closed = Flow(("127.0.0.1", 40101), ("127.0.0.12", 8080), 11.0, 11.5, request, "server")
    path = Capture([reset, closed]).to_pcap(tmp_path / "close.pcap")
    rst = tshark("-r", str(path), "-Y", "tcp.flags.reset==1", "-T", "fields", "-e", "tcp.srcport")
    assert rst == ["8080"]  # the server resets (what a STRICT sidecar does to plaintext)
    fin = tshark("-r", str(path), "-Y", "tcp.flags.fin==1", "-T", "fields", "-e", "tcp.srcport")
    assert fin == ["8080", "40101"]  # the server closed first


def test_round_trip_keeps_payloads_chunks_and_close(
    tmp_path: Path, plain_flow: Flow, tls13_flow: Flow
) -> None:
    big = Flow(
        ("127.0.0.1", 40200),
        ("127.0.0.12", 8080),
        5.0,
        6.0,
        [Chunk("c2s", 5.1, b"x" * 70000), Chunk("s2c", 5.2, b"y")],
        "server-reset",
    )
    original = Capture([tls13_flow, plain_flow, big])
    path = original.to_pcap(tmp_path / "rt.pcap")
    again = Capture.from_pcap(path)
    flows = sorted(original.flows, key=lambda f: f.start)
    _same_payloads(Capture(flows), again)
    for x, y in zip(flows, again.flows, strict=True):
        assert [(c.direction, len(c.data)) for c in x.chunks] == [
            (c.direction, len(c.data)) for c in y.chunks
        ]
        assert all(abs(a.time - b.time) < 1e-5 for a, b in zip(x.chunks, y.chunks, strict=True))
        assert y.closed_by == x.closed_by
        assert y.analysis.verdict == x.analysis.verdict
    assert again.verdict == original.verdict
    only_8080 = Capture.from_pcap(path, port=8080)
    assert only_8080.port == 8080 and len(only_8080.flows) == 3
    assert Capture.from_pcap(path, port=9999).verdict == "nothing captured"


def test_reordered_and_duplicated_segments_are_reassembled(tmp_path: Path) -> None:
    data = bytes(random.Random(1).randrange(256) for _ in range(100_000))
    flow = Flow(
        ("127.0.0.1", 40300),
        ("127.0.0.12", 8080),
        1.0,
        2.0,
        [Chunk("c2s", 1.1, data), Chunk("s2c", 1.2, b"ok")],
        "client",
    )
    path = Capture([flow]).to_pcap(tmp_path / "ordered.pcap")
    with path.open("rb") as fh:
        packets = list(dpkt.pcap.Reader(fh))
    data_packets = [
        i
        for i, (_, frame) in enumerate(packets)
        if len(dpkt.ethernet.Ethernet(frame).data.data.data) > 1000
    ]
    assert len(data_packets) >= 6  # 100 000 bytes in 16 KiB segments
    shuffled = list(packets)
    a, b = data_packets[1], data_packets[3]
    shuffled[a], shuffled[b] = shuffled[b], shuffled[a]  # out of order
    shuffled.insert(data_packets[4], packets[data_packets[2]])  # a retransmission
    del shuffled[0]  # and the SYN was missed: the client is found from the port instead
    messy = tmp_path / "messy.pcap"
    with messy.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, snaplen=262144)
        for ts, frame in shuffled:
            writer.writepkt(frame, ts=ts)
    cap = Capture.from_pcap(messy, port=8080)
    assert len(cap.flows) == 1
    assert cap.flows[0].client == ("127.0.0.1", 40300)
    assert cap.flows[0].payload("c2s") == data
    assert cap.flows[0].payload("s2c") == b"ok"
    assert cap.notes == []


def test_pcapng_is_read_too(tmp_path: Path, tls13_flow: Flow) -> None:
    if TSHARK is None:
        pytest.skip("tshark is not installed (needed to convert to pcapng)")
    path = Capture([tls13_flow]).to_pcap(tmp_path / "tls.pcap")
    ng = tmp_path / "tls.pcapng"
    subprocess.run(
        [TSHARK, "-r", str(path), "-F", "pcapng", "-w", str(ng)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    _same_payloads(Capture([tls13_flow]), Capture.from_pcap(ng))


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="no such file"):
        Capture.from_pcap(tmp_path / "missing.pcap")
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file")
    with pytest.raises(MeshlabError, match="not a pcap or pcapng file"):
        Capture.from_pcap(junk)
    with pytest.raises(PcapError, match="cannot write"):
        Capture([]).to_pcap(tmp_path / "no-such-dir" / "x.pcap")
    named = Flow(("client-pod", 1), ("127.0.0.12", 8080), 0.0, None, [])
    with pytest.raises(PcapError, match="'client-pod' is not an IP address"):
        Capture([named]).to_pcap(tmp_path / "x.pcap")


def test_ipv6_flows(tmp_path: Path) -> None:
    flow = Flow(
        ("::1", 40400),
        ("::1", 8080),
        1.0,
        2.0,
        [Chunk("c2s", 1.1, b"GET /v6 HTTP/1.1\r\nHost: b\r\n\r\n")],
        "client",
    )
    again = Capture.from_pcap(Capture([flow]).to_pcap(tmp_path / "v6.pcap"))
    assert again.flows[0].client == ("::1", 40400)
    assert again.http_request_lines == ["GET /v6 HTTP/1.1"]


# --- real tcpdump ------------------------------------------------------------------------


def _start_tcpdump(interface: str, path: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        # -B: a 16 MB buffer; with the default, "-i any" drops some of a 200 KB burst
        [
            "tcpdump",
            "-i",
            interface,
            "-w",
            str(path),
            "--immediate-mode",
            "-B",
            "16384",
            "-U",
            "-n",
            f"tcp port {port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    said = []
    for _ in range(5):  # "-i any" first says "data link type LINUX_SLL2"
        said.append(proc.stderr.readline().decode())
        if "listening on" in said[-1]:
            return proc
        if not said[-1]:
            break
    proc.kill()
    proc.wait(5)
    pytest.fail(f"tcpdump did not start: {''.join(said)}")


def _stop_tcpdump(proc: subprocess.Popen[bytes]) -> str:
    """Stop tcpdump; returns its closing statistics ("N packets dropped by kernel")."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    assert proc.stderr is not None
    return proc.stderr.read().decode().replace("\n", "; ")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root")
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_from_pcap_of_real_tcpdump(tmp_path: Path, server: HelloServer) -> None:
    relay = RecordingRelay(server.address)  # a free high port, chosen by the kernel
    port = relay.address[1]
    dumps = {"lo": tmp_path / "lo.pcap", "any": tmp_path / "any.pcap"}
    procs: list[subprocess.Popen[bytes]] = []
    stats: list[str] = []
    try:
        for iface, path in dumps.items():
            procs.append(_start_tcpdump(iface, path, port))
        results = http_get(relay.address, ["/hello", "/big", "/hello"])
        assert wait_for(lambda: relay.flows and relay.flows[0].end is not None)
        time.sleep(0.3)  # let tcpdump write the last packets
    finally:
        stats = [_stop_tcpdump(proc) for proc in procs]
        relay.close()
    assert [status for status, _ in results] == [200, 200, 200]
    recorded = relay.flows[0]
    linktypes = {}
    for iface, path in dumps.items():
        with path.open("rb") as fh:
            linktypes[iface] = dpkt.pcap.Reader(fh).datalink()
        cap = Capture.from_pcap(path, port=port)
        assert cap.notes == [], (iface, stats)
        assert len(cap.flows) == 1, (iface, cap)
        flow = cap.flows[0]
        assert flow.client == recorded.client and flow.server == recorded.server
        assert flow.payload("c2s") == recorded.payload("c2s"), iface
        assert flow.payload("s2c") == recorded.payload("s2c"), iface
        assert flow.closed_by == "client"
        assert cap.http_request_lines == [
            "GET /hello HTTP/1.1",
            "GET /big HTTP/1.1",
            "GET /hello HTTP/1.1",
        ]
        assert cap.verdict == "plaintext: HTTP request and response readable"
    assert linktypes["lo"] == dpkt.pcap.DLT_EN10MB
    assert linktypes["any"] in (dpkt.pcap.DLT_LINUX_SLL, dpkt.pcap.DLT_LINUX_SLL2)
