"""Captures for people: text for the CLI, hex dumps, and compact HTML for notebooks.

The HTML is self-contained (one scoped ``<style>``, no scripts), escaped, and deterministic.
Readable HTTP is highlighted in the dumps (request or status line, headers), and each TLS
record header is annotated with its type, version, length and handshake messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshlab.capture.analysis import DIRECTIONS, Span
from meshlab.display import HTML, Markup, esc, table

if TYPE_CHECKING:
    from meshlab.capture.flows import Flow
    from meshlab.capture.recording import Capture

ROW = 16
DUMP_LIMIT = 256
DETAILED_FLOWS = 3
TABLE_FLOWS = 20

# span kind -> CSS class in the dump
KIND_CLASS = {
    "http-line": "hl",
    "http-header": "hh",
    "http-body": "hb",
    "tls-header": "th",
    "tls-handshake": "tk",
    "tls-change-cipher-spec": "tc",
    "tls-application-data": "ta",
    "tls-alert": "tx",
    "tls-heartbeat": "tc",
}

STYLE = (
    "<style>"
    ".mlcap{font:13px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;"
    "background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;"
    "margin:4px 0;min-width:0;overflow-x:auto}"
    ".mlcap .v{font-weight:700;font-size:14px}"
    ".mlcap .plaintext{color:#b42318}.mlcap .encrypted{color:#067647}"
    ".mlcap .other,.mlcap .empty{color:#6c5b00}"
    ".mlcap .meta,.mlcap .dir{color:#57606a;font-size:12px}"
    ".mlcap .dir{margin-top:6px}"
    ".mlcap table{border-collapse:collapse;font-size:12px;margin:6px 0}"
    ".mlcap th,.mlcap td{padding:2px 10px 2px 0;border-bottom:1px solid #eaeef2;"
    "text-align:left;vertical-align:top;background:none}"
    ".mlcap td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".mlcap code,.mlcap pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"
    "'DejaVu Sans Mono',monospace}"
    ".mlcap pre{margin:2px 0;padding:4px 8px;background:#f6f8fa;border-radius:4px;"
    "overflow-x:auto;color:#1f2328}"
    ".mlcap summary{cursor:pointer;margin-top:6px}"
    ".mlcap .facts{margin:2px 0 0 14px;font-size:12px}"
    ".mlcap .hl{background:#ffd8a8;font-weight:700}.mlcap .hh{background:#fff0d9}"
    ".mlcap .hb{background:#f2f4f7}"
    ".mlcap .th{background:#b2ccff;font-weight:700}.mlcap .tk{background:#e0eaff}"
    ".mlcap .tc{background:#ebe9fe}.mlcap .tx{background:#fecdca}.mlcap .ta{color:#667085}"
    ".mlcap .an{color:#175cd3}"
    ".mlcap-sbs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
    ".mlcap-sbs>div{flex:1 1 520px;min-width:0}.mlcap-sbs pre{font-size:11px;padding:4px 6px}"
    ".mlcap .title{font-size:12px;font-weight:700;text-transform:uppercase;"
    "letter-spacing:.05em;color:#57606a}"
    "</style>"
)

DIRECTION_TITLES = {"c2s": "client → server", "s2c": "server → client"}


# ---------------------------------------------------------------------------------------
# Text


def hexdump(data: bytes, spans: Sequence[Span] = (), limit: int = DUMP_LIMIT,
            annotate: bool = True) -> str:
    """``hexdump -C``-style lines; TLS record headers annotated at the end of their line."""
    shown = data[:limit]
    lines = []
    for row_start in range(0, len(shown), ROW):
        row = shown[row_start : row_start + ROW]
        hex_part = " ".join(
            f"{b:02x}" + (" " if i == 7 else "") for i, b in enumerate(row)
        ).ljust(ROW * 3)
        line = f"{row_start:04x}  {hex_part}  {_ascii(row)}"
        notes = _row_annotations(spans, row_start, row_start + len(row)) if annotate else []
        if notes:
            line = line.ljust(6 + ROW * 3 + 2 + ROW) + "  ← " + "; ".join(notes)
        lines.append(line.rstrip())
    if len(data) > limit:
        lines.append(f"… {len(data) - limit} more bytes")
    return "\n".join(lines)


def flow_text(flow: Flow, index: int) -> list[str]:
    analysis = flow.analysis
    lines = [
        f"  #{index + 1} {flow.label()}  sent {flow.bytes_c2s} B, received {flow.bytes_s2c} B"
        f"  {analysis.verdict}"
    ]
    lines += [f"      > {line}" for line in analysis.http_requests[:3]]
    lines += [f"      < {line}" for line in analysis.http_responses[:3]]
    facts = tls_facts(flow)
    if facts:
        lines.append("      " + "; ".join(facts))
    return lines


def capture_text(capture: Capture) -> str:
    lines = [f"capture {describe_target(capture)}".rstrip(), f"verdict: {capture.verdict}"]
    for index, flow in enumerate(capture.flows[:TABLE_FLOWS]):
        lines += flow_text(flow, index)
    if len(capture.flows) > TABLE_FLOWS:
        lines.append(f"  … {len(capture.flows) - TABLE_FLOWS} more flows")
    lines += [f"note: {note}" for note in capture.notes]
    return "\n".join(lines)


def describe_target(capture: Capture) -> str:
    parts = []
    if capture.workload:
        parts.append(capture.workload + (f".{capture.namespace}" if capture.namespace else ""))
    if capture.port is not None:
        parts.append(f"port {capture.port}")
    if capture.address:
        parts.append(f"at {capture.address}")
    count = len(capture.flows)
    parts.append(f"{count} flow{'s' if count != 1 else ''}")
    duration = capture.duration
    if duration is not None:
        parts.append(f"{duration:.2f} s")
    return ", ".join(parts)


def tls_facts(flow: Flow) -> list[str]:
    """Short phrases on what the TLS handshake shows in clear."""
    analysis = flow.analysis
    facts = []
    hello = analysis.client_hello
    if hello:
        if hello.get("sni"):
            facts.append(f"SNI {hello['sni']}")
        if hello.get("alpn"):
            facts.append("ALPN offered " + ", ".join(hello["alpn"]))
        if hello.get("versions"):
            facts.append("versions offered " + ", ".join(hello["versions"]))
        if hello.get("truncated"):
            facts.append("ClientHello cut short")
    server = analysis.server_hello
    if server and not server.get("hello_retry"):
        chosen = f"ServerHello {server.get('version')}"
        if server.get("cipher"):
            chosen += f" {server['cipher']}"
        if server.get("alpn"):
            chosen += f", ALPN {server['alpn']}"
        facts.append(chosen)
    if analysis.protocol == "tls":
        ids = [i for c in analysis.certificates for i in c.get("spiffe_ids", [])]
        if ids:
            facts.append("certificates in clear: " + ", ".join(ids))
        elif analysis.tls_version == "TLS 1.3":
            facts.append("certificates encrypted")
    return facts


def explain_tls(capture: Capture) -> str:
    """What someone on the wire can and cannot read, from the flows of this capture."""
    tls_flows = [f for f in capture.flows if f.analysis.protocol == "tls"]
    plain = [f for f in capture.flows if f.analysis.readable_http]
    if not tls_flows:
        if plain:
            lines = [
                "No TLS here: the HTTP traffic is plaintext. Anyone on the path reads every "
                "request line, header and body:"
            ]
            lines += [f"  {line}" for f in plain for line in f.analysis.http_requests[:3]]
            return "\n".join(lines)
        return "No TLS in this capture."
    lines = []
    versions = sorted({f.analysis.tls_version or "an unknown version" for f in tls_flows})
    lines.append(f"TLS ({', '.join(versions)}) on {_count(len(tls_flows), 'flow')}.")
    if capture.sni:
        lines.append("Visible in ClientHello: SNI " + ", ".join(capture.sni) + ".")
    if capture.alpn:
        lines.append("ALPN offered (in clear): " + ", ".join(capture.alpn) + ".")
    if "TLS 1.3" in versions:
        lines.append(
            "TLS 1.3: everything after ServerHello is encrypted, the certificates too; the "
            "workload identities (SPIFFE ids) cannot be read from the wire. Only SNI and "
            "ALPN reveal which service is called."
        )
    if any(v in versions for v in ("TLS 1.2", "TLS 1.1", "TLS 1.0")):
        if capture.spiffe_ids:
            lines.append(
                "TLS 1.2 sends certificates in clear; these identities crossed the wire:"
            )
            for flow in tls_flows:
                for cert in flow.analysis.certificates:
                    for spiffe in cert.get("spiffe_ids", []):
                        lines.append(f"  {cert['presented_by']}: {spiffe}")
        else:
            lines.append("TLS 1.2 sends certificates in clear, but none were captured.")
    lines.append(
        "Encrypted: the HTTP requests and responses (method, path, headers, bodies)."
        if any(f.analysis.application_data for f in tls_flows)
        else "No application data was exchanged."
    )
    if plain:
        lines.append(f"But {_count(len(plain), 'flow')} carried readable HTTP in plaintext.")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _ascii(row: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in row)


def _row_annotations(spans: Sequence[Span], start: int, end: int, short: bool = False
                     ) -> list[str]:
    labels = [s.label for s in spans if s.kind == "tls-header" and start <= s.start < end]
    return [_short_label(label) for label in labels] if short else labels


SHORT_TYPES = {
    "change_cipher_spec": "CCS",
    "application_data": "app data",
    "handshake": "handshake",
    "alert": "alert",
}


def _short_label(label: str) -> str:
    """"handshake TLS 1.0 len 512: ClientHello" -> "ClientHello"; "application_data ..." ->
    "app data"."""
    head, _, messages = label.partition(": ")
    if messages:
        return messages
    kind = head.split(" ", 1)[0]
    return SHORT_TYPES.get(kind, kind)


# ---------------------------------------------------------------------------------------
# HTML


def hexdump_html(data: bytes, spans: Sequence[Span], limit: int = DUMP_LIMIT,
                 annotate: bool = True, short: bool = False) -> str:
    """The dump as ``<pre>`` markup, bytes coloured by what they are."""
    shown = data[:limit]
    kinds = _byte_classes(spans, len(shown))
    lines = []
    for row_start in range(0, len(shown), ROW):
        row = shown[row_start : row_start + ROW]
        classes = kinds[row_start : row_start + len(row)]
        hex_tokens = [f"{b:02x}" for b in row]
        seps = [("  " if i == 7 else " ") for i in range(len(row) - 1)]
        hex_html = _runs(hex_tokens, seps, classes)
        pad = ROW * 3 - (len(row) * 3 + (1 if len(row) > 8 else 0))
        ascii_html = _runs([esc(c) for c in _ascii(row)], [""] * (len(row) - 1), classes)
        line = f"{row_start:04x}  {hex_html}{' ' * max(pad, 0)}  {ascii_html}"
        if annotate:
            notes = _row_annotations(spans, row_start, row_start + len(row), short)
            if notes:
                label = esc("; ".join(notes))
                line += f'{" " * (ROW - len(row))}  <span class="an">← {label}</span>'
        lines.append(line)
    if len(data) > limit:
        lines.append(f'<span class="meta">… {len(data) - limit} more bytes</span>')
    return "<pre>" + "\n".join(lines) + "</pre>"


def _byte_classes(spans: Sequence[Span], length: int) -> list[str]:
    classes = [""] * length
    for span in spans:
        css = KIND_CLASS.get(span.kind, "")
        for i in range(max(0, span.start), min(span.end, length)):
            classes[i] = css
    return classes


def _runs(tokens: list[str], seps: list[str], classes: list[str]) -> str:
    """Join tokens, wrapping each run of equal classes in one span (separators inside)."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        j = i
        while j + 1 < len(tokens) and classes[j + 1] == classes[i]:
            j += 1
        body = "".join(tokens[k] + (seps[k] if k < j else "") for k in range(i, j + 1))
        out.append(f'<span class="{classes[i]}">{body}</span>' if classes[i] else body)
        if j < len(tokens) - 1:
            out.append(seps[j])
        i = j + 1
    return "".join(out)


def _verdict_html(verdict: str, category: str) -> str:
    return f'<span class="v {esc(category)}">{esc(verdict)}</span>'


def _flow_details(flow: Flow, index: int, limit: int, open_: bool, short: bool) -> str:
    analysis = flow.analysis
    parts = [
        f"<details{' open' if open_ else ''}><summary><b>#{index + 1}</b> "
        f"<code>{esc(flow.label())}</code> · {flow.bytes_c2s} B sent, {flow.bytes_s2c} B "
        f'received · <span class="{esc(analysis.category)}">{esc(analysis.verdict)}</span>'
        "</summary>"
    ]
    facts = []
    for line in analysis.http_requests[:3]:
        facts.append(f'<code class="hl">{esc(line)}</code>')
    for line in analysis.http_responses[:3]:
        facts.append(f'<code class="hl">{esc(line)}</code>')
    facts += [esc(f) for f in tls_facts(flow)]
    facts += [esc(a) for a in (f"alert from {x}" for x in analysis.alerts)]
    if facts:
        parts.append(f'<div class="facts">{" · ".join(facts)}</div>')
    for direction in DIRECTIONS:
        data = flow.payload(direction)
        size = f"{len(data)} bytes" + (f", first {limit}" if len(data) > limit else "")
        parts.append(f'<div class="dir">{DIRECTION_TITLES[direction]} · {size}</div>')
        if data:
            spans = analysis.spans.get(direction, [])
            parts.append(hexdump_html(data, spans, limit, True, short))
    parts.append("</details>")
    return "".join(parts)


def capture_body_html(capture: Capture, *, limit: int = DUMP_LIMIT,
                      detailed: int = DETAILED_FLOWS, short: bool = False) -> str:
    """The inside of a capture's box: verdict, target, flow table, dumps of the first flows."""
    parts = [
        f"<div>{_verdict_html(capture.verdict, capture.category)}</div>",
        f'<div class="meta">{esc(describe_target(capture))}</div>',
    ]
    flows = capture.flows
    if len(flows) > 1:
        rows = []
        for index, flow in enumerate(flows[:TABLE_FLOWS]):
            rows.append([
                index + 1,
                Markup(f"<code>{esc(flow.label())}</code>"),
                flow.bytes_c2s,
                flow.bytes_s2c,
                Markup(f'<span class="{esc(flow.analysis.category)}">'
                       f"{esc(flow.analysis.verdict)}</span>"),
            ])
        if len(flows) > TABLE_FLOWS:
            rows.append(["…", f"{len(flows) - TABLE_FLOWS} more flows", "", "", ""])
        parts.append(table(["#", "client → server", "sent B", "received B", "verdict"], rows,
                           numeric=(0, 2, 3)))
    for index, flow in enumerate(flows[:detailed]):
        parts.append(_flow_details(flow, index, limit, index == 0, short))
    if len(flows) > detailed:
        parts.append(f'<div class="meta">dumps of the first {detailed} flows shown; '
                     f"the others are in <code>capture.flows</code></div>")
    parts += [f'<div class="meta">note: {esc(note)}</div>' for note in capture.notes]
    return "".join(parts)


def capture_html(capture: Capture) -> str:
    return f'<div class="mlcap">{STYLE}{capture_body_html(capture)}</div>'


def side_by_side(before: Capture, after: Capture, titles: tuple[str, str] = ("before", "after")
                 ) -> HTML:
    """Two captures next to each other (stacked on narrow screens), verdicts in bold."""
    cells = []
    texts = []
    for title, capture in zip(titles, (before, after), strict=True):
        body = capture_body_html(capture, limit=128, detailed=1, short=True)
        cells.append(f'<div class="mlcap"><div class="title">{esc(title)}</div>{body}</div>')
        texts.append(f"{title}: {capture.verdict}")
    markup = f'<div class="mlcap-sbs">{STYLE}{"".join(cells)}</div>'
    return HTML(markup, "\n".join(texts))
