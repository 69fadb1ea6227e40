"""Verdicts over whole captures, and how captures look: text, hex dumps, HTML."""

from __future__ import annotations

import json
import re
import ssl

import pytest

from meshlab.capture import Capture, Chunk, Flow, side_by_side
from tests.unit.test_capture_support import REQUEST, RESPONSE, SNI, tls_flow

CLIENT, POD = ("127.0.0.1", 40500), ("127.0.0.12", 8080)


def plain(
    start: float = 100.0,
    request: bytes = REQUEST,
    response: bytes | None = RESPONSE,
    closed_by: str = "client",
) -> Flow:
    chunks = [Chunk("c2s", start + 0.01, request)]
    if response is not None:
        chunks.append(Chunk("s2c", start + 0.02, response))
    return Flow(CLIENT, POD, start, start + 0.05, chunks, closed_by)


@pytest.fixture(scope="module")
def tls13() -> Flow:
    return tls_flow(ssl.TLSVersion.TLSv1_3)


def test_capture_verdicts() -> None:
    assert Capture([]).verdict == "nothing captured"
    empty = Flow(CLIENT, POD, 1.0, 1.1, [], "client")
    assert empty.analysis.verdict == "no bytes"
    assert empty.analysis.protocol == "empty"
    assert Capture([empty]).verdict == "no bytes: 1 connection opened, nothing sent"
    assert Capture([plain(), plain(200.0), empty]).verdict == (
        "plaintext: HTTP request and response readable"
    )
    refused = plain(300.0, response=None, closed_by="reset")
    assert Capture([plain(), refused]).verdict == "plaintext: HTTP readable on 2 flows"
    garbage = Flow(CLIENT, POD, 400.0, 401.0, [Chunk("c2s", 400.1, b"\x00\xffjunk")], "client")
    assert Capture([garbage]).verdict.startswith("other: neither HTTP nor TLS")


def test_mixed_capture(tls13: Flow) -> None:
    cap = Capture([tls13, plain()])
    assert cap.verdict == "mixed: 1 encrypted flow, 1 plaintext flow"
    assert cap.readable_http and cap.tls
    assert cap.category == "plaintext"  # any readable flow is what matters to a learner
    assert "But 1 flow carried readable HTTP in plaintext." in cap.explain_tls()


def test_summary_is_json(tls13: Flow) -> None:
    cap = Capture(
        [tls13, plain()],
        workload="service-b-v1",
        namespace="istio-meshlab",
        port=8080,
        address="127.0.0.12",
        started=99.0,
        stopped=101.0,
    )
    summary = json.loads(json.dumps(cap.summary()))
    assert summary["verdict"] == cap.verdict
    assert summary["flows"] == 2
    assert summary["sni"] == [SNI]
    assert summary["http_request_lines"] == ["GET /hello HTTP/1.1"]
    assert summary["bytes_c2s"] == tls13.bytes_c2s + len(REQUEST)
    assert summary["flow_details"][1]["verdict"] == "plaintext: HTTP request and response readable"
    assert summary["flow_details"][0]["tls_version"] == "TLS 1.3"


def test_text_rendering(tls13: Flow) -> None:
    cap = Capture(
        [plain(), tls13],
        workload="service-b-v1",
        namespace="istio-meshlab",
        port=8080,
        address="127.0.0.12",
        started=99.0,
        stopped=101.0,
    )
    text = str(cap)
    lines = text.splitlines()
    assert lines[0] == (
        "capture service-b-v1.istio-meshlab, port 8080, at 127.0.0.12, 2 flows, 2.00 s"
    )
    assert lines[1] == "verdict: mixed: 1 encrypted flow, 1 plaintext flow"
    assert "      > GET /hello HTTP/1.1" in lines
    assert "      < HTTP/1.1 200 OK" in lines
    assert any(f"SNI {SNI}" in line for line in lines)
    assert len(lines) < 12
    assert repr(cap).startswith("<Capture service-b-v1.istio-meshlab")


def test_hexdump_text(tls13: Flow) -> None:
    cap = Capture([plain(), tls13])
    dump = cap.hexdump(0, "c2s")
    assert dump.splitlines()[0] == (
        "0000  47 45 54 20 2f 68 65 6c  6c 6f 20 48 54 54 50 2f  GET /hello HTTP/"
    )
    tls_dump = cap.hexdump(1, "c2s", limit=32).splitlines()
    assert tls_dump[0].startswith("0000  16 03 01 02 00")
    assert tls_dump[0].endswith("← handshake TLS 1.0 len 512: ClientHello")
    assert tls_dump[-1] == f"… {tls13.bytes_c2s - 32} more bytes"
    s2c = cap.hexdump(1, "s2c", limit=10_000)
    assert "ServerHello" in s2c and "change_cipher_spec TLS 1.2 len 1" in s2c
    with pytest.raises(IndexError, match="2 flows"):
        cap.hexdump(5)
    with pytest.raises(IndexError, match="no flows"):
        Capture([]).hexdump()


def test_html_is_escaped_small_and_deterministic(tls13: Flow) -> None:
    evil = plain(request=b"GET /<script>alert(1)</script> HTTP/1.1\r\nX: <b>&\r\n\r\n")
    cap = Capture([evil, tls13], workload="<img src=x>", port=8080)
    html = cap._repr_html_()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    assert "GET /&lt;script&gt;alert(1)&lt;/script&gt; HTTP/1.1" in html
    assert html == Capture([evil, tls13], workload="<img src=x>", port=8080)._repr_html_()
    assert len(html) < 12_000
    assert "<style>" in html
    assert not re.search(r"<(script|link|iframe|img)\b|https?://", html)
    # readable HTTP highlighted, TLS headers annotated
    assert '<span class="hl">47 45 54 20' in html
    assert "← handshake TLS 1.0 len 512: ClientHello" in html
    assert '<span class="th">16 03 01 02 00</span>' in html


def test_many_flows_stay_compact() -> None:
    flows = [plain(100.0 + i) for i in range(40)]
    html = Capture(flows)._repr_html_()
    assert html.count("<details") == 3
    assert "20 more flows" in html
    assert len(html) < 20_000


def test_side_by_side(tls13: Flow) -> None:
    before = Capture([plain()], workload="service-b-v1", port=8080)
    after = Capture([tls13], workload="service-b-v1", port=8080)
    view = side_by_side(before, after, titles=("PERMISSIVE", "STRICT"))
    html = view._repr_html_()
    assert html.count('class="mlcap"') == 2
    assert html.index("PERMISSIVE") < html.index("STRICT")
    assert '<span class="v plaintext">plaintext: HTTP request and response readable</span>' in html
    assert '<span class="v encrypted">encrypted: TLS 1.3, no readable HTTP</span>' in html
    assert html.count("<style>") == 1
    assert str(view) == (
        "PERMISSIVE: plaintext: HTTP request and response readable\n"
        "STRICT: encrypted: TLS 1.3, no readable HTTP"
    )
    assert html == side_by_side(before, after, titles=("PERMISSIVE", "STRICT"))._repr_html_()


def test_rich_rendering(tls13: Flow) -> None:
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    console.print(Capture([tls13], workload="service-b-v1", port=8080))
    out = console.export_text()
    assert "encrypted: TLS 1.3, no readable HTTP" in out
    assert "capture service-b-v1" in out


def test_flow_analysis_follows_new_chunks() -> None:
    flow = Flow(CLIENT, POD, 1.0, None, [Chunk("c2s", 1.1, REQUEST)])
    assert flow.analysis.verdict == "plaintext: HTTP request readable, no response"
    flow.chunks.append(Chunk("s2c", 1.2, RESPONSE))
    assert flow.analysis.verdict == "plaintext: HTTP request and response readable"
