"""Envoy configuration for one sidecar, as istiod would generate it: pure functions that
return JSON-able dicts (Envoy's v3 API in proto-JSON form).

Resources keep Istio's names, so what a learner reads here is what ``istioctl
proxy-config`` shows on a cluster: listeners ``virtualOutbound`` / ``virtualInbound``,
clusters ``outbound|8080||<fqdn>`` / ``inbound|8080||`` / ``BlackHoleCluster``, SDS secrets
``default`` / ``ROOTCA``.

Two things differ from a cluster, because the embedded mesh has no iptables:
- The app reaches its sidecar as an HTTP proxy (``HTTP_PROXY`` = ``virtualOutbound``), so
  ``virtualOutbound`` is an HTTP connection manager routing by authority, like Istio's
  ``http_proxy`` route (meshConfig ``proxyHttpPort``), instead of an original-dst listener.
- Connections into the pod arrive from a relay that prepends a PROXY protocol v2 header with
  the client's address and the original destination, so ``virtualInbound`` matches filter
  chains on ``destination_port`` as it would after iptables' REDIRECT.

Delivery is by files (no gRPC): LDS, CDS and SDS resources are DiscoveryResponse documents
in watched folders under the sidecar's config folder (see ``CONFIG_FILES``). The files must
exist before Envoy starts, and Envoy reloads one only when a file is renamed into its folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from meshlab.embedded import policy
from meshlab.embedded.ca import WorkloadCertificate
from meshlab.embedded.model import (
    ADMIN_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    Pod,
    Service,
    ServicePort,
    Snapshot,
    host_aliases,
    spiffe_id,
    target_port,
)

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_PROXY_PROTOCOL = (
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
)
_TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
_DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

# Where each document lives, relative to the sidecar's config folder. Envoy watches each
# folder and reloads a file only when one is renamed into it.
CONFIG_FILES = {
    "lds": "lds/lds.json",
    "cds": "cds/cds.json",
    "sds_default": "sds/default.json",
    "sds_rootca": "sds/rootca.json",
}
_SDS_FILE = {"default": CONFIG_FILES["sds_default"], "ROOTCA": CONFIG_FILES["sds_rootca"]}

# ALPN values Istio's client sidecars offer over mTLS; a PERMISSIVE port tells mTLS from
# other TLS by them.
ISTIO_MTLS_ALPNS = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
CLIENT_ALPNS = ["istio-peer-exchange", "istio"]
SERVER_ALPNS = ["h2", "http/1.1"]

_DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

# Access logs as with Istio's demo profile (meshConfig.accessLogFile: /dev/stdout): one line
# per request in Istio's default text format, in the sidecar's log. The response code
# details and UPSTREAM_TRANSPORT_FAILURE_REASON fields carry what a 503 body leaves out
# (e.g. WRONG_VERSION_NUMBER); virtualInbound also logs connections no filter chain takes
# ("NR filter_chain_not_found"), such as plaintext into a STRICT port.
ACCESS_LOG_PATH = "/dev/stdout"
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

BLACKHOLE_CLUSTER = "BlackHoleCluster"
HTTP_PROXY_ROUTE = "http_proxy"  # Istio's name for the route table of its HTTP proxy listener
UINT32_MAX = 4294967295


# ---------------------------------------------------------------------------------------
# small builders
# ---------------------------------------------------------------------------------------


def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _file_source(config_dir: Path, relative: str) -> dict[str, Any]:
    path = Path(config_dir).absolute() / relative
    return {
        "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
        "resource_api_version": "V3",
    }


def _sds(name: str, config_dir: Path) -> dict[str, Any]:
    return {"name": name, "sds_config": _file_source(config_dir, _SDS_FILE[name])}


def _access_log(no_route_only: bool = False) -> list[dict[str, Any]]:
    log: dict[str, Any] = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _FILE_LOG,
            "path": ACCESS_LOG_PATH,
            "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
        },
    }
    if no_route_only:
        log["filter"] = {"response_flag_filter": {"flags": ["NR"]}}
    return [log]


def _router() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}


def node_id(pod: Pod) -> str:
    """Istio's node id: ``sidecar~<pod ip>~<pod>.<namespace>~<namespace>.svc.cluster.local``."""
    return f"sidecar~{pod.ip}~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local"


def outbound_cluster_name(service: Service, port: int) -> str:
    return f"outbound|{port}||{service.fqdn}"


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


def outbound_sni(service: Service, port: int) -> str:
    return f"outbound_.{port}_._.{service.fqdn}"


# ---------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------


def bootstrap(pod: Pod, config_dir: Path, node_cluster: str) -> dict[str, Any]:
    """The sidecar's bootstrap: admin on ``inner_ip:15000``; listeners and clusters from
    the watched files ``lds/lds.json`` and ``cds/cds.json`` under ``config_dir``."""
    return {
        "node": {
            "id": node_id(pod),
            "cluster": node_cluster,
            "metadata": {
                "NAME": pod.name,
                "NAMESPACE": pod.namespace,
                "SERVICE_ACCOUNT": pod.service_account,
                "LABELS": dict(pod.labels),
                "INSTANCE_IPS": pod.ip,
                "CLUSTER_ID": "Kubernetes",
            },
        },
        "admin": {"address": _address(pod.inner_ip, ADMIN_PORT)},
        "dynamic_resources": {
            "lds_config": _file_source(config_dir, CONFIG_FILES["lds"]),
            "cds_config": _file_source(config_dir, CONFIG_FILES["cds"]),
        },
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        # An explicit (unreachable) connection limit: without one Envoy starts every
        # sidecar log with a warning about unlimited downstream connections.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": 2147483647,
                    },
                }
            ]
        },
    }


# ---------------------------------------------------------------------------------------
# listeners
# ---------------------------------------------------------------------------------------


def _retry_policy() -> dict[str, Any]:
    # Istio's default retry policy for every HTTP route.
    return {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    }


def _outbound_virtual_host(service: Service, port: ServicePort, client_ns: str) -> dict[str, Any]:
    domains = []
    for alias in host_aliases(service, client_ns):
        domains.append(f"{alias}:{port.port}")
        if port.port == 80:
            domains.append(alias)
    cluster = outbound_cluster_name(service, port.port)
    return {
        "name": f"{service.fqdn}:{port.port}",
        "domains": domains,
        "routes": [
            {
                "name": "default",
                "match": {"prefix": "/"},
                "route": {
                    "cluster": cluster,
                    "timeout": "0s",
                    "retry_policy": _retry_policy(),
                    "max_stream_duration": {
                        "max_stream_duration": "0s",
                        "grpc_timeout_header_max": "0s",
                    },
                },
                "decorator": {"operation": f"{service.fqdn}:{port.port}/*"},
            }
        ],
        "include_request_attempt_count": True,
    }


def _virtual_outbound(snapshot: Snapshot, pod: Pod) -> dict[str, Any]:
    vhosts = [
        _outbound_virtual_host(service, port, pod.namespace)
        for service in sorted(snapshot.services, key=lambda s: s.fqdn)
        for port in sorted(service.ports, key=lambda p: p.port)
    ]
    # A host no Service answers to. On a cluster the pod's DNS lookup would fail first, and
    # with outboundTrafficPolicy REGISTRY_ONLY Istio's catch-all route blocks the rest; here
    # the request already reached the proxy, so it gets the 404 Envoy gives when no route
    # matches (route_not_found).
    vhosts.append(
        {
            "name": "block_all",
            "domains": ["*"],
            "routes": [
                {
                    "name": "block_all",
                    "match": {"prefix": "/"},
                    "direct_response": {
                        "status": 404,
                        "body": {
                            "inline_string": "no Service in the mesh has this host and port\n"
                        },
                    },
                }
            ],
        }
    )
    hcm = {
        "@type": _HCM,
        "stat_prefix": "virtualOutbound",
        "route_config": {
            "name": HTTP_PROXY_ROUTE,
            "virtual_hosts": vhosts,
            "validate_clusters": False,
        },
        "http_filters": [_router()],
        "access_log": _access_log(),
        # The app speaks to its proxy: absolute-form URIs, and curl -0 must not get a 426.
        "http_protocol_options": {"accept_http_10": True},
        "use_remote_address": False,
        "normalize_path": True,
        "server_name": "istio-envoy",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    }
    return {
        "name": "virtualOutbound",
        "address": _address(pod.inner_ip, OUTBOUND_PORT),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "name": "virtualOutbound-http-proxy",
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


def inbound_ports(snapshot: Snapshot, pod: Pod) -> list[int]:
    """The container ports the sidecar serves: declared ports plus Service target ports."""
    ports = set(pod.container_ports)
    ports.update(cport for _, _, cport in snapshot.ports_targeting(pod))
    return sorted(ports)


def _downstream_tls(snapshot: Snapshot, config_dir: Path) -> dict[str, Any]:
    trust_domain = snapshot.mesh.trust_domain
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": SERVER_ALPNS,
                "tls_certificate_sds_secret_configs": [_sds("default", config_dir)],
                "combined_validation_context": {
                    # Any workload of this trust domain; the chain must lead to ROOTCA.
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {
                                "san_type": "URI",
                                "matcher": {"prefix": f"spiffe://{trust_domain}/"},
                            }
                        ]
                    },
                    "validation_context_sds_secret_config": _sds("ROOTCA", config_dir),
                },
            },
            "require_client_certificate": True,
        },
    }


def _inbound_hcm(port: int, services: list[tuple[Service, ServicePort, int]]) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "cluster": inbound_cluster_name(port),
            "timeout": "0s",
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        },
    }
    serving = [(s, sp) for s, sp, cport in services if cport == port]
    if serving:
        service, sp = serving[0]
        route["decorator"] = {"operation": f"{service.fqdn}:{sp.port}/*"}
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": f"inbound_0.0.0.0_{port}",
            "route_config": {
                "name": inbound_cluster_name(port),
                "virtual_hosts": [
                    {"name": f"inbound|http|{port}", "domains": ["*"], "routes": [route]}
                ],
                "validate_clusters": False,
            },
            "http_filters": [_router()],
            "access_log": _access_log(),
            # Over mTLS the app gets X-Forwarded-Client-Cert:
            # By=<own SPIFFE id>;Hash=<sha256 of the client cert>;Subject="";URI=<client id>.
            # Envoy drops any XFCC header on plaintext connections.
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
            "use_remote_address": False,
            "normalize_path": True,
            "server_name": "istio-envoy",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
        },
    }


def _inbound_chains(
    snapshot: Snapshot, pod: Pod, port: int, config_dir: Path, services: list[Any]
) -> list[dict[str, Any]]:
    mode = policy.effective_peer_authentication(snapshot, pod, port).mode
    name = f"0.0.0.0_{port}"
    if mode == policy.DISABLE:
        # No transport_protocol match: a TLS ClientHello lands in the HTTP codec, which
        # answers 400 in plaintext, and the client's TLS stack reports WRONG_VERSION_NUMBER,
        # the error a client sees on a cluster too.
        return [
            {
                "name": name,
                "filter_chain_match": {"destination_port": port},
                "filters": [_inbound_hcm(port, services)],
            }
        ]
    mtls_match: dict[str, Any] = {"destination_port": port, "transport_protocol": "tls"}
    if mode == policy.PERMISSIVE:
        # Istio's ALPN values tell a sidecar's mTLS apart from other TLS.
        mtls_match["application_protocols"] = ISTIO_MTLS_ALPNS
    chains = [
        {
            "name": name,
            "filter_chain_match": mtls_match,
            "transport_socket": _downstream_tls(snapshot, config_dir),
            "filters": [_inbound_hcm(port, services)],
        }
    ]
    if mode == policy.PERMISSIVE:
        chains.append(
            {
                "name": name,
                "filter_chain_match": {
                    "destination_port": port,
                    "transport_protocol": "raw_buffer",
                },
                "filters": [_inbound_hcm(port, services)],
            }
        )
    # STRICT: nothing else. Plaintext matches no chain and Envoy closes the connection
    # (stat no_filter_chain_match): the client sees a reset.
    return chains


def _virtual_inbound(snapshot: Snapshot, pod: Pod, config_dir: Path) -> dict[str, Any]:
    services = snapshot.ports_targeting(pod)
    chains: list[dict[str, Any]] = [
        {
            # Istio's guard against connections addressed to 15006 itself.
            "name": "virtualInbound-blackhole",
            "filter_chain_match": {"destination_port": INBOUND_PORT},
            "filters": [
                {
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": _TCP_PROXY,
                        "stat_prefix": BLACKHOLE_CLUSTER,
                        "cluster": BLACKHOLE_CLUSTER,
                    },
                }
            ],
        }
    ]
    for port in inbound_ports(snapshot, pod):
        chains += _inbound_chains(snapshot, pod, port, config_dir, services)
    return {
        "name": "virtualInbound",
        "address": _address(pod.inner_ip, INBOUND_PORT),
        "traffic_direction": "INBOUND",
        "listener_filters": [
            # First the relay's PROXY v2 header (client address, original destination)...
            {
                "name": "envoy.filters.listener.proxy_protocol",
                "typed_config": {"@type": _PROXY_PROTOCOL},
            },
            # ...then TLS or not, and the ALPN offered.
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": _TLS_INSPECTOR},
            },
        ],
        "filter_chains": chains,
        "access_log": _access_log(no_route_only=True),
    }


def listeners(snapshot: Snapshot, pod: Pod, config_dir: Path) -> list[dict[str, Any]]:
    """LDS: ``virtualOutbound`` (the app's HTTP proxy) and ``virtualInbound``."""
    return [_virtual_outbound(snapshot, pod), _virtual_inbound(snapshot, pod, config_dir)]


# ---------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------


def _upstream_tls(
    snapshot: Snapshot, service: Service, port: int, endpoints: list[Pod], config_dir: Path
) -> dict[str, Any]:
    trust_domain = snapshot.mesh.trust_domain
    identities = sorted(
        {spiffe_id(p.namespace, p.service_account, trust_domain) for p in endpoints}
    )
    validation: dict[str, Any] = {}
    if identities:
        # Secure naming: the server must present one of the service's identities.
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": identity}} for identity in identities
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            "common_tls_context": {
                "tls_params": _client_tls_params(snapshot),
                "alpn_protocols": CLIENT_ALPNS,
                "tls_certificate_sds_secret_configs": [_sds("default", config_dir)],
                "combined_validation_context": {
                    "default_validation_context": validation,
                    "validation_context_sds_secret_config": _sds("ROOTCA", config_dir),
                },
            },
            "sni": outbound_sni(service, port),
        },
    }


def _client_tls_params(snapshot: Snapshot) -> dict[str, str]:
    """What a client sidecar offers: TLS 1.2 up to the mesh's maximum (1.3, as Istio)."""
    return {
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": snapshot.mesh.tls_max_version,
    }


def _simple_tls(snapshot: Snapshot, service: Service) -> dict[str, Any]:
    # DestinationRule SIMPLE / MUTUAL: TLS origination with certificates the rule names. The
    # embedded mesh has no such files, so it sends TLS without a client certificate and
    # without server verification; a sidecar on the other side refuses it, as on a cluster.
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            "common_tls_context": {
                "tls_params": _client_tls_params(snapshot)
            },
            "sni": service.fqdn,
        },
    }


def _outbound_cluster(
    snapshot: Snapshot, pod: Pod, service: Service, port: ServicePort, config_dir: Path
) -> dict[str, Any]:
    name = outbound_cluster_name(service, port.port)
    endpoints = snapshot.endpoints(service)
    lb_endpoints = []
    for ep in endpoints:
        cport = target_port(ep, port)
        if cport is None:
            continue  # a named targetPort the pod does not declare: not an endpoint
        lb: dict[str, Any] = {"endpoint": {"address": _address(ep.ip, cport)}}
        if policy.endpoint_accepts_auto_mtls(snapshot, ep, cport):
            lb["metadata"] = {
                "filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}
            }
        lb["load_balancing_weight"] = 1
        lb_endpoints.append(lb)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
        },
        # Connect from the pod's own address, so the server sees which pod called.
        "upstream_bind_config": {"source_address": {"address": pod.ip, "port_value": 0}},
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": UINT32_MAX,
                    "max_pending_requests": UINT32_MAX,
                    "max_requests": UINT32_MAX,
                    "max_retries": UINT32_MAX,
                    "track_remaining": True,
                }
            ]
        },
        "metadata": {
            "filter_metadata": {
                "istio": {
                    "services": [
                        {"host": service.fqdn, "name": service.name, "namespace": service.namespace}
                    ],
                    "default_original_port": port.port,
                }
            }
        },
    }
    rule = policy.destination_rule_for(snapshot, pod.namespace, service)
    mode, _ = policy.destination_rule_tls(rule, port.port)
    if rule is not None:
        cluster["metadata"]["filter_metadata"]["istio"]["config"] = (
            f"/apis/networking.istio.io/v1/namespaces/{rule.namespace}/destination-rule/{rule.name}"
        )
    if mode == policy.ISTIO_MUTUAL:
        cluster["transport_socket"] = _upstream_tls(
            snapshot, service, port.port, endpoints, config_dir
        )
    elif mode in (policy.SIMPLE, policy.MUTUAL):
        cluster["transport_socket"] = _simple_tls(snapshot, service)
    elif mode is None and snapshot.mesh.auto_mtls:
        # Auto mTLS: per endpoint, mTLS where it is labelled tlsMode=istio, else plaintext.
        cluster["transport_socket_matches"] = [
            {
                "name": "tlsMode-istio",
                "match": {"tlsMode": "istio"},
                "transport_socket": _upstream_tls(
                    snapshot, service, port.port, endpoints, config_dir
                ),
            },
            {
                "name": "tlsMode-disabled",
                "match": {},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": _RAW_BUFFER},
                },
            },
        ]
    # DISABLE, or auto mTLS off with no rule: no transport socket, plaintext.
    return cluster


def _inbound_cluster(pod: Pod, port: int, services: list[Any]) -> dict[str, Any]:
    name = inbound_cluster_name(port)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(pod.inner_ip, port)}}]}
            ],
        },
    }
    serving = [
        {"host": s.fqdn, "name": s.name, "namespace": s.namespace}
        for s, _, cport in services
        if cport == port
    ]
    if serving:
        cluster["metadata"] = {"filter_metadata": {"istio": {"services": serving}}}
    return cluster


def clusters(snapshot: Snapshot, pod: Pod, config_dir: Path) -> list[dict[str, Any]]:
    """CDS: one ``outbound|<port>||<fqdn>`` per Service port in the mesh, one
    ``inbound|<port>||`` per served container port, and ``BlackHoleCluster``."""
    out = [
        _outbound_cluster(snapshot, pod, service, port, config_dir)
        for service in sorted(snapshot.services, key=lambda s: s.fqdn)
        for port in sorted(service.ports, key=lambda p: p.port)
    ]
    services = snapshot.ports_targeting(pod)
    out += [_inbound_cluster(pod, port, services) for port in inbound_ports(snapshot, pod)]
    out.append({"name": BLACKHOLE_CLUSTER, "type": "STATIC", "connect_timeout": "10s"})
    return out


# ---------------------------------------------------------------------------------------
# secrets and documents
# ---------------------------------------------------------------------------------------


def _inline(pem: bytes) -> dict[str, str]:
    return {"inline_bytes": base64.b64encode(pem).decode()}


def secret_resources(cert: WorkloadCertificate, root_pem: bytes) -> dict[str, dict[str, Any]]:
    """The two SDS ``Secret`` resources: ``default`` (certificate chain and key) and
    ``ROOTCA`` (the root that validates peers)."""
    return {
        "default": {
            "name": "default",
            "tls_certificate": {
                "certificate_chain": _inline(cert.chain_pem or cert.cert_pem),
                "private_key": _inline(cert.key_pem),
            },
        },
        "ROOTCA": {"name": "ROOTCA", "validation_context": {"trusted_ca": _inline(root_pem)}},
    }


def secrets(cert: WorkloadCertificate, root_pem: bytes) -> dict[str, dict[str, Any]]:
    """The SDS files' contents: ``{"default": <DiscoveryResponse>, "ROOTCA": <...>}``,
    written to ``sds/default.json`` and ``sds/rootca.json``."""
    return {
        name: discovery_response([resource], SECRET_TYPE, version_of([resource]))
        for name, resource in secret_resources(cert, root_pem).items()
    }


def discovery_response(
    resources: list[dict[str, Any]], type_url: str, version: str
) -> dict[str, Any]:
    """A DiscoveryResponse document, as Envoy reads it from a path config source."""
    return {
        "version_info": version,
        "type_url": type_url,
        "resources": [r if "@type" in r else {"@type": type_url, **r} for r in resources],
    }


def version_of(resources: Any) -> str:
    """A stable hash of the content: unchanged config keeps its version (and its file)."""
    text = json.dumps(resources, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
