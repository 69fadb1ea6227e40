"""Istio's mTLS rules as pure functions over a ``model.Snapshot``.

- ``effective_peer_authentication``: what a server sidecar accepts on one container port
  (istiod's ComposePeerAuthentication: mesh, namespace, workload, port level; UNSET inherits;
  the oldest policy wins a level; no policy at all means PERMISSIVE).
- ``destination_rule_for``: which DestinationRule a client namespace uses for a service
  (client namespace, then the service's namespace, then the root namespace; exportTo; the
  most specific host wins; the oldest rule wins among rules for the same host).
- ``client_tls``: what a client sidecar sends to one endpoint (DestinationRule tls, else
  auto mTLS).
- ``predict_call``: what a request from a pod should get back, and why. It backs
  ``meshlab describe`` and is checked against the running mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshlab.embedded.model import (
    CLUSTER_DOMAIN,
    DestinationRule,
    PeerAuthentication,
    Pod,
    Service,
    ServicePort,
    Snapshot,
    selects,
    target_port,
)

DISABLE, PERMISSIVE, STRICT, UNSET = "DISABLE", "PERMISSIVE", "STRICT", "UNSET"
ISTIO_MUTUAL, SIMPLE, MUTUAL = "ISTIO_MUTUAL", "SIMPLE", "MUTUAL"
NONE = "NONE"  # the client has no sidecar: whatever the app sends goes out as is

# Words the client sidecar's 503 body contains in the failure cases the lessons show. The
# full text varies with Envoy's version and with retries: Envoy 1.40 answers a failed TLS
# handshake with "... reset reason: remote connection failure" and keeps the TLS detail
# (WRONG_VERSION_NUMBER) for its access log; older Envoys put it in the body too.
BODY_CONNECTION_TERMINATION = "reset reason: connection termination"
BODY_TLS_FAILURE = "connection failure"
TLS_FAILURE_DETAIL = "WRONG_VERSION_NUMBER"
BODY_NO_HEALTHY_UPSTREAM = "no healthy upstream"


def _mode(value: str | None) -> str:
    return (value or UNSET).upper()


def _key(obj: PeerAuthentication | DestinationRule) -> str:
    return f"{obj.namespace}/{obj.name}"


def _age(obj: PeerAuthentication | DestinationRule) -> tuple[float, str, str]:
    # Istio keeps configs sorted by creationTimestamp, then name, then namespace; the first
    # one wins a tie.
    return (obj.created, obj.name, obj.namespace)


# ---------------------------------------------------------------------------------------
# PeerAuthentication
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLevel:
    """One level istiod consulted: ``level`` is mesh, namespace, workload or port."""

    level: str
    policy: str  # "namespace/name"
    mode: str  # as written at this level; UNSET = inherit from the level above
    port: int | None = None  # container port, for the port level

    def __str__(self) -> str:
        where = f"port {self.port} of " if self.port is not None else ""
        return f"{self.level}: {where}PeerAuthentication {self.policy} mode {self.mode}"


@dataclass(frozen=True)
class EffectiveMtls:
    """The mTLS mode a server sidecar enforces on one container port, and why."""

    mode: str
    decided_by: tuple[PolicyLevel, ...] = ()
    # Policies that could look relevant but do not count, with the reason.
    ignored: tuple[tuple[str, str], ...] = ()
    port: int | None = None

    @property
    def source(self) -> PolicyLevel | None:
        """The level whose mode took effect (None: Istio's default, PERMISSIVE)."""
        for level in reversed(self.decided_by):
            if level.mode != UNSET:
                return level
        return None

    def explain(self) -> list[str]:
        lines = [str(level) for level in self.decided_by]
        src = self.source
        if src is None:
            lines.append(f"no PeerAuthentication sets a mode: Istio's default {PERMISSIVE}")
        else:
            lines.append(
                f"effective mode {self.mode}, set at the {src.level} level by {src.policy}"
            )
        lines += [f"ignored {name}: {why}" for name, why in self.ignored]
        return lines


def effective_peer_authentication(
    snapshot: Snapshot, pod: Pod, port: int | None = None
) -> EffectiveMtls:
    """The PeerAuthentication mode ``pod``'s sidecar enforces on container ``port``.

    ``port=None`` gives the workload-wide mode (port-level settings left out).
    """
    root = snapshot.mesh.root_namespace
    mesh: list[PeerAuthentication] = []
    namespace: list[PeerAuthentication] = []
    workload: list[PeerAuthentication] = []
    ignored: list[tuple[str, str]] = []
    for pa in snapshot.peer_authentications:
        if not pa.selector:  # no selector, or empty matchLabels: namespace- or mesh-wide
            if pa.namespace == root:
                mesh.append(pa)
            elif pa.namespace == pod.namespace:
                namespace.append(pa)
        elif pa.namespace == pod.namespace and pa.namespace != root:
            if selects(pa.selector, pod):
                workload.append(pa)
        elif pa.namespace == root and selects(pa.selector, pod):
            ignored.append(
                (_key(pa), f"a policy with a selector in the root namespace ({root}) is ignored")
            )

    chain: list[PolicyLevel] = []
    mode = PERMISSIVE
    chosen: dict[str, PeerAuthentication] = {}
    for level, candidates in (("mesh", mesh), ("namespace", namespace), ("workload", workload)):
        if not candidates:
            continue
        candidates.sort(key=_age)
        winner = candidates[0]
        chosen[level] = winner
        for loser in candidates[1:]:
            ignored.append((_key(loser), f"{_key(winner)} is older and wins the {level} level"))
        written = _mode(winner.mode)
        chain.append(PolicyLevel(level, _key(winner), written))
        if written != UNSET:
            mode = written

    for level in ("mesh", "namespace"):
        pa = chosen.get(level)
        if pa is not None and pa.port_level:
            ignored.append(
                (_key(pa), "portLevelMtls needs a selector; a policy without one ignores it")
            )

    wl = chosen.get("workload")
    if wl is not None and wl.port_level:
        known = set(pod.container_ports) | _service_target_ports(snapshot, pod)
        stray = [p for p in sorted(wl.port_level) if known and p not in known]
        if stray:
            ignored.append(
                (
                    _key(wl),
                    f"portLevelMtls for port(s) {', '.join(map(str, stray))}: not container "
                    f"ports of {pod.name}, so never used (the keys are container ports, not "
                    "Service ports)",
                )
            )
        if port is not None and port in wl.port_level:
            written = _mode(wl.port_level[port])
            chain.append(PolicyLevel("port", _key(wl), written, port))
            if written != UNSET:
                mode = written
    return EffectiveMtls(mode, tuple(chain), tuple(ignored), port)


def _service_target_ports(snapshot: Snapshot, pod: Pod) -> set[int]:
    ports = set()
    for service in snapshot.services:
        if (
            service.namespace == pod.namespace
            and service.selector
            and selects(service.selector, pod)
        ):
            ports.update(p for sp in service.ports if (p := target_port(pod, sp)) is not None)
    return ports


# ---------------------------------------------------------------------------------------
# DestinationRule
# ---------------------------------------------------------------------------------------


def resolve_rule_host(rule: DestinationRule) -> str:
    """The host a DestinationRule applies to: a name without a dot is short for
    ``<name>.<rule namespace>.svc.cluster.local``; ``*`` and names with a dot are literal."""
    host = rule.host.strip().lower().rstrip(".")
    if host == "*" or "." in host:
        return host
    return f"{host}.{rule.namespace}.svc.{CLUSTER_DOMAIN}"


def _host_matches(pattern: str, hostname: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


def _most_specific(rules: list[DestinationRule], hostname: str) -> list[DestinationRule]:
    """The rules for the most specific host matching ``hostname``: the exact host, else the
    longest matching wildcard. Oldest first (Istio merges rules for one host, and the
    oldest one's traffic policy is kept)."""
    matching: dict[str, list[DestinationRule]] = {}
    for r in rules:
        host = resolve_rule_host(r)
        if host == hostname or (host.startswith("*") and _host_matches(host, hostname)):
            matching.setdefault(host, []).append(r)
    if not matching:
        return []
    best = hostname if hostname in matching else max(matching, key=len)
    return sorted(matching[best], key=_age)


def _export_set(rule: DestinationRule) -> set[str]:
    return {e.strip() for e in rule.export_to if e.strip()}


def _local_to_own_namespace(rule: DestinationRule) -> bool:
    exp = _export_set(rule)
    return not exp or bool(exp & {"*", ".", rule.namespace})


def _private_only(rule: DestinationRule) -> bool:
    exp = _export_set(rule)
    return len(exp) == 1 and bool(exp & {".", rule.namespace})


def _visible_to(rule: DestinationRule, client_namespace: str) -> bool:
    exp = _export_set(rule)
    return not exp or "*" in exp or client_namespace in exp


def destination_rule_for(
    snapshot: Snapshot, client_namespace: str, service: Service
) -> DestinationRule | None:
    """The DestinationRule a sidecar in ``client_namespace`` applies to ``service``."""
    return _lookup_destination_rule(snapshot, client_namespace, service)[0]


def _lookup_destination_rule(
    snapshot: Snapshot, client_namespace: str, service: Service
) -> tuple[DestinationRule | None, str]:
    hostname = service.fqdn
    root = snapshot.mesh.root_namespace
    rules = snapshot.destination_rules
    # 1. the client's own namespace (rules exported to ".", "*", or it by name). A client in
    #    the root namespace looks at the root namespace's private rules here.
    if client_namespace != root:
        step1 = [r for r in rules if r.namespace == client_namespace and _local_to_own_namespace(r)]
    else:
        step1 = [r for r in rules if r.namespace == root and _private_only(r)]
    found = _most_specific(step1, hostname)
    if found:
        return found[0], f"found in the client's namespace {client_namespace}"
    # 2. then rules the service's namespace exports, 3. then the root namespace's. As in
    #    istiod, the most specific host is chosen first and then checked for visibility: a
    #    rule exported elsewhere hides a less specific one that is exported here.
    for ns, why in ((service.namespace, "the service's namespace"), (root, "the root namespace")):
        exported = [r for r in rules if r.namespace == ns and not _private_only(r)]
        visible = [
            r for r in _most_specific(exported, hostname) if _visible_to(r, client_namespace)
        ]
        if visible:
            return visible[0], f"found in {why} {ns}"
    return None, "no DestinationRule for this host is visible from " + client_namespace


def destination_rule_tls(
    rule: DestinationRule | None, service_port: int
) -> tuple[str | None, bool]:
    """The tls mode a rule sets for ``service_port`` and whether it came from
    portLevelSettings. ``(None, False)``: the rule sets no tls for this port."""
    if rule is None:
        return None, False
    if rule.port_level_tls.get(service_port):
        return rule.port_level_tls[service_port].upper(), True
    if rule.tls_mode:
        return rule.tls_mode.upper(), False
    return None, False


# ---------------------------------------------------------------------------------------
# What the client sidecar sends
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTls:
    """How a client sidecar connects to one endpoint of a service port."""

    mode: str  # ISTIO_MUTUAL | DISABLE | SIMPLE | MUTUAL | NONE (no client sidecar)
    mtls: bool
    reason: str
    destination_rule: DestinationRule | None = None
    auto: bool = False  # decided by auto mTLS

    @property
    def encrypted(self) -> bool:
        return self.mode in (ISTIO_MUTUAL, SIMPLE, MUTUAL)


def endpoint_accepts_auto_mtls(
    snapshot: Snapshot, endpoint: Pod, container_port: int | None
) -> bool:
    """Istio labels an endpoint ``tlsMode: istio`` (auto mTLS sends it mTLS) when it has a
    sidecar and its effective PeerAuthentication for the port is not DISABLE."""
    if not endpoint.sidecar:
        return False
    return effective_peer_authentication(snapshot, endpoint, container_port).mode != DISABLE


def client_tls(
    snapshot: Snapshot,
    client_pod: Pod | None,
    service: Service,
    service_port: ServicePort | int,
    endpoint_pod: Pod | None,
) -> ClientTls:
    """What the client's sidecar sends toward ``endpoint_pod`` for ``service:service_port``."""
    port_number = service_port if isinstance(service_port, int) else service_port.port
    if client_pod is None or not client_pod.sidecar:
        return ClientTls(
            NONE, False, "the client has no sidecar: the app's plaintext goes out as is"
        )
    rule = destination_rule_for(snapshot, client_pod.namespace, service)
    mode, port_level = destination_rule_tls(rule, port_number)
    if rule is not None and mode is not None:
        where = f"portLevelSettings for port {port_number} set" if port_level else "sets"
        return ClientTls(
            mode,
            mode in (ISTIO_MUTUAL, MUTUAL),
            f"DestinationRule {_key(rule)} {where} tls.mode {mode}",
            rule,
        )
    if not snapshot.mesh.auto_mtls:
        return ClientTls(DISABLE, False, "auto mTLS is off and no DestinationRule sets TLS", rule)
    if endpoint_pod is None:
        return ClientTls(
            DISABLE, False, "auto mTLS: no endpoint to decide for (no ready pod)", rule, auto=True
        )
    cport = _container_port(service, port_number, endpoint_pod)
    if not endpoint_pod.sidecar:
        return ClientTls(
            DISABLE,
            False,
            f"auto mTLS: the destination {endpoint_pod.name} has no sidecar, so plaintext",
            rule,
            auto=True,
        )
    eff = effective_peer_authentication(snapshot, endpoint_pod, cport)
    if eff.mode == DISABLE:
        return ClientTls(
            DISABLE,
            False,
            f"auto mTLS: the destination's PeerAuthentication is DISABLE on port {cport}, "
            "so plaintext",
            rule,
            auto=True,
        )
    return ClientTls(
        ISTIO_MUTUAL,
        True,
        "auto mTLS: the destination has a sidecar and its PeerAuthentication is not DISABLE",
        rule,
        auto=True,
    )


def _service_port(service: Service, port: int) -> ServicePort | None:
    return next((sp for sp in service.ports if sp.port == port), None)


def _container_port(service: Service, port: int, pod: Pod) -> int | None:
    sp = _service_port(service, port)
    return target_port(pod, sp) if sp is not None else None


# ---------------------------------------------------------------------------------------
# Predicting a call
# ---------------------------------------------------------------------------------------

OK = "ok"
RESET = "connection-reset"  # no HTTP answer: curl exit 56, code 000
REFUSED = "connection-refused"
UPSTREAM_TERMINATED = "503-connection-termination"
TLS_ERROR = "503-tls-error"
NO_ENDPOINTS = "503-no-healthy-upstream"
NOT_SUPPORTED = "not-supported"


@dataclass(frozen=True)
class Prediction:
    status: int | None  # None: no HTTP response at all
    mtls: bool  # the hop between the two pods is mutual TLS
    outcome: str  # one of the constants above
    explanation: list[str] = field(default_factory=list)
    error: str | None = None  # curl's words when status is None
    body_contains: str | None = None  # a piece of the body of Envoy's own error answers

    @property
    def code(self) -> str:
        return f"{self.status:03d}" if self.status is not None else "000"


def predict_call(
    snapshot: Snapshot,
    client_pod: Pod | None,
    service: Service,
    service_port: ServicePort | int,
    endpoint_pod: Pod | None,
) -> Prediction:
    """What ``client_pod`` (None: a client outside the mesh, without sidecar) gets back when
    its app calls ``service:service_port`` and the request lands on ``endpoint_pod``."""
    port_number = service_port if isinstance(service_port, int) else service_port.port
    why: list[str] = []
    has_client_sidecar = client_pod is not None and client_pod.sidecar
    client_name = client_pod.name if client_pod is not None else "the client"
    why.append(
        f"{client_name} has a sidecar"
        if has_client_sidecar
        else f"{client_name} has no sidecar: it sends plaintext HTTP"
    )
    if endpoint_pod is None:
        if has_client_sidecar:
            why.append(f"{service.fqdn} has no ready endpoint: the client sidecar answers 503")
            return Prediction(503, False, NO_ENDPOINTS, why, body_contains=BODY_NO_HEALTHY_UPSTREAM)
        why.append(f"{service.fqdn} has no ready endpoint: the connection is refused")
        return Prediction(None, False, REFUSED, why, error="connection refused")

    cport = _container_port(service, port_number, endpoint_pod)
    server = endpoint_pod.name
    if endpoint_pod.sidecar:
        eff = effective_peer_authentication(snapshot, endpoint_pod, cport)
        why.append(f"{server}'s sidecar enforces {eff.mode} on container port {cport}")
        why += ["  " + line for line in eff.explain()]
        server_mode = eff.mode
    else:
        why.append(f"{server} has no sidecar: its app answers whatever arrives, in plaintext")
        server_mode = None

    if not has_client_sidecar:
        if server_mode == STRICT:
            why.append(
                "plaintext into a STRICT sidecar matches no filter chain: the connection is "
                "reset (curl exit 56, HTTP code 000)"
            )
            return Prediction(None, False, RESET, why, error="connection reset by peer")
        why.append("plaintext is accepted: the app answers")
        return Prediction(200, False, OK, why)

    assert client_pod is not None
    tls = client_tls(snapshot, client_pod, service, port_number, endpoint_pod)
    why.append(f"client sidecar sends {tls.mode}: {tls.reason}")
    if tls.mode in (SIMPLE, MUTUAL):
        why.append(
            f"tls.mode {tls.mode} needs certificates the embedded mesh does not provide; "
            "it is not simulated here (on a cluster, expect a 503 toward a sidecar)"
        )
        return Prediction(None, False, NOT_SUPPORTED, why)
    if tls.mode == DISABLE:
        if server_mode == STRICT:
            why.append(
                "plaintext from the client sidecar into a STRICT sidecar: the server resets "
                "the connection and the client sidecar answers 503 (connection termination)"
            )
            return Prediction(
                503, False, UPSTREAM_TERMINATED, why, body_contains=BODY_CONNECTION_TERMINATION
            )
        why.append("plaintext is accepted: the app answers")
        return Prediction(200, False, OK, why)
    # ISTIO_MUTUAL
    if server_mode is None or server_mode == DISABLE:
        who = (
            "the app (no sidecar)"
            if server_mode is None
            else "the server sidecar, which takes no TLS on this port (DISABLE),"
        )
        why.append(
            f"the client sidecar starts a TLS handshake; {who} answers in plaintext, so the "
            f"handshake fails ({TLS_FAILURE_DETAIL}) and the client sidecar answers 503"
        )
        return Prediction(503, False, TLS_ERROR, why, body_contains=BODY_TLS_FAILURE)
    why.append(f"mutual TLS between the sidecars ({server_mode} accepts it): the app answers")
    return Prediction(200, True, OK, why)


# ---- sidecar injection -------------------------------------------------------------------
INJECT = "sidecar.istio.io/inject"


def injects_sidecar(namespace_labels: Mapping[str, str], template_meta: Mapping[str, Any]) -> bool:
    """Istio's injection decision for a new pod: the namespace label
    ``istio-injection=enabled`` (or ``istio.io/rev``), unless the pod says
    ``sidecar.istio.io/inject: "false"``; ``istio-injection=disabled`` always wins."""
    labels = template_meta.get("labels") or {}
    annotations = template_meta.get("annotations") or {}
    pod_says = labels.get(INJECT, annotations.get(INJECT))
    ns_value = namespace_labels.get("istio-injection")
    if ns_value == "disabled":
        return False
    if pod_says is not None and str(pod_says).lower() == "false":
        return False
    if ns_value == "enabled" or "istio.io/rev" in namespace_labels:
        return True
    return pod_says is not None and str(pod_says).lower() == "true"


def injection_enabled(namespace_labels: Mapping[str, str]) -> bool:
    """The namespace asks for sidecars in its new pods."""
    if namespace_labels.get("istio-injection") == "disabled":
        return False
    return namespace_labels.get("istio-injection") == "enabled" or (
        "istio.io/rev" in namespace_labels
    )
