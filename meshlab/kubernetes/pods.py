"""Pods as MeshLab reports them: workload, sidecar yes/no, readiness, restarts, problems.

Pure functions over the pod JSON the apiserver returns, plus ``find_pod`` (which asks it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from meshlab.api import PodStatus
from meshlab.errors import ClusterError, NotFoundError
from meshlab.kubernetes.connection import Api, ApiError

SIDECAR = "istio-proxy"
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "istio-system",
                     "local-path-storage")  # fmt: skip
LAB_IMAGE_PREFIX = "istio-meshlab/"
# Waiting reasons that never fix themselves: report them at once instead of timing out.
PULL_FAILURES = ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
WAITING_PROBLEMS = (*PULL_FAILURES, "ErrImagePull", "CrashLoopBackOff",
                    "CreateContainerConfigError", "CreateContainerError")  # fmt: skip


def has_sidecar(pod: dict[str, Any]) -> bool:
    """An ``istio-proxy`` container, or a native sidecar (init container that keeps running)."""
    spec = pod.get("spec") or {}
    if any(c.get("name") == SIDECAR for c in spec.get("containers") or []):
        return True
    return any(
        c.get("name") == SIDECAR and c.get("restartPolicy") == "Always"
        for c in spec.get("initContainers") or []
    )


def app_container(pod: dict[str, Any]) -> str:
    """The container a request is sent from: Istio's default-container annotation, else the
    first container that is not the sidecar."""
    meta = pod.get("metadata") or {}
    annotated = (meta.get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    names = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
    if annotated in names:
        return str(annotated)
    for name in names:
        if name != SIDECAR:
            return name
    raise NotFoundError(f"pod {meta.get('namespace')}/{meta.get('name')} has no app container")


def workload_of(pod: dict[str, Any]) -> str:
    """The Deployment a pod belongs to (its ReplicaSet's name minus the template hash)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "ReplicaSet":
            name = str(owner.get("name", ""))
            suffix = labels.get("pod-template-hash")
            if suffix and name.endswith(f"-{suffix}"):
                return name[: -len(suffix) - 1]
            return name
        return str(owner.get("name", ""))
    return str(labels.get("app") or meta.get("name", ""))


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    )


def waiting(pod: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(container, image, reason, message) of each container waiting for a known problem."""
    out = []
    for st in _statuses(pod):
        wait = (st.get("state") or {}).get("waiting") or {}
        if wait.get("reason") in WAITING_PROBLEMS:
            out.append(
                (st.get("name", ""), st.get("image", ""), wait["reason"], wait.get("message", ""))
            )
    return out


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def phase(pod: dict[str, Any]) -> str:
    """kubectl's STATUS column, roughly: Terminating, a waiting reason, or the phase."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    problems = waiting(pod)
    if problems:
        return problems[0][2]
    return str((pod.get("status") or {}).get("phase") or "Pending")


def pod_status(pod: dict[str, Any]) -> PodStatus:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    messages = [f"{c}: {reason}: {msg}".rstrip(": ") for c, _, reason, msg in waiting(pod)]
    if status.get("message"):
        messages.append(str(status["message"]))
    return PodStatus(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        workload=workload_of(pod),
        ip=str(status.get("podIP") or ""),
        phase=phase(pod),
        ready=is_ready(pod),
        sidecar=has_sidecar(pod),
        restarts=sum(int(st.get("restartCount") or 0) for st in _statuses(pod)),
        service_account=str((pod.get("spec") or {}).get("serviceAccountName") or "default"),
        labels=dict(meta.get("labels") or {}),
        message="\n".join(messages),
    )


def image_problem(pod: dict[str, Any]) -> str | None:
    """A sentence for a pod whose image cannot be pulled, with what to do; else None.

    MeshLab's own images exist only where ``meshlab images build`` put them, so any pull
    failure of theirs is final; other images get the benefit of the doubt until back-off.
    """
    meta = pod.get("metadata") or {}
    where = f"pod {meta.get('namespace')}/{meta.get('name')}"
    for _container, image, reason, message in waiting(pod):
        ours = _repository(image).startswith(LAB_IMAGE_PREFIX)
        if reason in PULL_FAILURES or (reason == "ErrImagePull" and ours):
            if ours:
                return (
                    f"{where} cannot pull image {image} ({reason}): MeshLab's images are not on "
                    "the cluster. Build them and load them into your kind cluster with "
                    "`meshlab images build --kind NAME` (kind get clusters lists the names), "
                    "or push them to a registry the cluster can pull from; see "
                    "docs/real-cluster.md"
                )
            detail = f": {message}" if message else ""
            return (
                f"{where} cannot pull image {image} ({reason}{detail}); the cluster needs "
                "access to its registry (or load the image into the nodes, e.g. "
                f"`kind load docker-image {image}`)"
            )
    return None


def _repository(image: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if image.startswith(prefix):
            return image[len(prefix) :]
    return image


def selector_query(match_labels: dict[str, str]) -> list[tuple[str, str]]:
    return [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(match_labels.items())))]


def list_pods(
    api: Api, namespace: str | None = None, labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods" if namespace else "/api/v1/pods"
    data = api.get(path, query=selector_query(labels) if labels else None)
    items: list[dict[str, Any]] = data.get("items") or []
    return sorted(items, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"]))


def deployment_selector(api: Api, namespace: str, name: str) -> dict[str, str] | None:
    try:
        deploy = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{quote(name, safe='')}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise ClusterError(f"cannot read deployment {namespace}/{name}: {err}") from None
    labels = ((deploy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return dict(labels) or None


def find_pod(api: Api, workload: str, namespace: str) -> dict[str, Any]:
    """The pod a workload's requests are sent from (or captured at): a ready, running pod of
    the Deployment ``workload``, else a pod of that name or with label ``app=workload``."""
    selector = deployment_selector(api, namespace, workload)
    if selector is not None:
        pods = list_pods(api, namespace, selector)
    else:
        pods = [
            p
            for p in list_pods(api, namespace)
            if p["metadata"]["name"] == workload
            or (p["metadata"].get("labels") or {}).get("app") == workload
        ]
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not pods:
        known = sorted({workload_of(p) for p in list_pods(api, namespace)})
        hint = f" (workloads there: {', '.join(known)})" if known else ""
        raise NotFoundError(f"no pod of workload {workload!r} in namespace {namespace!r}{hint}")
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    ready = [p for p in running if is_ready(p)]
    if ready or running:
        return (ready or running)[0]
    pod = pods[0]
    problem = image_problem(pod)
    if problem:
        raise ClusterError(problem)
    status = pod_status(pod)
    detail = f": {status.message}" if status.message else ""
    raise ClusterError(
        f"pod {namespace}/{status.name} of {workload!r} is not running yet ({status.phase}{detail})"
    )
