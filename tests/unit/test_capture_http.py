"""Plaintext HTTP read from real exchanges: http.server behind a recording relay."""

from __future__ import annotations

from collections.abc import Iterator

import h11
import pytest

from meshlab.capture import Capture, Chunk, Flow
from meshlab.capture import http as httpparse
from meshlab.capture.analysis import analyze
from tests.unit.test_capture_support import BIG, HelloServer, RecordingRelay, http_get, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[HelloServer]:
    s = HelloServer()
    yield s
    s.close()


def _record(server: HelloServer, paths: list[str]) -> tuple[Flow, list[tuple[int, bytes]]]:
    relay = RecordingRelay(server.address)
    try:
        results = http_get(relay.address, paths)
        assert wait_for(lambda: relay.flows and relay.flows[0].end is not None)
        assert len(relay.flows) == 1
        return relay.flows[0], results
    finally:
        relay.close()


def test_real_exchange_is_readable(server: HelloServer) -> None:
    flow, results = _record(server, ["/hello"])
    assert results == [(200, b'{"message":"hello from b1"}')]
    a = flow.analysis
    assert a.protocol == "http"
    assert a.http_requests == ["GET /hello HTTP/1.1"]
    assert a.http_responses == ["HTTP/1.1 200 OK"]
    assert a.readable_http
    assert a.verdict == "plaintext: HTTP request and response readable"
    assert a.category == "plaintext"
    assert flow.closed_by == "client"
    assert flow.payload("c2s").startswith(b"GET /hello HTTP/1.1\r\n")
    cap = Capture([flow], port=8080)
    assert cap.readable_http and not cap.tls
    assert cap.http_request_lines == ["GET /hello HTTP/1.1"]
    assert cap.verdict == "plaintext: HTTP request and response readable"
    assert "plaintext" in cap.explain_tls() and "GET /hello HTTP/1.1" in cap.explain_tls()


def test_keep_alive_messages_are_read_one_after_another(server: HelloServer) -> None:
    flow, results = _record(server, ["/hello", "/big", "/missing", "/hello"])
    assert [status for status, _ in results] == [200, 200, 404, 200]
    assert results[1][1] == BIG
    a = flow.analysis
    assert a.http_requests == [
        "GET /hello HTTP/1.1",
        "GET /big HTTP/1.1",
        "GET /missing HTTP/1.1",
        "GET /hello HTTP/1.1",
    ]
    assert a.http_responses == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 200 OK",
    ]
    # the 200 KB body is skipped by its Content-Length, not searched for status lines
    spans = [s for s in a.spans["s2c"] if s.kind == "http-body"]
    assert [s.end - s.start for s in spans] == [27, len(BIG), 2, 27]


def _h11_bytes(requests: list[h11.Request], responses: list[list[object]]) -> tuple[bytes, bytes]:
    client, server = h11.Connection(h11.CLIENT), h11.Connection(h11.SERVER)
    c2s = s2c = b""
    for request, events in zip(requests, responses, strict=True):
        data = client.send(request) + client.send(h11.EndOfMessage())
        c2s += data
        server.receive_data(data)
        while server.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass
        answer = b"".join(server.send(event) or b"" for event in events)  # type: ignore[arg-type]
        s2c += answer
        client.receive_data(answer)
        while client.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass
        client.start_next_cycle()
        server.start_next_cycle()
    return c2s, s2c


def test_chunked_and_head_responses() -> None:
    host = [("Host", "service-b-v1")]
    c2s, s2c = _h11_bytes(
        [
            h11.Request(method="GET", target="/stream", headers=host),
            h11.Request(method="HEAD", target="/hello", headers=host),
            h11.Request(method="GET", target="/hello", headers=host),
        ],
        [
            [
                h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]),
                h11.Data(data=b"HTTP/1.1 999 not a status line\r\n"),
                h11.Data(data=b"more"),
                h11.EndOfMessage(),
            ],
            [h11.Response(status_code=200, headers=[("Content-Length", "27")]), h11.EndOfMessage()],
            [h11.Response(status_code=204, headers=[]), h11.EndOfMessage()],
        ],
    )
    a = analyze(c2s, s2c, "client")
    assert a.http_requests == [
        "GET /stream HTTP/1.1",
        "HEAD /hello HTTP/1.1",
        "GET /hello HTTP/1.1",
    ]
    assert [line.split(" ")[1] for line in a.http_responses] == ["200", "200", "204"]


def test_plaintext_request_reset_before_any_response(server: HelloServer) -> None:
    """What a plaintext client sees against a STRICT server: request out, reset back."""
    flow, _ = _record(server, ["/hello"])
    request_only = [c for c in flow.chunks if c.direction == "c2s"]
    for closed_by, expected in (
        ("reset", "plaintext: HTTP request readable, reset before any response"),
        ("server-reset", "plaintext: HTTP request readable, reset by server before any response"),
        ("client", "plaintext: HTTP request readable, no response"),
    ):
        f = Flow(flow.client, flow.server, flow.start, flow.end, request_only, closed_by)
        assert f.analysis.verdict == expected
        assert f.reset_by == {"reset": "", "server-reset": "server", "client": None}[closed_by]
        assert Capture([f]).readable_http


def test_response_without_length_runs_to_close() -> None:
    s2c = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until close"
    a = analyze(b"GET / HTTP/1.0\r\n\r\n", s2c, "server")
    assert a.http_responses == ["HTTP/1.0 200 OK"]
    assert a.spans["s2c"][-1].kind == "http-body"


def test_not_http_lookalikes() -> None:
    for data in (
        b"GET /hello HTTP/2\r\n\r\n",  # no such HTTP/1 version
        b"get /hello HTTP/1.1\r\n\r\n",  # methods are case-sensitive
        b"GET  /hello HTTP/1.1\r\n",  # two spaces
        b"GET /hello HTTP/1.1\n\n",  # bare LF
        b"\r\nGET /hello HTTP/1.1\r\n",  # not at the start of the stream
    ):
        assert analyze(data, b"").http_requests == [], data
    h2 = analyze(httpparse.H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"")
    assert h2.category == "plaintext" and "h2c" in h2.verdict


def test_cut_short_messages_are_still_listed() -> None:
    a = analyze(b"POST /form HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial", b"")
    assert a.http_requests == ["POST /form HTTP/1.1"]
    a = analyze(b"GET /hello HTTP/1.1\r\nHost: b", b"")  # headers never finished
    assert a.http_requests == ["GET /hello HTTP/1.1"]
    bad_length = httpparse.read_messages(
        b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nx", "response"
    )
    assert len(bad_length) == 1 and not bad_length[0].complete


def test_chunk_direction_is_checked() -> None:
    with pytest.raises(ValueError, match="c2s"):
        Chunk("up", 0.0, b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        Flow(("127.0.0.1", 1), ("127.0.0.2", 2), 0.0).payload("both")  # type: ignore[arg-type]
