"""deployments/: every manifest loads cleanly, says what the lessons rely on, and the
built-in kinds pass Kubernetes' own OpenAPI schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest

from meshlab.resources import Resource, load
from meshlab.resources.convert import destination_rule, peer_authentication

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"
FILES = sorted(DEPLOYMENTS.rglob("*.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()
CRD_KINDS = {"PeerAuthentication", "DestinationRule"}  # no schema in kubernetes-validate


def by_key(path: Path | str) -> dict[tuple[str, str | None, str], Resource]:
    return {r.key: r for r in load(DEPLOYMENTS / path)}


def test_the_expected_files_exist() -> None:
    names = {str(p.relative_to(DEPLOYMENTS)) for p in FILES}
    assert names == {
        "namespace.yaml",
        "service-a.yaml",
        "service-b-v1.yaml",
        "legacy-client.yaml",
        "istio-mtls-peer-auth.yaml",
        "service-b-v1-destination-rule.yaml",
        "examples/peer-auth-permissive.yaml",
        "examples/peer-auth-disable-service-b.yaml",
        "examples/peer-auth-port-level.yaml",
        "examples/destination-rule-disable.yaml",
        "examples/mesh-strict.yaml",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DEPLOYMENTS)))
def test_loads_without_problems_or_warnings(path: Path) -> None:
    resources = load(path)
    assert resources
    for r in resources:
        assert r.warnings == ()
        assert r.source.startswith(str(path))


def test_everything_applies_together() -> None:
    # the main folder and the examples in one apply: no duplicate objects
    resources = load([DEPLOYMENTS, DEPLOYMENTS / "examples"])
    assert len(resources) == len({r.key for r in resources}) == 17


BUILTIN = [r for path in FILES for r in load(path) if r.kind not in CRD_KINDS]


def test_builtin_objects_are_all_checked() -> None:
    assert len(BUILTIN) == 10  # 2 namespaces, 3 service accounts, 3 deployments, 2 services


@pytest.mark.parametrize("resource", BUILTIN, ids=lambda r: r.source)
def test_builtin_kinds_match_kubernetes_schemas(resource: Resource) -> None:
    kubernetes_validate.validate(resource.body, K8S_VERSION, strict=True)


def test_the_schema_check_can_fail() -> None:
    (deployment,) = [r for r in load(DEPLOYMENTS / "service-a.yaml") if r.kind == "Deployment"]
    broken = copy.deepcopy(deployment.body)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(deployment.body)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_namespace_enables_injection() -> None:
    ns = by_key("namespace.yaml")[("Namespace", None, "istio-meshlab")]
    assert ns.labels == {"istio-injection": "enabled"}


@pytest.mark.parametrize("app", ["service-a", "service-b-v1"])
def test_service_workloads(app: str) -> None:
    objects = by_key(f"{app}.yaml")
    ns = "istio-meshlab"
    assert set(objects) == {
        ("ServiceAccount", ns, app),
        ("Deployment", ns, app),
        ("Service", ns, app),
    }
    deployment = objects[("Deployment", ns, app)]
    assert deployment.labels == {"app": app, "version": "v1"}
    pod = deployment.spec.template
    assert pod.metadata.labels == {"app": app, "version": "v1"}
    assert pod.spec.service_account == app
    (container,) = pod.spec.containers
    assert container.image == f"istio-meshlab/{app}:0.1.0"
    assert container.imagePullPolicy == "IfNotPresent"
    assert [(p.name, p.containerPort) for p in container.ports] == [("http", 8080)]
    assert container.readinessProbe.httpGet.path == "/healthz"
    assert container.readinessProbe.httpGet.port == 8080
    service = objects[("Service", ns, app)]
    assert service.spec.selector == {"app": app}
    assert [(p.name, p.port, p.targetPort) for p in service.spec.ports] == [("http", 8080, 8080)]


def test_legacy_client_has_no_sidecar_namespace() -> None:
    objects = by_key("legacy-client.yaml")
    assert objects[("Namespace", None, "legacy")].labels == {}
    deployment = objects[("Deployment", "legacy", "legacy-client")]
    (container,) = deployment.spec.template.spec.containers
    assert container.image == "curlimages/curl:8.11.1"
    assert container.command == ["/bin/sleep", "infinity"]
    assert deployment.spec.template.spec.service_account == "legacy-client"
    assert ("ServiceAccount", "legacy", "legacy-client") in objects


def test_policies() -> None:
    pa = peer_authentication(
        by_key("istio-mtls-peer-auth.yaml")[("PeerAuthentication", "istio-meshlab", "strict-mtls")],
        0.0,
    )
    assert (pa.selector, pa.mode, pa.port_level) == (None, "STRICT", {})
    r = by_key("service-b-v1-destination-rule.yaml")[
        ("DestinationRule", "istio-meshlab", "service-b-v1-mtls")
    ]
    assert r.api_version == "networking.istio.io/v1"
    dr = destination_rule(r, 0.0)
    assert (dr.host, dr.tls_mode) == ("service-b-v1", "ISTIO_MUTUAL")


def test_examples() -> None:
    examples = {r.name: r for r in load(DEPLOYMENTS / "examples")}
    modes = {
        name: (r.namespace, peer_authentication(r, 0.0).selector, peer_authentication(r, 0.0).mode)
        for name, r in examples.items()
        if r.kind == "PeerAuthentication"
    }
    assert modes == {
        "permissive-mtls": ("istio-meshlab", None, "PERMISSIVE"),
        "service-b-v1-disable": ("istio-meshlab", {"app": "service-b-v1"}, "DISABLE"),
        "service-b-v1-port-level": ("istio-meshlab", {"app": "service-b-v1"}, "STRICT"),
        "default": ("istio-system", None, "STRICT"),
    }
    assert peer_authentication(examples["service-b-v1-port-level"], 0.0).port_level == {
        8080: "DISABLE"
    }
    plain = destination_rule(examples["service-b-v1-plaintext"], 0.0)
    assert (plain.namespace, plain.host, plain.tls_mode) == (
        "istio-meshlab",
        "service-b-v1",
        "DISABLE",
    )


def test_readme_lists_every_file() -> None:
    readme = (DEPLOYMENTS / "README.md").read_text()
    for path in FILES:
        assert f"`{path.name}`" in readme
