"""The state the analysis reads: a ``Snapshot`` plus the stored objects it came from.

Both backends feed the same pure functions:

- the embedded mesh sends its daemon's own snapshot (``snapshot_from_dict`` turns the JSON
  form of ``op_snapshot`` back into values; creation times keep their sub-second order);
- any backend can build one with ``snapshot_from_objects`` from what ``Mesh.get`` and
  ``Mesh.status`` return (objects as ``kubectl get -o json`` shows them, pods as
  ``PodStatus``): this is how the kubernetes backend gets it.

The readers here are lenient on purpose: objects read back from a cluster carry fields the
API server sets (status, managedFields, clusterIP...). Only the fields the rules need are read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshlab.embedded.model import (
    BUILTIN_NAMESPACES,
    DestinationRule,
    MeshConfig,
    PeerAuthentication,
    Pod,
    Service,
    ServicePort,
    Snapshot,
)

# The kinds the analysis reads from a backend's stored objects.
ANALYZED_KINDS = ("Namespace", "Service", "Deployment", "PeerAuthentication", "DestinationRule")


@dataclass(frozen=True)
class MeshState:
    """What ``analyze`` and ``describe`` look at: the snapshot, and the stored objects
    (Deployments are read for their pod template: injection annotations, ports)."""

    snapshot: Snapshot
    objects: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def template(self, namespace: str, deployment: str) -> dict[str, Any] | None:
        """The stored Deployment's pod template; None when the Deployment is not stored."""
        for body in self.of_kind("Deployment"):
            meta = body.get("metadata") or {}
            if meta.get("name") == deployment and (meta.get("namespace") or "default") == namespace:
                return dict((body.get("spec") or {}).get("template") or {})
        return None


# ---- helpers shared by the checks -------------------------------------------------------------


def workload_of(pod: Pod) -> str:
    """The Deployment a pod belongs to: ``service-a`` for ``service-a-5d8f7c9b6d-x2x7q``
    (read through the ``pod-template-hash`` label that ReplicaSets add); else ``app``."""
    thash = pod.labels.get("pod-template-hash")
    if thash and f"-{thash}-" in pod.name:
        return pod.name[: pod.name.rindex(f"-{thash}-")]
    return pod.labels.get("app") or pod.name


def template_ports(template: Mapping[str, Any]) -> tuple[tuple[int, ...], dict[str, int]]:
    """The container ports (and named ports) a pod template declares."""
    ports: list[int] = []
    named: dict[str, int] = {}
    for container in (template.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            number = _int(p.get("containerPort"))
            if number is None:
                continue
            if number not in ports:
                ports.append(number)
            if p.get("name"):
                named.setdefault(str(p["name"]), number)
    return tuple(ports), named


def created_at(body: Mapping[str, Any], default: float | None = None) -> float:
    """metadata.creationTimestamp as seconds since the epoch; ``default`` (else now) without one."""
    stamp = (body.get("metadata") or {}).get("creationTimestamp")
    if stamp:
        try:
            return datetime.fromisoformat(str(stamp).upper().replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() if default is None else default


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _meta(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("name", "")), str(meta.get("namespace") or "default")


# ---- objects -> model values ------------------------------------------------------------------


def peer_authentication_from(body: Mapping[str, Any], created: float) -> PeerAuthentication:
    name, namespace = _meta(body)
    spec = body.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or None
    ports: dict[int, str] = {}
    for key, value in (spec.get("portLevelMtls") or {}).items():
        port = _int(key)
        if port is not None:
            ports[port] = str(((value or {}).get("mode")) or "UNSET")
    return PeerAuthentication(
        name=name,
        namespace=namespace,
        created=created,
        selector={str(k): str(v) for k, v in selector.items()} if selector else None,
        mode=(spec.get("mtls") or {}).get("mode"),
        port_level=ports,
    )


def destination_rule_from(body: Mapping[str, Any], created: float) -> DestinationRule:
    name, namespace = _meta(body)
    spec = body.get("spec") or {}
    policy = spec.get("trafficPolicy") or {}
    tls = policy.get("tls")
    ports: dict[int, str] = {}
    for setting in policy.get("portLevelSettings") or []:
        number = _int((setting.get("port") or {}).get("number"))
        if number is not None and setting.get("tls") is not None:
            ports[number] = str(setting["tls"].get("mode") or "DISABLE")
    return DestinationRule(
        name=name,
        namespace=namespace,
        created=created,
        host=str(spec.get("host", "")),
        tls_mode=(str(tls.get("mode") or "DISABLE") if tls is not None else None),
        port_level_tls=ports,
        export_to=tuple(str(e) for e in spec.get("exportTo") or ()),
    )


def service_from(body: Mapping[str, Any]) -> Service:
    name, namespace = _meta(body)
    spec = body.get("spec") or {}
    ports = []
    for p in spec.get("ports") or []:
        number = _int(p.get("port"))
        if number is None:
            continue
        target = p.get("targetPort", p.get("target_port"))
        target_value: int | str = number if target is None else (_int(target) or str(target))
        ports.append(
            ServicePort(number, target_value, str(p.get("name") or ""), p.get("protocol") or "TCP")
        )
    return Service(name, namespace, dict(spec.get("selector") or {}), tuple(ports))


def _pod_from_status(
    status: Mapping[str, Any], deployments: Mapping[tuple[str, str], Mapping[str, Any]]
) -> Pod:
    namespace = str(status.get("namespace") or "default")
    workload = str(status.get("workload") or "")
    template = ((deployments.get((namespace, workload)) or {}).get("spec") or {}).get(
        "template"
    ) or {}
    ports, named = template_ports(template)
    if status.get("container_ports") is not None:
        ports = tuple(int(p) for p in status["container_ports"])
    if status.get("named_ports") is not None:
        named = {str(k): int(v) for k, v in status["named_ports"].items()}
    return Pod(
        name=str(status["name"]),
        namespace=namespace,
        labels={str(k): str(v) for k, v in (status.get("labels") or {}).items()},
        service_account=str(status.get("service_account") or "default"),
        ip=str(status.get("ip") or ""),
        inner_ip=str(status.get("inner_ip") or ""),
        sidecar=bool(status.get("sidecar")),
        container_ports=ports,
        named_ports=named,
        ready=bool(status.get("ready", True)),
    )


def snapshot_from_objects(
    objects: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any] | Any],
    mesh: MeshConfig | None = None,
) -> Snapshot:
    """A ``Snapshot`` from stored objects (any kinds; Namespaces, Services,
    PeerAuthentications, DestinationRules and Deployments are read) and pods.

    ``pods``: ``PodStatus`` values or dicts with its fields (name, namespace, workload, ip,
    phase, ready, sidecar, service_account, labels); optional ``container_ports`` and
    ``named_ports``, else they are read from the pod's Deployment template. Pods in phase
    ``Terminating`` are left out, as endpoints drop them.
    """
    objects = list(objects)
    namespaces: dict[str, dict[str, str]] = {
        ns: {"kubernetes.io/metadata.name": ns} for ns in BUILTIN_NAMESPACES
    }
    services: list[Service] = []
    pas: list[PeerAuthentication] = []
    drs: list[DestinationRule] = []
    deployments: dict[tuple[str, str], Mapping[str, Any]] = {}
    for body in objects:
        kind = body.get("kind")
        if kind == "Namespace":
            name = str((body.get("metadata") or {}).get("name", ""))
            namespaces[name] = dict((body.get("metadata") or {}).get("labels") or {})
        elif kind == "Service":
            services.append(service_from(body))
        elif kind == "PeerAuthentication":
            pas.append(peer_authentication_from(body, created_at(body)))
        elif kind == "DestinationRule":
            drs.append(destination_rule_from(body, created_at(body)))
        elif kind == "Deployment":
            name, namespace = _meta(body)
            deployments[(namespace, name)] = body
    pod_values = []
    for item in pods:
        status = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item)
        if status.get("phase") == "Terminating":
            continue
        pod = _pod_from_status(status, deployments)
        namespaces.setdefault(pod.namespace, {"kubernetes.io/metadata.name": pod.namespace})
        pod_values.append(pod)
    return Snapshot(
        pods=tuple(pod_values),
        services=tuple(services),
        peer_authentications=tuple(pas),
        destination_rules=tuple(drs),
        mesh=mesh or MeshConfig(),
        namespaces=namespaces,
    )


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """The inverse of ``dataclasses.asdict(snapshot)`` after a JSON round trip (lists for
    tuples, string keys for port numbers): what the embedded daemon's ``snapshot`` op sends."""
    pods = tuple(
        Pod(
            name=p["name"],
            namespace=p["namespace"],
            labels=dict(p.get("labels") or {}),
            service_account=p.get("service_account") or "default",
            ip=p.get("ip", ""),
            inner_ip=p.get("inner_ip", ""),
            sidecar=bool(p.get("sidecar")),
            container_ports=tuple(int(x) for x in p.get("container_ports") or ()),
            named_ports={str(k): int(v) for k, v in (p.get("named_ports") or {}).items()},
            ready=bool(p.get("ready", True)),
        )
        for p in data.get("pods") or ()
    )
    services = tuple(
        Service(
            s["name"],
            s["namespace"],
            dict(s.get("selector") or {}),
            tuple(
                ServicePort(
                    int(sp["port"]),
                    sp["target_port"],
                    sp.get("name", ""),
                    sp.get("protocol", "TCP"),
                )
                for sp in s.get("ports") or ()
            ),
        )
        for s in data.get("services") or ()
    )
    pas = tuple(
        PeerAuthentication(
            pa["name"],
            pa["namespace"],
            float(pa["created"]),
            dict(pa["selector"]) if pa.get("selector") else None,
            pa.get("mode"),
            {int(k): v for k, v in (pa.get("port_level") or {}).items()},
        )
        for pa in data.get("peer_authentications") or ()
    )
    drs = tuple(
        DestinationRule(
            dr["name"],
            dr["namespace"],
            float(dr["created"]),
            dr["host"],
            dr.get("tls_mode"),
            {int(k): v for k, v in (dr.get("port_level_tls") or {}).items()},
            tuple(dr.get("export_to") or ()),
        )
        for dr in data.get("destination_rules") or ()
    )
    mesh_fields = {f.name for f in dataclasses.fields(MeshConfig)}
    mesh = MeshConfig(**{k: v for k, v in (data.get("mesh") or {}).items() if k in mesh_fields})
    namespaces = {str(k): dict(v or {}) for k, v in (data.get("namespaces") or {}).items()}
    return Snapshot(pods, services, pas, drs, mesh, namespaces)


def state_from_mesh_objects(
    objects: Sequence[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any] | Any],
    mesh: MeshConfig | None = None,
) -> MeshState:
    """``MeshState`` for a backend that only has objects and pods (the kubernetes one)."""
    return MeshState(snapshot_from_objects(objects, pods, mesh), tuple(dict(o) for o in objects))


def source_labels(source: Any) -> list[str]:
    """How a report names the proposed sources: paths as given, ``(YAML text)`` for text."""
    if source is None:
        return []
    items = list(source) if isinstance(source, list | tuple) else [source]
    return [
        "(YAML text)"
        if isinstance(s, str) and ("\n" in s or s.startswith("apiVersion"))
        else str(s)
        for s in items
    ]
