"""kubernetes backend, apply/delete: the requests sent to a (fake) apiserver.

The fake answers like an apiserver would for these paths; what is checked is the shape of
what the backend sends: server-side apply PATCHes to each object's URL, dry run first,
dependency order, and that refused input changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlab.errors import ClusterError, ResourceError
from meshlab.kubernetes import KubernetesMesh
from meshlab.kubernetes.apply import APPLY_ORDER, apply_body, ordered
from meshlab.resources import load
from tests.unit.fake_apiserver import FakeApiServer, pod, status

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"
APPLY = "application/apply-patch+yaml"

EXPECTED_URLS = {
    "namespace.yaml": ["/api/v1/namespaces/istio-meshlab"],
    "service-a.yaml": [
        "/api/v1/namespaces/istio-meshlab/serviceaccounts/service-a",
        "/api/v1/namespaces/istio-meshlab/services/service-a",
        "/apis/apps/v1/namespaces/istio-meshlab/deployments/service-a",
    ],
    "service-b-v1.yaml": [
        "/api/v1/namespaces/istio-meshlab/serviceaccounts/service-b-v1",
        "/api/v1/namespaces/istio-meshlab/services/service-b-v1",
        "/apis/apps/v1/namespaces/istio-meshlab/deployments/service-b-v1",
    ],
    "legacy-client.yaml": [
        "/api/v1/namespaces/legacy",
        "/api/v1/namespaces/legacy/serviceaccounts/legacy-client",
        "/apis/apps/v1/namespaces/legacy/deployments/legacy-client",
    ],
    "istio-mtls-peer-auth.yaml": [
        "/apis/security.istio.io/v1/namespaces/istio-meshlab/peerauthentications/strict-mtls"
    ],
    "service-b-v1-destination-rule.yaml": [
        "/apis/networking.istio.io/v1/namespaces/istio-meshlab/destinationrules/service-b-v1-mtls"
    ],
}


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def mesh(fake: FakeApiServer, tmp_path: Path) -> KubernetesMesh:
    return KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path), settle=0.5)


def applies(fake: FakeApiServer, dry_run: bool | None = None) -> list[str]:
    out = []
    for r in fake.sent("PATCH"):
        if r.content_type != APPLY:
            continue
        if dry_run is None or (r.params.get("dryRun") == "All") == dry_run:
            out.append(r.url)
    return out


def test_the_expected_urls_cover_every_manifest() -> None:
    assert set(EXPECTED_URLS) == {p.name for p in DEPLOYMENTS.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(EXPECTED_URLS))
def test_apply_sends_server_side_apply_to_each_objects_url(
    fake: FakeApiServer, mesh: KubernetesMesh, name: str
) -> None:
    if name != "namespace.yaml":
        mesh.apply(DEPLOYMENTS / "namespace.yaml")
    fake.requests.clear()
    result = mesh.apply(DEPLOYMENTS / name)
    real = [r for r in fake.sent("PATCH") if r.params.get("dryRun") != "All"]
    assert [r.path for r in real] == EXPECTED_URLS[name]
    for r in real:
        assert r.query == "fieldManager=meshlab&force=true"
        assert r.content_type == APPLY
    assert len(result.changes) == len(EXPECTED_URLS[name])
    assert all(line.endswith(" created") for line in result.changes), result.changes


def test_peer_authentication_url_is_exactly_the_documented_one(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    assert applies(fake, dry_run=False)[-1] == (
        "/apis/security.istio.io/v1/namespaces/istio-meshlab/peerauthentications/strict-mtls"
        "?fieldManager=meshlab&force=true"
    )
    sent = fake.sent("PATCH")[-1]
    assert sent.content_type == "application/apply-patch+yaml"
    assert sent.body == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict-mtls", "namespace": "istio-meshlab"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def test_whole_folder_dry_runs_everything_then_applies_in_dependency_order(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    result = mesh.apply(DEPLOYMENTS)
    dry, real = applies(fake, dry_run=True), applies(fake, dry_run=False)
    assert len(dry) == len(real) == 12
    # every dry run happens before the first real change
    urls = applies(fake)
    assert urls.index(real[0]) == len(dry)
    kinds = [r.kind for r in ordered(load(DEPLOYMENTS))]
    assert kinds == sorted(kinds, key=APPLY_ORDER.index)
    assert (
        real[0].startswith("/api/v1/namespaces/")
        and "/" not in real[0][len("/api/v1/namespaces/") :].split("?")[0]
    )
    assert "/deployments/" in real[-1]
    assert result.changes[0] in ("namespace/legacy created", "namespace/istio-meshlab created")


def test_applying_again_reports_unchanged_and_a_change_reports_configured(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    again = mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    assert again.changes == ["peerauthentication.security.istio.io/strict-mtls unchanged"]
    permissive = (
        (DEPLOYMENTS / "istio-mtls-peer-auth.yaml").read_text().replace("STRICT", "PERMISSIVE")
    )
    changed = mesh.apply(permissive)
    assert changed.changes == ["peerauthentication.security.istio.io/strict-mtls configured"]
    stored = fake.objects[
        "/apis/security.istio.io/v1/namespaces/istio-meshlab/peerauthentications/strict-mtls"
    ]
    assert stored["spec"]["mtls"]["mode"] == "PERMISSIVE"


def test_invalid_manifest_sends_nothing(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    fake.requests.clear()
    bad = (DEPLOYMENTS / "istio-mtls-peer-auth.yaml").read_text().replace("STRICT", "STRIKT")
    with pytest.raises(ResourceError) as err:
        mesh.apply(bad)
    assert "STRIKT" in str(err.value)
    assert fake.sent("PATCH") == [] and fake.sent("DELETE") == []


def test_missing_namespace_is_reported_before_any_change(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    with pytest.raises(ResourceError) as err:
        mesh.apply(DEPLOYMENTS / "service-a.yaml")  # namespace istio-meshlab not applied
    assert 'namespaces "istio-meshlab" not found' in str(err.value)
    assert "service-a.yaml" in str(err.value)
    assert applies(fake, dry_run=False) == []


def test_namespace_created_by_the_same_apply_is_not_a_problem(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    text = (
        (DEPLOYMENTS / "namespace.yaml").read_text()
        + "\n---\n"
        + (DEPLOYMENTS / "istio-mtls-peer-auth.yaml").read_text()
    )
    result = mesh.apply(text)
    assert result.changes == [
        "namespace/istio-meshlab created",
        "peerauthentication.security.istio.io/strict-mtls created",
    ]


def test_server_rejection_changes_nothing(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    path = (
        "/apis/networking.istio.io/v1/namespaces/istio-meshlab/destinationrules/service-b-v1-mtls"
    )
    fake.overrides[("PATCH", path)] = (
        422,
        status(
            422,
            "Invalid",
            'DestinationRule.networking.istio.io "service-b-v1-mtls" is '
            "invalid: spec: Invalid value: host must be a valid FQDN",
        ),
    )
    fake.requests.clear()
    both = [
        DEPLOYMENTS / "istio-mtls-peer-auth.yaml",
        DEPLOYMENTS / "service-b-v1-destination-rule.yaml",
    ]
    with pytest.raises(ResourceError) as err:
        mesh.apply(both)
    assert "the cluster refused it" in str(err.value)
    assert "host must be a valid FQDN" in str(err.value)
    assert applies(fake, dry_run=False) == []  # the PeerAuthentication was not applied either


def test_missing_istio_crd_at_apply_time(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    del fake.groups["networking.istio.io"]
    mesh.down()  # forget cached discovery, as a new session would
    with pytest.raises(ClusterError) as err:
        mesh.apply(DEPLOYMENTS / "service-b-v1-destination-rule.yaml")
    assert "destinationrules.networking.istio.io" in str(err.value)
    assert "istioctl install" in str(err.value)


def test_old_istio_without_v1_is_named(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    fake.groups["security.istio.io"] = ["v1beta1"]
    mesh.down()
    with pytest.raises(ClusterError) as err:
        mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    assert "v1beta1" in str(err.value) and "Istio 1.22" in str(err.value)


def test_creation_timestamp_is_not_sent_and_a_warning_says_why(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    text = (
        (DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
        .read_text()
        .replace(
            "  namespace: istio-meshlab\n",
            '  namespace: istio-meshlab\n  creationTimestamp: "2024-01-01T00:00:00Z"\n',
        )
    )
    result = mesh.apply(text)
    assert "creationTimestamp" not in fake.sent("PATCH")[-1].body["metadata"]
    assert any("creationTimestamp is ignored" in w for w in result.warnings)
    assert "creationTimestamp" not in apply_body(load(text)[0])["metadata"]


def test_delete_sends_deletes_in_reverse_order_and_reports_missing_ones(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
    fake.requests.clear()
    result = mesh.delete(
        [DEPLOYMENTS / "service-b-v1.yaml", DEPLOYMENTS / "istio-mtls-peer-auth.yaml"]
    )
    deletes = fake.sent("DELETE")
    assert [r.path for r in deletes] == [
        "/apis/apps/v1/namespaces/istio-meshlab/deployments/service-b-v1",
        "/apis/security.istio.io/v1/namespaces/istio-meshlab/peerauthentications/strict-mtls",
        "/api/v1/namespaces/istio-meshlab/services/service-b-v1",
        "/api/v1/namespaces/istio-meshlab/serviceaccounts/service-b-v1",
    ]
    assert deletes[0].query == "propagationPolicy=Foreground"
    assert result.changes == [
        "deployment.apps/service-b-v1 deleted",
        "service/service-b-v1 deleted",
        "serviceaccount/service-b-v1 deleted",
    ]
    assert result.warnings == [
        "peerauthentication.security.istio.io/strict-mtls not found (nothing to delete)"
    ]
    # and it waited until they were gone
    assert not any("service-b-v1" in p for p in fake.objects)


# ---- waiting until an Istio change is in force ----------------------------------------------
def stats_execs(fake: FakeApiServer) -> list[str]:
    return [r.path for r in fake.sent("GET") if r.path.endswith("/exec") and "stats" in r.query]


def test_istio_change_reads_the_sidecars_update_counters(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    fake.pods += [
        pod("service-b-v1-1", "istio-meshlab", labels={"app": "service-b-v1"}, sidecar=True),
        pod("legacy-client-1", "legacy", labels={"app": "legacy-client"}),  # no sidecar
        pod("service-a-1", "istio-meshlab", labels={"app": "service-a"}, sidecar=True, ready=False),
    ]
    result = mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    # only the ready sidecar of the policy's namespace is asked, in its istio-proxy container
    assert stats_execs(fake) == ["/api/v1/namespaces/istio-meshlab/pods/service-b-v1-1/exec"]
    exec_query = next(r.query for r in fake.sent("GET") if r.path.endswith("/exec"))
    assert "container=istio-proxy" in exec_query and "command=pilot-agent" in exec_query
    # the fake cannot exec, so the backend waited blind and said so
    assert any("could not read the sidecars' update counters" in w for w in result.warnings)


def test_mesh_wide_policy_watches_every_namespace(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    fake.requests.clear()
    mesh.apply(DEPLOYMENTS / "examples" / "mesh-strict.yaml")
    assert fake.sent("GET", "/api/v1/pods")  # all namespaces, not just istio-system


def test_no_istio_object_no_sidecar_reads(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    """Without an Istio object there is nothing to wait for: no sidecar admin reads (the
    analyzer still lists pods once, for its relabel-needs-restart finding)."""
    fake.requests.clear()
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    pod_reads = [r.path for r in fake.requests if r.path.endswith("/pods")]
    assert pod_reads == ["/api/v1/pods"]  # the analyzer's one listing, no sidecar watch
