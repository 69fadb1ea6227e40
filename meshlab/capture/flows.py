"""The recorded data: a ``Flow`` is one TCP connection, a ``Chunk`` one read from its socket.

How the bytes were obtained (a relay in front of a pod, tcpdump, a pcap file) does not
matter here; everything downstream works from these two types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from meshlab.capture.analysis import FlowAnalysis, analyze, reset_by

Direction = Literal["c2s", "s2c"]

# How a connection ended, from the recorder's point of view:
#   None            still open when the capture stopped (or not known)
#   "client"        the client closed first (FIN); "server": the server closed first
#   "server-reset"  the server reset the connection (RST); "client-reset" likewise
#   "reset"         reset, side unknown (a relay usually sees the server's reset)
CLOSE_REASONS = ("client", "server", "reset", "client-reset", "server-reset")


@dataclass
class Chunk:
    """Bytes sent in one direction, with the time (epoch seconds) they were seen."""

    direction: Direction
    time: float
    data: bytes

    def __post_init__(self) -> None:
        if self.direction not in ("c2s", "s2c"):
            raise ValueError(f"Chunk.direction must be 'c2s' or 's2c', not {self.direction!r}")


@dataclass
class Flow:
    """One TCP connection: who talked to whom, when, and every byte each way, in order."""

    client: tuple[str, int]
    server: tuple[str, int]
    start: float
    end: float | None = None
    chunks: list[Chunk] = field(default_factory=list)
    closed_by: str | None = None
    _cache: tuple[Any, FlowAnalysis] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def bytes_c2s(self) -> int:
        return sum(len(c.data) for c in self.chunks if c.direction == "c2s")

    @property
    def bytes_s2c(self) -> int:
        return sum(len(c.data) for c in self.chunks if c.direction == "s2c")

    def payload(self, direction: Direction) -> bytes:
        """Every byte sent in ``direction`` ("c2s" or "s2c"), concatenated."""
        if direction not in ("c2s", "s2c"):
            raise ValueError(f"direction must be 'c2s' or 's2c', not {direction!r}")
        return b"".join(c.data for c in self.chunks if c.direction == direction)

    @property
    def reset_by(self) -> str | None:
        """"server" or "client" when the connection was reset, "" if the side is unknown."""
        return reset_by(self.closed_by)

    @property
    def duration(self) -> float | None:
        if self.end is None:
            return None
        return max(0.0, self.end - self.start)

    @property
    def analysis(self) -> FlowAnalysis:
        """What the bytes reveal (computed once, again if chunks were added since)."""
        key = (len(self.chunks), self.bytes_c2s, self.bytes_s2c, self.closed_by)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, analyze(self.payload("c2s"), self.payload("s2c"), self.closed_by))
        return self._cache[1]

    @property
    def verdict(self) -> str:
        return self.analysis.verdict

    def label(self) -> str:
        return f"{_endpoint(self.client)} → {_endpoint(self.server)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": _endpoint(self.client),
            "server": _endpoint(self.server),
            "start": self.start,
            "end": self.end,
            "closed_by": self.closed_by,
            "bytes_c2s": self.bytes_c2s,
            "bytes_s2c": self.bytes_s2c,
            **self.analysis.to_dict(),
        }


def _endpoint(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
