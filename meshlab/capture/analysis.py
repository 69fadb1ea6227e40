"""What one flow's bytes reveal: readable HTTP, TLS handshakes, certificates, a verdict.

``analyze(c2s, s2c, closed_by)`` is a pure function of the two byte streams (and how the
connection ended); ``Flow.analysis`` calls it. Garbage and cut-short input never raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshlab.capture import http, tls

DIRECTIONS = ("c2s", "s2c")
SENDER = {"c2s": "client", "s2c": "server"}

TLS13_CERT_NOTE = (
    "TLS 1.3 encrypts the Certificate messages: the SPIFFE identities are not visible on "
    "the wire, only SNI and the ALPN offer in ClientHello are."
)


@dataclass(frozen=True)
class Span:
    """A labelled byte range of one direction, used to colour and annotate dumps."""

    start: int
    end: int
    kind: str  # http-line, http-header, http-body, tls-header, tls-<content type>
    label: str = ""


@dataclass
class FlowAnalysis:
    """What a learner (or anyone on the path) can read from one flow.

    ``protocol`` is "http", "tls", "empty" or "other". ``tls_versions`` lists the
    record-layer versions seen (TLS 1.3 records say "TLS 1.2" there); ``tls_version`` is the
    negotiated one, from ServerHello. ``client_hello`` / ``server_hello`` are dicts (see
    ``tls.parse_client_hello`` / ``tls.parse_server_hello``); ``certificates`` holds one
    dict per certificate read in clear, with ``presented_by`` "server" or "client".
    """

    protocol: str
    verdict: str
    http_requests: list[str] = field(default_factory=list)
    http_responses: list[str] = field(default_factory=list)
    readable_http: bool = False
    tls_records: list[tls.TlsRecord] = field(default_factory=list)
    tls_versions: list[str] = field(default_factory=list)
    tls_version: str | None = None
    client_hello: dict[str, Any] | None = None
    server_hello: dict[str, Any] | None = None
    certificates: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # "server: fatal certificate_required"
    notes: list[str] = field(default_factory=list)
    category: str = "empty"  # plaintext | encrypted | other | empty
    spans: dict[str, list[Span]] = field(default_factory=dict, repr=False)

    @property
    def application_data(self) -> bool:
        return any(r.content_type == "application_data" for r in self.tls_records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "verdict": self.verdict,
            "readable_http": self.readable_http,
            "http_requests": list(self.http_requests),
            "http_responses": list(self.http_responses),
            "tls_version": self.tls_version,
            "tls_versions": list(self.tls_versions),
            "tls_records": [list(r) for r in self.tls_records],
            "client_hello": self.client_hello,
            "server_hello": self.server_hello,
            "certificates": self.certificates,
            "alerts": list(self.alerts),
            "notes": list(self.notes),
        }


MIDSTREAM_NOTE = (
    "this connection was already open when the capture began (a pooled keep-alive "
    "connection): its handshake is not in the capture, only encrypted records"
)


def analyze(c2s: bytes, s2c: bytes, closed_by: str | None = None) -> FlowAnalysis:
    streams = {"c2s": c2s, "s2c": s2c}
    if not c2s and not s2c:
        return FlowAnalysis("empty", _closed_phrase("no bytes", closed_by), category="empty")
    result = FlowAnalysis("other", "")
    result.spans = {d: [] for d in DIRECTIONS}

    # HTTP/1.x in clear, either direction (a TLS client may get a plaintext HTTP answer).
    requests = http.read_messages(c2s, "request")
    methods = [m.method or "" for m in requests]
    responses = http.read_messages(s2c, "response", methods)
    for direction, messages in (("c2s", requests), ("s2c", responses)):
        for message in messages:
            result.spans[direction].extend(_http_spans(message))
    result.http_requests = [m.start_line for m in requests]
    result.http_responses = [m.start_line for m in responses]
    result.readable_http = bool(requests or responses)

    # TLS, either direction.
    tls_dirs = {
        d: tls.read_direction(data) for d, data in streams.items() if tls.looks_like_tls(data)
    }
    midstream = not tls_dirs and any(tls.looks_like_tls_midstream(d) for d in streams.values())
    if midstream:
        tls_dirs = {
            d: tls.read_direction(data)
            for d, data in streams.items()
            if tls.looks_like_tls_midstream(data)
        }
        result.notes.append(MIDSTREAM_NOTE)
    if tls_dirs:
        _read_tls(result, tls_dirs, streams)

    first = c2s or s2c
    if "c2s" in tls_dirs or (not c2s and "s2c" in tls_dirs):
        result.protocol = "tls"
    elif requests or (not c2s and responses):
        result.protocol = "http"
    elif first.startswith(http.H2_PREFACE):
        result.protocol = "other"
        result.notes.append("HTTP/2 without TLS (h2c): binary frames, headers HPACK-compressed")
    result.category = (
        "plaintext"
        if result.readable_http or first.startswith(http.H2_PREFACE)
        else "encrypted"
        if result.protocol == "tls"
        else "other"
    )
    for direction, data in streams.items():
        _fill_gaps(result.spans[direction], len(data))
    result.verdict = _verdict(result, streams, closed_by)
    return result


def _read_tls(
    result: FlowAnalysis, tls_dirs: dict[str, tls.TlsDirection], streams: dict[str, bytes]
) -> None:
    versions: list[str] = []
    for direction in DIRECTIONS:
        info = tls_dirs.get(direction)
        if info is None:
            continue
        for record in info.records:
            result.tls_records.append(
                tls.TlsRecord(direction, record.type_name, record.version_name, record.length)
            )
            if record.version_name not in versions:
                versions.append(record.version_name)
            names = info.record_messages.get(record.offset, [])
            label = f"{record.type_name} {record.version_name} len {record.length}"
            if names:
                label += ": " + ", ".join(names)
            result.spans[direction].append(
                Span(record.offset, record.offset + tls.RECORD_HEADER, "tls-header", label)
            )
            result.spans[direction].append(
                Span(
                    record.offset + tls.RECORD_HEADER,
                    min(record.end, len(streams[direction])),
                    f"tls-{record.type_name.replace('_', '-')}",
                )
            )
        result.alerts.extend(f"{SENDER[direction]}: {alert}" for alert in info.alerts)
        for message in info.messages:
            if message.msg_type == 1 and result.client_hello is None and direction == "c2s":
                result.client_hello = tls.parse_client_hello(message.body)
                if not message.complete:
                    result.client_hello["truncated"] = True
            elif message.msg_type == 2 and direction == "s2c":
                hello = tls.parse_server_hello(message.body)
                if not message.complete:
                    hello["truncated"] = True
                if result.server_hello is None or result.server_hello.get("hello_retry"):
                    result.server_hello = hello
    result.tls_versions = versions
    if result.server_hello and not result.server_hello.get("hello_retry"):
        result.tls_version = result.server_hello.get("version")

    if result.tls_version == "TLS 1.3":
        result.notes.append(TLS13_CERT_NOTE)
        return
    for direction in ("s2c", "c2s"):  # the server shows its certificate first
        info = tls_dirs.get(direction)
        for message in info.messages if info else []:
            if message.msg_type != 11:
                continue
            ders, truncated = tls.parse_certificate_list(message.body)
            for position, der in enumerate(ders):
                cert = tls.describe_certificate(der)
                cert["presented_by"] = SENDER[direction]
                cert["position"] = position  # 0 = the peer's own certificate
                result.certificates.append(cert)
            if truncated or not message.complete:
                result.notes.append(f"the {SENDER[direction]}'s Certificate message is cut short")


def _http_spans(message: http.HttpMessage) -> list[Span]:
    spans = [Span(message.offset, message.line_end, "http-line", message.start_line)]
    header_end = message.headers_end if message.headers_end is not None else message.end
    if header_end > message.line_end:
        spans.append(Span(message.line_end, header_end, "http-header"))
    if message.end > header_end:
        spans.append(Span(header_end, message.end, "http-body"))
    return spans


def _fill_gaps(spans: list[Span], length: int) -> None:
    """Sort the spans and mark any byte not covered as ``other``."""
    spans.sort(key=lambda s: s.start)
    filled: list[Span] = []
    pos = 0
    for span in spans:
        if span.start > pos:
            filled.append(Span(pos, span.start, "other"))
        if span.end > max(pos, span.start):
            filled.append(span)
            pos = span.end
    if pos < length:
        filled.append(Span(pos, length, "other"))
    spans[:] = filled


def _closed_phrase(text: str, closed_by: str | None) -> str:
    reset = reset_by(closed_by)
    if reset is None:
        return text
    return f"{text}; reset by {reset}" if reset else f"{text}; connection reset"


def reset_by(closed_by: str | None) -> str | None:
    """"server" / "client" for a reset with a known side, "" when unknown, None if no reset."""
    if not closed_by or not closed_by.endswith("reset"):
        return None
    side = closed_by[: -len("reset")].rstrip("-_ ")
    return side if side in ("client", "server") else ""


def _verdict(result: FlowAnalysis, streams: dict[str, bytes], closed_by: str | None) -> str:
    reset = reset_by(closed_by)
    no_answer = not streams["s2c"]
    if no_answer and reset is not None:
        before = f"reset by {reset} before any response" if reset else "reset before any response"
    else:
        before = "no response"
    if result.protocol == "http":
        if result.http_requests and result.http_responses:
            return "plaintext: HTTP request and response readable"
        if result.http_requests:
            if no_answer:
                return f"plaintext: HTTP request readable, {before}"
            return "plaintext: HTTP request readable, answer not HTTP"
        return "plaintext: HTTP response readable"
    if result.protocol == "tls":
        if result.http_responses and streams["s2c"] and not tls.looks_like_tls(streams["s2c"]):
            return f"TLS ClientHello answered in plaintext: {result.http_responses[0]}"
        if result.alerts:
            side, _, alert = result.alerts[0].partition(": ")
            return f"TLS handshake failed: {side} sent alert {alert}"
        if MIDSTREAM_NOTE in result.notes and not result.readable_http:
            return (
                "encrypted: TLS records on a connection opened before the capture, "
                "no readable HTTP"
            )
        if result.server_hello is None:
            return f"TLS ClientHello sent, {before}"
        version = result.tls_version or "TLS (version unknown)"
        if result.application_data and not result.readable_http:
            return f"encrypted: {version}, no readable HTTP"
        if result.readable_http:
            return f"mixed: {version} and readable HTTP in one flow"
        return _closed_phrase(f"{version} handshake only, no application data", closed_by)
    # other
    if result.category == "plaintext":
        return "plaintext: HTTP/2 frames without TLS (h2c)"
    sizes = f"{len(streams['c2s'])} bytes sent, {len(streams['s2c'])} received"
    return _closed_phrase(f"other: neither HTTP nor TLS ({sizes})", closed_by)
