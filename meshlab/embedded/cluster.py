"""The embedded cluster: stored objects, pods, and the control plane that configures sidecars.

This is the daemon's brain. Mutations (apply, delete, restart) run one at a time under a lock;
each ends with a push: every sidecar's listeners, clusters and secrets are recomputed from a
``Snapshot`` (xds.py, pure) and only changed files are written, then the call waits until
each affected Envoy reports the new versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from meshlab.embedded import policy, xds
from meshlab.embedded.addresses import AddressBlock, address_free
from meshlab.embedded.ca import CertificateAuthority
from meshlab.embedded.model import (
    BUILTIN_NAMESPACES,
    INBOUND_PORT,
    OUTBOUND_PORT,
    MeshConfig,
    Pod,
    Snapshot,
    resolve_host,
    target_port,
)
from meshlab.embedded.pods import ContainerSpec, PodRuntime
from meshlab.embedded.relay import Recording
from meshlab.errors import MeshlabError, MeshTimeoutError, NotFoundError, ResourceError
from meshlab.resources import Resource, convert, load

log = logging.getLogger("meshlab.cluster")

APPLY_ORDER = [
    "Namespace",
    "ServiceAccount",
    "Service",
    "PeerAuthentication",
    "DestinationRule",
    "Deployment",
]
GROUPS = {
    "Namespace": "namespace",
    "ServiceAccount": "serviceaccount",
    "Service": "service",
    "Deployment": "deployment.apps",
    "PeerAuthentication": "peerauthentication.security.istio.io",
    "DestinationRule": "destinationrule.networking.istio.io",
}
READY_TIMEOUT = 60.0
FAILURE_THRESHOLD = 3  # failed readiness probes in a row before a running pod is NotReady
# What a sidecar's virtualInbound accepts on a port, by effective PeerAuthentication mode.
ACCEPTS = {
    policy.STRICT: frozenset({"tls"}),
    policy.PERMISSIVE: frozenset({"tls", "plaintext"}),
    policy.DISABLE: frozenset({"plaintext"}),
}
# A restored cluster answers its clients (`up` waits 20 s) even if a pod never gets ready.
RESTORE_READY_TIMEOUT = 12.0
MESH_SETTINGS = {"auto_mtls": (True, False), "tls_max_version": ("TLSv1_2", "TLSv1_3")}


def check_mesh_settings(changes: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown mesh settings and values (they would end up in every sidecar)."""
    problems = []
    for key, value in changes.items():
        allowed = MESH_SETTINGS.get(key)
        if allowed is None:
            problems.append(f"unknown mesh setting {key!r} (known: {', '.join(MESH_SETTINGS)})")
        elif not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            choices = " or ".join(json.dumps(a) for a in allowed)
            problems.append(f"mesh setting {key}: expected {choices}, got {json.dumps(value)}")
    if problems:
        raise MeshlabError("; ".join(problems))
    return changes


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def _with_endpoint_policies(snap: Snapshot, clusters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Record in each outbound cluster what its endpoints' sidecars accept (their effective
    PeerAuthentication mode per address). When a server's policy changes, the client's
    cluster changes with it, and Envoy drains the cluster's old connections gracefully:
    idle ones close at once, busy ones after their request. So the next call after a policy
    change opens a new connection (and meets the new policy), while no request in flight is
    cut."""
    pods = {p.ip: p for p in snap.pods if p.sidecar}
    for cluster in clusters:
        if not cluster["name"].startswith("outbound|"):
            continue
        modes = {}
        for group in cluster.get("load_assignment", {}).get("endpoints", []):
            for lb in group.get("lb_endpoints", []):
                address = lb["endpoint"]["address"]["socket_address"]
                pod = pods.get(address["address"])
                if pod is not None:
                    port = address["port_value"]
                    mode = policy.effective_peer_authentication(snap, pod, port).mode
                    modes[f"{address['address']}:{port}"] = mode
        if modes:
            metadata = cluster.setdefault("metadata", {}).setdefault("filter_metadata", {})
            metadata["meshlab"] = {"endpoint_peer_authentication": modes}
    return clusters


class _Line:
    """Collects the output line of one object, printed in the order of the input."""

    def __init__(self, lines: dict[int, str], position: int) -> None:
        self.lines = lines
        self.position = position

    def append(self, text: str) -> None:
        self.lines[self.position] = text


def _stored_key(body: dict[str, Any]) -> tuple[str, str | None, str]:
    meta = body["metadata"]
    return (body["kind"], meta.get("namespace"), meta["name"])


class Cluster:
    def __init__(
        self,
        home: Path,
        block: AddressBlock,
        mesh: MeshConfig,
        cert_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self.home = home
        self.block = block
        self.mesh = mesh
        self.cert_ttl = cert_ttl
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.created: dict[tuple[str, str | None, str], float] = {}
        self.resources: dict[tuple[str, str | None, str], Resource] = {}
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self.ca = CertificateAuthority.load_or_create(home / "ca")
        self.lock = asyncio.Lock()
        self.next_index = 0
        self.captures: dict[str, tuple[Any, Recording, dict[str, Any]]] = {}
        self.push_count = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._push_needed = asyncio.Event()
        self.state_file = home / "state" / "objects.json"
        self.started = time.time()
        self.generation = 0
        self._snap: tuple[int, Snapshot] | None = None
        self._accepts: dict[tuple[str, str], dict[int, frozenset[str]]] = {}

    # ---- persistence ------------------------------------------------------------------------
    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "mesh": {
                "auto_mtls": self.mesh.auto_mtls,
                "tls_max_version": self.mesh.tls_max_version,
            },
            "objects": [
                {"body": body, "created": self.created[key]} for key, body in self.objects.items()
            ],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    async def restore(self) -> None:
        """Re-create the objects of a cluster whose daemon died (pods start afresh)."""
        if not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text())
            entries = data.get("objects", [])
            bodies = [e["body"] for e in entries]
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise MeshlabError(f"{self.state_file}: unreadable ({err}); starting empty") from None
        # The mesh-wide settings the learner chose (mesh-config) survive a crash too.
        saved = data.get("mesh") if isinstance(data.get("mesh"), dict) else {}
        settings = {k: saved[k] for k in MESH_SETTINGS if k in saved}
        if settings:
            self.set_mesh(**check_mesh_settings(settings))
        if not bodies:
            return
        resources = load(yaml.safe_dump_all(bodies))
        for entry, res in zip(entries, resources, strict=True):
            self.changed()
            self.objects[res.key] = entry["body"]
            self.created[res.key] = entry["created"]
            self.resources[res.key] = res
        async with self.lock:
            try:
                await self._reconcile_pods(ready_timeout=RESTORE_READY_TIMEOUT)
            except MeshTimeoutError as err:  # they keep starting; readiness pushes later
                log.warning("restoring: %s", err)
            await self.push()

    # ---- snapshot ---------------------------------------------------------------------------
    def namespaces(self) -> dict[str, dict[str, str]]:
        out = {ns: {"kubernetes.io/metadata.name": ns} for ns in BUILTIN_NAMESPACES}
        for (kind, _, name), body in self.objects.items():
            if kind == "Namespace":
                out[name] = dict(body["metadata"].get("labels") or {})
        return out

    def _of_kind(self, kind: str) -> list[tuple[tuple[str, str | None, str], Resource]]:
        return [(k, r) for k, r in self.resources.items() if k[0] == kind]

    def changed(self) -> None:
        self.generation += 1

    def snapshot(self) -> Snapshot:
        if self._snap is not None and self._snap[0] == self.generation:
            return self._snap[1]
        snap = self._build_snapshot()
        self._snap = (self.generation, snap)
        return snap

    def _build_snapshot(self) -> Snapshot:
        return Snapshot(
            pods=tuple(p.pod for p in self.pods.values() if not p.terminating),
            services=tuple(convert.service(r) for _, r in self._of_kind("Service")),
            peer_authentications=tuple(
                convert.peer_authentication(r, created=self.created[k])
                for k, r in self._of_kind("PeerAuthentication")
            ),
            destination_rules=tuple(
                convert.destination_rule(r, created=self.created[k])
                for k, r in self._of_kind("DestinationRule")
            ),
            mesh=self.mesh,
            namespaces=self.namespaces(),
        )

    def resolve(self, authority: str, namespace: str) -> tuple[str, int] | None:
        """kube-dns + kube-proxy: a Service name and port to one ready endpoint."""
        snap = self.snapshot()
        found = resolve_host(authority, namespace, snap.services)
        if found is None:
            return None
        service, sport = found
        endpoints = snap.endpoints(service)
        if not endpoints:
            return None
        pod = endpoints[secrets.randbelow(len(endpoints))]
        port = target_port(pod, sport)
        return (pod.ip, port) if port else None

    # ---- configuration push -------------------------------------------------------------------
    def _documents(self, snap: Snapshot, runtime: PodRuntime) -> dict[str, dict[str, Any]]:
        assert runtime.sidecar is not None
        folder = runtime.sidecar.folder
        listeners = xds.listeners(snap, runtime.pod, folder)
        clusters = _with_endpoint_policies(snap, xds.clusters(snap, runtime.pod, folder))
        return {
            "lds": xds.discovery_response(
                listeners,
                "type.googleapis.com/envoy.config.listener.v3.Listener",
                xds.version_of(listeners),
            ),
            "cds": xds.discovery_response(
                clusters,
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                xds.version_of(clusters),
            ),
        }

    def _write_secrets(self, runtime: PodRuntime) -> list[str]:
        assert runtime.sidecar is not None
        docs = xds.secrets(runtime.cert, self.ca.root_pem)
        written = []
        for name, key in (("default", "sds_default"), ("ROOTCA", "sds_rootca")):
            doc = docs[name]
            if runtime.sidecar.write(key, doc):
                written.append(key)
        return written

    def _newly_refused(self, snap: Snapshot, runtime: PodRuntime) -> dict[int, frozenset[str]]:
        """Per pod port, the transports (tls, plaintext) the sidecar accepted at the last push
        and refuses now."""
        now = {}
        for relay in runtime.relays:
            port = relay.address[1]
            mode = policy.effective_peer_authentication(snap, runtime.pod, port).mode
            now[port] = ACCEPTS.get(mode, frozenset())
        before = self._accepts.get(runtime.key)
        self._accepts[runtime.key] = now
        if before is None:
            return {}
        return {p: before[p] - now[p] for p in now if p in before and before[p] - now[p]}

    async def push(self, timeout: float = 10.0) -> dict[str, float]:
        """Recompute every sidecar's config; write what changed; wait until it is loaded.

        Envoy drains connections of a changed filter chain gracefully (in-flight requests
        finish; see ``envoy_argv``). Connections whose transport the new policy refuses
        (plaintext after STRICT, say) are reset at the pod's edge once the sidecar has the
        new listeners, so the next request is refused as it would be on a new connection.
        """
        snap = self.snapshot()
        waits = {}
        cuts = {}
        for runtime in list(self.pods.values()):
            if runtime.sidecar is None or runtime.terminating or runtime.envoy is None:
                continue
            refused = self._newly_refused(snap, runtime)
            if refused:
                cuts[runtime] = refused
            changed = [
                key
                for key, doc in self._documents(snap, runtime).items()
                if runtime.sidecar.write(key, doc)
            ]
            if changed and runtime.envoy.pid is not None:
                waits[runtime] = runtime.sidecar.wait_for(changed, timeout)
        self.push_count += 1
        results = await asyncio.gather(*waits.values(), return_exceptions=True)
        for runtime, refused in cuts.items():
            for relay in runtime.relays:
                if relay.address[1] in refused:
                    relay.reset_connections(refused[relay.address[1]])
        if not waits:
            return {}
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return {
            f"{rt.pod.namespace}/{rt.pod.name}": t for rt, t in zip(waits, results, strict=True)
        }  # type: ignore[misc]

    # ---- pods -----------------------------------------------------------------------------------
    def _inject(self, namespace: str, template: dict[str, Any]) -> bool:
        """Istio's injection decision, made once when the pod is created."""
        meta = template.get("metadata", {}) or {}
        return policy.injects_sidecar(self.namespaces().get(namespace, {}), meta)

    def _allocate(self, ports: list[int]) -> tuple[str, str]:
        for _ in range(256):
            index = self.next_index
            self.next_index += 1
            ip, inner = self.block.pod_addresses(index)
            wanted = [(ip, p) for p in ports] + [
                (inner, p) for p in (*ports, OUTBOUND_PORT, INBOUND_PORT, 15000)
            ]
            if all(address_free(a, p) for a, p in wanted):
                return ip, inner
            log.warning("address %s or %s is busy; skipping it", ip, inner)
        raise MeshlabError("no free loopback address for a new pod (all tried were busy)")

    async def _create_pod(self, deploy: Resource, thash: str) -> PodRuntime:
        ns = deploy.namespace or "default"
        spec = deploy.body.get("spec", {})
        template = spec.get("template", {})
        meta = template.get("metadata", {}) or {}
        labels = dict(meta.get("labels", {}) or {})
        labels["pod-template-hash"] = thash
        container = ContainerSpec.from_template(template)
        tspec = template.get("spec", {}) or {}
        sa = tspec.get("serviceAccountName") or tspec.get("serviceAccount") or "default"
        sidecar = self._inject(ns, template)
        if sidecar:
            labels["security.istio.io/tlsMode"] = "istio"
            labels["service.istio.io/canonical-name"] = labels.get("app", deploy.name)
        ip, inner = self._allocate(container.ports)
        name = f"{deploy.name}-{thash}-{secrets.token_hex(3)[:5]}"
        named = {}
        for c in tspec.get("containers", [])[:1]:
            for p in c.get("ports", []) or []:
                if p.get("name"):
                    named[p["name"]] = int(p["containerPort"])
        pod = Pod(
            name=name,
            namespace=ns,
            labels=labels,
            service_account=sa,
            ip=ip,
            inner_ip=inner,
            sidecar=sidecar,
            container_ports=tuple(container.ports),
            named_ports=named,
            ready=False,
        )
        runtime = PodRuntime(
            pod, deploy.name, thash, container, self.home / "pods" / ns / name, self.home,
            self.resolve,
        )  # fmt: skip
        self.pods[runtime.key] = runtime
        self.changed()
        if runtime.sidecar is not None:
            runtime.cert = self.ca.issue(ns, sa, ttl=self.cert_ttl)
            runtime.sidecar.write_bootstrap(
                xds.bootstrap(pod, runtime.sidecar.folder, f"{labels.get('app', deploy.name)}.{ns}")
            )
            self._write_secrets(runtime)
            snap = self.snapshot()
            for key, doc in self._documents(snap, runtime).items():
                runtime.sidecar.write(key, doc)
            self._spawn(self._rotate_certs(runtime))
        try:
            await runtime.start()
        except MeshlabError as err:
            runtime.phase = "Failed"
            runtime.message = str(err)
        except OSError as err:
            runtime.phase = "Failed"
            runtime.message = f"could not start: {err}"
        self._spawn(self._probe_loop(runtime))
        return runtime

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_loop(self, runtime: PodRuntime) -> None:
        """The kubelet's readiness probe; a change of readiness re-pushes endpoints."""
        interval = 0.05
        failures = 0
        while not runtime.terminating and runtime.phase != "Failed":
            try:
                ready = await runtime.probe()
            except Exception:  # a probe never kills the daemon
                ready = False
            failures = 0 if ready else failures + 1
            if not ready and runtime.pod.ready and runtime.running():
                # Like the kubelet's failureThreshold: one slow answer on a busy machine does
                # not take a running pod out of its Services; a dead process does at once.
                ready = failures < FAILURE_THRESHOLD
            if runtime.set_ready(ready):
                why = "ready" if ready else f"not ready: {runtime.not_ready_reason()}"
                log.info("pod %s/%s is %s", runtime.pod.namespace, runtime.pod.name, why)
                self.changed()
                # Even during a mutation: its push may have read the snapshot already.
                self._push_needed.set()
            if ready and failures:
                interval = 0.2  # confirm a failing probe quickly
            elif ready:
                interval = 1.0
            else:
                interval = min(interval * 1.5, 0.5)
            await self._pause(runtime, interval, ready and not failures)

    @staticmethod
    async def _pause(runtime: PodRuntime, seconds: float, ready: bool) -> None:
        """Sleep until the next probe; a ready pod whose app or sidecar exits is probed at
        once (the kubelet marks the pod NotReady when a container dies, without waiting for
        the next probe), so its endpoint leaves every client sidecar quickly."""
        events = [p.exited for p in (runtime.app, runtime.envoy) if p is not None]
        if not ready or not events:
            await asyncio.sleep(seconds)
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        await asyncio.sleep(0.01)

    async def push_loop(self) -> None:
        """Pushes triggered outside a mutation (readiness changes after a crash, ...)."""
        while True:
            await self._push_needed.wait()
            await asyncio.sleep(0.1)  # debounce, as istiod does
            self._push_needed.clear()
            async with self.lock:
                try:
                    await self.push()
                except MeshlabError as err:
                    log.warning("push after a readiness change: %s", err)
                except Exception:  # this loop must outlive any one failed push
                    log.exception("push after a readiness change failed")

    async def _rotate_certs(self, runtime: PodRuntime) -> None:
        """Istio's agent: a new certificate through SDS at half of the old one's life."""
        while not runtime.terminating:
            cert = runtime.cert
            delay = (cert.rotate_at() - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(delay, 0.5))
            if runtime.terminating:
                return
            try:
                runtime.cert = self.ca.issue(
                    runtime.pod.namespace, runtime.pod.service_account, ttl=self.cert_ttl
                )
                written = self._write_secrets(runtime)
                if runtime.sidecar is not None and runtime.envoy and runtime.envoy.pid:
                    await runtime.sidecar.wait_for(written, 10.0)
            except MeshlabError as err:
                log.warning("certificate rotation of %s: %s", runtime.pod.name, err)
            except Exception:  # a failed rotation is retried; it must not end the loop
                if runtime.terminating:
                    return
                log.exception("certificate rotation of %s failed", runtime.pod.name)
                await asyncio.sleep(1.0)

    async def _wait_pods_ready(
        self, runtimes: list[PodRuntime], timeout: float = READY_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = [r for r in runtimes if r.phase != "Failed"]
        while pending:
            for r in pending:
                if not r.pod.ready and r.phase == "Running":
                    with contextlib.suppress(Exception):
                        if r.set_ready(await r.probe()):
                            self.changed()
            pending = [r for r in pending if not r.pod.ready and r.state() == "Running"]
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(f"{r.pod.namespace}/{r.pod.name}" for r in pending)
                raise MeshTimeoutError(
                    f"pods not ready after {timeout:.0f} s: {names} "
                    "(see `meshlab status` and the logs under the state folder)"
                )
            await asyncio.sleep(0.03)

    async def _stop_pods(self, runtimes: list[PodRuntime]) -> None:
        for r in runtimes:
            r.terminating = True
        self.changed()
        await asyncio.gather(*(r.stop() for r in runtimes), return_exceptions=True)
        for r in runtimes:
            self.pods.pop(r.key, None)
            self._accepts.pop(r.key, None)

    async def _reconcile_pods(
        self, restart: set[tuple[str, str]] | None = None, ready_timeout: float = READY_TIMEOUT
    ) -> list[str]:
        """Make pods match Deployments; returns problems (failed pods)."""
        restart = restart or set()
        created: list[PodRuntime] = []
        old: list[PodRuntime] = []
        deployments = {k: r for k, r in self.resources.items() if k[0] == "Deployment"}
        wanted: set[tuple[str, str]] = set()
        for (_, ns, name), res in deployments.items():
            ns = ns or "default"
            wanted.add((ns, name))
            spec = res.body.get("spec", {})
            replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
            thash = template_hash(spec.get("template", {}))
            current = [
                r
                for r in self.pods.values()
                if r.pod.namespace == ns and r.deployment == name and not r.terminating
            ]
            keep = [r for r in current if r.template_hash == thash and (ns, name) not in restart]
            old += [r for r in current if r not in keep]
            if len(keep) > replicas:
                old += keep[replicas:]
                keep = keep[:replicas]
            for _ in range(replicas - len(keep)):
                created.append(await self._create_pod(res, thash))
        old += [
            r
            for r in self.pods.values()
            if (r.pod.namespace, r.deployment) not in wanted and not r.terminating
        ]
        if created:
            await self._wait_pods_ready(created, ready_timeout)
        if old:
            await self._stop_pods(old)
        return [f"pod {r.pod.namespace}/{r.pod.name}: {r.message}" for r in created if r.message]

    # ---- API operations -------------------------------------------------------------------------
    async def apply(self, bodies: list[dict[str, Any]]) -> dict[str, Any]:
        resources = load(yaml.safe_dump_all(bodies)) if bodies else []
        async with self.lock:
            changes, warnings = self._store(resources)
            problems = await self._reconcile_pods()
            await self.push()
            self.save()
        warnings += problems
        return {"changes": changes, "warnings": warnings}

    def _store(self, resources: list[Resource]) -> tuple[list[str], list[str]]:
        known_ns = set(self.namespaces())
        incoming_ns = {r.name for r in resources if r.kind == "Namespace"}
        missing = sorted(
            {
                r.namespace
                for r in resources
                if r.namespace and r.namespace not in known_ns | incoming_ns
            }
        )
        if missing:
            raise ResourceError([f'namespaces "{ns}" not found' for ns in missing])
        lines: dict[int, str] = {}
        warnings: list[str] = []
        order = {k: i for i, k in enumerate(APPLY_ORDER)}
        ranked = sorted(enumerate(resources), key=lambda ir: order.get(ir[1].kind, 99))
        for position, res in ranked:
            changes = _Line(lines, position)
            body = json.loads(json.dumps(res.body))
            key = res.key
            old = self.objects.get(key)
            label = f"{GROUPS.get(res.kind, res.kind.lower())}/{res.name}"
            warnings += [f"{label}: {w}" for w in res.warnings]
            meta = body.setdefault("metadata", {})
            if old is not None:
                old_meta = old["metadata"]
                comparable = {k: v for k, v in old.items() if k != "metadata"}
                new_comp = {k: v for k, v in body.items() if k != "metadata"}
                same = (
                    comparable == new_comp
                    and (old_meta.get("labels") or {}) == (meta.get("labels") or {})
                    and (old_meta.get("annotations") or {}) == (meta.get("annotations") or {})
                )
                if same:
                    changes.append(f"{label} unchanged")
                    continue
                for field in ("uid", "creationTimestamp"):
                    meta[field] = old_meta.get(field)
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
                changes.append(f"{label} configured")
            else:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = _now_rfc3339()
                meta["generation"] = 1
                self.created[key] = time.time()
                changes.append(f"{label} created")
            meta["resourceVersion"] = str(int(time.time() * 1000))
            self.objects[key] = body
            self.resources[key] = res
            self.changed()
        return [lines[i] for i in sorted(lines)], warnings

    async def delete(self, bodies: list[dict[str, Any]]) -> dict[str, Any]:
        resources = load(yaml.safe_dump_all(bodies)) if bodies else []
        async with self.lock:
            changes = []
            warnings = []
            for res in resources:
                label = f"{GROUPS.get(res.kind, res.kind.lower())}/{res.name}"
                if res.key not in self.objects:
                    warnings.append(f"{label} not found (nothing to delete)")
                    continue
                self._forget(res.key)
                if res.kind == "Namespace":
                    for key in [k for k in self.objects if k[1] == res.name]:
                        self._forget(key)
                changes.append(f"{label} deleted")
            await self._reconcile_pods()
            await self.push()
            self.save()
        return {"changes": changes, "warnings": warnings}

    def _forget(self, key: tuple[str, str | None, str]) -> None:
        self.objects.pop(key, None)
        self.resources.pop(key, None)
        self.created.pop(key, None)
        self.changed()

    async def rollout_restart(self, deployment: str, namespace: str) -> list[str]:
        key = ("Deployment", namespace, deployment)
        if key not in self.objects:
            raise NotFoundError(
                f'deployments.apps "{deployment}" not found in namespace {namespace}'
            )
        async with self.lock:
            await self._reconcile_pods(restart={(namespace, deployment)})
            await self.push()
        return [f"deployment.apps/{deployment} restarted"]

    def find_pod(self, workload: str, namespace: str) -> PodRuntime:
        candidates = [
            r
            for r in self.pods.values()
            if r.pod.namespace == namespace
            and not r.terminating
            and (
                r.deployment == workload
                or r.pod.name == workload
                or r.pod.labels.get("app") == workload
            )
        ]
        if not candidates:
            known = sorted(
                {r.deployment for r in self.pods.values() if r.pod.namespace == namespace}
            )
            hint = f" (workloads there: {', '.join(known)})" if known else ""
            raise NotFoundError(f"no pod of workload {workload!r} in namespace {namespace!r}{hint}")
        ready = [r for r in candidates if r.pod.ready]
        return sorted(ready or candidates, key=lambda r: r.pod.name)[0]

    def set_mesh(self, **changes: Any) -> None:
        import dataclasses

        self.mesh = dataclasses.replace(self.mesh, **changes)
        self.changed()

    async def configure_mesh(self, changes: dict[str, Any]) -> dict[str, Any]:
        check_mesh_settings(changes)
        async with self.lock:
            self.set_mesh(**changes)
            await self.push()
            self.save()
        return {"auto_mtls": self.mesh.auto_mtls, "tls_max_version": self.mesh.tls_max_version}

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._stop_pods(list(self.pods.values()))

    def kill_now(self) -> None:
        for runtime in self.pods.values():
            runtime.kill_now()

    def pod_status(self) -> list[dict[str, Any]]:
        out = []
        for r in sorted(self.pods.values(), key=lambda r: (r.pod.namespace, r.pod.name)):
            out.append(
                {
                    "name": r.pod.name,
                    "namespace": r.pod.namespace,
                    "workload": r.deployment,
                    "ip": r.pod.ip,
                    "phase": r.state(),
                    "ready": r.pod.ready and r.running(),
                    "sidecar": r.pod.sidecar,
                    "restarts": r.restarts,
                    "service_account": r.pod.service_account,
                    "labels": dict(r.pod.labels),
                    "message": "\n".join([r.message, *r.last_logs()]).strip(),
                }
            )
        return out
