"""What the kubernetes backend checks before it does anything, each with a message that says
what to do: the API server answers, Istio's CRDs are installed (and new enough), istiod runs.

(No kubeconfig is reported by ``connection.load_configuration``; images that cannot be
pulled are reported while waiting for Deployments, by ``rollout.wait_rollout``.)
"""

from __future__ import annotations

from typing import Any

from meshlab.errors import ClusterError
from meshlab.kubernetes.connection import SEE_DOCS, Api, ApiError
from meshlab.kubernetes.objects import Discovery
from meshlab.kubernetes.pods import is_ready, list_pods

ISTIO_GROUPS = (("security.istio.io", "peerauthentications"),
                ("networking.istio.io", "destinationrules"))  # fmt: skip
PROBE_TIMEOUT = (5.0, 15.0)


def check_reachable(api: Api) -> str:
    """The server's Kubernetes version; ``ClusterError`` when it cannot be reached or refuses
    our credentials."""
    try:
        version = api.get("/version", timeout=PROBE_TIMEOUT)
    except ApiError as err:
        if err.status in (401, 403):
            raise ClusterError(
                f"the Kubernetes API server {api.server} refused the credentials of context "
                f"{api.context} ({err.status} {err.reason or 'Unauthorized'}): log in again or "
                "refresh the kubeconfig"
            ) from None
        raise ClusterError(f"the Kubernetes API server {api.server} answered {err}") from None
    return str(version.get("gitVersion") or "") if isinstance(version, dict) else ""


def check_istio_crds(api: Api, discovery: Discovery) -> None:
    for group, plural in ISTIO_GROUPS:
        served = discovery.versions(group)
        if served is None:
            raise ClusterError(
                f"Istio is not installed on the cluster of context {api.context}: the API "
                f"group {group} is missing (CRD {plural}.{group}). Install Istio, e.g. "
                f"`istioctl install --set profile=demo -y`; {SEE_DOCS}"
            )
        if "v1" not in served:
            raise ClusterError(
                f"the Istio on context {api.context} serves {group} only as "
                f"{', '.join(served)}; MeshLab's manifests use {group}/v1 (Istio 1.22 or "
                "later): upgrade Istio"
            )


def istio_version(pod: dict[str, Any]) -> str:
    """The tag of istiod's image (``docker.io/istio/pilot:1.24.2`` -> ``1.24.2``)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        image = str(container.get("image") or "")
        name, _, tag = image.rpartition(":")
        if name and "/" not in tag:
            return tag
    return ""


def check_istiod(api: Api, namespace: str = "istio-system") -> str:
    """istiod's version; ``ClusterError`` when no istiod pod is ready. Skipped (returns "")
    when RBAC does not let us list pods there."""
    try:
        pods = list_pods(api, namespace, {"app": "istiod"})
    except ApiError as err:
        if err.status in (403, 404):
            return ""
        raise
    ready = [p for p in pods if is_ready(p)]
    if not ready:
        state = "is not ready" if pods else "is not running"
        raise ClusterError(
            f"istiod {state} in namespace {namespace} (context {api.context}): without it "
            "sidecars get no configuration and no certificates. Check `kubectl -n "
            f"{namespace} get pods` or reinstall Istio; {SEE_DOCS}"
        )
    return istio_version(ready[0])


def check_all(api: Api, discovery: Discovery, istio_namespace: str) -> dict[str, str]:
    """Run every check; returns what was learnt (versions) for ``status().details``."""
    kubernetes = check_reachable(api)
    check_istio_crds(api, discovery)
    istio = check_istiod(api, istio_namespace)
    return {"kubernetes_version": kubernetes, "istio_version": istio}
