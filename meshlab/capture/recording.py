"""``Capture``: the flows recorded at one pod port, and what they tell a learner."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from meshlab.capture import render
from meshlab.capture.flows import Direction, Flow

CATEGORY_ORDER = ("encrypted", "plaintext", "other")


class Capture:
    """Flows recorded at one workload's port (or read from a pcap).

    ``verdict`` sums them up in one line; ``readable_http``, ``tls``, ``sni``, ``alpn`` and
    ``spiffe_ids`` are what lessons assert on; ``to_pcap`` writes a file tshark opens; in a
    notebook the capture displays itself as a table plus annotated hex dumps.
    """

    def __init__(
        self,
        flows: list[Flow],
        *,
        workload: str = "",
        namespace: str = "",
        port: int | None = None,
        address: str = "",
        started: float | None = None,
        stopped: float | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.flows = list(flows)
        self.workload = workload
        self.namespace = namespace
        self.port = port
        self.address = address
        self.started = started
        self.stopped = stopped
        self.notes = list(notes or [])

    # -- reading ------------------------------------------------------------------------

    @classmethod
    def from_pcap(cls, path: str | Path, port: int | None = None) -> Capture:
        """Reassemble the TCP connections of a pcap or pcapng file (those on ``port`` if set).

        Reads tcpdump's files (``-i lo``: Ethernet; ``-i any``: Linux cooked) and our own
        ``to_pcap`` output. Raises ``PcapError`` (a ``MeshlabError``) for a missing or
        unreadable file.
        """
        from meshlab.capture.pcap import read_pcap

        contents = read_pcap(path, port)
        servers = {f.server for f in contents.flows}
        server = next(iter(servers)) if len(servers) == 1 else None
        return cls(
            contents.flows,
            port=port if port is not None else (server[1] if server else None),
            address=server[0] if server else "",
            started=contents.first,
            stopped=contents.last,
            notes=contents.notes,
        )

    def to_pcap(self, path: str | Path) -> Path:
        """Write the flows as a classic pcap (Ethernet, like ``tcpdump -i lo -w``).

        Plaintext HTTP decodes as is; for TLS on a non-standard port tell tshark
        ``-d tcp.port==PORT,tls``.
        """
        from meshlab.capture.pcap import write_pcap

        return write_pcap(self.flows, path)

    # -- what the bytes show ------------------------------------------------------------

    @property
    def verdict(self) -> str:
        """One line over all flows, e.g. "encrypted: TLS 1.3, no readable HTTP"."""
        if not self.flows:
            return "nothing captured"
        active = [f for f in self.flows if f.chunks]
        if not active:
            n = len(self.flows)
            return f"no bytes: {n} connection{'s' if n != 1 else ''} opened, nothing sent"
        verdicts = {f.analysis.verdict for f in active}
        if len(verdicts) == 1:
            return verdicts.pop()
        counts = Counter(f.analysis.category for f in active)
        if len(counts) == 1:
            category = next(iter(counts))
            if category == "encrypted" and all(
                f.analysis.verdict.startswith("encrypted:") for f in active
            ):
                versions = sorted({f.analysis.tls_version or "TLS" for f in active})
                return f"encrypted: {' and '.join(versions)}, no readable HTTP"
            if category == "plaintext":
                return f"plaintext: HTTP readable on {len(active)} flows"
        words = [
            f"{counts[c]} {c} flow{'s' if counts[c] != 1 else ''}"
            for c in CATEGORY_ORDER
            if counts[c]
        ]
        return "mixed: " + ", ".join(words)

    @property
    def category(self) -> str:
        """"plaintext" if any flow carries readable HTTP, else "encrypted", "other" or "empty"."""
        categories = {f.analysis.category for f in self.flows}
        for category in ("plaintext", "encrypted", "other"):
            if category in categories:
                return category
        return "empty"

    @property
    def readable_http(self) -> bool:
        return any(f.analysis.readable_http for f in self.flows)

    @property
    def http_request_lines(self) -> list[str]:
        return [line for f in self.flows for line in f.analysis.http_requests]

    @property
    def http_response_lines(self) -> list[str]:
        return [line for f in self.flows for line in f.analysis.http_responses]

    @property
    def tls(self) -> bool:
        """True when at least one flow is TLS."""
        return any(f.analysis.protocol == "tls" for f in self.flows)

    @property
    def tls_versions(self) -> list[str]:
        """Negotiated TLS versions (from ServerHello), sorted."""
        return sorted({v for f in self.flows if (v := f.analysis.tls_version)})

    @property
    def sni(self) -> list[str]:
        """Server names sent in ClientHello, in order of first appearance."""
        return _unique(
            f.analysis.client_hello.get("sni")
            for f in self.flows
            if f.analysis.client_hello
        )

    @property
    def alpn(self) -> list[str]:
        """ALPN protocols offered in ClientHello, in order of first appearance."""
        return _unique(
            p for f in self.flows if f.analysis.client_hello
            for p in f.analysis.client_hello.get("alpn", [])
        )

    @property
    def spiffe_ids(self) -> list[str]:
        """SPIFFE ids read from certificates sent in clear (TLS 1.2 only)."""
        return _unique(
            i for f in self.flows for c in f.analysis.certificates for i in c["spiffe_ids"]
        )

    @property
    def bytes_c2s(self) -> int:
        return sum(f.bytes_c2s for f in self.flows)

    @property
    def bytes_s2c(self) -> int:
        return sum(f.bytes_s2c for f in self.flows)

    @property
    def duration(self) -> float | None:
        if self.started is not None and self.stopped is not None:
            return max(0.0, self.stopped - self.started)
        return None

    def summary(self) -> dict[str, Any]:
        """Everything above as plain JSON-friendly values, with one entry per flow."""
        return {
            "workload": self.workload,
            "namespace": self.namespace,
            "port": self.port,
            "address": self.address,
            "started": self.started,
            "stopped": self.stopped,
            "verdict": self.verdict,
            "flows": len(self.flows),
            "bytes_c2s": self.bytes_c2s,
            "bytes_s2c": self.bytes_s2c,
            "readable_http": self.readable_http,
            "http_request_lines": self.http_request_lines,
            "http_response_lines": self.http_response_lines,
            "tls": self.tls,
            "tls_versions": self.tls_versions,
            "sni": self.sni,
            "alpn": self.alpn,
            "spiffe_ids": self.spiffe_ids,
            "notes": list(self.notes),
            "flow_details": [f.to_dict() for f in self.flows],
        }

    # -- showing ------------------------------------------------------------------------

    def hexdump(self, flow_index: int = 0, direction: Direction = "c2s", limit: int = 256) -> str:
        """``hexdump -C``-style text of one direction of one flow, TLS records annotated."""
        if not self.flows:
            raise IndexError("this capture has no flows")
        if not -len(self.flows) <= flow_index < len(self.flows):
            raise IndexError(
                f"flow_index {flow_index} out of range: this capture has "
                f"{len(self.flows)} flow{'s' if len(self.flows) != 1 else ''}"
            )
        flow = self.flows[flow_index]
        data = flow.payload(direction)
        return render.hexdump(data, flow.analysis.spans.get(direction, []), limit)

    def explain_tls(self) -> str:
        """What someone on the path can and cannot read here, in a few sentences."""
        return render.explain_tls(self)

    def _repr_html_(self) -> str:
        return render.capture_html(self)

    def __str__(self) -> str:
        return render.capture_text(self)

    def __repr__(self) -> str:
        return f"<Capture {render.describe_target(self)}: {self.verdict}>"

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        style = {"plaintext": "bold red", "encrypted": "bold green"}.get(self.category, "bold")
        lines = render.capture_text(self).splitlines()
        body = Text("\n".join(lines[2:])) if len(lines) > 2 else Text("")
        return Group(
            Text(lines[0], style="dim"),
            Text(self.verdict, style=style),
            body,
        )


def _unique(values: Any) -> list[str]:
    seen: list[str] = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return seen
