"""A capture that starts on an already-open TLS connection sees only application data."""

from __future__ import annotations

from meshlab.capture import Chunk, Flow
from meshlab.capture.analysis import MIDSTREAM_NOTE


def record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


def test_application_data_without_handshake_is_encrypted():
    c2s = record(23, b"\x8f" * 90)
    s2c = record(23, b"\x11" * 300) + record(23, b"\x22" * 40)
    flow = Flow(
        ("127.0.0.2", 40000),
        ("127.0.0.3", 8080),
        0.0,
        1.0,
        [Chunk("c2s", 0.1, c2s), Chunk("s2c", 0.2, s2c)],
    )
    analysis = flow.analysis
    assert analysis.protocol == "tls"
    assert analysis.category == "encrypted"
    assert analysis.client_hello is None
    assert MIDSTREAM_NOTE in analysis.notes
    assert analysis.verdict.startswith("encrypted: TLS records on a connection opened before")


def test_plaintext_starting_with_0x17_is_not_tls():
    flow = Flow(
        ("127.0.0.2", 40000),
        ("127.0.0.3", 8080),
        0.0,
        1.0,
        [Chunk("c2s", 0.1, b"\x17hello world, not tls at all")],
    )
    assert flow.analysis.protocol != "tls"
