"""Building the analysis state (meshlab.analysis.state): from the embedded daemon's JSON
snapshot, and from objects and pods as any backend returns them (the kubernetes one)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from meshlab.analysis import describe_call, run_checks, snapshot_from_dict, snapshot_from_objects
from meshlab.analysis.state import state_from_mesh_objects, workload_of
from meshlab.api import Mesh, MeshStatus, PodStatus
from meshlab.embedded.model import MeshConfig, ServicePort
from meshlab.embedded.policy import injection_enabled, injects_sidecar
from tests.unit.test_analysis import NS, STRICT_NS, dr, lesson, pa, service


def test_daemon_snapshot_json_round_trip():
    original = lesson(
        STRICT_NS,
        pa("b", mode="STRICT", selector={"app": "service-b-v1"}, ports={8080: "DISABLE"}),
        dr("b", "service-b-v1", ports={8080: "DISABLE"}, export_to=(".",)),
        services=[service("named", target="http")],
        auto_mtls=False,
    )
    wire = json.loads(json.dumps(dataclasses.asdict(original)))
    assert "8080" in wire["peer_authentications"][1]["port_level"]  # JSON made the key a string
    assert snapshot_from_dict(wire) == original


# What `kubectl get -o json` (and the kubernetes backend's get) returns: server-set fields too.
OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": NS, "labels": {"istio-injection": "enabled"}}, "status": {}},
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "service-b-v1", "namespace": NS, "uid": "x", "managedFields": []},
     "spec": {"selector": {"app": "service-b-v1"}, "clusterIP": "10.96.0.12", "type": "ClusterIP",
              "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
     "status": {"loadBalancer": {}}},
    {"apiVersion": "apps/v1", "kind": "Deployment",
     "metadata": {"name": "service-b-v1", "namespace": NS},
     "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "service-b-v1"}},
              "spec": {"containers": [{"name": "b", "image": "b",
                       "ports": [{"name": "http", "containerPort": 8080}]}]}}}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "newer", "namespace": NS, "creationTimestamp": "2024-05-01T10:00:01Z"},
     "spec": {"mtls": {"mode": "PERMISSIVE"}}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "older", "namespace": NS, "creationTimestamp": "2024-05-01T10:00:00Z"},
     "spec": {"mtls": {"mode": "STRICT"},
              "selector": {"matchLabels": {"app": "service-b-v1"}},
              "portLevelMtls": {"8080": {"mode": "DISABLE"}}}},
    {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
     "metadata": {"name": "b", "namespace": NS, "creationTimestamp": "2024-05-01T10:00:00Z"},
     "spec": {"host": "service-b-v1", "exportTo": ["."],
              "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                                "portLevelSettings": [{"port": {"number": 80},
                                                       "tls": {"mode": "DISABLE"}}]}}},
]  # fmt: skip

PODS = [
    PodStatus("service-b-v1-7d4b9c-abcde", NS, "service-b-v1", "10.244.0.7", "Running", True,
              True, service_account="service-b-v1",
              labels={"app": "service-b-v1", "pod-template-hash": "7d4b9c"}),
    PodStatus("service-b-v1-7d4b9c-zzzzz", NS, "service-b-v1", "10.244.0.8", "Terminating",
              False, True, labels={"app": "service-b-v1", "pod-template-hash": "7d4b9c"}),
    {"name": "sleep-6f9c-q1w2e", "namespace": "legacy", "workload": "sleep", "ip": "10.244.0.9",
     "phase": "Running", "ready": True, "sidecar": False,
     "labels": {"app": "sleep", "pod-template-hash": "6f9c"}},
]  # fmt: skip


def test_snapshot_from_cluster_objects_and_pods():
    snap = snapshot_from_objects(OBJECTS, PODS, MeshConfig(auto_mtls=True))
    assert [p.name for p in snap.pods] == ["service-b-v1-7d4b9c-abcde", "sleep-6f9c-q1w2e"]
    b = snap.pods[0]
    assert b.container_ports == (8080,) and b.named_ports == {"http": 8080}  # from the template
    assert b.service_account == "service-b-v1" and b.sidecar
    assert snap.namespaces[NS] == {"istio-injection": "enabled"}
    assert "legacy" in snap.namespaces and "istio-system" in snap.namespaces
    (svc,) = snap.services
    assert svc.ports == (ServicePort(80, 8080, "http", "TCP"),)
    older = next(p for p in snap.peer_authentications if p.name == "older")
    newer = next(p for p in snap.peer_authentications if p.name == "newer")
    assert older.created < newer.created
    assert older.port_level == {8080: "DISABLE"} and older.selector == {"app": "service-b-v1"}
    (rule,) = snap.destination_rules
    assert (rule.tls_mode, rule.port_level_tls, rule.export_to) == (
        "ISTIO_MUTUAL", {80: "DISABLE"}, (".",),
    )  # fmt: skip


def test_the_same_rules_run_on_a_cluster_built_snapshot():
    state = state_from_mesh_objects(OBJECTS, PODS)
    d = describe_call(state, "sleep", "http://service-b-v1.istio-meshlab/hello", "legacy")
    # port 80 -> container port 8080, where the workload policy's port level says DISABLE
    assert d.server.container_port == 8080 and d.server.accepts == "DISABLE"
    assert d.predicted.status == 200
    assert "MLB0104" not in {f.code for f in run_checks(state)}


def test_explicit_container_ports_win_over_the_template():
    pods = [{**dataclasses.asdict(PODS[0]), "container_ports": [9090], "named_ports": {}}]
    snap = snapshot_from_objects(OBJECTS, pods)
    assert snap.pods[0].container_ports == (9090,)


def test_tls_without_mode_means_disable():
    body = {"kind": "DestinationRule", "metadata": {"name": "x", "namespace": NS},
            "spec": {"host": "h", "trafficPolicy": {"tls": {}}}}  # fmt: skip
    (rule,) = snapshot_from_objects([body], []).destination_rules
    assert rule.tls_mode == "DISABLE"


def test_workload_of():
    snap = snapshot_from_objects(OBJECTS, PODS)
    assert [workload_of(p) for p in snap.pods] == ["service-b-v1", "sleep"]
    lone = dataclasses.replace(snap.pods[0], name="standalone", labels={"app": "web"})
    assert workload_of(lone) == "web"


@pytest.mark.parametrize(
    ("ns_labels", "meta", "expected"),
    [
        ({"istio-injection": "enabled"}, {}, True),
        ({"istio.io/rev": "default"}, {}, True),
        ({}, {}, False),
        ({}, {"labels": {"sidecar.istio.io/inject": "true"}}, True),
        (
            {"istio-injection": "enabled"},
            {"annotations": {"sidecar.istio.io/inject": "false"}},
            False,
        ),
        ({"istio-injection": "disabled"}, {"labels": {"sidecar.istio.io/inject": "true"}}, False),
    ],
)
def test_injection_decision(ns_labels, meta, expected):
    assert injects_sidecar(ns_labels, meta) is expected


def test_injection_enabled():
    assert injection_enabled({"istio-injection": "enabled"})
    assert not injection_enabled({"istio-injection": "disabled", "istio.io/rev": "x"})
    assert not injection_enabled({})


class ObjectsOnlyMesh(Mesh):
    """A backend that only has get() and status(), as the kubernetes one: Mesh's default
    describe/analyze must work from them."""

    backend = "objects-only"
    namespace = NS

    def get(self, kind, name=None, namespace=None):
        return [o for o in OBJECTS if o["kind"] == kind]

    def status(self):
        return MeshStatus(self.backend, True, [p for p in PODS if isinstance(p, PodStatus)])

    def _unused(self, *args, **kwargs):
        raise AssertionError("describe/analyze must not need this")

    apply = delete = call = capture = rollout_restart = certificate = down = _unused


def test_mesh_default_describe_and_analyze_use_get_and_status():
    mesh = ObjectsOnlyMesh()
    d = mesh.describe("service-b-v1", "http://service-b-v1/hello")
    assert d.source_pod == "service-b-v1-7d4b9c-abcde" and d.server.accepts == "DISABLE"
    report = mesh.analyze(NS_STRICT_TEXT)
    assert report.files == ["(YAML text)"]
    # the proposed namespace-wide STRICT is newer than "newer" (PERMISSIVE): it is ignored
    assert [(f.code, f.name) for f in report.findings] == [("MLB0205", "strict-mtls")]


NS_STRICT_TEXT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-mtls, namespace: istio-meshlab}
spec: {mtls: {mode: STRICT}}
"""
