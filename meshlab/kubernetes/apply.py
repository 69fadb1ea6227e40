"""``apply`` and ``delete`` on a cluster.

Manifests are validated by ``meshlab.resources.load`` first (bad input changes nothing).
Then every object goes through a server-side apply dry run (``dryRun=All``), so what the
apiserver would refuse is reported before anything changes; then the real server-side
apply: ``PATCH <object URL>?fieldManager=meshlab&force=true`` with
``Content-Type: application/apply-patch+yaml`` (built-in kinds and Istio CRDs alike), in
dependency order (namespaces first, workloads last).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from meshlab.errors import ClusterError, MeshTimeoutError, ResourceError
from meshlab.kubernetes.connection import APPLY_PATCH, Api, ApiError
from meshlab.kubernetes.objects import ISTIO_KINDS, Discovery, missing_group, resource_path
from meshlab.resources import KINDS, Resource

FIELD_MANAGER = "meshlab"
APPLY_ORDER = ("Namespace", "ServiceAccount", "Service", "PeerAuthentication",
               "DestinationRule", "Deployment")  # fmt: skip
SERVER_FIELDS = ("creationTimestamp", "uid", "resourceVersion", "generation", "managedFields")
POLL = 0.5


def ordered(resources: list[Resource]) -> list[Resource]:
    """Namespaces first, then what pods need (accounts, services, policies), workloads last."""
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    return sorted(resources, key=lambda r: rank.get(r.kind, len(rank)))


def apply_query(dry_run: bool = False) -> list[tuple[str, str]]:
    query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
    return [*query, ("dryRun", "All")] if dry_run else query


def check_served(discovery: Discovery, resources: list[Resource]) -> None:
    """Every manifest's apiVersion must be served (an Istio CRD missing, or too old)."""
    for r in resources:
        info = KINDS[r.kind]
        if r.kind not in ISTIO_KINDS:  # built-in groups are always served
            continue
        served = discovery.versions(info.group)
        if served is None:
            raise missing_group(info.group, info.plural)
        version = r.api_version.split("/", 1)[1]
        if version not in served:
            raise ClusterError(
                f"{r.source}: the cluster serves {info.group} in versions "
                f"{', '.join(served)}, not {version} (security.istio.io/v1 and "
                "networking.istio.io/v1 need Istio 1.22 or later)"
            )


def _problem(r: Resource, err: ApiError, new_namespaces: set[str]) -> str | None:
    """A ResourceError line for what the apiserver refused; None when it is only a namespace
    that this same apply creates (a dry run cannot see it yet)."""
    if err.status == 404 and err.details.get("kind") == "namespaces":
        ns = str(err.details.get("name") or r.namespace)
        if ns in new_namespaces:
            return None
        return f'{r.source} ({r.kind} {r.name}): namespaces "{ns}" not found'
    if err.status in (400, 422):
        return f"{r.source} ({r.kind} {r.name}): the cluster refused it: {err.message}"
    if err.status == 404:
        info = KINDS[r.kind]
        if r.kind in ISTIO_KINDS:
            raise missing_group(info.group, info.plural)
        raise ClusterError(f"{r.source}: the cluster has no {info.plural}: {err.message}")
    if err.status == 403:
        raise ClusterError(
            f"the cluster refused to apply {r.ref}"
            + (f" in namespace {r.namespace}" if r.namespace else "")
            + f": {err.message}"
        )
    raise ClusterError(f"{r.source} ({r.kind} {r.name}): {err}")


def apply_body(r: Resource) -> dict[str, Any]:
    """The manifest as sent: fields only the apiserver sets (creationTimestamp...) left out."""
    body = copy.deepcopy(r.body)
    meta = body.get("metadata") or {}
    for name in SERVER_FIELDS:
        meta.pop(name, None)
    body.pop("status", None)
    return body


def _apply_one(api: Api, r: Resource, dry_run: bool) -> tuple[int, dict[str, Any], list[str]]:
    response = api.request(
        "PATCH", resource_path(r), query=apply_query(dry_run), body=apply_body(r),
        content_type=APPLY_PATCH,
    )  # fmt: skip
    return response.status, response.data, response.warnings


def _resource_version(api: Api, r: Resource) -> str | None:
    try:
        return str(api.get(resource_path(r))["metadata"].get("resourceVersion"))
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def apply_resources(
    api: Api, discovery: Discovery, resources: list[Resource]
) -> tuple[list[str], list[str]]:
    """Server-side apply ``resources``; returns kubectl-like change lines and warnings."""
    resources = ordered(resources)
    check_served(discovery, resources)
    new_namespaces = {r.name for r in resources if r.kind == "Namespace"}
    problems: list[str] = []
    for r in resources:
        try:
            _apply_one(api, r, dry_run=True)
        except ApiError as err:
            line = _problem(r, err, new_namespaces)
            if line:
                problems.append(line)
    if problems:
        raise ResourceError(problems)
    changes: list[str] = []
    warnings: list[str] = [w for r in resources for w in r.warnings]
    warnings += [
        f"{r.source}: metadata.creationTimestamp is ignored on a cluster (the apiserver sets it)"
        for r in resources
        if (r.body.get("metadata") or {}).get("creationTimestamp")
    ]
    for r in resources:
        before = _resource_version(api, r)
        try:
            status, data, server_warnings = _apply_one(api, r, dry_run=False)
        except ApiError as err:
            line = _problem(r, err, set())
            raise ResourceError([line or str(err)]) from None
        warnings += server_warnings
        after = str((data.get("metadata") or {}).get("resourceVersion"))
        if before is None or status == 201:
            changes.append(f"{r.ref} created")
        elif after == before:
            changes.append(f"{r.ref} unchanged")
        else:
            changes.append(f"{r.ref} configured")
    return changes, warnings


def delete_query(r: Resource) -> list[tuple[str, str]]:
    # Foreground: a Deployment is gone only once its pods are.
    return [] if r.kind == "Namespace" else [("propagationPolicy", "Foreground")]


def delete_resources(
    api: Api, resources: list[Resource], timeout: float
) -> tuple[list[str], list[str]]:
    """Delete ``resources`` (workloads first) and wait until they are gone."""
    changes: list[str] = []
    warnings: list[str] = [w for r in resources for w in r.warnings]
    deleted: list[Resource] = []
    for r in reversed(ordered(resources)):
        try:
            api.request("DELETE", resource_path(r), query=delete_query(r))
        except ApiError as err:
            if err.status == 404:
                warnings.append(f"{r.ref} not found (nothing to delete)")
                continue
            if not (err.status == 409 and r.kind == "Namespace"):  # 409: already terminating
                raise ClusterError(f"cannot delete {r.ref}: {err}") from None
        changes.append(f"{r.ref} deleted")
        deleted.append(r)
    wait_gone(api, deleted, timeout)
    return changes, warnings


def wait_gone(api: Api, resources: list[Resource], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(resources)
    while pending:
        pending = [r for r in pending if _resource_version(api, r) is not None]
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(r.ref for r in pending)
            raise MeshTimeoutError(f"still being deleted after {timeout:.0f} s: {names}")
        time.sleep(POLL)
