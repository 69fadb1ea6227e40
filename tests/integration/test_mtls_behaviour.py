"""The embedded mesh reproduces Istio's mTLS behaviour, with real Envoy sidecars.

One mesh for the module; the tests run in order and walk the lesson's path: no sidecars,
injection (after a restart), auto mTLS, STRICT, overrides, DestinationRules, deletions.
"""

from __future__ import annotations

import pytest

from tests.conftest import DEPLOYMENTS, NS

EXAMPLES = DEPLOYMENTS / "examples"
A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
B_URL = "http://service-b-v1:8080/hello"
B_FROM_LEGACY = "http://service-b-v1.istio-meshlab:8080/hello"
ENVOY_503 = (
    "upstream connect error or disconnect/reset before headers. "
    "reset reason: connection termination"
)

PLAIN_NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata:
  name: istio-meshlab
"""


def a_to_b(mesh):
    """service-a's /call-b (curl localhost:8080/call-b inside service-a's pod): what
    service-a's app got back from service-b-v1."""
    result = mesh.call("service-a", "http://localhost:8080/call-b", NS)
    assert result.status is not None, f"service-a did not answer: {result.error}"
    return result.json()


def legacy_to_b(mesh):
    return mesh.call("legacy-client", B_FROM_LEGACY, "legacy")


def sidecars(mesh, namespace=NS):
    return {p.workload: p.sidecar for p in mesh.pods(namespace)}


def test_plaintext_without_sidecars(mesh):
    mesh.apply(PLAIN_NAMESPACE)
    mesh.apply(DEPLOYMENTS / "service-a.yaml")
    mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
    mesh.apply(DEPLOYMENTS / "legacy-client.yaml")
    assert sidecars(mesh) == {"service-a": False, "service-b-v1": False}
    answer = a_to_b(mesh)
    assert answer["upstream_status"] == 200
    assert answer["upstream_body"]["caller"] is None
    assert answer["upstream_body"]["xfcc"] is None
    legacy = legacy_to_b(mesh)
    assert legacy.status == 200 and legacy.json()["caller"] is None


def test_relabel_takes_effect_only_after_restart(mesh):
    result = mesh.apply(DEPLOYMENTS / "namespace.yaml")
    assert result.changes == ["namespace/istio-meshlab configured"]
    assert sidecars(mesh) == {"service-a": False, "service-b-v1": False}
    assert a_to_b(mesh)["upstream_body"]["caller"] is None
    mesh.rollout_restart("service-a", NS)
    mesh.rollout_restart("service-b-v1", NS)
    assert sidecars(mesh) == {"service-a": True, "service-b-v1": True}
    assert sidecars(mesh, "legacy") == {"legacy-client": False}


def test_auto_mtls_with_no_policy(mesh):
    answer = a_to_b(mesh)
    assert answer["upstream_status"] == 200
    assert answer["upstream_body"]["caller"] == A_ID
    xfcc = answer["upstream_body"]["xfcc"]
    assert xfcc.startswith("By=spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1;Hash=")
    assert 'Subject="";URI=' + A_ID in xfcc
    legacy = legacy_to_b(mesh)
    assert legacy.status == 200, legacy.error
    assert legacy.json()["caller"] is None  # PERMISSIVE: plaintext accepted, no identity


def test_strict_rejects_plaintext_with_a_reset(mesh):
    result = mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    assert result.changes == ["peerauthentication.security.istio.io/strict-mtls created"]
    legacy = legacy_to_b(mesh)
    assert legacy.status is None
    assert legacy.error == "connection reset by peer"
    assert legacy.curl_exit_code == 56
    answer = a_to_b(mesh)
    assert answer["upstream_status"] == 200
    assert answer["upstream_body"]["caller"] == A_ID


def test_workload_disable_overrides_namespace_strict(mesh):
    mesh.apply(EXAMPLES / "peer-auth-disable-service-b.yaml")
    try:
        legacy = legacy_to_b(mesh)
        assert legacy.status == 200, legacy.error
        # auto mTLS sees B's DISABLE and sends plaintext: no identity reaches B
        answer = a_to_b(mesh)
        assert answer["upstream_status"] == 200
        assert answer["upstream_body"]["caller"] is None
    finally:
        mesh.delete(EXAMPLES / "peer-auth-disable-service-b.yaml")
    assert legacy_to_b(mesh).error == "connection reset by peer"


def test_port_level_mtls_on_the_container_port(mesh):
    mesh.apply(EXAMPLES / "peer-auth-port-level.yaml")
    try:
        assert legacy_to_b(mesh).status == 200
    finally:
        mesh.delete(EXAMPLES / "peer-auth-port-level.yaml")
    assert legacy_to_b(mesh).status is None


def test_destination_rule_disable_toward_strict_gives_503(mesh):
    mesh.apply(EXAMPLES / "destination-rule-disable.yaml")
    try:
        direct = mesh.call("service-a", B_URL, NS)
        assert direct.status == 503
        assert direct.body == ENVOY_503
        answer = a_to_b(mesh)
        assert answer["upstream_status"] == 503
    finally:
        mesh.delete(EXAMPLES / "destination-rule-disable.yaml")
    assert mesh.call("service-a", B_URL, NS).status == 200


def test_auto_mtls_off_needs_a_destination_rule(mesh):
    mesh.configure(auto_mtls=False)
    try:
        plain = mesh.call("service-a", B_URL, NS)
        assert plain.status == 503
        assert "connection termination" in plain.body
        mesh.apply(DEPLOYMENTS / "service-b-v1-destination-rule.yaml")
        answer = a_to_b(mesh)
        assert answer["upstream_status"] == 200
        assert answer["upstream_body"]["caller"] == A_ID
    finally:
        mesh.configure(auto_mtls=True)
        mesh.delete(DEPLOYMENTS / "service-b-v1-destination-rule.yaml")


def test_deleting_the_policy_restores_permissive(mesh):
    result = mesh.delete(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    assert result.changes == ["peerauthentication.security.istio.io/strict-mtls deleted"]
    assert legacy_to_b(mesh).status == 200
    assert a_to_b(mesh)["upstream_body"]["caller"] == A_ID


def test_mesh_wide_strict_from_the_root_namespace(mesh):
    mesh.apply(EXAMPLES / "mesh-strict.yaml")
    try:
        assert legacy_to_b(mesh).error == "connection reset by peer"
    finally:
        mesh.delete(EXAMPLES / "mesh-strict.yaml")
    assert legacy_to_b(mesh).status == 200


def test_workload_certificate_is_spiffe(mesh):
    cert = mesh.certificate("service-b-v1", NS)
    info = cert.describe()
    assert info["spiffe_id"] == "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"


def test_unknown_host_and_workload_errors(mesh):
    result = mesh.call("service-a", "http://nope:8080/", NS)
    assert result.status is None and result.error == "could not resolve host: nope"
    from meshlab.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no pod of workload 'ghost'"):
        mesh.call("ghost", B_URL, NS)
