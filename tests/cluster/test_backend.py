"""The kubernetes backend end to end on a real cluster: the lesson's core facts.

Same expectations as the embedded mesh's integration tests: a sidecar-less client is reset
(curl exit 56) by a STRICT server, a sidecar client gets 200 with its SPIFFE identity in
XFCC, the wire shows TLS under mTLS and readable HTTP without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.conftest import ROOT, cluster_only, context

pytestmark = cluster_only
DEPLOYMENTS = ROOT / "deployments"
NS = "istio-meshlab"
B = "http://service-b-v1.istio-meshlab:8080/hello"


@pytest.fixture(scope="module")
def mesh() -> Iterator[object]:
    from meshlab.kubernetes import KubernetesMesh

    m = KubernetesMesh(context=context())
    for name in ("namespace.yaml", "service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml"):
        m.apply(DEPLOYMENTS / name)
    m.delete(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")  # start PERMISSIVE
    yield m
    m.delete(DEPLOYMENTS)
    m.down()


def test_status_shows_sidecars(mesh) -> None:
    pods = {p.workload: p for p in mesh.status().pods}
    assert pods["service-a"].sidecar and pods["service-b-v1"].sidecar
    assert not pods["legacy-client"].sidecar
    assert all(p.ready for p in pods.values())


def test_permissive_accepts_plaintext(mesh) -> None:
    assert mesh.call("legacy-client", B, "legacy").status == 200
    assert mesh.call("service-a", "http://localhost:8080/healthz").status == 200


def test_strict_resets_the_legacy_client(mesh) -> None:
    mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    try:
        legacy = mesh.call("legacy-client", B, "legacy")
        assert legacy.status is None and legacy.curl_exit_code == 56, legacy
        inside = mesh.call("service-a", B)
        assert inside.status == 200
        assert inside.json()["caller"] == "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
    finally:
        mesh.delete(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")


def test_certificate_is_the_workloads_spiffe_id(mesh) -> None:
    cert = mesh.certificate("service-b-v1")
    assert cert.spiffe_id == "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"


def test_capture_shows_tls_inside_and_http_from_legacy(mesh) -> None:
    with mesh.capture("service-b-v1", NS, port=8080) as inside:
        assert mesh.call("service-a", B).status == 200
    assert inside.tls and not inside.readable_http
    with mesh.capture("service-b-v1", NS, port=8080) as plain:
        assert mesh.call("legacy-client", B, "legacy").status == 200
    assert plain.readable_http and "GET /hello HTTP/1.1" in plain.http_request_lines


def test_rollout_restart_recreates_pods(mesh) -> None:
    before = {p.name for p in mesh.pods(NS) if p.workload == "service-a"}
    assert mesh.rollout_restart("service-a") == ["deployment.apps/service-a restarted"]
    after = {
        p.name for p in mesh.pods(NS) if p.workload == "service-a" and p.phase != "Terminating"
    }
    assert after and not (after & before)
