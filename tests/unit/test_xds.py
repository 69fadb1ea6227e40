"""Envoy config generation (xds.py): the shapes istiod would produce, and Envoy's own
``--mode validate`` accepting every combination the lessons use."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshlab.embedded import xds
from meshlab.embedded.ca import CertificateAuthority
from meshlab.embedded.model import (
    DestinationRule,
    MeshConfig,
    PeerAuthentication,
    Pod,
    Service,
    ServicePort,
    Snapshot,
)

NS = "istio-meshlab"
CONFIG = Path("/nonexistent/meshlab/pods/istio-meshlab/service-a-1")
ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"

CLIENT = Pod(
    "service-a-1", NS, {"app": "service-a"}, "service-a", "127.1.0.2", "127.1.0.3", True, (8080,)
)
SERVER = Pod(
    "service-b-v1-1",
    NS,
    {"app": "service-b-v1", "version": "v1"},
    "service-b-v1",
    "127.1.0.4",
    "127.1.0.5",
    True,
    (8080, 9090),
    {"http-alt": 9090},
)
SERVER2 = Pod(
    "service-b-v1-2",
    NS,
    {"app": "service-b-v1", "version": "v1"},
    "service-b-v1-alt",
    "127.1.0.6",
    "127.1.0.7",
    True,
    (8080, 9090),
    {"http-alt": 9090},
)
LEGACY = Pod(
    "legacy-1", "legacy", {"app": "legacy"}, "default", "127.1.0.8", "127.1.0.9", False, (80,)
)

SVC_A = Service("service-a", NS, {"app": "service-a"}, (ServicePort(8080, 8080, "http"),))
SVC_B = Service(
    "service-b-v1",
    NS,
    {"app": "service-b-v1"},
    (ServicePort(8080, 8080, "http"), ServicePort(80, "http-alt", "http-80")),
)
SVC_LEGACY = Service("legacy", "legacy", {"app": "legacy"}, (ServicePort(80, 80, "http"),))
FQDN_B = SVC_B.fqdn


def snapshot(*objs: Any, auto_mtls: bool = True, tls_max: str = "TLSv1_3") -> Snapshot:
    return Snapshot(
        pods=(CLIENT, SERVER, SERVER2, LEGACY),
        services=(SVC_A, SVC_B, SVC_LEGACY),
        peer_authentications=tuple(o for o in objs if isinstance(o, PeerAuthentication)),
        destination_rules=tuple(o for o in objs if isinstance(o, DestinationRule)),
        mesh=MeshConfig(auto_mtls=auto_mtls, tls_max_version=tls_max),
    )


def ns_policy(mode: str) -> PeerAuthentication:
    return PeerAuthentication("default", NS, 1.0, None, mode)


def rule(mode: str | None, ports: dict[int, str] | None = None) -> DestinationRule:
    return DestinationRule("service-b-v1", NS, 1.0, "service-b-v1", mode, ports or {})


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca") / "ca", key_type="EC")


@pytest.fixture(scope="module")
def cert(ca):
    return ca.issue(NS, "service-a", key_type="EC")


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [i for i in items if i["name"] == name]
    assert len(found) == 1, f"{name}: {[i['name'] for i in items]}"
    return found[0]


def hcm_of(chain: dict[str, Any]) -> dict[str, Any]:
    (flt,) = chain["filters"]
    assert flt["name"] == "envoy.filters.network.http_connection_manager"
    return flt["typed_config"]


def inbound_chains(snap: Snapshot, pod: Pod = SERVER, port: int | None = None) -> list[dict]:
    listener = by_name(xds.listeners(snap, pod, CONFIG), "virtualInbound")
    chains = [c for c in listener["filter_chains"] if c["name"] != "virtualInbound-blackhole"]
    if port is not None:
        chains = [c for c in chains if c["filter_chain_match"]["destination_port"] == port]
    return chains


def cluster(snap: Snapshot, name: str, pod: Pod = CLIENT) -> dict[str, Any]:
    return by_name(xds.clusters(snap, pod, CONFIG), name)


# ---------------------------------------------------------------------------------------
# Envoy validation
# ---------------------------------------------------------------------------------------


def _inline_sds(obj: Any) -> Any:
    """Turn SDS references into references to static secrets."""
    if isinstance(obj, dict):
        if "sds_config" in obj and "name" in obj:
            obj = {k: v for k, v in obj.items() if k != "sds_config"}
        return {k: _inline_sds(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_inline_sds(v) for v in obj]
    return obj


def envoy_validate(snap: Snapshot, pod: Pod, cert, root_pem: bytes, tmp_path: Path) -> None:
    """Inline the generated resources as static_resources and run ``envoy --mode validate``
    (it does not read path_config_source files, so the dynamic bootstrap alone proves
    little)."""
    if not ENVOY.exists():
        pytest.skip("envoy binary not installed in .venv")
    docs = xds.secrets(cert, root_pem)
    secrets = [
        {k: v for k, v in doc["resources"][0].items() if k != "@type"} for doc in docs.values()
    ]
    boot = xds.bootstrap(pod, CONFIG, "validate")
    del boot["dynamic_resources"]
    boot["static_resources"] = {
        "listeners": _inline_sds(xds.listeners(snap, pod, CONFIG)),
        "clusters": _inline_sds(xds.clusters(snap, pod, CONFIG)),
        "secrets": secrets,
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    out = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


CASES = {
    "no-policy": snapshot(),
    "strict": snapshot(ns_policy("STRICT")),
    "permissive": snapshot(ns_policy("PERMISSIVE")),
    "disable": snapshot(ns_policy("DISABLE")),
    "port-level": snapshot(
        ns_policy("STRICT"),
        PeerAuthentication("b", NS, 2.0, {"app": "service-b-v1"}, None, {9090: "DISABLE"}),
    ),
    "auto-mtls-off": snapshot(ns_policy("STRICT"), auto_mtls=False),
    "dr-disable": snapshot(ns_policy("STRICT"), rule("DISABLE")),
    "dr-istio-mutual": snapshot(rule("ISTIO_MUTUAL")),
    "dr-port-level": snapshot(rule("ISTIO_MUTUAL", {80: "DISABLE"})),
    "dr-simple": snapshot(rule("SIMPLE")),
    "tls-1.2": snapshot(tls_max="TLSv1_2"),
    "no-endpoints": Snapshot(pods=(CLIENT,), services=(SVC_A, SVC_B, SVC_LEGACY)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pod", [CLIENT, SERVER], ids=["client", "server"])
def test_envoy_accepts_generated_config(case, pod, cert, ca, tmp_path):
    envoy_validate(CASES[case], pod, cert, ca.root_pem, tmp_path)


def test_envoy_rejects_a_broken_config(cert, ca, tmp_path, monkeypatch):
    # The validation helper can fail: an unknown field is refused.
    real = xds._inbound_cluster

    def broken(*args):
        return {**real(*args), "no_such_field": 1}

    monkeypatch.setattr(xds, "_inbound_cluster", broken)
    with pytest.raises(AssertionError, match="no_such_field"):
        envoy_validate(snapshot(), SERVER, cert, ca.root_pem, tmp_path)


def test_envoy_accepts_the_bootstrap(tmp_path):
    if not ENVOY.exists():
        pytest.skip("envoy binary not installed in .venv")
    # Envoy wants the watched files to exist at start (the daemon writes them first).
    for key, type_url in (("lds", xds.LISTENER_TYPE), ("cds", xds.CLUSTER_TYPE)):
        doc = tmp_path / xds.CONFIG_FILES[key]
        doc.parent.mkdir(parents=True)
        doc.write_text(json.dumps(xds.discovery_response([], type_url, "0")))
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(xds.bootstrap(CLIENT, tmp_path, "service-a.istio-meshlab")))
    out = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------


def test_bootstrap_shape():
    boot = xds.bootstrap(CLIENT, CONFIG, "service-a.istio-meshlab")
    assert boot["node"]["id"] == (
        "sidecar~127.1.0.2~service-a-1.istio-meshlab~istio-meshlab.svc.cluster.local"
    )
    assert boot["node"]["cluster"] == "service-a.istio-meshlab"
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.1.0.3",
        "port_value": 15000,
    }
    lds = boot["dynamic_resources"]["lds_config"]
    assert lds["resource_api_version"] == "V3"
    assert lds["path_config_source"] == {
        "path": str(CONFIG / "lds" / "lds.json"),
        "watched_directory": {"path": str(CONFIG / "lds")},
    }
    cds = boot["dynamic_resources"]["cds_config"]["path_config_source"]
    assert cds["path"] == str(CONFIG / "cds" / "cds.json")
    assert cds["watched_directory"]["path"] == str(CONFIG / "cds")
    assert "layered_runtime" in boot


def test_relative_config_dir_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    boot = xds.bootstrap(CLIENT, Path("pods/a"), "x")
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == str(
        tmp_path / "pods" / "a" / "lds" / "lds.json"
    )


# ---------------------------------------------------------------------------------------
# virtualOutbound
# ---------------------------------------------------------------------------------------


def outbound(snap: Snapshot | None = None, pod: Pod = CLIENT) -> dict[str, Any]:
    listener = by_name(xds.listeners(snap or snapshot(), pod, CONFIG), "virtualOutbound")
    assert listener["address"]["socket_address"] == {"address": pod.inner_ip, "port_value": 15001}
    (chain,) = listener["filter_chains"]
    return hcm_of(chain)


def test_outbound_virtual_hosts_per_service_port():
    hcm = outbound()
    assert hcm["http_protocol_options"] == {"accept_http_10": True}
    routes = hcm["route_config"]
    assert routes["name"] == "http_proxy"
    names = [v["name"] for v in routes["virtual_hosts"]]
    assert names == [
        "legacy.legacy.svc.cluster.local:80",
        "service-a.istio-meshlab.svc.cluster.local:8080",
        f"{FQDN_B}:80",
        f"{FQDN_B}:8080",
        "block_all",
    ]
    vh = by_name(routes["virtual_hosts"], f"{FQDN_B}:8080")
    assert vh["domains"] == [
        "service-b-v1:8080",
        "service-b-v1.istio-meshlab:8080",
        "service-b-v1.istio-meshlab.svc:8080",
        f"{FQDN_B}:8080",
    ]
    vh80 = by_name(routes["virtual_hosts"], f"{FQDN_B}:80")
    assert "service-b-v1" in vh80["domains"] and "service-b-v1:80" in vh80["domains"]
    assert FQDN_B in vh80["domains"]
    # Another namespace's service: no bare short name.
    legacy = by_name(routes["virtual_hosts"], "legacy.legacy.svc.cluster.local:80")
    assert "legacy" not in legacy["domains"] and "legacy.legacy" in legacy["domains"]
    all_domains = [d for v in routes["virtual_hosts"] for d in v["domains"]]
    assert len(all_domains) == len(set(all_domains))


def test_outbound_route_timeout_and_retries():
    vh = by_name(outbound()["route_config"]["virtual_hosts"], f"{FQDN_B}:8080")
    (route,) = vh["routes"]
    assert route["match"] == {"prefix": "/"}
    action = route["route"]
    assert action["cluster"] == f"outbound|8080||{FQDN_B}"
    assert action["timeout"] == "0s"
    retry = action["retry_policy"]
    assert retry["retry_on"] == (
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert retry["num_retries"] == 2
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert retry["host_selection_retry_max_attempts"] == "5"


def test_unknown_host_gets_404():
    vh = by_name(outbound()["route_config"]["virtual_hosts"], "block_all")
    assert vh["domains"] == ["*"]
    assert vh["routes"][0]["direct_response"]["status"] == 404


def test_outbound_hosts_depend_on_the_client_namespace():
    hcm = outbound(pod=LEGACY)
    vh = by_name(hcm["route_config"]["virtual_hosts"], "legacy.legacy.svc.cluster.local:80")
    assert vh["domains"][:2] == ["legacy:80", "legacy"]
    vh = by_name(hcm["route_config"]["virtual_hosts"], f"{FQDN_B}:8080")
    assert "service-b-v1:8080" not in vh["domains"]


# ---------------------------------------------------------------------------------------
# virtualInbound
# ---------------------------------------------------------------------------------------


def test_inbound_listener_filters_and_address():
    listener = by_name(xds.listeners(snapshot(), SERVER, CONFIG), "virtualInbound")
    assert listener["address"]["socket_address"] == {"address": "127.1.0.5", "port_value": 15006}
    assert [f["name"] for f in listener["listener_filters"]] == [
        "envoy.filters.listener.proxy_protocol",
        "envoy.filters.listener.tls_inspector",
    ]
    blackhole = by_name(listener["filter_chains"], "virtualInbound-blackhole")
    assert blackhole["filter_chain_match"] == {"destination_port": 15006}
    log = listener["access_log"][0]
    assert log["filter"] == {"response_flag_filter": {"flags": ["NR"]}}


def test_strict_has_only_the_mtls_chain():
    (chain,) = inbound_chains(snapshot(ns_policy("STRICT")), port=8080)
    assert chain["filter_chain_match"] == {"destination_port": 8080, "transport_protocol": "tls"}
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == ["h2", "http/1.1"]
    assert common["tls_params"] == {
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
    }
    (default,) = common["tls_certificate_sds_secret_configs"]
    assert default["name"] == "default"
    assert default["sds_config"]["path_config_source"] == {
        "path": str(CONFIG / "sds" / "default.json"),
        "watched_directory": {"path": str(CONFIG / "sds")},
    }
    combined = common["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert combined["validation_context_sds_secret_config"]["sds_config"]["path_config_source"][
        "path"
    ] == str(CONFIG / "sds" / "rootca.json")
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}
    ]


def test_permissive_has_mtls_and_plaintext_chains():
    mtls, plain = inbound_chains(snapshot(), port=8080)
    assert mtls["filter_chain_match"] == {
        "destination_port": 8080,
        "transport_protocol": "tls",
        "application_protocols": [
            "istio-peer-exchange",
            "istio",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ],
    }
    assert "transport_socket" in mtls
    assert plain["filter_chain_match"] == {
        "destination_port": 8080,
        "transport_protocol": "raw_buffer",
    }
    assert "transport_socket" not in plain


def test_disable_is_plaintext_without_transport_protocol_match():
    (chain,) = inbound_chains(snapshot(ns_policy("DISABLE")), port=8080)
    assert chain["filter_chain_match"] == {"destination_port": 8080}
    assert "transport_socket" not in chain


def test_port_level_chains_use_the_container_port():
    snap = snapshot(
        ns_policy("STRICT"),
        PeerAuthentication("b", NS, 2.0, {"app": "service-b-v1"}, None, {9090: "DISABLE"}),
    )
    (strict,) = inbound_chains(snap, port=8080)
    assert strict["filter_chain_match"]["transport_protocol"] == "tls"
    (plain,) = inbound_chains(snap, port=9090)
    assert plain["filter_chain_match"] == {"destination_port": 9090}
    # The client pod has no selector match: STRICT on its port.
    (client_chain,) = inbound_chains(snap, CLIENT, 8080)
    assert client_chain["filter_chain_match"]["transport_protocol"] == "tls"


def test_inbound_http_connection_manager():
    mtls, _ = inbound_chains(snapshot(), port=8080)
    hcm = hcm_of(mtls)
    assert hcm["stat_prefix"] == "inbound_0.0.0.0_8080"
    assert hcm["forward_client_cert_details"] == "APPEND_FORWARD"
    assert hcm["set_current_client_cert_details"] == {"subject": True, "dns": True, "uri": True}
    route_config = hcm["route_config"]
    assert route_config["name"] == "inbound|8080||"
    (vh,) = route_config["virtual_hosts"]
    assert vh["domains"] == ["*"]
    assert vh["routes"][0]["route"]["cluster"] == "inbound|8080||"
    assert vh["routes"][0]["decorator"]["operation"] == f"{FQDN_B}:8080/*"


def test_inbound_ports_include_service_target_ports():
    pod = Pod("p", NS, {"app": "service-b-v1"}, "sa", "127.1.1.2", "127.1.1.3", True, (), {})
    # No declared container ports: the numeric targetPort 8080 is still served; the named
    # one cannot be resolved.
    assert xds.inbound_ports(snapshot(), pod) == [8080]
    assert xds.inbound_ports(snapshot(), SERVER) == [8080, 9090]


def test_filter_chain_matches_are_unique():
    for snap in CASES.values():
        for pod in (CLIENT, SERVER):
            listener = by_name(xds.listeners(snap, pod, CONFIG), "virtualInbound")
            matches = [
                json.dumps(c["filter_chain_match"], sort_keys=True)
                for c in listener["filter_chains"]
            ]
            assert len(matches) == len(set(matches))


# ---------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------


def endpoints_of(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [lb for group in c["load_assignment"]["endpoints"] for lb in group["lb_endpoints"]]


def test_outbound_cluster_for_every_service_port_in_the_mesh():
    names = [c["name"] for c in xds.clusters(snapshot(), CLIENT, CONFIG)]
    assert names == [
        "outbound|80||legacy.legacy.svc.cluster.local",
        "outbound|8080||service-a.istio-meshlab.svc.cluster.local",
        f"outbound|80||{FQDN_B}",
        f"outbound|8080||{FQDN_B}",
        "inbound|8080||",
        "BlackHoleCluster",
    ]


def test_outbound_cluster_endpoints_and_source_address():
    c = cluster(snapshot(), f"outbound|8080||{FQDN_B}")
    assert c["type"] == "STATIC"
    assert c["connect_timeout"] == "10s"
    assert c["upstream_bind_config"] == {
        "source_address": {"address": "127.1.0.2", "port_value": 0}
    }
    addrs = [e["endpoint"]["address"]["socket_address"] for e in endpoints_of(c)]
    assert addrs == [
        {"address": "127.1.0.4", "port_value": 8080},
        {"address": "127.1.0.6", "port_value": 8080},
    ]
    # Service port 80 -> named targetPort http-alt -> container port 9090.
    c80 = cluster(snapshot(), f"outbound|80||{FQDN_B}")
    assert [
        e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints_of(c80)
    ] == [
        9090,
        9090,
    ]


def test_service_without_ready_endpoints_has_an_empty_cluster():
    snap = Snapshot(pods=(CLIENT,), services=(SVC_A, SVC_B))
    assert endpoints_of(cluster(snap, f"outbound|8080||{FQDN_B}")) == []


def test_auto_mtls_uses_transport_socket_matches():
    c = cluster(snapshot(), f"outbound|8080||{FQDN_B}")
    assert "transport_socket" not in c
    istio, plain = c["transport_socket_matches"]
    assert istio["name"] == "tlsMode-istio" and istio["match"] == {"tlsMode": "istio"}
    assert plain["name"] == "tlsMode-disabled" and plain["match"] == {}
    assert plain["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    tls = istio["transport_socket"]["typed_config"]
    assert tls["sni"] == f"outbound_.8080_._.{FQDN_B}"
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == ["istio-peer-exchange", "istio"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    combined = common["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {
            "san_type": "URI",
            "matcher": {"exact": f"spiffe://cluster.local/ns/{NS}/sa/service-b-v1"},
        },
        {
            "san_type": "URI",
            "matcher": {"exact": f"spiffe://cluster.local/ns/{NS}/sa/service-b-v1-alt"},
        },
    ]
    assert common["tls_params"]["tls_maximum_protocol_version"] == "TLSv1_3"
    for lb in endpoints_of(c):
        assert lb["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {
            "tlsMode": "istio"
        }


def test_tls_max_version_follows_mesh_config():
    c = cluster(snapshot(tls_max="TLSv1_2"), f"outbound|8080||{FQDN_B}")
    tls = c["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["tls_params"]["tls_maximum_protocol_version"] == "TLSv1_2"


def test_endpoints_without_sidecar_or_with_disable_are_not_labelled_istio():
    legacy = cluster(snapshot(), "outbound|80||legacy.legacy.svc.cluster.local")
    assert all("metadata" not in lb for lb in endpoints_of(legacy))
    snap = snapshot(
        PeerAuthentication("b", NS, 2.0, {"app": "service-b-v1"}, None, {9090: "DISABLE"})
    )
    assert all("metadata" not in lb for lb in endpoints_of(cluster(snap, f"outbound|80||{FQDN_B}")))
    assert all("metadata" in lb for lb in endpoints_of(cluster(snap, f"outbound|8080||{FQDN_B}")))


def test_destination_rule_istio_mutual_sets_the_transport_socket():
    c = cluster(snapshot(rule("ISTIO_MUTUAL")), f"outbound|8080||{FQDN_B}")
    assert "transport_socket_matches" not in c
    assert c["transport_socket"]["typed_config"]["sni"] == f"outbound_.8080_._.{FQDN_B}"
    assert c["metadata"]["filter_metadata"]["istio"]["config"].endswith(
        f"/namespaces/{NS}/destination-rule/service-b-v1"
    )


def test_destination_rule_disable_and_auto_mtls_off_are_plaintext():
    for snap in (snapshot(rule("DISABLE")), snapshot(auto_mtls=False)):
        c = cluster(snap, f"outbound|8080||{FQDN_B}")
        assert "transport_socket" not in c and "transport_socket_matches" not in c


def test_destination_rule_port_level_tls():
    snap = snapshot(rule("ISTIO_MUTUAL", {80: "DISABLE"}))
    assert "transport_socket" in cluster(snap, f"outbound|8080||{FQDN_B}")
    c80 = cluster(snap, f"outbound|80||{FQDN_B}")
    assert "transport_socket" not in c80 and "transport_socket_matches" not in c80
    # Other services keep auto mTLS.
    assert "transport_socket_matches" in cluster(
        snap, "outbound|8080||service-a.istio-meshlab.svc.cluster.local"
    )


def test_destination_rule_simple_originates_tls_without_client_certificate():
    c = cluster(snapshot(rule("SIMPLE")), f"outbound|8080||{FQDN_B}")
    common = c["transport_socket"]["typed_config"]["common_tls_context"]
    assert "tls_certificate_sds_secret_configs" not in common


def test_inbound_and_blackhole_clusters():
    clusters = xds.clusters(snapshot(), SERVER, CONFIG)
    for port in (8080, 9090):
        c = by_name(clusters, f"inbound|{port}||")
        assert c["type"] == "STATIC"
        assert [e["endpoint"]["address"]["socket_address"] for e in endpoints_of(c)] == [
            {"address": "127.1.0.5", "port_value": port}
        ]
    assert by_name(clusters, "BlackHoleCluster")["type"] == "STATIC"


# ---------------------------------------------------------------------------------------
# secrets, documents, versions
# ---------------------------------------------------------------------------------------


def test_secrets_documents(cert, ca):
    docs = xds.secrets(cert, ca.root_pem)
    assert set(docs) == {"default", "ROOTCA"}
    default = docs["default"]
    assert default["type_url"] == xds.SECRET_TYPE
    (res,) = default["resources"]
    assert res["@type"] == xds.SECRET_TYPE and res["name"] == "default"
    tls = res["tls_certificate"]
    assert base64.b64decode(tls["certificate_chain"]["inline_bytes"]) == cert.chain_pem
    assert base64.b64decode(tls["private_key"]["inline_bytes"]) == cert.key_pem
    (root,) = docs["ROOTCA"]["resources"]
    assert root["name"] == "ROOTCA"
    assert base64.b64decode(root["validation_context"]["trusted_ca"]["inline_bytes"]) == ca.root_pem
    assert default["version_info"] == xds.version_of(
        [{k: v for k, v in res.items() if k != "@type"}]
    )


def test_secret_version_changes_with_the_certificate(cert, ca):
    first = xds.secrets(cert, ca.root_pem)
    again = xds.secrets(cert, ca.root_pem)
    rotated = xds.secrets(ca.issue(NS, "service-a", key_type="EC"), ca.root_pem)
    assert first["default"]["version_info"] == again["default"]["version_info"]
    assert first["default"]["version_info"] != rotated["default"]["version_info"]
    assert first["ROOTCA"]["version_info"] == rotated["ROOTCA"]["version_info"]


def test_discovery_response_and_version():
    listeners = xds.listeners(snapshot(), CLIENT, CONFIG)
    doc = xds.discovery_response(listeners, xds.LISTENER_TYPE, "v1")
    assert doc["version_info"] == "v1" and doc["type_url"] == xds.LISTENER_TYPE
    assert all(r["@type"] == xds.LISTENER_TYPE for r in doc["resources"])
    assert [r["name"] for r in doc["resources"]] == ["virtualOutbound", "virtualInbound"]
    assert "@type" not in listeners[0]  # the input is not modified
    v = xds.version_of(listeners)
    assert v == xds.version_of(xds.listeners(snapshot(), CLIENT, CONFIG))
    assert v != xds.version_of(xds.listeners(snapshot(ns_policy("STRICT")), CLIENT, CONFIG))
    assert xds.version_of({"a": 1, "b": 2}) == xds.version_of({"b": 2, "a": 1})


def test_output_is_json_and_nothing_is_written(cert, ca):
    json.dumps(xds.listeners(snapshot(), SERVER, CONFIG))
    json.dumps(xds.clusters(snapshot(), SERVER, CONFIG))
    json.dumps(xds.secrets(cert, ca.root_pem))
    json.dumps(xds.bootstrap(SERVER, CONFIG, "x"))
    assert not CONFIG.exists()


def test_config_files_match_the_references():
    assert xds.CONFIG_FILES == {
        "lds": "lds/lds.json",
        "cds": "cds/cds.json",
        "sds_default": "sds/default.json",
        "sds_rootca": "sds/rootca.json",
    }
