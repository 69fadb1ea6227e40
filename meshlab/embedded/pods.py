"""A pod of the embedded mesh: app process, optional Envoy sidecar, and its network edge.

Layout (see model.py): the app listens on ``inner_ip:<containerPort>``; a relay at
``ip:<containerPort>`` is the pod's address; with a sidecar the relay hands connections to
Envoy's ``virtualInbound`` (``inner_ip:15006``) and the app's HTTP_PROXY is Envoy's
``virtualOutbound`` (``inner_ip:15001``); without one, the HTTP_PROXY is a cluster-network
forwarder on ``inner_ip:15001`` and the relay goes straight to the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.embedded import images
from meshlab.embedded.forwarder import Forwarder, Resolver
from meshlab.embedded.model import INBOUND_PORT, OUTBOUND_PORT, Pod
from meshlab.embedded.processes import MEMBER_ENV, ManagedProcess, tail
from meshlab.embedded.relay import Relay
from meshlab.embedded.sidecar import Sidecar, envoy_argv, http_get

SCRUBBED_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass
class ContainerSpec:
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    readiness_path: str | None = None
    readiness_port: int | None = None

    @classmethod
    def from_template(cls, template: dict[str, Any]) -> ContainerSpec:
        containers = template.get("spec", {}).get("containers", [])
        c = containers[0] if containers else {}
        env = {e["name"]: str(e.get("value", "")) for e in c.get("env", []) or [] if "name" in e}
        ports = [int(p["containerPort"]) for p in c.get("ports", []) or []]
        probe = (c.get("readinessProbe") or {}).get("httpGet") or {}
        probe_port = probe.get("port")
        if isinstance(probe_port, str):
            named = {p.get("name"): int(p["containerPort"]) for p in c.get("ports", []) or []}
            probe_port = named.get(probe_port)
        return cls(
            image=c.get("image", ""),
            command=list(c.get("command") or []),
            args=list(c.get("args") or []),
            env=env,
            ports=ports,
            readiness_path=probe.get("path") if probe else None,
            readiness_port=int(probe_port) if probe_port else None,
        )


class PodRuntime:
    """Everything one pod runs; created and destroyed by the cluster."""

    def __init__(
        self,
        pod: Pod,
        deployment: str,
        template_hash: str,
        container: ContainerSpec,
        folder: Path,
        home: Path,
        resolve: Resolver,
    ) -> None:
        self.pod = pod
        self.deployment = deployment
        self.template_hash = template_hash
        self.container = container
        self.folder = folder
        self.home = home
        self.resolve = resolve
        self.created = time.time()
        self.app: ManagedProcess | None = None
        self.envoy: ManagedProcess | None = None
        self.sidecar: Sidecar | None = Sidecar(pod, folder / "envoy") if pod.sidecar else None
        self.relays: list[Relay] = []
        self.forwarder: Forwarder | None = None
        self.cert: Any = None
        self.phase = "Pending"
        self.message = ""
        self.terminating = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.pod.namespace, self.pod.name)

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in (self.app, self.envoy) if p is not None)

    def set_ready(self, ready: bool) -> bool:
        if self.pod.ready == ready:
            return False
        self.pod = dataclasses.replace(self.pod, ready=ready)
        if self.sidecar is not None:
            self.sidecar.pod = self.pod
        return True

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.upper() not in SCRUBBED_ENV}
        env.update(self.container.env)
        proxy = f"http://{self.pod.inner_ip}:{OUTBOUND_PORT}"
        env.update(
            {
                "HTTP_PROXY": proxy,
                "http_proxy": proxy,
                "NO_PROXY": "",
                "no_proxy": "",
                "POD_NAME": self.pod.name,
                "POD_NAMESPACE": self.pod.namespace,
                "POD_IP": self.pod.ip,
                "PYTHONUNBUFFERED": "1",
                MEMBER_ENV: str(self.home.resolve()),
            }
        )
        return env

    async def start(self) -> None:
        """Start the processes and the network edge; readiness comes later (probe)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        port = self.container.ports[0] if self.container.ports else 8080
        argv = images.command_for(
            self.container.image, self.container.command, self.container.args,
            self.pod.inner_ip, port,
        )  # fmt: skip
        env = self._env()
        starts = []
        if self.sidecar is not None:
            self.envoy = ManagedProcess(
                "istio-proxy", envoy_argv(self.sidecar.bootstrap_path), env,
                self.folder / "istio-proxy.log",
            )  # fmt: skip
            starts.append(self.envoy.start())
        self.app = ManagedProcess("app", argv, env, self.folder / "app.log")
        starts.append(self.app.start())
        await asyncio.gather(*starts)
        for container_port in self.container.ports:
            if self.sidecar is not None:
                relay = Relay(
                    (self.pod.ip, container_port),
                    (self.pod.inner_ip, INBOUND_PORT),
                    proxy_protocol=True,
                )
            else:
                relay = Relay(
                    (self.pod.ip, container_port),
                    (self.pod.inner_ip, container_port),
                    proxy_protocol=False,
                )
            await relay.start()
            self.relays.append(relay)
        if self.sidecar is None:
            self.forwarder = Forwarder(
                (self.pod.inner_ip, OUTBOUND_PORT), self.pod.ip, self.pod.namespace, self.resolve
            )
            await self.forwarder.start()
        self.phase = "Running"

    async def probe(self) -> bool:
        """Readiness as a kubelet sees it: the app's probe and, with a sidecar, Envoy ready."""
        if self.app is None or self.app.pid is None:
            return False
        if self.sidecar is not None and not await self.sidecar.ready():
            return False
        c = self.container
        if c.readiness_path:
            try:
                status, _ = await http_get(
                    self.pod.inner_ip, c.readiness_port or c.ports[0], c.readiness_path, 1.0
                )
            except (OSError, TimeoutError, IndexError):
                return False
            return 200 <= status < 400
        if c.ports:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.pod.inner_ip, c.ports[0]), 1.0
                )
            except (OSError, TimeoutError):
                return False
            writer.close()
        return True

    def running(self) -> bool:
        """Every container process is alive (a probe may still be failing)."""
        procs = [p for p in (self.app, self.envoy) if p is not None]
        return bool(procs) and all(p.pid is not None for p in procs)

    def not_ready_reason(self) -> str:
        for proc in (self.app, self.envoy):
            if proc is not None and proc.pid is None:
                return f"{proc.name} is not running"
        return "readiness probe failed"

    def state(self) -> str:
        if self.terminating:
            return "Terminating"
        for proc in (self.app, self.envoy):
            if proc is not None and proc.state == "CrashLoopBackOff":
                return "CrashLoopBackOff"
        if self.phase == "Running" and not self.pod.ready:
            return "Running"
        return self.phase

    def last_logs(self, lines: int = 8) -> list[str]:
        out = []
        for proc in (self.app, self.envoy):
            if proc is not None and proc.state in ("CrashLoopBackOff", "Restarting"):
                out += [f"[{proc.name}] {line}" for line in tail(proc.log_path, lines)]
        return out

    async def stop(self) -> None:
        self.terminating = True
        for relay in self.relays:
            await relay.stop()
        if self.forwarder is not None:
            await self.forwarder.stop()
        procs = [p for p in (self.app, self.envoy) if p is not None]
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)

    def kill_now(self) -> None:
        for proc in (self.app, self.envoy):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill_now()
