"""Flows to and from pcap files, so Wireshark and tshark can open what a lesson recorded.

Writing synthesizes the TCP packets a kernel would have sent: the three-way handshake,
data segments of at most ``SEGMENT`` bytes with consistent sequence and acknowledgement
numbers in each direction, and FIN or RST at the end according to ``Flow.closed_by``.
Timestamps come from the chunks, so tshark's timing and stream reassembly just work.

Reading accepts classic pcap and pcapng with the link types tcpdump writes on Linux
(Ethernet for ``-i lo``, Linux cooked v1/v2 for ``-i any``, plus raw IP and BSD loopback),
and reassembles each TCP connection by sequence number: retransmitted and duplicated bytes
are kept once, out-of-order segments are put back in order.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt

from meshlab.capture.flows import Chunk, Flow
from meshlab.errors import MeshlabError

SEGMENT = 16384  # bytes of payload per synthesized segment (a loopback-sized MSS)
SNAPLEN = 262144
WSCALE = 7  # window scale advertised in SYN, so the 65535 window never looks full
MAC = b"\x00" * 6  # loopback frames carry zero MAC addresses

FIN, SYN, RST, PSH, ACK = (
    dpkt.tcp.TH_FIN,
    dpkt.tcp.TH_SYN,
    dpkt.tcp.TH_RST,
    dpkt.tcp.TH_PUSH,
    dpkt.tcp.TH_ACK,
)

LINKTYPE_NAMES = {
    0: "BSD loopback (DLT_NULL)",
    1: "Ethernet",
    101: "raw IP",
    108: "OpenBSD loopback",
    113: "Linux cooked (SLL)",
    228: "raw IPv4",
    229: "raw IPv6",
    276: "Linux cooked v2 (SLL2)",
}


class PcapError(MeshlabError):
    """A pcap file cannot be read or written."""


# ---------------------------------------------------------------------------------------
# Writing


def write_pcap(flows: Iterable[Flow], path: str | Path) -> Path:
    """Write ``flows`` as an Ethernet pcap (the link type tcpdump uses on ``lo``)."""
    path = Path(path)
    packets: list[tuple[float, int, int, bytes]] = []
    for index, flow in enumerate(flows):
        for order, (ts, frame) in enumerate(_flow_packets(flow, index)):
            packets.append((ts, index, order, frame))
    packets.sort(key=lambda p: (p[0], p[1], p[2]))
    try:
        with path.open("wb") as fh:
            writer = dpkt.pcap.Writer(fh, snaplen=SNAPLEN, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, _, _, frame in packets:
                writer.writepkt(frame, ts=ts)
    except OSError as err:
        raise PcapError(f"cannot write {path}: {err.strerror or err}") from None
    return path


class _Side:
    def __init__(self, address: tuple[str, int], isn: int) -> None:
        self.host, self.port = address
        self.seq = isn
        self.ip_id = isn & 0xFFFF


def _flow_packets(flow: Flow, index: int) -> Iterator[tuple[float, bytes]]:
    for what, (host, _) in (("client", flow.client), ("server", flow.server)):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise PcapError(
                f"flow {index + 1} ({flow.label()}): the {what} address {host!r} is not an IP "
                "address, a pcap needs one"
            ) from None
    # Deterministic initial sequence numbers, different for every connection.
    seed = f"{flow.client}{flow.server}{flow.start}".encode()
    client = _Side(flow.client, zlib.crc32(seed + b"c"))
    server = _Side(flow.server, zlib.crc32(seed + b"s"))
    clock = _Clock(flow.start)
    mss_opts = struct.pack("!BBH", 2, 4, SEGMENT) + bytes([1, 3, 3, WSCALE])

    yield clock(flow.start), _frame(client, server, SYN, 0, b"", mss_opts)
    client.seq += 1
    yield clock(flow.start), _frame(server, client, SYN | ACK, client.seq, b"", mss_opts)
    server.seq += 1
    yield clock(flow.start), _frame(client, server, ACK, server.seq, b"")

    for chunk in flow.chunks:
        sender, receiver = (client, server) if chunk.direction == "c2s" else (server, client)
        data = chunk.data
        for offset in range(0, len(data), SEGMENT):
            piece = data[offset : offset + SEGMENT]
            last = offset + SEGMENT >= len(data)
            flags = ACK | (PSH if last else 0)
            yield clock(chunk.time), _frame(sender, receiver, flags, receiver.seq, piece)
            sender.seq = (sender.seq + len(piece)) & 0xFFFFFFFF

    end = flow.end if flow.end is not None else (flow.chunks[-1].time if flow.chunks else None)
    if flow.closed_by is None or end is None:
        return
    closer = flow.closed_by
    if closer.endswith("reset"):
        sender, receiver = (client, server) if closer.startswith("client") else (server, client)
        yield clock(end), _frame(sender, receiver, RST | ACK, receiver.seq, b"")
        return
    first, second = (server, client) if closer == "server" else (client, server)
    yield clock(end), _frame(first, second, FIN | ACK, second.seq, b"")
    first.seq += 1
    yield clock(end), _frame(second, first, FIN | ACK, first.seq, b"")
    second.seq += 1
    yield clock(end), _frame(first, second, ACK, second.seq, b"")


class _Clock:
    """Timestamps that never go backwards within one connection."""

    def __init__(self, start: float) -> None:
        self.last = start

    def __call__(self, ts: float) -> float:
        self.last = max(self.last, ts)
        return self.last


def _frame(
    sender: _Side, receiver: _Side, flags: int, ack: int, data: bytes, opts: bytes = b""
) -> bytes:
    tcp = dpkt.tcp.TCP(
        sport=sender.port,
        dport=receiver.port,
        seq=sender.seq & 0xFFFFFFFF,
        ack=(ack & 0xFFFFFFFF) if flags & ACK else 0,
        flags=flags,
        win=65535,
        opts=opts,
        data=data,
    )
    tcp.off = 5 + len(opts) // 4
    sender.ip_id = (sender.ip_id + 1) & 0xFFFF
    src, dst = ipaddress.ip_address(sender.host), ipaddress.ip_address(receiver.host)
    if src.version != dst.version:
        raise PcapError(f"cannot mix IPv4 and IPv6 in one connection ({src} → {dst})")
    if src.version == 4:
        ip: Any = dpkt.ip.IP(
            src=src.packed, dst=dst.packed, p=dpkt.ip.IP_PROTO_TCP, ttl=64, id=sender.ip_id,
            df=1, data=tcp,
        )
        ip.len = 20 + len(bytes(tcp))
        eth_type = dpkt.ethernet.ETH_TYPE_IP
    else:
        ip = dpkt.ip6.IP6(src=src.packed, dst=dst.packed, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64,
                          data=tcp)
        ip.plen = len(bytes(tcp))
        eth_type = dpkt.ethernet.ETH_TYPE_IP6
    return bytes(dpkt.ethernet.Ethernet(src=MAC, dst=MAC, type=eth_type, data=ip))


# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class _Segment:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    flags: int
    data: bytes


@dataclass
class _Stream:
    """One direction of a connection being reassembled."""

    next_seq: int | None = None
    pending: dict[int, tuple[float, bytes, bool]] = field(default_factory=dict)
    fin: bool = False


@dataclass
class _Connection:
    client: tuple[str, int]
    server: tuple[str, int]
    start: float
    last: float
    # (direction, time, parts): a chunk's bytes are joined once, at the end
    chunks: list[tuple[str, float, list[bytes]]] = field(default_factory=list)
    streams: dict[str, _Stream] = field(default_factory=lambda: {"c2s": _Stream(),
                                                                  "s2c": _Stream()})
    closed_by: str | None = None
    end: float | None = None
    pushed: bool = True  # the last data segment had PSH (a new chunk starts after it)
    missing: int = 0

    def direction(self, src: tuple[str, int]) -> str:
        return "c2s" if src == self.client else "s2c"

    @property
    def finished(self) -> bool:
        return self.closed_by is not None and (
            self.closed_by.endswith("reset") or all(s.fin for s in self.streams.values())
        )


@dataclass
class PcapContents:
    flows: list[Flow]
    first: float | None
    last: float | None
    notes: list[str]


def read_pcap(path: str | Path, port: int | None = None) -> PcapContents:
    """Reassemble every TCP connection in a pcap/pcapng file (only those on ``port``, if set).

    The client of a connection is the side that sent the SYN; without a SYN in the file,
    the side not on ``port``, else the side with the higher (ephemeral) port.
    """
    path = Path(path)
    connections: dict[tuple[tuple[str, int], tuple[str, int]], _Connection] = {}
    done: list[_Connection] = []
    first = last = None
    notes: list[str] = []
    skipped = 0
    for segment in _segments(path, notes):
        first = segment.ts if first is None else min(first, segment.ts)
        last = segment.ts if last is None else max(last, segment.ts)
        if port is not None and port not in (segment.src[1], segment.dst[1]):
            skipped += 1
            continue
        key = tuple(sorted((segment.src, segment.dst)))
        conn = connections.get(key)  # type: ignore[arg-type]
        opening = segment.flags & SYN and not segment.flags & ACK
        if conn is not None and opening and (conn.chunks or conn.closed_by):
            done.append(connections.pop(key))  # type: ignore[arg-type]
            conn = None
        if conn is None:
            if segment.flags & RST and not segment.data:
                continue  # a reset for a connection we never saw
            conn = _new_connection(segment, port)
            connections[key] = conn  # type: ignore[index]
        _add_segment(conn, segment)
    done.extend(connections.values())
    flows = []
    for conn in sorted(done, key=lambda c: c.start):
        _flush_gaps(conn)
        if conn.missing:
            notes.append(
                f"{conn.client[0]}:{conn.client[1]} → {conn.server[0]}:{conn.server[1]}: "
                f"{conn.missing} bytes missing from the capture (gaps in TCP sequence numbers)"
            )
        flows.append(
            Flow(conn.client, conn.server, conn.start, conn.end,
                 [Chunk(d, ts, b"".join(parts)) for d, ts, parts in conn.chunks],  # type: ignore[arg-type]
                 conn.closed_by)
        )
    return PcapContents(flows, first, last, notes)


def _new_connection(segment: _Segment, port: int | None) -> _Connection:
    src, dst = segment.src, segment.dst
    if segment.flags & SYN:
        client, server = (dst, src) if segment.flags & ACK else (src, dst)
    elif port is not None and (src[1] == port) != (dst[1] == port):
        client, server = (dst, src) if src[1] == port else (src, dst)
    else:
        client, server = (src, dst) if src[1] >= dst[1] else (dst, src)
    return _Connection(client, server, segment.ts, segment.ts)


def _add_segment(conn: _Connection, segment: _Segment) -> None:
    direction = conn.direction(segment.src)
    stream = conn.streams[direction]
    conn.last = max(conn.last, segment.ts)
    if segment.flags & SYN:
        stream.next_seq = (segment.seq + 1) & 0xFFFFFFFF
        return
    if stream.next_seq is None:
        stream.next_seq = segment.seq
    if segment.data:
        stream.pending[segment.seq] = (segment.ts, segment.data, bool(segment.flags & PSH))
        _drain(conn, direction)
    side = "client" if direction == "c2s" else "server"
    if segment.flags & RST:
        if not conn.finished:  # a reset after both FINs changes nothing a learner sees
            conn.closed_by = f"{side}-reset"
            conn.end = segment.ts
    elif segment.flags & FIN and not stream.fin:
        stream.fin = True
        if conn.closed_by is None:
            conn.closed_by = side
        conn.end = segment.ts


def _drain(conn: _Connection, direction: str) -> None:
    """Append every pending segment that continues the stream, in sequence order."""
    stream = conn.streams[direction]
    progress = True
    while progress and stream.pending:
        progress = False
        for seq in list(stream.pending):
            assert stream.next_seq is not None
            delta = _seq_delta(seq, stream.next_seq)
            ts, data, push = stream.pending[seq]
            if delta > 0:
                continue  # a gap before this segment: wait for the missing bytes
            del stream.pending[seq]
            fresh = data[-delta:] if delta < 0 else data
            if delta < 0 and -delta >= len(data):
                fresh = b""  # a retransmission of bytes we already have
            if fresh:
                _append(conn, direction, ts, fresh, push)
                stream.next_seq = (stream.next_seq + len(fresh)) & 0xFFFFFFFF
            progress = True


def _flush_gaps(conn: _Connection) -> None:
    """At the end of the file, keep segments that came after a gap (and count the gap)."""
    for direction, stream in conn.streams.items():
        while stream.pending and stream.next_seq is not None:
            seq = min(stream.pending, key=lambda s: _seq_delta(s, stream.next_seq or 0))
            conn.missing += max(0, _seq_delta(seq, stream.next_seq))
            stream.next_seq = seq
            _drain(conn, direction)


def _append(conn: _Connection, direction: str, ts: float, data: bytes, push: bool) -> None:
    previous = conn.chunks[-1] if conn.chunks else None
    if previous is not None and previous[0] == direction and not conn.pushed:
        previous[2].append(data)  # the sender had more to say in the same write
    else:
        conn.chunks.append((direction, ts, [data]))
    conn.pushed = push


def _seq_delta(seq: int, expected: int) -> int:
    """``seq - expected`` in 32-bit sequence space, between -2^31 and 2^31."""
    return ((seq - expected + 2**31) & 0xFFFFFFFF) - 2**31


def _segments(path: Path, notes: list[str]) -> Iterator[_Segment]:
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise PcapError(f"{path}: no such file") from None
    except OSError as err:
        raise PcapError(f"cannot read {path}: {err.strerror or err}") from None
    with fh:
        magic = fh.read(4)
        fh.seek(0)
        try:
            if magic == b"\x0a\x0d\x0d\x0a":
                reader: Any = dpkt.pcapng.Reader(fh)
            else:
                reader = dpkt.pcap.Reader(fh)
        except (ValueError, dpkt.UnpackError) as err:
            raise PcapError(
                f"{path}: not a pcap or pcapng file (starts with {magic.hex(' ') or 'nothing'};"
                f" {err})"
            ) from None
        linktype = reader.datalink()
        if linktype not in LINKTYPE_NAMES:
            known = ", ".join(f"{k} ({v})" for k, v in LINKTYPE_NAMES.items())
            raise PcapError(f"{path}: link type {linktype} is not supported; known: {known}")
        bad = 0
        try:
            for ts, frame in reader:
                segment = _decode(linktype, frame, float(ts))
                if segment is None:
                    bad += 1
                    continue
                yield segment
        except (dpkt.UnpackError, struct.error, ValueError) as err:
            notes.append(f"{path}: stopped reading at a damaged record ({err})")
        if bad:
            notes.append(f"{bad} packets were not TCP over IP and were left out")


def _decode(linktype: int, frame: bytes, ts: float) -> _Segment | None:
    try:
        ip_bytes = _ip_payload(linktype, frame)
        if not ip_bytes:
            return None
        version = ip_bytes[0] >> 4
        if version == 4:
            ip: Any = dpkt.ip.IP(ip_bytes)
            family = socket.AF_INET
            proto = ip.p
        elif version == 6:
            ip = dpkt.ip6.IP6(ip_bytes)
            family = socket.AF_INET6
            proto = ip.nxt
        else:
            return None
        tcp = ip.data
        if proto != dpkt.ip.IP_PROTO_TCP or not isinstance(tcp, dpkt.tcp.TCP):
            return None
        src = (socket.inet_ntop(family, ip.src), tcp.sport)
        dst = (socket.inet_ntop(family, ip.dst), tcp.dport)
        return _Segment(ts, src, dst, tcp.seq, tcp.flags, bytes(tcp.data))
    except (dpkt.UnpackError, struct.error, ValueError, IndexError):
        return None


def _ip_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet (tcpdump -i lo); VLAN tags are handled by dpkt
        eth = dpkt.ethernet.Ethernet(frame)
        return bytes(eth.data) if eth.type in (0x0800, 0x86DD) else None
    if linktype == 113:  # Linux cooked v1: 16-byte header, protocol in the last 2 bytes
        return frame[16:] if frame[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 276:  # Linux cooked v2: 20-byte header, protocol first
        return frame[20:] if frame[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (0, 108):  # 4-byte address family (host order for 0, network for 108)
        return frame[4:]
    return frame  # raw IP
