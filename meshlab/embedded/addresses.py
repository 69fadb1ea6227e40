"""Loopback addresses for one embedded cluster.

Each cluster (state folder) owns a block ``127.B.0.0/16``, chosen from a hash of its folder
and held with an exclusive ``flock`` for the daemon's life: two clusters never share a block,
and a crashed daemon's lock goes with it. Pod ``n`` gets ``127.B.(1 + n // 250).(2 + n % 250)``
as its pod IP and the same host part in ``127.B.(128 + n // 250)`` as its private address.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshlab.errors import DaemonError

FIRST_BLOCK = 100
LAST_BLOCK = 250
PODS_PER_ROW = 250
MAX_PODS = 127 * PODS_PER_ROW


def lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"meshlab-blocks-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@dataclass
class AddressBlock:
    block: int
    _lock_fd: int

    @property
    def prefix(self) -> str:
        return f"127.{self.block}"

    def pod_addresses(self, index: int) -> tuple[str, str]:
        if not 0 <= index < MAX_PODS:
            raise DaemonError(f"pod index {index} outside the address block")
        row, host = divmod(index, PODS_PER_ROW)
        return (
            f"127.{self.block}.{1 + row}.{2 + host}",
            f"127.{self.block}.{128 + row}.{2 + host}",
        )

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _preferred_block(home: Path) -> int:
    digest = hashlib.sha256(str(home.resolve()).encode()).digest()
    return FIRST_BLOCK + digest[0] % (LAST_BLOCK - FIRST_BLOCK + 1)


def acquire_block(home: Path) -> AddressBlock:
    """Lock an address block for this cluster; the hash of ``home`` picks the first try."""
    start = _preferred_block(home)
    span = LAST_BLOCK - FIRST_BLOCK + 1
    for step in range(span):
        block = FIRST_BLOCK + (start - FIRST_BLOCK + step) % span
        fd = os.open(lock_dir() / f"127.{block}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {home}\n".encode())
        return AddressBlock(block, fd)
    raise DaemonError("every loopback address block 127.100-250.x.x is in use by other clusters")


def address_free(ip: str, port: int) -> bool:
    """True when ``ip:port`` can be bound now (used to skip addresses something else holds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                return False
            raise
    return True
