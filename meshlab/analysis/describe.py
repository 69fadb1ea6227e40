"""``meshlab describe``: why one call will be mutual TLS, plaintext, reset or a 503.

For a request from a workload's pod to a URL: what the client side sends and why (no
sidecar, a DestinationRule's tls.mode, or auto mTLS), what the server side accepts and why
(the effective PeerAuthentication, level by level: mesh, namespace, workload, port), and the
predicted outcome. Pure: a ``MeshState`` (or ``Snapshot``) in, a ``Description`` out; the
rules are ``meshlab.embedded.policy``'s, the ones that configure the sidecars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from meshlab.analysis.state import MeshState, workload_of
from meshlab.embedded import policy
from meshlab.embedded.model import Pod, Service, Snapshot, resolve_host, target_port
from meshlab.errors import MeshlabError, NotFoundError

LEVELS = ("mesh", "namespace", "workload", "port")
UNRESOLVED = "could-not-resolve-host"
LOCALHOST = ("localhost", "127.0.0.1", "::1")

# What a client sidecar's TLS origination with SIMPLE or MUTUAL meets at the other end: no
# Istio certificate and no Istio ALPN, so a server sidecar finds no filter chain for it (or
# asks for a client certificate it does not get), and an app without sidecar gets TLS bytes
# it cannot read. Every case ends with the client sidecar answering 503.
BODY_UPSTREAM = "upstream connect error or disconnect/reset before headers"


@dataclass(frozen=True)
class Predicted:
    """The outcome ``call`` should show. ``status`` None: no HTTP answer (code 000)."""

    status: int | None
    mtls: bool
    outcome: str  # policy's outcome names: ok, connection-reset, 503-..., could-not-resolve-host
    summary: str  # plain words: "mTLS 200", "plaintext 200", "reset (000)", "503 ..."
    error: str | None = None  # curl's words when status is None
    body_contains: str | None = None  # a piece of Envoy's own error body (503s)

    @property
    def code(self) -> str:
        return f"{self.status:03d}" if self.status is not None else "000"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "mtls": self.mtls,
            "code": self.code,
            "outcome": self.outcome,
            "summary": self.summary,
            "error": self.error,
            "body_contains": self.body_contains,
        }


@dataclass(frozen=True)
class ClientSide:
    sidecar: bool
    mode: str | None  # ISTIO_MUTUAL | DISABLE | SIMPLE | MUTUAL; None without a sidecar
    mtls: bool
    reason: str
    destination_rule: str | None = None  # "namespace/name" of the rule that decided
    auto_mtls: bool = False  # decided by auto mTLS

    @property
    def sends(self) -> str:
        if self.mode == policy.ISTIO_MUTUAL:
            return "mTLS"
        if self.mode in (policy.SIMPLE, policy.MUTUAL):
            return f"TLS ({self.mode})"
        return "plaintext"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sidecar": self.sidecar,
            "mode": self.mode,
            "sends": self.sends,
            "mtls": self.mtls,
            "reason": self.reason,
            "destination_rule": self.destination_rule,
            "auto_mtls": self.auto_mtls,
        }


@dataclass(frozen=True)
class Level:
    level: str  # mesh | namespace | workload | port
    policy: str | None  # "namespace/name"; None: no policy at this level
    mode: str | None  # as written (UNSET inherits); None: no policy

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "policy": self.policy, "mode": self.mode}


@dataclass(frozen=True)
class ServerSide:
    pod: str
    sidecar: bool
    accepts: str | None  # STRICT | PERMISSIVE | DISABLE; None: no sidecar (plaintext app)
    container_port: int | None
    levels: tuple[Level, ...] = ()
    decided_by: Level | None = None  # the level whose mode took effect; None: the default
    ignored: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "sidecar": self.sidecar,
            "accepts": self.accepts,
            "container_port": self.container_port,
            "decided_by": self.decided_by.to_dict() if self.decided_by else None,
            "levels": [lv.to_dict() for lv in self.levels],
            "ignored": [{"policy": p, "reason": r} for p, r in self.ignored],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class EndpointView:
    """The call as it goes when it lands on one endpoint pod (None: no ready endpoint)."""

    client: ClientSide
    server: ServerSide | None
    predicted: Predicted
    explanation: tuple[str, ...] = ()


@dataclass
class Description:
    """What ``meshlab describe`` shows for one call. The top-level ``client``, ``server``
    and ``predicted`` are those of the first endpoint (by pod name); ``endpoints`` has each
    one, and ``consistent`` says whether they all agree."""

    workload: str
    namespace: str
    url: str
    source_pod: str
    source_sidecar: bool
    host: str
    port: int | None
    service: Service | None
    endpoints: list[EndpointView] = field(default_factory=list)
    unresolved: str | None = None  # why the host does not resolve

    @property
    def first(self) -> EndpointView | None:
        return self.endpoints[0] if self.endpoints else None

    @property
    def client(self) -> ClientSide | None:
        return self.first.client if self.first else None

    @property
    def server(self) -> ServerSide | None:
        return self.first.server if self.first else None

    @property
    def predicted(self) -> Predicted:
        if self.first is None:
            return Predicted(
                None, False, UNRESOLVED, "could not resolve host (000)",
                error=f"could not resolve host: {self.host}",
            )  # fmt: skip
        return self.first.predicted

    @property
    def explanation(self) -> list[str]:
        if self.first is None:
            return [self.unresolved or f"{self.host} does not resolve"]
        return list(self.first.explanation)

    @property
    def consistent(self) -> bool:
        return len({(e.predicted.status, e.predicted.mtls) for e in self.endpoints}) <= 1

    def to_dict(self) -> dict[str, Any]:
        service = self.service
        server = self.server
        return {
            "source": {
                "workload": self.workload,
                "namespace": self.namespace,
                "pod": self.source_pod,
                "sidecar": self.source_sidecar,
            },
            "url": self.url,
            "destination": {
                "host": self.host,
                "port": self.port,
                "service": f"{service.namespace}/{service.name}" if service else None,
                "fqdn": service.fqdn if service else None,
                "pod": server.pod if server else None,
                "container_port": server.container_port if server else None,
                "sidecar": server.sidecar if server else None,
            },
            "client": self.client.to_dict() if self.client else None,
            "server": server.to_dict() if server else None,
            "predicted": self.predicted.to_dict(),
            "explanation": self.explanation,
            "consistent": self.consistent,
            "endpoints": [
                {
                    "pod": e.server.pod if e.server else None,
                    "sidecar": e.server.sidecar if e.server else None,
                    "accepts": e.server.accepts if e.server else None,
                    "client_sends": e.client.sends,
                    "predicted": e.predicted.to_dict(),
                }
                for e in self.endpoints
                if e.server is not None
            ],
        }

    def __str__(self) -> str:
        from meshlab.analysis.render import description_text

        return description_text(self)

    def _repr_html_(self) -> str:
        from meshlab.analysis.render import description_html

        return description_html(self)


# ---- building it --------------------------------------------------------------------------------


def find_pod(snapshot: Snapshot, workload: str, namespace: str) -> Pod:
    """The pod ``call`` sends from: a pod of the workload (Deployment name, pod name or
    ``app`` label), ready ones first, then by name."""
    candidates = [
        p
        for p in snapshot.pods
        if p.namespace == namespace and workload in (workload_of(p), p.name, p.labels.get("app"))
    ]
    if not candidates:
        known = sorted({workload_of(p) for p in snapshot.pods if p.namespace == namespace})
        hint = f" (workloads there: {', '.join(known)})" if known else ""
        raise NotFoundError(f"no pod of workload {workload!r} in namespace {namespace!r}{hint}")
    ready = [p for p in candidates if p.ready]
    return sorted(ready or candidates, key=lambda p: p.name)[0]


def _summary(outcome: str, status: int | None, mtls: bool) -> str:
    if outcome == policy.OK:
        return f"{'mTLS' if mtls else 'plaintext'} {status}"
    return {
        policy.RESET: "connection reset (000, curl exit 56)",
        policy.REFUSED: "connection refused (000)",
        policy.UPSTREAM_TERMINATED: "503 (the server refused plaintext)",
        policy.TLS_ERROR: "503 (TLS handshake failed)",
        policy.NO_ENDPOINTS: "503 (no healthy upstream)",
        UNRESOLVED: "could not resolve host (000)",
    }.get(outcome, f"{status if status is not None else '000'} ({outcome})")


def _predict(
    snapshot: Snapshot, client: Pod, service: Service, port: int, endpoint: Pod | None
) -> tuple[int | None, bool, str, list[str], str | None, str | None]:
    p = policy.predict_call(snapshot, client, service, port, endpoint)
    why = list(p.explanation)
    if p.outcome != policy.NOT_SUPPORTED:
        return p.status, p.mtls, p.outcome, why, p.error, p.body_contains
    # SIMPLE / MUTUAL: TLS without the workload certificate and without Istio's ALPN.
    why = [line for line in why if "not simulated" not in line]
    why.append(
        "TLS without the Istio workload certificate and ALPN: a server sidecar has no filter "
        "chain for it (STRICT also wants a client certificate), and an app without sidecar "
        "cannot read TLS; the client sidecar answers 503"
    )
    return 503, False, policy.TLS_ERROR, why, None, BODY_UPSTREAM


def _client_side(
    snapshot: Snapshot, client: Pod, service: Service, port: int, endpoint: Pod | None
) -> ClientSide:
    tls = policy.client_tls(snapshot, client, service, port, endpoint)
    rule = tls.destination_rule
    decided_by_rule = rule is not None and tls.reason.startswith("DestinationRule")
    return ClientSide(
        sidecar=client.sidecar,
        mode=None if tls.mode == policy.NONE else tls.mode,
        mtls=tls.mtls,
        reason=tls.reason,
        destination_rule=f"{rule.namespace}/{rule.name}" if rule and decided_by_rule else None,
        auto_mtls=tls.auto,
    )


def _server_side(snapshot: Snapshot, pod: Pod, cport: int | None) -> ServerSide:
    if not pod.sidecar:
        return ServerSide(
            pod.name, False, None, cport,
            reason="no sidecar: the app answers whatever arrives, in plaintext",
        )  # fmt: skip
    eff = policy.effective_peer_authentication(snapshot, pod, cport)
    found = {lv.level: lv for lv in eff.decided_by}
    levels = tuple(
        Level(name, found[name].policy, found[name].mode)
        if name in found
        else Level(name, None, None)
        for name in LEVELS
    )
    src = eff.source
    decided = Level(src.level, src.policy, src.mode) if src else None
    reason = (
        f"set at the {src.level} level by PeerAuthentication {src.policy}"
        if src
        else "no PeerAuthentication sets a mode: Istio's default, PERMISSIVE"
    )
    return ServerSide(pod.name, True, eff.mode, cport, levels, decided, eff.ignored, reason)


def describe_call(
    state: MeshState | Snapshot, source_workload: str, url: str, namespace: str
) -> Description:
    """Explain the call ``mesh.call(source_workload, url, namespace)`` would make."""
    snapshot = state.snapshot if isinstance(state, MeshState) else state
    client = find_pod(snapshot, source_workload, namespace)
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise MeshlabError(
            f"describe takes an http:// URL as the app would call it (the sidecar adds TLS); "
            f"got {url!r}"
        )
    authority = parts.netloc.rsplit("@", 1)[-1]
    host = (parts.hostname or authority).lower()
    if host in LOCALHOST:
        raise MeshlabError(
            f"{url} stays inside the pod of {source_workload} (localhost never crosses the "
            "mesh): describe a call to a Service, such as http://service-b-v1:8080/hello"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise MeshlabError(f"{url!r}: the port must be a number from 1 to 65535") from None
    desc = Description(
        source_workload, namespace, url, client.name, client.sidecar, host, port, None
    )
    found = resolve_host(authority, namespace, snapshot.services)
    if found is None:
        desc.unresolved = _unresolved_reason(snapshot, host, port, namespace)
        return desc
    service, sport = found
    desc.service = service
    endpoints: list[Pod | None] = list(snapshot.endpoints(service)) or [None]
    for endpoint in endpoints:
        cport = target_port(endpoint, sport) if endpoint is not None else None
        status, mtls, outcome, why, error, body = _predict(
            snapshot, client, service, sport.port, endpoint
        )
        desc.endpoints.append(
            EndpointView(
                client=_client_side(snapshot, client, service, sport.port, endpoint),
                server=_server_side(snapshot, endpoint, cport) if endpoint else None,
                predicted=Predicted(
                    status, mtls, outcome, _summary(outcome, status, mtls), error, body
                ),
                explanation=tuple(why),
            )
        )
    return desc


def _unresolved_reason(snapshot: Snapshot, host: str, port: int, namespace: str) -> str:
    for service in snapshot.services:
        names = {service.name, f"{service.name}.{service.namespace}", service.fqdn}
        names.add(f"{service.name}.{service.namespace}.svc")
        if host in names:
            if service.namespace != namespace and host == service.name:
                return (
                    f"{host} is a Service in namespace {service.namespace}, but a short name "
                    f"only resolves from its own namespace: use {service.name}."
                    f"{service.namespace}"
                )
            ports = ", ".join(str(sp.port) for sp in service.ports) or "none"
            return f"Service {service.namespace}/{service.name} has no port {port} ({ports})"
    return f"no Service is named {host} (from namespace {namespace})"
