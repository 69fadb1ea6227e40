"""Deployments: wait until a rollout is complete (as ``kubectl rollout status`` decides it),
and ``rollout restart`` (the pod-template annotation kubectl sets)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from meshlab.errors import ClusterError, MeshTimeoutError, NotFoundError
from meshlab.kubernetes.connection import MERGE_PATCH, Api, ApiError
from meshlab.kubernetes.pods import image_problem, list_pods, pod_status

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
POLL = 0.5


def deployment_path(namespace: str, name: str) -> str:
    ns, name = quote(namespace, safe=""), quote(name, safe="")
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"


def rollout_state(deploy: dict[str, Any]) -> tuple[bool, str]:
    """(done, what it is waiting for), by the rules ``kubectl rollout status`` applies."""
    meta = deploy.get("metadata") or {}
    spec = deploy.get("spec") or {}
    status = deploy.get("status") or {}
    name = meta.get("name", "")
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False, f"waiting for deployment {name!r} spec update to be observed"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"deployment {name!r} exceeded its progress deadline"
    wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} updated replicas are available"
    if total > updated:
        return False, f"{total - updated} old replicas are pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, f"deployment {name!r} successfully rolled out"


def wait_rollout(api: Api, namespace: str, name: str, timeout: float) -> None:
    """Return once the Deployment's pods are all updated and available.

    A pod whose image cannot be pulled ends the wait at once with what to do about it.
    """
    deadline = time.monotonic() + timeout
    message = ""
    while True:
        try:
            deploy = api.get(deployment_path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                raise NotFoundError(
                    f'deployments.apps "{name}" not found in namespace {namespace}'
                ) from None
            raise ClusterError(f"cannot read deployment {namespace}/{name}: {err}") from None
        done, message = rollout_state(deploy)
        if done:
            return
        labels = ((deploy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = list_pods(api, namespace, labels) if labels else []
        for pod in pods:
            problem = image_problem(pod)
            if problem:
                raise ClusterError(problem)
        if time.monotonic() >= deadline:
            states = "; ".join(
                f"{s.name} {s.phase}{' (' + s.message + ')' if s.message else ''}"
                for s in map(pod_status, pods)
            )
            raise MeshTimeoutError(
                f"deployment {namespace}/{name} not ready after {timeout:.0f} s: {message}"
                + (f"; pods: {states}" if states else "")
            )
        time.sleep(POLL)


def restart_patch(when: datetime | None = None) -> dict[str, Any]:
    """The strategic-merge patch ``kubectl rollout restart`` sends."""
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}


def restart(api: Api, namespace: str, name: str, timeout: float) -> list[str]:
    try:
        api.request(
            "PATCH", deployment_path(namespace, name), body=restart_patch(),
            content_type=MERGE_PATCH,
        )  # fmt: skip
    except ApiError as err:
        if err.status == 404:
            raise NotFoundError(
                f'deployments.apps "{name}" not found in namespace {namespace}'
            ) from None
        raise ClusterError(f"cannot restart deployment {namespace}/{name}: {err}") from None
    wait_rollout(api, namespace, name, timeout)
    return [f"deployment.apps/{name} restarted"]
