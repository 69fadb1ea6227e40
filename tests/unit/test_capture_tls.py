"""TLS analysis on real handshakes made by OpenSSL (Python's ssl module), and on bad bytes."""

from __future__ import annotations

import random
import ssl

import pytest

from meshlab.capture import Capture, Chunk, Flow
from meshlab.capture import tls as tlsparse
from meshlab.capture.analysis import analyze
from tests.unit.test_capture_support import (
    ALPN,
    CLIENT_ID,
    REQUEST,
    SERVER_ID,
    SNI,
    failed_tls_flow,
    tls_flow,
)


@pytest.fixture(scope="module")
def tls13() -> Flow:
    return tls_flow(ssl.TLSVersion.TLSv1_3)


@pytest.fixture(scope="module")
def tls12() -> Flow:
    return tls_flow(ssl.TLSVersion.TLSv1_2)


def _types(flow: Flow, direction: str) -> list[str]:
    return [r.content_type for r in flow.analysis.tls_records if r.direction == direction]


def test_tls13_client_hello_shows_sni_alpn_and_versions(tls13: Flow) -> None:
    a = tls13.analysis
    assert a.protocol == "tls"
    assert a.client_hello is not None
    assert a.client_hello["sni"] == SNI
    assert a.client_hello["alpn"] == ALPN
    assert a.client_hello["versions"][0] == "TLS 1.3"
    assert "TLS 1.2" in a.client_hello["versions"]
    assert a.client_hello["legacy_version"] == "TLS 1.2"
    assert a.client_hello["cipher_suites"] > 0
    assert a.client_hello["truncated"] is False


def test_tls13_negotiated_version_comes_from_supported_versions(tls13: Flow) -> None:
    a = tls13.analysis
    assert a.server_hello is not None
    assert a.server_hello["legacy_version"] == "TLS 1.2"  # what the record layer claims
    assert a.server_hello["version"] == "TLS 1.3"
    assert a.server_hello["cipher"].startswith("TLS_AES_") or "CHACHA20" in a.server_hello["cipher"]
    assert a.server_hello["alpn"] is None  # TLS 1.3 sends the ALPN answer encrypted
    assert a.tls_version == "TLS 1.3"
    assert "TLS 1.3" not in a.tls_versions  # record layer never says 1.3


def test_tls13_record_types(tls13: Flow) -> None:
    c2s, s2c = _types(tls13, "c2s"), _types(tls13, "s2c")
    assert c2s[0] == "handshake" and s2c[0] == "handshake"
    # middlebox compatibility mode: a ChangeCipherSpec, then only encrypted records
    assert "change_cipher_spec" in c2s and "change_cipher_spec" in s2c
    assert c2s[c2s.index("change_cipher_spec") + 1 :] == ["application_data"] * (
        len(c2s) - c2s.index("change_cipher_spec") - 1
    )
    assert "application_data" in s2c
    first = tls13.payload("c2s")
    assert first[:3] == b"\x16\x03\x01"  # ClientHello record header
    # the records cover the whole stream, byte for byte
    total = sum(r.length + 5 for r in tls13.analysis.tls_records)
    assert total == tls13.bytes_c2s + tls13.bytes_s2c


def test_tls13_hides_certificates_and_http(tls13: Flow) -> None:
    a = tls13.analysis
    assert a.certificates == []
    assert any("TLS 1.3 encrypts the Certificate" in note for note in a.notes)
    assert not a.readable_http and a.http_requests == []
    assert b"/hello" not in tls13.payload("c2s")
    assert b"spiffe://" not in tls13.payload("s2c")
    assert a.verdict == "encrypted: TLS 1.3, no readable HTTP"
    assert a.category == "encrypted"


def test_tls12_certificates_cross_in_clear(tls12: Flow) -> None:
    a = tls12.analysis
    assert a.tls_version == "TLS 1.2"
    assert a.client_hello is not None and a.client_hello["sni"] == SNI
    assert a.server_hello is not None and a.server_hello["alpn"] in ALPN  # in clear in 1.2
    leaves = {c["presented_by"]: c for c in a.certificates if c["position"] == 0}
    assert leaves["server"]["spiffe_ids"] == [SERVER_ID]
    assert leaves["client"]["spiffe_ids"] == [CLIENT_ID]
    assert leaves["server"]["subject"] == ""  # istiod's workload certs have no subject
    assert leaves["server"]["issuer"] == "O=cluster.local"
    assert a.certificates[0]["presented_by"] == "server"
    assert not any("TLS 1.3" in n for n in a.notes)
    assert a.verdict == "encrypted: TLS 1.2, no readable HTTP"
    c2s = _types(tls12, "c2s")
    assert c2s.count("handshake") >= 3  # ClientHello, Certificate..., Finished (encrypted)
    assert "change_cipher_spec" in c2s and "application_data" in c2s


def test_tls12_record_annotations_name_handshake_messages(tls12: Flow) -> None:
    labels = [s.label for s in tls12.analysis.spans["s2c"] if s.kind == "tls-header"]
    assert labels[0].startswith("handshake TLS 1.2 len ")
    assert labels[0].endswith("ServerHello")
    assert any(label.endswith("Certificate") for label in labels)


def test_capture_level_tls_properties(tls12: Flow, tls13: Flow) -> None:
    cap = Capture([tls13, tls12], port=8080)
    assert cap.tls and not cap.readable_http
    assert cap.sni == [SNI]
    assert cap.alpn == ALPN
    assert cap.spiffe_ids == [SERVER_ID, CLIENT_ID]
    assert cap.tls_versions == ["TLS 1.2", "TLS 1.3"]
    assert cap.verdict == "encrypted: TLS 1.2 and TLS 1.3, no readable HTTP"
    text = cap.explain_tls()
    assert "TLS 1.3" in text and "encrypted" in text and SNI in text
    assert f"server: {SERVER_ID}" in text and f"client: {CLIENT_ID}" in text


def test_explain_tls13_alone_says_certificates_are_hidden(tls13: Flow) -> None:
    text = Capture([tls13]).explain_tls()
    assert "certificates too" in text
    assert "spiffe://" not in text


def test_tls12_missing_client_certificate_alert_is_readable() -> None:
    flow = failed_tls_flow(ssl.TLSVersion.TLSv1_2)
    a = flow.analysis
    assert a.protocol == "tls"
    assert a.alerts and a.alerts[0].startswith("server: fatal ")
    assert a.verdict.startswith("TLS handshake failed: server sent alert fatal ")
    assert not a.application_data


def test_request_inside_tls_is_not_readable() -> None:
    secret = b"GET /secret-path HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer abc\r\n\r\n"
    flow = tls_flow(ssl.TLSVersion.TLSv1_3, request=secret)
    assert flow.analysis.http_requests == []
    assert b"secret-path" not in flow.payload("c2s")
    assert Capture([flow]).http_request_lines == []


def test_truncated_client_hello_never_raises() -> None:
    hello = tls_flow(ssl.TLSVersion.TLSv1_3).chunks[0].data
    assert hello[0] == 0x16
    for cut in range(len(hello)):
        a = analyze(hello[:cut], b"")
        if cut < 5:
            assert a.protocol in ("other", "empty")
        else:
            assert a.protocol == "tls"
            assert a.client_hello is None or a.client_hello["truncated"] or cut == len(hello)
    # once the SNI extension is complete it is read, even if what follows is missing
    sni_end = hello.index(SNI.encode()) + len(SNI)
    part = analyze(hello[: sni_end + 1], b"").client_hello
    assert part is not None and part["sni"] == SNI and part["truncated"]
    a = analyze(hello[:60], b"", "reset")
    assert a.verdict == "TLS ClientHello sent, reset before any response"


def test_garbage_is_other_and_never_raises() -> None:
    rng = random.Random(7)
    for n in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if n % 3 == 0:  # a plausible record header in front of garbage
            data = b"\x16\x03\x01" + data
        a = analyze(data, bytes(reversed(data)))
        assert a.protocol in ("tls", "other", "http")
        assert isinstance(a.verdict, str) and a.verdict
    a = analyze(b"\x00\x01\x02 hello", b"")
    assert a.protocol == "other"
    assert a.verdict.startswith("other: neither HTTP nor TLS")


def test_parsers_on_damaged_structures() -> None:
    assert tlsparse.parse_client_hello(b"")["truncated"] is True
    assert tlsparse.parse_server_hello(b"\x03\x03")["truncated"] is True
    certs, cut = tlsparse.parse_certificate_list(b"\x00\x00\x10\x00\x00\x05ab")
    assert certs == [] and cut
    info = tlsparse.describe_certificate(b"not a certificate")
    assert info["error"] and info["spiffe_ids"] == []
    assert tlsparse.version_name(0x0A0A).startswith("GREASE")
    assert tlsparse.cipher_name(0x1301) == "TLS_AES_128_GCM_SHA256"
    assert tlsparse.cipher_name(0xFEFE) == "0xfefe"
    # record headers: wrong type, wrong major version, oversize length
    assert not tlsparse.is_record_header(b"\x19\x03\x03\x00\x10")
    assert not tlsparse.is_record_header(b"\x16\x02\x03\x00\x10")
    assert not tlsparse.is_record_header(b"\x16\x03\x03\xff\xff")


def test_chunk_boundaries_do_not_matter(tls12: Flow) -> None:
    """The relay may see a record split over several reads: analysis works on the stream."""
    rechunked = Flow(tls12.client, tls12.server, tls12.start, tls12.end, [], tls12.closed_by)
    for chunk in tls12.chunks:
        for i in range(0, len(chunk.data), 7):
            rechunked.chunks.append(Chunk(chunk.direction, chunk.time, chunk.data[i : i + 7]))
    assert rechunked.analysis.to_dict() == tls12.analysis.to_dict()
    assert REQUEST not in rechunked.payload("c2s")


def test_tls_client_answered_in_plaintext(tls13: Flow) -> None:
    """A client sidecar sends mTLS to a server whose policy is DISABLE: the plaintext
    listener cannot parse a ClientHello and answers 400 in clear."""
    answer = (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"
        b"connection: close\r\n\r\nBad Request"
    )
    flow = Flow(
        tls13.client, tls13.server, 1.0, 2.0, [tls13.chunks[0], Chunk("s2c", 1.5, answer)], "server"
    )
    a = flow.analysis
    assert a.protocol == "tls"
    assert a.client_hello is not None and a.client_hello["sni"] == SNI
    assert a.http_responses == ["HTTP/1.1 400 Bad Request"]
    assert a.verdict == "TLS ClientHello answered in plaintext: HTTP/1.1 400 Bad Request"
    assert Capture([flow]).readable_http
