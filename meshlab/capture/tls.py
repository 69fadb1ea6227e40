"""TLS as it looks on the wire: record headers, and the handshake messages sent in clear.

Everything here reads bytes that may be cut short or may not be TLS at all, so no function
raises on bad input: a parse that runs out of bytes marks its result ``truncated`` and keeps
what it found. What the wire shows depends on the version (RFC 8446 and RFC 5246):

- Both versions send ClientHello and ServerHello in clear: SNI (extension 0), ALPN
  (extension 16) and the versions offered (extension 43) are readable.
- TLS 1.2 also sends the Certificate messages in clear, so the SPIFFE identities of both
  workloads can be read by anyone on the path.
- TLS 1.3 encrypts everything after ServerHello (certificates, the ALPN answer, alerts).
  Those records travel as ``application_data`` with a record version of TLS 1.2; the real
  version is in ServerHello's ``supported_versions`` extension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dpkt.ssl_ciphersuites import BY_CODE as _CIPHER_SUITES

CONTENT_TYPES = {
    20: "change_cipher_spec",
    21: "alert",
    22: "handshake",
    23: "application_data",
    24: "heartbeat",
}

VERSIONS = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}

HANDSHAKE_TYPES = {
    0: "HelloRequest",
    1: "ClientHello",
    2: "ServerHello",
    4: "NewSessionTicket",
    5: "EndOfEarlyData",
    8: "EncryptedExtensions",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
    20: "Finished",
    24: "KeyUpdate",
}

ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

RECORD_HEADER = 5
# A TLSCiphertext fragment may be up to 2^14 + 2048 bytes (RFC 5246 section 6.2.3).
MAX_RECORD = 2**14 + 2048

# ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest"), RFC 8446 4.1.3.
HELLO_RETRY_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)


def version_name(code: int) -> str:
    if code in VERSIONS:
        return VERSIONS[code]
    if _is_grease(code):
        return f"GREASE 0x{code:04x}"
    return f"0x{code:04x}"


def cipher_name(code: int) -> str:
    suite = _CIPHER_SUITES.get(code)
    return suite.name if suite is not None else f"0x{code:04x}"


def _is_grease(code: int) -> bool:
    # RFC 8701: 0x0a0a, 0x1a1a, ... 0xfafa are reserved values clients sprinkle in.
    return code & 0x0F0F == 0x0A0A and code >> 8 == code & 0xFF


class TlsRecord(NamedTuple):
    """One record as listed in an analysis: who sent it, its type, record version, length."""

    direction: str
    content_type: str
    version: str
    length: int


@dataclass
class RecordHeader:
    """A record header found at ``offset`` of one direction's byte stream."""

    offset: int
    content_type: int
    version: int
    length: int
    complete: bool  # the whole fragment is in the stream

    @property
    def type_name(self) -> str:
        return CONTENT_TYPES.get(self.content_type, f"type {self.content_type}")

    @property
    def version_name(self) -> str:
        return version_name(self.version)

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER + self.length


def is_record_header(data: bytes, offset: int = 0) -> bool:
    """Do the 5 bytes at ``offset`` look like a TLS record header?"""
    if len(data) - offset < RECORD_HEADER:
        return False
    ctype, major, minor = data[offset], data[offset + 1], data[offset + 2]
    length = int.from_bytes(data[offset + 3 : offset + 5], "big")
    if ctype not in CONTENT_TYPES or major != 3 or minor > 4:
        return False
    return length <= MAX_RECORD and (length > 0 or ctype == 23)


def looks_like_tls(data: bytes) -> bool:
    """A stream that starts with a handshake or alert record (how every TLS peer starts)."""
    return is_record_header(data) and data[0] in (21, 22)


def looks_like_tls_midstream(data: bytes) -> bool:
    """A stream seen from the middle of a TLS connection (opened before the capture began):
    back-to-back application_data records, at least one of them complete."""
    if not (is_record_header(data) and data[0] == 23):
        return False
    records, _ = split_records(data)
    return any(r.complete for r in records) and all(r.content_type in (21, 23) for r in records)


def split_records(data: bytes) -> tuple[list[RecordHeader], int]:
    """The records at the start of a stream, and the offset where they stop.

    Parsing stops at the first bytes that are not a record header; the last record may be
    incomplete (``complete=False``) when the stream was cut short.
    """
    records: list[RecordHeader] = []
    pos = 0
    while is_record_header(data, pos):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        complete = pos + RECORD_HEADER + length <= len(data)
        records.append(
            RecordHeader(pos, data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big"),
                         length, complete)
        )
        if not complete:
            return records, len(data)
        pos += RECORD_HEADER + length
    return records, pos


@dataclass
class HandshakeMessage:
    """A handshake message read from the clear handshake records of one direction."""

    msg_type: int
    body: bytes
    complete: bool
    offset: int = 0  # in the direction's stream, when the message starts inside one record

    @property
    def name(self) -> str:
        return HANDSHAKE_TYPES.get(self.msg_type, f"handshake type {self.msg_type}")


@dataclass
class TlsDirection:
    """What one direction of a TLS connection shows in clear."""

    records: list[RecordHeader] = field(default_factory=list)
    parsed_until: int = 0  # bytes after this offset are not TLS records
    messages: list[HandshakeMessage] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # e.g. "fatal certificate_required"
    # record offset -> names of the clear handshake messages that start in that record
    record_messages: dict[int, list[str]] = field(default_factory=dict)


def read_direction(data: bytes) -> TlsDirection:
    """Split a stream into records and read the handshake messages sent before encryption.

    A direction stops sending clear handshake records at its ChangeCipherSpec (TLS 1.2, and
    TLS 1.3 in middlebox compatibility mode) or at its first application_data record
    (TLS 1.3's encrypted handshake). Alerts are readable only before that point.
    """
    out = TlsDirection()
    out.records, out.parsed_until = split_records(data)
    buffer = bytearray()
    starts: list[tuple[int, int]] = []  # (offset in buffer, offset in stream) per record
    for record in out.records:
        if record.content_type in (20, 23):
            break
        fragment = data[record.offset + RECORD_HEADER : record.end]
        if record.content_type == 21 and len(fragment) >= 2:
            level = {1: "warning", 2: "fatal"}.get(fragment[0], f"level {fragment[0]}")
            out.alerts.append(f"{level} {ALERTS.get(fragment[1], f'alert {fragment[1]}')}")
        elif record.content_type == 22:
            starts.append((len(buffer), record.offset))
            buffer += fragment
    pos = 0
    while len(buffer) - pos >= 4:
        msg_type = buffer[pos]
        length = int.from_bytes(buffer[pos + 1 : pos + 4], "big")
        body = bytes(buffer[pos + 4 : pos + 4 + length])
        record_offset = max((s for b, s in starts if b <= pos), default=0)
        message = HandshakeMessage(msg_type, body, len(body) == length, record_offset)
        out.messages.append(message)
        out.record_messages.setdefault(record_offset, []).append(message.name)
        if not message.complete:
            break
        pos += 4 + length
    return out


class _Short(Exception):
    """The structure claims more bytes than there are."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _extensions(reader: _Reader) -> tuple[list[tuple[int, bytes]], bool]:
    """The extensions that are complete, and whether the block was cut short."""
    if reader.left == 0:
        return [], False
    declared = reader.uint(2)
    block = _Reader(reader.take(min(declared, reader.left)))
    cut = block.left < declared
    found = []
    try:
        while block.left:
            ext_type = block.uint(2)
            found.append((ext_type, block.vector(2)))
    except _Short:
        cut = True
    return found, cut


def _server_name(body: bytes) -> str | None:
    names = _Reader(_Reader(body).vector(2))
    while names.left:
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:
            return name.decode("ascii", "replace")
    return None


def _alpn(body: bytes) -> list[str]:
    protocols = _Reader(_Reader(body).vector(2))
    found = []
    while protocols.left:
        found.append(protocols.vector(1).decode("ascii", "replace"))
    return found


def parse_client_hello(body: bytes) -> dict[str, Any]:
    """SNI, ALPN, versions offered, legacy version and cipher suite count of a ClientHello.

    Keys: ``sni`` (str or None), ``alpn`` (list), ``versions`` (names from
    supported_versions, GREASE left out; empty when the extension is absent),
    ``legacy_version``, ``cipher_suites`` (how many were offered), ``truncated``.
    """
    hello: dict[str, Any] = {
        "sni": None,
        "alpn": [],
        "versions": [],
        "legacy_version": None,
        "cipher_suites": 0,
        "truncated": False,
    }
    reader = _Reader(body)
    try:
        hello["legacy_version"] = version_name(reader.uint(2))
        reader.take(32)  # random
        reader.vector(1)  # legacy_session_id
        hello["cipher_suites"] = len(
            [c for c in _pairs(reader.vector(2)) if not _is_grease(c)]
        )
        reader.vector(1)  # compression methods
        extensions, hello["truncated"] = _extensions(reader)
        for ext_type, ext in extensions:
            if ext_type == EXT_SERVER_NAME and ext:
                hello["sni"] = _server_name(ext)
            elif ext_type == EXT_ALPN:
                hello["alpn"] = _alpn(ext)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                offered = _Reader(ext).vector(1)
                hello["versions"] = [version_name(v) for v in _pairs(offered) if not _is_grease(v)]
    except _Short:
        hello["truncated"] = True
    return hello


def parse_server_hello(body: bytes) -> dict[str, Any]:
    """The version and cipher a server chose (and ALPN when it is sent in clear, TLS 1.2).

    Keys: ``version`` (negotiated: supported_versions when present, else legacy_version),
    ``legacy_version``, ``cipher``, ``alpn`` (str or None), ``hello_retry`` (a
    HelloRetryRequest, not a real ServerHello), ``truncated``.
    """
    hello: dict[str, Any] = {
        "version": None,
        "legacy_version": None,
        "cipher": None,
        "alpn": None,
        "hello_retry": False,
        "truncated": False,
    }
    reader = _Reader(body)
    try:
        legacy = reader.uint(2)
        hello["legacy_version"] = hello["version"] = version_name(legacy)
        hello["hello_retry"] = reader.take(32) == HELLO_RETRY_RANDOM
        reader.vector(1)  # legacy_session_id_echo
        hello["cipher"] = cipher_name(reader.uint(2))
        reader.uint(1)  # compression method
        extensions, hello["truncated"] = _extensions(reader)
        for ext_type, ext in extensions:
            if ext_type == EXT_SUPPORTED_VERSIONS and len(ext) >= 2:
                hello["version"] = version_name(int.from_bytes(ext[:2], "big"))
            elif ext_type == EXT_ALPN:
                chosen = _alpn(ext)
                hello["alpn"] = chosen[0] if chosen else None
    except _Short:
        hello["truncated"] = True
    return hello


def parse_certificate_list(body: bytes) -> tuple[list[bytes], bool]:
    """The DER certificates of a TLS 1.2 Certificate message, and whether it was cut short."""
    certs: list[bytes] = []
    try:
        entries = _Reader(_Reader(body).vector(3))
        while entries.left:
            certs.append(entries.vector(3))
    except _Short:
        return certs, True
    return certs, False


def describe_certificate(der: bytes) -> dict[str, Any]:
    """Subject, issuer and SPIFFE ids (URI SANs) of a DER certificate.

    Keys: ``spiffe_ids``, ``uris`` (every URI SAN), ``dns_names``, ``subject``, ``issuer``,
    ``not_after`` (ISO 8601) and ``error`` (None, or why the bytes could not be read).
    """
    from cryptography import x509

    info: dict[str, Any] = {
        "spiffe_ids": [],
        "uris": [],
        "dns_names": [],
        "subject": "",
        "issuer": "",
        "not_after": None,
        "error": None,
    }
    try:
        cert = x509.load_der_x509_certificate(der)
        info["subject"] = cert.subject.rfc4514_string()
        info["issuer"] = cert.issuer.rfc4514_string()
        info["not_after"] = cert.not_valid_after_utc.isoformat()
    except Exception as err:  # any bytes can arrive here; report, never raise
        info["error"] = f"not a readable X.509 certificate ({err})"
        return info
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return info
    except Exception as err:
        info["error"] = f"unreadable subjectAltName ({err})"
        return info
    info["uris"] = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    info["dns_names"] = list(san.get_values_for_type(x509.DNSName))
    info["spiffe_ids"] = [u for u in info["uris"] if u.startswith("spiffe://")]
    return info


def _pairs(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]
