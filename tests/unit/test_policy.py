"""Istio's mTLS rules (policy.py): PeerAuthentication precedence, DestinationRule lookup,
client TLS and call predictions."""

from __future__ import annotations

from meshlab.embedded import policy
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
ROOT = "istio-system"


def pod(name="service-b-v1-1", ns=NS, app="service-b-v1", sidecar=True, ports=(8080,), **kw):
    return Pod(
        name=name,
        namespace=ns,
        labels={"app": app, **kw.pop("labels", {})},
        service_account=kw.pop("sa", app),
        ip=kw.pop("ip", "127.1.0.2"),
        inner_ip=kw.pop("inner_ip", "127.1.0.3"),
        sidecar=sidecar,
        container_ports=ports,
        **kw,
    )


def service(name="service-b-v1", ns=NS, app=None, port=8080, target=8080):
    return Service(name, ns, {"app": app or name}, (ServicePort(port, target, "http"),))


def pa(name, ns=NS, mode=None, selector=None, created=1.0, ports=None):
    return PeerAuthentication(name, ns, created, selector, mode, dict(ports or {}))


def dr(name, host, ns=NS, mode="ISTIO_MUTUAL", created=1.0, export_to=(), ports=None):
    return DestinationRule(name, ns, created, host, mode, dict(ports or {}), tuple(export_to))


def snap(*objs, pods=(), services=(), auto_mtls=True):
    return Snapshot(
        pods=tuple(pods),
        services=tuple(services),
        peer_authentications=tuple(o for o in objs if isinstance(o, PeerAuthentication)),
        destination_rules=tuple(o for o in objs if isinstance(o, DestinationRule)),
        mesh=MeshConfig(auto_mtls=auto_mtls),
    )


def mode(s, p=None, port=8080):
    return policy.effective_peer_authentication(s, p or pod(), port).mode


# ---------------------------------------------------------------------------------------
# PeerAuthentication
# ---------------------------------------------------------------------------------------


def test_no_policy_is_permissive_with_empty_chain():
    eff = policy.effective_peer_authentication(snap(), pod(), 8080)
    assert eff.mode == "PERMISSIVE"
    assert eff.decided_by == ()
    assert eff.source is None
    assert "default" in eff.explain()[-1]


def test_mesh_level_is_a_root_namespace_policy_without_selector():
    eff = policy.effective_peer_authentication(snap(pa("default", ROOT, "STRICT")), pod(), 8080)
    assert eff.mode == "STRICT"
    assert eff.decided_by == (policy.PolicyLevel("mesh", f"{ROOT}/default", "STRICT"),)
    assert eff.source.policy == f"{ROOT}/default"


def test_namespace_overrides_mesh_and_workload_overrides_namespace():
    s = snap(
        pa("default", ROOT, "STRICT"),
        pa("ns", NS, "PERMISSIVE"),
        pa("wl", NS, "DISABLE", {"app": "service-b-v1"}),
    )
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "DISABLE"
    assert [lvl.level for lvl in eff.decided_by] == ["mesh", "namespace", "workload"]
    assert [lvl.mode for lvl in eff.decided_by] == ["STRICT", "PERMISSIVE", "DISABLE"]
    assert eff.source.level == "workload"


def test_unset_inherits_from_the_level_above():
    s = snap(
        pa("default", ROOT, "STRICT"),
        pa("ns", NS, "UNSET"),
        pa("wl", NS, None, {"app": "service-b-v1"}),
    )
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "STRICT"
    assert eff.source.level == "mesh"
    assert [lvl.mode for lvl in eff.decided_by] == ["STRICT", "UNSET", "UNSET"]


def test_policies_of_other_namespaces_do_not_apply():
    s = snap(pa("ns", "foo", "STRICT"), pa("wl", "foo", "STRICT", {"app": "service-b-v1"}))
    assert mode(s) == "PERMISSIVE"


def test_workload_selector_must_match_all_labels():
    s = snap(pa("wl", NS, "STRICT", {"app": "service-b-v1", "version": "v2"}))
    assert mode(s) == "PERMISSIVE"
    assert mode(s, pod(labels={"version": "v2"})) == "STRICT"


def test_empty_match_labels_is_namespace_level():
    eff = policy.effective_peer_authentication(snap(pa("ns", NS, "STRICT", {})), pod(), 8080)
    assert eff.mode == "STRICT"
    assert eff.decided_by[0].level == "namespace"


def test_selector_policy_in_root_namespace_is_ignored_and_reported():
    s = snap(pa("wl", ROOT, "STRICT", {"app": "service-b-v1"}))
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "PERMISSIVE"
    assert eff.ignored and eff.ignored[0][0] == f"{ROOT}/wl"
    assert "root namespace" in eff.ignored[0][1]


def test_oldest_policy_wins_a_level():
    s = snap(pa("newer", NS, "DISABLE", created=20.0), pa("older", NS, "STRICT", created=10.0))
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "STRICT"
    assert eff.decided_by[0].policy == f"{NS}/older"
    assert (f"{NS}/newer", f"{NS}/older is older and wins the namespace level") in eff.ignored


def test_oldest_wins_among_workload_policies_too():
    s = snap(
        pa("b", NS, "STRICT", {"app": "service-b-v1"}, created=5.0),
        pa("a", NS, "DISABLE", {"app": "service-b-v1"}, created=6.0),
    )
    assert mode(s) == "STRICT"


def test_same_creation_time_is_decided_by_name():
    s = snap(pa("zeta", NS, "DISABLE", created=1.0), pa("alpha", NS, "STRICT", created=1.0))
    assert mode(s) == "STRICT"
    s = snap(pa("alpha", NS, "DISABLE", created=1.0), pa("zeta", NS, "STRICT", created=1.0))
    assert mode(s) == "DISABLE"


def test_port_level_is_keyed_by_container_port():
    p = pod(ports=(8080, 9090))
    s = snap(
        pa("ns", NS, "STRICT"),
        pa("wl", NS, "STRICT", {"app": "service-b-v1"}, ports={8080: "DISABLE"}),
    )
    eff = policy.effective_peer_authentication(s, p, 8080)
    assert eff.mode == "DISABLE"
    assert eff.decided_by[-1] == policy.PolicyLevel("port", f"{NS}/wl", "DISABLE", 8080)
    assert mode(s, p, 9090) == "STRICT"
    # The workload-wide answer leaves port-level settings out.
    assert mode(s, p, None) == "STRICT"


def test_port_level_on_workload_policy_with_unset_mode_inherits_for_other_ports():
    # istiod: an UNSET workload mode inherits from the namespace; portLevelMtls only
    # changes the listed port.
    p = pod(ports=(8080, 9090))
    s = snap(
        pa("ns", NS, "STRICT"), pa("wl", NS, None, {"app": "service-b-v1"}, ports={9090: "DISABLE"})
    )
    assert mode(s, p, 8080) == "STRICT"
    assert mode(s, p, 9090) == "DISABLE"


def test_port_level_unset_inherits_workload_mode():
    s = snap(pa("wl", NS, "STRICT", {"app": "service-b-v1"}, ports={8080: "UNSET"}))
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "STRICT"
    assert eff.decided_by[-1].level == "port" and eff.decided_by[-1].mode == "UNSET"
    assert eff.source.level == "workload"


def test_port_level_keyed_by_service_port_is_ignored_and_flagged():
    # Service port 80 -> container port 8080: portLevelMtls {80: DISABLE} never applies.
    s = snap(
        pa("ns", NS, "STRICT"), pa("wl", NS, None, {"app": "service-b-v1"}, ports={80: "DISABLE"})
    )
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "STRICT"
    assert any("not container ports" in why for _, why in eff.ignored)


def test_service_target_port_counts_as_a_container_port():
    # Kubernetes does not require declaring container ports: a Service's targetPort is one.
    p = pod(ports=())
    svc = service(port=80, target=8080)
    s = Snapshot(
        pods=(p,),
        services=(svc,),
        peer_authentications=(
            pa("wl", NS, None, {"app": "service-b-v1"}, ports={8080: "DISABLE"}),
        ),
    )
    eff = policy.effective_peer_authentication(s, p, 8080)
    assert eff.mode == "DISABLE" and not eff.ignored
    s = Snapshot(
        pods=(p,),
        services=(svc,),
        peer_authentications=(pa("wl", NS, None, {"app": "service-b-v1"}, ports={80: "DISABLE"}),),
    )
    assert policy.effective_peer_authentication(s, p, 8080).ignored


def test_port_level_without_selector_is_ignored():
    s = snap(pa("ns", NS, "STRICT", ports={8080: "DISABLE"}))
    eff = policy.effective_peer_authentication(s, pod(), 8080)
    assert eff.mode == "STRICT"
    assert any("needs a selector" in why for _, why in eff.ignored)


def test_pod_in_root_namespace_uses_only_the_mesh_policy():
    p = pod(ns=ROOT)
    s = snap(pa("default", ROOT, "STRICT"), pa("wl", ROOT, "DISABLE", {"app": "service-b-v1"}))
    assert mode(s, p) == "STRICT"


def test_custom_root_namespace():
    s = Snapshot(
        peer_authentications=(pa("default", "mesh-root", "STRICT"),),
        mesh=MeshConfig(root_namespace="mesh-root"),
    )
    assert mode(s) == "STRICT"
    assert mode(snap(pa("default", "mesh-root", "STRICT"))) == "PERMISSIVE"


# ---------------------------------------------------------------------------------------
# DestinationRule lookup
# ---------------------------------------------------------------------------------------

SVC_B = service()
FQDN_B = SVC_B.fqdn


def lookup(*rules, client_ns=NS, svc=SVC_B):
    return policy.destination_rule_for(snap(*rules), client_ns, svc)


def test_short_host_resolves_in_the_rules_namespace():
    assert policy.resolve_rule_host(dr("x", "service-b-v1")) == FQDN_B
    assert lookup(dr("x", "service-b-v1")).name == "x"
    # A short name in another namespace means a different service.
    assert lookup(dr("x", "service-b-v1", ns="foo"), client_ns=NS) is None


def test_host_with_a_dot_is_literal():
    assert (
        policy.resolve_rule_host(dr("x", "service-b-v1.istio-meshlab"))
        == "service-b-v1.istio-meshlab"
    )
    assert lookup(dr("x", "service-b-v1.istio-meshlab")) is None
    assert lookup(dr("x", FQDN_B)).name == "x"
    assert lookup(dr("x", FQDN_B.upper() + ".")).name == "x"


def test_wildcards_and_most_specific_host_wins():
    rules = [
        dr("all", "*", mode="DISABLE"),
        dr("ns-wide", f"*.{NS}.svc.cluster.local", mode="DISABLE"),
        dr("local", "*.svc.cluster.local", mode="DISABLE"),
    ]
    assert lookup(*rules).name == "ns-wide"
    assert lookup(*rules, dr("exact", "service-b-v1", created=99.0)).name == "exact"
    assert lookup(dr("all", "*")).name == "all"
    assert lookup(dr("other", "*.foo.svc.cluster.local")) is None


def test_oldest_rule_wins_for_the_same_host():
    rules = [dr("new", "service-b-v1", created=5.0, mode="DISABLE"), dr("old", FQDN_B, created=2.0)]
    assert lookup(*rules).name == "old"


def test_lookup_order_client_namespace_then_service_then_root():
    client_rule = dr("client", FQDN_B, ns="foo", mode="DISABLE")
    svc_rule = dr("svc", "service-b-v1", ns=NS)
    root_rule = dr("root", FQDN_B, ns=ROOT)
    assert lookup(client_rule, svc_rule, root_rule, client_ns="foo").name == "client"
    assert lookup(svc_rule, root_rule, client_ns="foo").name == "svc"
    assert lookup(root_rule, client_ns="foo").name == "root"
    # The client's namespace wins even with a less specific host.
    assert lookup(dr("wild", "*", ns="foo"), svc_rule, client_ns="foo").name == "wild"


def test_export_to_dot_keeps_a_rule_in_its_namespace():
    private = dr("private", "service-b-v1", export_to=["."])
    assert lookup(private, client_ns=NS).name == "private"
    assert lookup(private, client_ns="foo") is None


def test_export_to_named_namespaces():
    rule = dr("to-foo", "service-b-v1", export_to=["foo"])
    assert lookup(rule, client_ns="foo").name == "to-foo"
    assert lookup(rule, client_ns="bar") is None
    # Not exported to its own namespace either.
    assert lookup(rule, client_ns=NS) is None
    assert lookup(dr("star", "service-b-v1", export_to=["*"]), client_ns="bar").name == "star"
    assert lookup(dr("none", "service-b-v1", export_to=["~"]), client_ns="bar") is None


def test_unexported_rule_in_service_namespace_falls_back_to_root():
    private = dr("private", "service-b-v1", export_to=["."])
    root_rule = dr("root", FQDN_B, ns=ROOT, mode="DISABLE")
    assert lookup(private, root_rule, client_ns="foo").name == "root"
    assert lookup(private, root_rule, client_ns=NS).name == "private"


def test_most_specific_host_is_chosen_before_visibility():
    # istiod picks the exact host in the service's namespace, finds it is not exported to
    # the client, and moves on to the root namespace: the wildcard beside it is not used.
    hidden = dr("exact", "service-b-v1", export_to=["bar"])
    wildcard = dr("wild", "*", mode="DISABLE")
    root_rule = dr("root", FQDN_B, ns=ROOT, mode="DISABLE")
    assert lookup(hidden, wildcard, root_rule, client_ns="foo").name == "root"
    assert lookup(hidden, wildcard, client_ns="foo") is None
    assert lookup(hidden, wildcard, client_ns="bar").name == "exact"


def test_private_root_rules_serve_only_root_namespace_clients():
    private_root = dr("private-root", FQDN_B, ns=ROOT, export_to=["."])
    assert lookup(private_root, client_ns=ROOT).name == "private-root"
    assert lookup(private_root, client_ns="foo") is None


def test_destination_rule_tls_port_level_overrides():
    rule = dr("x", "service-b-v1", mode="ISTIO_MUTUAL", ports={9090: "DISABLE"})
    assert policy.destination_rule_tls(rule, 8080) == ("ISTIO_MUTUAL", False)
    assert policy.destination_rule_tls(rule, 9090) == ("DISABLE", True)
    assert policy.destination_rule_tls(dr("y", "h", mode=None), 8080) == (None, False)
    assert policy.destination_rule_tls(None, 8080) == (None, False)


# ---------------------------------------------------------------------------------------
# Client TLS
# ---------------------------------------------------------------------------------------

CLIENT = pod("service-a-1", app="service-a", ip="127.1.0.4", inner_ip="127.1.0.5")
SERVER = pod()
LEGACY = pod(
    "legacy-1", ns="legacy", app="legacy", sidecar=False, ip="127.1.0.6", inner_ip="127.1.0.7"
)
PLAIN_SERVER = pod(sidecar=False)


def tls(*objs, client=CLIENT, server=SERVER, port=8080, svc=SVC_B, auto=True):
    s = snap(*objs, pods=(client, server), services=(svc,), auto_mtls=auto)
    return policy.client_tls(s, client, svc, port, server)


def test_auto_mtls_to_a_sidecar():
    t = tls()
    assert (t.mode, t.mtls, t.auto) == ("ISTIO_MUTUAL", True, True)
    assert (
        t.reason
        == "auto mTLS: the destination has a sidecar and its PeerAuthentication is not DISABLE"
    )


def test_auto_mtls_plaintext_to_pod_without_sidecar():
    t = tls(server=PLAIN_SERVER)
    assert (t.mode, t.mtls) == ("DISABLE", False)
    assert "no sidecar" in t.reason


def test_auto_mtls_plaintext_when_destination_port_is_disable():
    t = tls(pa("wl", NS, "STRICT", {"app": "service-b-v1"}, ports={8080: "DISABLE"}))
    assert (t.mode, t.mtls) == ("DISABLE", False)
    assert "DISABLE" in t.reason


def test_auto_mtls_looks_at_the_target_container_port():
    svc80 = service(port=80, target=8080)
    t = tls(
        pa("wl", NS, "STRICT", {"app": "service-b-v1"}, ports={8080: "DISABLE"}), svc=svc80, port=80
    )
    assert t.mode == "DISABLE"


def test_auto_mtls_off_without_rule_is_plaintext():
    t = tls(pa("ns", NS, "STRICT"), auto=False)
    assert (t.mode, t.mtls) == ("DISABLE", False)
    assert t.reason == "auto mTLS is off and no DestinationRule sets TLS"


def test_destination_rule_tls_wins_over_auto_mtls():
    t = tls(dr("service-b-v1-mtls", "service-b-v1", mode="DISABLE"))
    assert (t.mode, t.mtls, t.auto) == ("DISABLE", False, False)
    t = tls(dr("service-b-v1-mtls", "service-b-v1", mode="ISTIO_MUTUAL"), server=PLAIN_SERVER)
    assert (t.mode, t.mtls) == ("ISTIO_MUTUAL", True)
    assert t.reason == "DestinationRule istio-meshlab/service-b-v1-mtls sets tls.mode ISTIO_MUTUAL"


def test_destination_rule_port_level_tls_for_the_service_port():
    rule = dr("r", "service-b-v1", mode="ISTIO_MUTUAL", ports={8080: "DISABLE"})
    t = tls(rule)
    assert t.mode == "DISABLE"
    assert "portLevelSettings for port 8080" in t.reason


def test_destination_rule_without_tls_leaves_auto_mtls():
    t = tls(dr("lb-only", "service-b-v1", mode=None))
    assert t.mode == "ISTIO_MUTUAL" and t.auto
    assert t.destination_rule.name == "lb-only"


def test_no_client_sidecar_means_none():
    t = tls(client=LEGACY)
    assert (t.mode, t.mtls) == ("NONE", False)
    assert policy.client_tls(snap(), None, SVC_B, 8080, SERVER).mode == "NONE"


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


def predict(*objs, client=CLIENT, server=SERVER, auto=True, svc=SVC_B, port=8080):
    s = snap(*objs, pods=tuple(p for p in (client, server) if p), services=(svc,), auto_mtls=auto)
    return policy.predict_call(s, client, svc, port, server)


def test_predict_mtls_between_sidecars():
    p = predict()
    assert (p.status, p.mtls, p.outcome) == (200, True, policy.OK)
    assert p.explanation


def test_predict_legacy_client_to_strict_is_reset():
    p = predict(pa("ns", NS, "STRICT"), client=LEGACY)
    assert (p.status, p.mtls, p.outcome, p.code) == (None, False, policy.RESET, "000")
    assert p.error == "connection reset by peer"
    assert any("STRICT" in line for line in p.explanation)


def test_predict_client_outside_the_mesh():
    p = predict(pa("ns", NS, "STRICT"), client=None)
    assert p.outcome == policy.RESET
    assert predict(client=None).status == 200


def test_predict_legacy_client_to_permissive_and_to_no_sidecar():
    assert predict(client=LEGACY).status == 200
    p = predict(pa("ns", NS, "STRICT"), client=LEGACY, server=PLAIN_SERVER)
    assert (p.status, p.mtls) == (200, False)


def test_predict_plaintext_sidecar_to_strict_is_503_connection_termination():
    p = predict(pa("ns", NS, "STRICT"), dr("off", "service-b-v1", mode="DISABLE"))
    assert (p.status, p.mtls, p.outcome) == (503, False, policy.UPSTREAM_TERMINATED)
    assert p.body_contains == "reset reason: connection termination"


def test_predict_mtls_to_disable_server_is_503_tls_error():
    p = predict(pa("ns", NS, "DISABLE"), dr("on", "service-b-v1", mode="ISTIO_MUTUAL"))
    assert (p.status, p.outcome) == (503, policy.TLS_ERROR)
    assert "connection failure" in p.body_contains
    assert any("WRONG_VERSION_NUMBER" in line for line in p.explanation)


def test_predict_mtls_rule_to_server_without_sidecar():
    p = predict(dr("on", "service-b-v1", mode="ISTIO_MUTUAL"), server=PLAIN_SERVER)
    assert (p.status, p.outcome) == (503, policy.TLS_ERROR)


def test_predict_workload_disable_overrides_namespace_strict_for_legacy_client():
    p = predict(
        pa("ns", NS, "STRICT"), pa("wl", NS, "DISABLE", {"app": "service-b-v1"}), client=LEGACY
    )
    assert (p.status, p.mtls) == (200, False)
    # ...and a sidecar client follows with auto mTLS: plaintext, still 200.
    p = predict(pa("ns", NS, "STRICT"), pa("wl", NS, "DISABLE", {"app": "service-b-v1"}))
    assert (p.status, p.mtls) == (200, False)


def test_predict_auto_mtls_off_toward_strict():
    p = predict(pa("ns", NS, "STRICT"), auto=False)
    assert (p.status, p.outcome) == (503, policy.UPSTREAM_TERMINATED)
    assert predict(auto=False).status == 200


def test_predict_simple_and_mutual_are_not_supported():
    for m in ("SIMPLE", "MUTUAL"):
        p = predict(dr("tls", "service-b-v1", mode=m))
        assert p.outcome == policy.NOT_SUPPORTED
        assert any("not simulated" in line for line in p.explanation)


def test_predict_no_endpoint():
    p = predict(server=None)
    assert (p.status, p.outcome, p.body_contains) == (
        503,
        policy.NO_ENDPOINTS,
        "no healthy upstream",
    )
    p = predict(client=LEGACY, server=None)
    assert (p.status, p.error) == (None, "connection refused")
