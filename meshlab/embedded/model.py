"""The embedded mesh's view of the cluster: plain, immutable values.

The daemon builds a ``Snapshot`` from the applied objects and the running pods; the pure
functions in ``policy.py`` (Istio's rules) and ``xds.py`` (Envoy config) take it as input.

Addresses: every pod has two loopback addresses.
- ``ip``: the pod IP other pods connect to. The capture relay listens there on each
  container port and passes connections on (to the sidecar's ``virtualInbound`` with a
  PROXY protocol header, or straight to the app when the pod has no sidecar).
- ``inner_ip``: the pod's private "localhost". The app listens there on its container
  ports; the sidecar has its admin (15000), ``virtualOutbound`` (15001, the app's
  HTTP_PROXY) and ``virtualInbound`` (15006) there. Without a sidecar, the cluster-network
  forwarder (kube-dns + kube-proxy's role) listens on ``inner_ip:15001``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

CLUSTER_DOMAIN = "cluster.local"

ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006

# Namespaces every cluster has before anything is applied (Istio installed in istio-system).
BUILTIN_NAMESPACES = ("default", "istio-system")

TLS_MODES_PA = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
TLS_MODES_DR = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    service_account: str
    ip: str
    inner_ip: str
    sidecar: bool
    container_ports: tuple[int, ...] = ()
    named_ports: dict[str, int] = field(default_factory=dict)
    ready: bool = True

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str
    created: float  # creationTimestamp, seconds since the epoch; the oldest wins a tie
    selector: dict[str, str] | None  # matchLabels; None = namespace-wide (or mesh-wide)
    mode: str | None  # spec.mtls.mode; None or "UNSET" = inherit
    port_level: dict[int, str] = field(default_factory=dict)  # container port -> mode

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    created: float
    host: str
    tls_mode: str | None  # trafficPolicy.tls.mode; None = no tls settings
    port_level_tls: dict[int, str] = field(default_factory=dict)  # service port -> mode
    export_to: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True)
class MeshConfig:
    """The few meshConfig settings the lessons touch."""

    auto_mtls: bool = True  # meshConfig.enableAutoMtls
    root_namespace: str = "istio-system"
    trust_domain: str = CLUSTER_DOMAIN
    tls_max_version: str = "TLSv1_3"  # what client sidecars offer: TLSv1_3 (Istio) or TLSv1_2


@dataclass(frozen=True)
class Snapshot:
    """Everything the control plane needs to compute every sidecar's config."""

    pods: tuple[Pod, ...] = ()
    services: tuple[Service, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    mesh: MeshConfig = MeshConfig()
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels

    def endpoints(self, service: Service) -> list[Pod]:
        """Ready pods selected by the service (like an EndpointSlice), sorted by name."""
        if not service.selector:
            return []
        return sorted(
            (
                p
                for p in self.pods
                if p.namespace == service.namespace
                and p.ready
                and selects(service.selector, p)
            ),
            key=lambda p: p.name,
        )

    def ports_targeting(self, pod: Pod) -> list[tuple[Service, ServicePort, int]]:
        """(service, service port, container port) for every Service port that reaches
        ``pod``, services in FQDN order."""
        out = []
        for service in sorted(self.services, key=lambda s: s.fqdn):
            if service.namespace != pod.namespace or not service.selector:
                continue
            if not selects(service.selector, pod):
                continue
            for sp in service.ports:
                cport = target_port(pod, sp)
                if cport is not None:
                    out.append((service, sp, cport))
        return out


def selects(selector: Mapping[str, str] | None, pod: Pod) -> bool:
    """A label selector (matchLabels) matches the pod; an empty one matches every pod."""
    return all(pod.labels.get(k) == v for k, v in (selector or {}).items())


def spiffe_id(namespace: str, service_account: str, trust_domain: str = CLUSTER_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def target_port(pod: Pod, port: ServicePort) -> int | None:
    """The container port a Service port sends to on this pod (named targetPorts resolved)."""
    if isinstance(port.target_port, int):
        return port.target_port
    if port.target_port.isdigit():
        return int(port.target_port)
    return pod.named_ports.get(port.target_port)


def host_aliases(service: Service, client_namespace: str) -> list[str]:
    """The names a client in ``client_namespace`` can use for the service (like kube-dns
    search domains): ``name`` only from the same namespace, then ``name.ns``, ``name.ns.svc``
    and the FQDN from anywhere."""
    names = []
    if service.namespace == client_namespace:
        names.append(service.name)
    names += [
        f"{service.name}.{service.namespace}",
        f"{service.name}.{service.namespace}.svc",
        service.fqdn,
    ]
    return names


def resolve_host(
    authority: str, client_namespace: str, services: tuple[Service, ...] | list[Service]
) -> tuple[Service, ServicePort] | None:
    """Resolve ``host[:port]`` as a pod in ``client_namespace`` would (port 80 by default)."""
    host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not host:
        host, port_text = authority, ""
    try:
        port = int(port_text) if port_text else 80
    except ValueError:
        return None
    host = host.lower().rstrip(".")
    for service in services:
        if host in host_aliases(service, client_namespace):
            for sp in service.ports:
                if sp.port == port:
                    return service, sp
            return None
    return None
