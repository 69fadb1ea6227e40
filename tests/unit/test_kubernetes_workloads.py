"""kubernetes backend: pods, rollouts, get and status.

Pure functions over pod/deployment JSON, and the requests ``rollout_restart``, ``get`` and
``status`` send to the fake apiserver (tests/unit/fake_apiserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshlab.api import PodStatus
from meshlab.errors import ClusterError, MeshTimeoutError, NotFoundError, ResourceError
from meshlab.kubernetes import KubernetesMesh, rollout
from meshlab.kubernetes.pods import app_container, has_sidecar, image_problem, pod_status
from tests.unit.fake_apiserver import FakeApiServer, pod

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def mesh(fake: FakeApiServer, tmp_path: Path) -> KubernetesMesh:
    m = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path), timeout=3, settle=0.5)
    m.apply(DEPLOYMENTS / "namespace.yaml")
    return m


def replica_set_pod(name: str, **kwargs: object) -> dict:
    p = pod(name, "istio-meshlab", **kwargs)  # type: ignore[arg-type]
    p["metadata"]["labels"]["pod-template-hash"] = "7f9c6b5d4"
    p["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "service-a-7f9c6b5d4"}]
    return p


# ---- pods (pure) ---------------------------------------------------------------------------
def test_pod_status_of_an_injected_pod() -> None:
    p = replica_set_pod("service-a-7f9c6b5d4-abcde", labels={"app": "service-a"}, sidecar=True)
    p["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "app"}
    assert pod_status(p) == PodStatus(
        name="service-a-7f9c6b5d4-abcde",
        namespace="istio-meshlab",
        workload="service-a",
        ip="10.244.0.9",
        phase="Running",
        ready=True,
        sidecar=True,
        restarts=1,
        service_account="default",
        labels={"app": "service-a", "pod-template-hash": "7f9c6b5d4"},
    )
    assert app_container(p) == "app"


def test_native_sidecar_counts_as_a_sidecar() -> None:
    p = pod("x", "istio-meshlab")
    assert not has_sidecar(p)
    p["spec"]["initContainers"] = [{"name": "istio-proxy", "restartPolicy": "Always"}]
    assert has_sidecar(p)
    p["spec"]["initContainers"] = [{"name": "istio-proxy"}]  # a plain init container is not
    assert not has_sidecar(p)


def test_app_container_skips_the_sidecar_when_not_annotated() -> None:
    p = pod("x", "istio-meshlab", sidecar=True)
    p["spec"]["containers"].reverse()  # istio-proxy first
    assert app_container(p) == "app"


def test_image_problem_for_our_images_names_the_build_command() -> None:
    p = pod(
        "service-a-1", "istio-meshlab", waiting=("ErrImagePull", "istio-meshlab/service-a:0.1.0")
    )
    text = image_problem(p)
    assert text is not None
    assert "cannot pull image istio-meshlab/service-a:0.1.0 (ErrImagePull)" in text
    assert "meshlab images build --kind NAME" in text
    assert pod_status(p).phase == "ErrImagePull"


def test_image_problem_for_other_images_waits_for_back_off() -> None:
    first = pod("legacy-1", "legacy", waiting=("ErrImagePull", "curlimages/curl:8.11.1"))
    assert image_problem(first) is None  # may be a transient registry hiccup
    later = pod("legacy-1", "legacy", waiting=("ImagePullBackOff", "curlimages/curl:8.11.1"))
    text = image_problem(later)
    assert text is not None and "kind load docker-image curlimages/curl:8.11.1" in text
    assert "meshlab images build" not in text


# ---- rollouts -----------------------------------------------------------------------------
def deployment(generation: int = 2, observed: int = 2, wanted: int = 1, **status: int) -> dict:
    return {
        "metadata": {"name": "service-a", "generation": generation},
        "spec": {"replicas": wanted},
        "status": {"observedGeneration": observed, **status},
    }


@pytest.mark.parametrize(
    ("deploy", "done", "words"),
    [
        (deployment(observed=1), False, "spec update to be observed"),
        (deployment(updatedReplicas=0, replicas=1), False, "0 of 1 updated replicas"),
        (deployment(updatedReplicas=1, replicas=2, availableReplicas=1), False, "1 old replicas"),
        (deployment(updatedReplicas=1, replicas=1, availableReplicas=0), False, "0 of 1 updated"),
        (deployment(updatedReplicas=1, replicas=1, availableReplicas=1), True, "successfully"),
        (deployment(wanted=0), True, "successfully"),
    ],
)
def test_rollout_state_follows_kubectl(deploy: dict, done: bool, words: str) -> None:
    state, message = rollout.rollout_state(deploy)
    assert state is done
    assert words in message


def test_rollout_restart_patches_the_template_annotation(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    mesh.apply(DEPLOYMENTS / "service-a.yaml")
    fake.requests.clear()
    assert mesh.rollout_restart("service-a") == ["deployment.apps/service-a restarted"]
    patch = fake.sent("PATCH")[0]
    assert patch.path == "/apis/apps/v1/namespaces/istio-meshlab/deployments/service-a"
    assert patch.content_type == "application/strategic-merge-patch+json"
    stamp = patch.body["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ]
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60
    assert list(patch.body) == ["spec"] and list(patch.body["spec"]) == ["template"]
    # then it waited for the rollout (read the deployment back)
    assert fake.sent("GET", "/apis/apps/v1/namespaces/istio-meshlab/deployments/service-a")


def test_rollout_restart_of_an_unknown_deployment(mesh: KubernetesMesh) -> None:
    with pytest.raises(NotFoundError, match=r'deployments\.apps "nope" not found'):
        mesh.rollout_restart("nope")


def test_apply_stops_at_once_when_our_image_is_missing(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    fake.deployments_available = False
    fake.pods.append(
        pod(
            "service-a-1",
            "istio-meshlab",
            labels={"app": "service-a", "version": "v1"},
            waiting=("ErrImagePull", "istio-meshlab/service-a:0.1.0"),
        )
    )
    with pytest.raises(ClusterError) as err:
        mesh.apply(DEPLOYMENTS / "service-a.yaml")
    assert "meshlab images build --kind NAME" in str(err.value)
    selector = fake.sent("GET", "/api/v1/namespaces/istio-meshlab/pods")[-1].params
    assert selector == {"labelSelector": "app=service-a,version=v1"}


def test_apply_times_out_with_what_it_waited_for(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    fake.deployments_available = False
    with pytest.raises(MeshTimeoutError) as err:
        mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
    assert "deployment istio-meshlab/service-b-v1 not ready after 3 s" in str(err.value)
    assert "0 of 1 updated replicas are available" in str(err.value)


# ---- get and status -----------------------------------------------------------------------
def test_get_lists_objects_as_kubectl_shows_them(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    mesh.apply(DEPLOYMENTS / "istio-mtls-peer-auth.yaml")
    items = mesh.get("pa")
    assert fake.requests[-1].path == "/apis/security.istio.io/v1/peerauthentications"
    assert len(items) == 1
    assert items[0]["apiVersion"] == "security.istio.io/v1"
    assert items[0]["kind"] == "PeerAuthentication"
    assert "managedFields" not in items[0]["metadata"]
    one = mesh.get("peerauthentications", "strict-mtls", "istio-meshlab")
    assert fake.requests[-1].path == (
        "/apis/security.istio.io/v1/namespaces/istio-meshlab/peerauthentications/strict-mtls"
    )
    assert one[0]["spec"] == {"mtls": {"mode": "STRICT"}}
    with pytest.raises(NotFoundError, match='peerauthentication "nope" not found in namespace x'):
        mesh.get("pa", "nope", "x")
    with pytest.raises(ResourceError, match="unknown resource type"):
        mesh.get("widgets")


def test_get_namespaces_is_cluster_scoped(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    names = [n["metadata"]["name"] for n in mesh.get("ns", namespace="ignored")]
    assert fake.requests[-1].path == "/api/v1/namespaces"
    assert "istio-meshlab" in names and "kube-system" in names


def test_status_lists_lab_pods_with_sidecars(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    fake.pods += [
        replica_set_pod("service-a-7f9c6b5d4-abcde", labels={"app": "service-a"}, sidecar=True),
        pod("legacy-client-1", "legacy", labels={"app": "legacy-client"}),
    ]
    state = mesh.status()
    assert state.running and state.backend == "kubernetes"
    assert [(p.namespace, p.workload, p.sidecar) for p in state.pods] == [
        ("istio-meshlab", "service-a", True),
        ("legacy", "legacy-client", False),
    ]  # istiod (istio-system) is not a lab pod
    pods = mesh.get("pods", namespace="legacy")
    assert pods == [state.pods[1].to_dict()]
    assert fake.requests[-1].path == "/api/v1/namespaces/legacy/pods"
