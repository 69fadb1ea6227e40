"""kubernetes backend, preconditions: each failure gives the documented ClusterError.

No kubeconfig and an unreachable server are real situations here (there is no cluster);
the rest is answered by the fake apiserver (tests/unit/fake_apiserver.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlab.api import connect
from meshlab.errors import ClusterError, NotSupportedError
from meshlab.kubernetes import KubernetesMesh
from tests.unit.fake_apiserver import FakeApiServer, pod, status


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError) as err:
        KubernetesMesh()
    text = str(err.value)
    assert text.startswith("no kubeconfig found")
    assert str(tmp_path / "absent") in text
    assert "docs/real-cluster.md" in text and "MESHLAB_BACKEND=embedded" in text


def test_default_location_is_named_without_kubeconfig_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterError) as err:
        connect("kubernetes")
    assert f"{tmp_path}/.kube/config" in str(err.value)


def test_unreachable_server(fake: FakeApiServer, tmp_path: Path) -> None:
    port = closed_port()
    kubeconfig = fake.kubeconfig(
        tmp_path, context="kind-meshlab", server=f"http://127.0.0.1:{port}"
    )
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=kubeconfig)
    text = str(err.value)
    assert text.startswith(f"cannot reach the Kubernetes API server http://127.0.0.1:{port}")
    assert "(context kind-meshlab)" in text and "connection refused" in text
    assert "kubectl cluster-info --context kind-meshlab" in text


def test_unknown_context_lists_the_known_ones(fake: FakeApiServer, tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(context="kind-other", kubeconfig=fake.kubeconfig(tmp_path))
    assert "context 'kind-other' is not in kubeconfig" in str(err.value)
    assert "(contexts there: fake)" in str(err.value)


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=bad)
    assert f"kubeconfig {bad} is not usable" in str(err.value)


def test_rejected_credentials(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.overrides[("GET", "/version")] = (401, status(401, "Unauthorized", "Unauthorized"))
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    assert "refused the credentials of context fake (401 Unauthorized)" in str(err.value)


def test_istio_crds_missing(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.overrides[("GET", "/apis/security.istio.io")] = (
        404,
        status(404, "NotFound", "the server could not find the requested resource"),
    )
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    assert str(err.value).startswith(
        "Istio is not installed on the cluster of context fake: the API group "
        "security.istio.io is missing (CRD peerauthentications.security.istio.io)."
    )
    assert "istioctl install --set profile=demo -y" in str(err.value)
    assert fake.requests[-1].path == "/apis/security.istio.io"


def test_istio_too_old(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.groups["networking.istio.io"] = ["v1beta1", "v1alpha3"]
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    assert "serves networking.istio.io only as v1beta1, v1alpha3" in str(err.value)
    assert "Istio 1.22 or later" in str(err.value)


def test_istiod_not_running(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.pods = []
    with pytest.raises(ClusterError) as err:
        KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    assert str(err.value).startswith("istiod is not running in namespace istio-system")
    fake.pods = [pod("istiod-1", "istio-system", labels={"app": "istiod"}, ready=False)]
    with pytest.raises(ClusterError, match="istiod is not ready"):
        KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))


def test_all_preconditions_met(fake: FakeApiServer, tmp_path: Path) -> None:
    mesh = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    assert mesh.info() == {
        "context": "fake",
        "server": fake.url,
        "kubernetes_version": "v1.31.0",
        "istio_version": "1.24.2",
    }
    assert [r.path for r in fake.requests] == [
        "/version",
        "/apis/security.istio.io",
        "/apis/networking.istio.io",
        "/api/v1/namespaces/istio-system/pods",
    ]
    assert fake.requests[-1].params == {"labelSelector": "app=istiod"}


def test_connect_picks_the_backend_and_context(
    fake: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path, context="kind-meshlab")))
    monkeypatch.setenv("MESHLAB_BACKEND", "kubernetes")
    mesh = connect(context="kind-meshlab")
    assert isinstance(mesh, KubernetesMesh)
    assert mesh.info()["context"] == "kind-meshlab"


def test_mesh_settings_are_not_options_of_the_connection(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig = fake.kubeconfig(tmp_path)
    with pytest.raises(NotSupportedError, match=r"mesh\.configure\(auto_mtls=\.\.\.\)"):
        KubernetesMesh(kubeconfig=kubeconfig, auto_mtls=False)
    with pytest.raises(NotSupportedError, match="SECRET_TTL"):
        KubernetesMesh(kubeconfig=kubeconfig, cert_ttl="1h")
    assert not fake.sent("PATCH")  # refused before anything was sent
    # the embedded mesh's own options are accepted and mean nothing here
    KubernetesMesh(kubeconfig=kubeconfig, home="/nonexistent", start=False)
    with pytest.raises(TypeError, match="unknown option"):
        KubernetesMesh(kubeconfig=kubeconfig, colour="blue")


def test_down_forgets_the_connection_and_deletes_nothing(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    mesh = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
    before = len(fake.requests)
    mesh.down()
    assert len(fake.requests) == before  # not a single request, certainly no DELETE
    assert mesh.status().running  # and it reconnects when used again
