"""The checks behind ``meshlab analyze``: one function per family, each a ``MeshState`` in
and ``Finding`` values out.

The rules are Istio's, from ``meshlab.embedded.policy`` (the same code that configures the
embedded mesh's sidecars), so a finding says what the mesh will do. Today's ``istioctl
analyze`` no longer reports PeerAuthentication/DestinationRule conflicts (its IST0113 check
was retired); the MLB01xx checks cover them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

from meshlab.analysis.findings import Finding, ref, sort_findings
from meshlab.analysis.state import MeshState, workload_of
from meshlab.embedded import policy
from meshlab.embedded.model import (
    DestinationRule,
    PeerAuthentication,
    Pod,
    Service,
    ServicePort,
    Snapshot,
    selects,
    target_port,
)
from meshlab.embedded.policy import injection_enabled, injects_sidecar

PA, DR, DEPLOY, NS = "PeerAuthentication", "DestinationRule", "Deployment", "Namespace"
CURL_RESET = "connection reset, curl exit 56, HTTP code 000"


# ---- small helpers ------------------------------------------------------------------------------


def _pa_ref(pa: PeerAuthentication) -> str:
    return ref(PA, pa.namespace, pa.name)


def _dr_ref(dr: DestinationRule) -> str:
    return ref(DR, dr.namespace, dr.name)


def _deploy_ref(namespace: str, workload: str) -> str:
    return ref(DEPLOY, namespace, workload)


def _key(obj: PeerAuthentication | DestinationRule) -> str:
    return f"{obj.namespace}/{obj.name}"


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _names(items: Iterable[str], limit: int = 4) -> str:
    items = list(dict.fromkeys(items))
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def workloads(snapshot: Snapshot) -> dict[tuple[str, str], list[Pod]]:
    """Pods grouped by (namespace, workload), sorted by name."""
    groups: dict[tuple[str, str], list[Pod]] = defaultdict(list)
    for pod in sorted(snapshot.pods, key=lambda p: p.name):
        groups[(pod.namespace, workload_of(pod))].append(pod)
    return dict(groups)


def _service_workloads(snapshot: Snapshot, service: Service) -> list[tuple[str, Pod]]:
    """(workload, one of its pods) for each workload the service selects (ready or not)."""
    if not service.selector:
        return []
    found: dict[str, Pod] = {}
    for pod in sorted(snapshot.pods, key=lambda p: (not p.ready, p.name)):
        if pod.namespace == service.namespace and selects(service.selector, pod):
            found.setdefault(workload_of(pod), pod)
    return sorted(found.items())


def _rule_services(snapshot: Snapshot, rule: DestinationRule) -> list[Service]:
    host = policy.resolve_rule_host(rule)
    out = []
    for service in snapshot.services:
        fqdn = service.fqdn
        if host == fqdn or host == "*" or (host.startswith("*.") and fqdn.endswith(host[1:])):
            out.append(service)
    return out


def _client_namespaces(snapshot: Snapshot) -> list[str]:
    names = set(snapshot.namespaces) | {p.namespace for p in snapshot.pods}
    names |= {r.namespace for r in snapshot.destination_rules}
    return sorted(names)


def _sidecar_clients(snapshot: Snapshot, namespaces: Iterable[str], skip: str = "") -> list[str]:
    wanted = set(namespaces)
    return sorted(
        {
            f"{p.namespace}/{workload_of(p)}"
            for p in snapshot.pods
            if p.sidecar and p.namespace in wanted and f"{p.namespace}/{workload_of(p)}" != skip
        }
    )


# ---- MLB01xx: client and server disagree --------------------------------------------------------


def check_destination_rule_conflicts(state: MeshState) -> Iterator[Finding]:
    """MLB0101 / MLB0102: a DestinationRule's tls.mode that the server side will refuse."""
    snap = state.snapshot
    namespaces = _client_namespaces(snap)
    for rule in snap.destination_rules:
        for service in _rule_services(snap, rule):
            users = [
                ns
                for ns in namespaces
                if (found := policy.destination_rule_for(snap, ns, service)) is not None
                and _key(found) == _key(rule)
            ]
            if not users:
                continue  # another rule wins everywhere
            for sp in service.ports:
                mode, port_level = policy.destination_rule_tls(rule, sp.port)
                if mode is None:
                    continue
                setting = (
                    f"portLevelSettings for port {sp.port} set tls.mode {mode}"
                    if port_level
                    else f"tls.mode is {mode}"
                )
                for workload, pod in _service_workloads(snap, service):
                    cport = target_port(pod, sp)
                    if cport is None:
                        continue
                    server = f"{service.namespace}/{workload}"
                    callers = _sidecar_clients(snap, users, skip=server)
                    who = (
                        f"callers with a sidecar ({_names(callers)})"
                        if callers
                        else "client sidecars that use this rule"
                    )
                    target = f"{service.name}.{service.namespace}:{sp.port}"
                    server_mode, src, decided = None, None, ""
                    if pod.sidecar:
                        eff = policy.effective_peer_authentication(snap, pod, cport)
                        server_mode, src = eff.mode, eff.source
                        if src is not None:
                            decided = (
                                f" (set at the {src.level} level by PeerAuthentication "
                                f"{src.policy})"
                            )
                    if (
                        mode in (policy.DISABLE, policy.SIMPLE, policy.MUTUAL)
                        and server_mode == policy.STRICT
                    ):
                        sends = (
                            "plaintext"
                            if mode == policy.DISABLE
                            else f"TLS without the Istio certificate ({mode})"
                        )
                        yield Finding(
                            "MLB0101", DR, rule.name, rule.namespace,
                            f"{setting} for {target}, so {who} send {sends}; but {workload} "
                            f"accepts only mutual TLS on container port {cport}: STRICT"
                            f"{decided}. The server refuses the connection and the callers "
                            "get 503 (upstream connect error ... connection termination). A "
                            "client-side rule never relaxes the server's STRICT.",
                            "delete this DestinationRule's tls setting (auto mTLS then sends "
                            "mutual TLS) or set tls.mode ISTIO_MUTUAL",
                            tuple(
                                [_deploy_ref(service.namespace, workload)]
                                + ([ref(PA, *src.policy.split("/", 1))] if src else [])
                            ),
                        )  # fmt: skip
                    elif mode == policy.ISTIO_MUTUAL and server_mode in (None, policy.DISABLE):
                        why = (
                            f"{workload} has no sidecar, so nothing there speaks mutual TLS"
                            if not pod.sidecar
                            else f"{workload}'s sidecar takes only plaintext on container port "
                            f"{cport}: DISABLE{decided}"
                        )
                        related = [_deploy_ref(service.namespace, workload)]
                        if pod.sidecar and src:
                            related.append(ref(PA, *src.policy.split("/", 1)))
                        yield Finding(
                            "MLB0102", DR, rule.name, rule.namespace,
                            f"{setting} for {target}, so {who} start a TLS handshake; but "
                            f"{why}. The handshake fails and the callers get 503 (upstream "
                            "connect error ... TLS error).",
                            "delete this DestinationRule's tls setting (auto mTLS sends "
                            "plaintext where the destination takes no mTLS), or inject a "
                            "sidecar into the destination and drop its DISABLE",
                            tuple(related),
                        )  # fmt: skip


def _strict_servers(
    snap: Snapshot,
) -> dict[str, list[tuple[str, Pod, Service, ServicePort, int]]]:
    """PeerAuthentication key -> (workload, pod, service, port, container port) it makes
    STRICT, for each service port that reaches a workload with a sidecar."""
    out: dict[str, list[tuple[str, Pod, Service, ServicePort, int]]] = defaultdict(list)
    for (_, workload), pods in workloads(snap).items():
        pod = next((p for p in pods if p.ready), pods[0])
        if not pod.sidecar:
            continue
        for service, sp, cport in snap.ports_targeting(pod):
            eff = policy.effective_peer_authentication(snap, pod, cport)
            if eff.mode == policy.STRICT and eff.source is not None:
                out[eff.source.policy].append((workload, pod, service, sp, cport))
    return out


def check_auto_mtls_off(state: MeshState) -> Iterator[Finding]:
    """MLB0103: with auto mTLS off and no DestinationRule tls, client sidecars send
    plaintext, which a STRICT server refuses."""
    snap = state.snapshot
    if snap.mesh.auto_mtls:
        return
    namespaces = _client_namespaces(snap)
    for key, servers in sorted(_strict_servers(snap).items()):
        hit: list[str] = []
        callers: list[str] = []
        related: list[str] = []
        for workload, pod, service, sp, _ in servers:
            server = f"{pod.namespace}/{workload}"
            plain_ns = [
                ns
                for ns in namespaces
                if policy.destination_rule_tls(
                    policy.destination_rule_for(snap, ns, service), sp.port
                )[0]
                is None
            ]
            clients = _sidecar_clients(snap, plain_ns, skip=server)
            if clients:
                hit.append(f"{service.name}.{service.namespace}:{sp.port}")
                callers += clients
                related.append(_deploy_ref(pod.namespace, workload))
        if not hit:
            continue
        ns, name = key.split("/", 1)
        yield Finding(
            "MLB0103", PA, name, ns,
            f"auto mTLS is off (meshConfig.enableAutoMtls: false) and no DestinationRule sets "
            f"tls for {_names(hit)}, so client sidecars ({_names(callers)}) send plaintext; "
            "this policy makes the server STRICT: they get 503 (upstream connect error ... "
            "connection termination).",
            f"apply a DestinationRule with tls.mode ISTIO_MUTUAL for {_names(hit)}, or turn "
            "auto mTLS back on",
            tuple(related),
        )  # fmt: skip


def check_plaintext_clients(state: MeshState) -> Iterator[Finding]:
    """MLB0104: pods without a sidecar can send only plaintext; a STRICT server resets them."""
    snap = state.snapshot
    legacy = {
        (p.namespace, workload_of(p)): p for p in snap.pods if not p.sidecar
    }  # one per workload
    if not legacy:
        return
    for key, servers in sorted(_strict_servers(snap).items()):
        names = [f"{pod.namespace}/{w}" for w, pod, *_ in servers]
        targets = [f"{s.name}.{s.namespace}:{sp.port}" for _, _, s, sp, _ in servers]
        clients = [f"{ns}/{w}" for (ns, w) in sorted(legacy) if f"{ns}/{w}" not in names]
        if not clients:
            continue
        ns, name = key.split("/", 1)
        related = [_deploy_ref(*n.split("/", 1)) for n in names]
        related += [_deploy_ref(*c.split("/", 1)) for c in clients]
        yield Finding(
            "MLB0104", PA, name, ns,
            f"this policy makes {_names(names)} STRICT (mutual TLS only), and "
            f"{_names(clients)} {'has' if len(clients) == 1 else 'have'} no sidecar, so can "
            f"send only plaintext: their calls to {_names(targets)} will be refused "
            f"({CURL_RESET}).",
            "inject a sidecar into those clients (label the namespace istio-injection=enabled "
            "and restart them), or keep PERMISSIVE for the servers they call while migrating",
            tuple(related),
        )  # fmt: skip


# ---- MLB02xx: policies that do nothing ----------------------------------------------------------


def check_port_level_keys(state: MeshState) -> Iterator[Finding]:
    """MLB0201: portLevelMtls is keyed by container port; another key is ignored."""
    snap = state.snapshot
    root = snap.mesh.root_namespace
    for pa in snap.peer_authentications:
        if not pa.port_level or not pa.selector or pa.namespace == root:
            continue
        pods = [p for p in snap.pods if p.namespace == pa.namespace and selects(pa.selector, p)]
        if not pods:
            continue
        known: set[int] = set()
        for pod in pods:
            known |= set(pod.container_ports)
            known |= {cport for _, _, cport in snap.ports_targeting(pod)}
        if not known:
            continue  # the pods declare no ports: nothing to compare with
        names = sorted({workload_of(p) for p in pods})
        for key in sorted(pa.port_level):
            if key in known:
                continue
            as_service_port = [
                (service, sp, cport)
                for pod in pods
                for service, sp, cport in snap.ports_targeting(pod)
                if sp.port == key
            ]
            if as_service_port:
                service, _, cport = as_service_port[0]
                message = (
                    f"portLevelMtls {key}: {pa.port_level[key]} uses the Service port of "
                    f"{service.name} ({key} -> targetPort {cport}); portLevelMtls is keyed by "
                    f"the container port, so this setting is silently ignored and "
                    f"{_names(names)} keeps the workload-level mode on port {cport}."
                )
                fix = f"key the setting by the container port: portLevelMtls: {{{cport}: ...}}"
            else:
                message = (
                    f"portLevelMtls {key}: {pa.port_level[key]} names no container port of "
                    f"{_names(names)} (its ports: {', '.join(map(str, sorted(known)))}); the "
                    "setting is silently ignored."
                )
                fix = "key portLevelMtls by one of the workload's container ports"
            yield Finding(
                "MLB0201", PA, pa.name, pa.namespace, message, fix,
                tuple(_deploy_ref(pa.namespace, w) for w in names),
            )  # fmt: skip


def check_selector_matches(state: MeshState) -> Iterator[Finding]:
    """MLB0202: a workload PeerAuthentication whose selector matches no pod."""
    snap = state.snapshot
    root = snap.mesh.root_namespace
    for pa in snap.peer_authentications:
        if not pa.selector or pa.namespace == root:
            continue
        if any(p.namespace == pa.namespace and selects(pa.selector, p) for p in snap.pods):
            continue
        others = sorted(
            {workload_of(p) for p in snap.pods if p.namespace != pa.namespace
             and selects(pa.selector, p)}
        )  # fmt: skip
        hint = (
            f" (pods with these labels run in other namespaces: {_names(others)}; a policy "
            "applies only in its own namespace)"
            if others
            else ""
        )
        yield Finding(
            "MLB0202", PA, pa.name, pa.namespace,
            f"selector {_labels_text(pa.selector)} matches no pod in namespace "
            f"{pa.namespace}{hint}: this policy changes nothing.",
            "fix spec.selector.matchLabels to the workload's pod labels, or deploy the workload",
        )  # fmt: skip


def check_destination_rule_hosts(state: MeshState) -> Iterator[Finding]:
    """MLB0203: a DestinationRule whose host is no service."""
    snap = state.snapshot
    for rule in snap.destination_rules:
        if _rule_services(snap, rule):
            continue
        host = policy.resolve_rule_host(rule)
        short = rule.host.strip().lower()
        hint = ""
        if "." not in short and short != "*":
            elsewhere = sorted(s.fqdn for s in snap.services if s.name == short)
            if elsewhere:
                hint = (
                    f"; a short host is read in the rule's own namespace ({rule.namespace}): "
                    f"did you mean {elsewhere[0]}?"
                )
        read_as = f" (read as {host})" if host != short else ""
        yield Finding(
            "MLB0203", DR, rule.name, rule.namespace,
            f"host {rule.host}{read_as} matches no Service{hint}. The rule applies to no "
            "traffic.",
            "set spec.host to a Service name (service-b-v1, or its full name "
            "service-b-v1.<namespace>.svc.cluster.local)",
        )  # fmt: skip


def check_root_namespace_selectors(state: MeshState) -> Iterator[Finding]:
    """MLB0204: a selector policy in the root namespace is ignored."""
    snap = state.snapshot
    root = snap.mesh.root_namespace
    for pa in snap.peer_authentications:
        if pa.namespace == root and pa.selector:
            yield Finding(
                "MLB0204", PA, pa.name, pa.namespace,
                f"a PeerAuthentication with a selector in the root namespace {root} is "
                "ignored by Istio: this policy changes nothing.",
                "move it to the workload's namespace, or drop the selector to make it "
                "mesh-wide",
            )  # fmt: skip


def check_duplicate_namespace_policies(state: MeshState) -> Iterator[Finding]:
    """MLB0205: several namespace-wide (or mesh-wide) policies in one namespace."""
    snap = state.snapshot
    root = snap.mesh.root_namespace
    groups: dict[str, list[PeerAuthentication]] = defaultdict(list)
    for pa in snap.peer_authentications:
        if not pa.selector:
            groups[pa.namespace].append(pa)
    for namespace, pas in sorted(groups.items()):
        if len(pas) < 2:
            continue
        pas.sort(key=lambda p: (p.created, p.name, p.namespace))
        winner = pas[0]
        scope = "mesh-wide" if namespace == root else "namespace-wide"
        for loser in pas[1:]:
            yield Finding(
                "MLB0205", PA, loser.name, loser.namespace,
                f"{len(pas)} {scope} PeerAuthentications in {namespace}: only the oldest, "
                f"{winner.name} (mode {winner.mode or 'UNSET'}), applies; this one (mode "
                f"{loser.mode or 'UNSET'}) is ignored.",
                f"keep one {scope} policy: delete {winner.name} or this one",
                (_pa_ref(winner),),
            )  # fmt: skip


def check_duplicate_workload_policies(state: MeshState) -> Iterator[Finding]:
    """MLB0206: several workload-level policies select the same pods (the oldest applies)."""
    snap = state.snapshot
    root = snap.mesh.root_namespace
    losers: dict[tuple[str, str], tuple[PeerAuthentication, PeerAuthentication, set[str]]] = {}
    for (namespace, workload), pods in workloads(snap).items():
        pod = pods[0]
        pas = sorted(
            (
                pa
                for pa in snap.peer_authentications
                if pa.selector and pa.namespace == namespace != root and selects(pa.selector, pod)
            ),
            key=lambda p: (p.created, p.name, p.namespace),
        )
        for loser in pas[1:]:
            entry = losers.setdefault((loser.namespace, loser.name), (loser, pas[0], set()))
            entry[2].add(workload)
    for (_, _), (loser, winner, names) in sorted(losers.items()):
        yield Finding(
            "MLB0206", PA, loser.name, loser.namespace,
            f"{winner.name} and this policy both select {_names(sorted(names))}: only the "
            f"oldest, {winner.name}, applies there; this one is ignored for "
            f"{'it' if len(names) == 1 else 'them'}.",
            "make the selectors select different workloads, or merge the policies",
            (_pa_ref(winner), *(_deploy_ref(loser.namespace, n) for n in sorted(names))),
        )  # fmt: skip


# ---- MLB03xx: sidecar injection -----------------------------------------------------------------


def check_injection(state: MeshState) -> Iterator[Finding]:
    """MLB0301 / MLB0302: sidecars are decided when a pod is created."""
    snap = state.snapshot
    for (namespace, workload), pods in sorted(workloads(snap).items()):
        ns_labels = snap.namespaces.get(namespace, {})
        template = state.template(namespace, workload)
        meta = (template or {}).get("metadata") or {"labels": pods[0].labels}
        wants = injects_sidecar(ns_labels, meta)
        without = [p.name for p in pods if not p.sidecar]
        with_sidecar = [p.name for p in pods if p.sidecar]
        related = (ref(NS, None, namespace),)
        if wants and without and injection_enabled(ns_labels):
            yield Finding(
                "MLB0301", DEPLOY, workload, namespace,
                f"namespace {namespace} asks for sidecars ({_injection_label(ns_labels)}), but "
                f"{_names(without)} {'has' if len(without) == 1 else 'have'} none: injection "
                "happens only when a pod is created, so pods started before the label keep "
                "running without a sidecar (plaintext, no identity).",
                f"meshlab rollout restart deployment/{workload} -n {namespace}",
                related,
            )  # fmt: skip
        elif not wants and with_sidecar:
            yield Finding(
                "MLB0302", DEPLOY, workload, namespace,
                f"{_names(with_sidecar)} still {'runs' if len(with_sidecar) == 1 else 'run'} "
                f"a sidecar, though new pods of {workload} would get none (namespace "
                f"{namespace} no longer asks for injection, or the pod opts out): the sidecar "
                "goes away only when the pods are re-created.",
                f"meshlab rollout restart deployment/{workload} -n {namespace}",
                related,
            )  # fmt: skip


def _injection_label(labels: Mapping[str, str]) -> str:
    if labels.get("istio-injection") == "enabled":
        return "istio-injection=enabled"
    return f"istio.io/rev={labels.get('istio.io/rev', '')}"


CHECK_FUNCTIONS: tuple[Callable[[MeshState], Iterator[Finding]], ...] = (
    check_destination_rule_conflicts,
    check_auto_mtls_off,
    check_plaintext_clients,
    check_port_level_keys,
    check_selector_matches,
    check_destination_rule_hosts,
    check_root_namespace_selectors,
    check_duplicate_namespace_policies,
    check_duplicate_workload_policies,
    check_injection,
)


def run_checks(state: MeshState | Snapshot) -> list[Finding]:
    """Every finding for this state, errors first."""
    if isinstance(state, Snapshot):
        state = MeshState(state)
    found: list[Finding] = []
    for check in CHECK_FUNCTIONS:
        found += check(state)
    return sort_findings(found)
