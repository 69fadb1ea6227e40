"""Where each kind lives in the Kubernetes REST API, and objects as ``kubectl get`` shows them."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

from meshlab.errors import ClusterError
from meshlab.kubernetes.connection import Api, ApiError
from meshlab.resources import KINDS, Resource

ISTIO_KINDS = ("PeerAuthentication", "DestinationRule")


def api_prefix(api_version: str) -> str:
    """``v1`` -> ``/api/v1``; ``security.istio.io/v1`` -> ``/apis/security.istio.io/v1``."""
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def collection_path(api_version: str, plural: str, namespace: str | None = None) -> str:
    ns = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{api_prefix(api_version)}{ns}/{plural}"


def object_path(api_version: str, plural: str, name: str, namespace: str | None = None) -> str:
    return f"{collection_path(api_version, plural, namespace)}/{quote(name, safe='')}"


def resource_path(resource: Resource) -> str:
    """The URL path of a manifest's object, in the manifest's own API version."""
    info = KINDS[resource.kind]
    namespace = resource.namespace if info.namespaced else None
    return object_path(resource.api_version, info.plural, resource.name, namespace)


def as_shown(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """An object as ``kubectl get -o yaml`` prints it: apiVersion and kind set (list items
    lack them), ``managedFields`` hidden."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = out.get("apiVersion") or api_version
    out["kind"] = out.get("kind") or kind
    out.setdefault("metadata", {}).pop("managedFields", None)
    return {"apiVersion": out.pop("apiVersion"), "kind": out.pop("kind"), **out}


class Discovery:
    """Which versions the cluster serves for an API group (asked once per group)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._groups: dict[str, list[str] | None] = {}

    def versions(self, group: str) -> list[str] | None:
        """Served versions, preferred first; None when the group is not served at all."""
        if group not in self._groups:
            try:
                data = self.api.get(f"/apis/{group}")
            except ApiError as err:
                if err.status != 404:
                    raise ClusterError(f"cannot read API group {group}: {err}") from None
                self._groups[group] = None
            else:
                preferred = (data.get("preferredVersion") or {}).get("version")
                served = [v.get("version") for v in data.get("versions") or [] if v.get("version")]
                if preferred in served:
                    served.remove(preferred)
                    served.insert(0, preferred)
                self._groups[group] = served
        return self._groups[group]

    def api_version(self, kind: str) -> str:
        """The apiVersion to read ``kind`` with: the cluster's preferred one that MeshLab knows."""
        info = KINDS[kind]
        if kind not in ISTIO_KINDS:  # built-in kinds: MeshLab reads their stable version
            return info.api_versions[0]
        served = self.versions(info.group)
        if served is None:
            raise missing_group(info.group, info.plural)
        for version in served:
            if version in info.versions:
                return f"{info.group}/{version}"
        raise ClusterError(
            f"the cluster serves {info.group} in versions {', '.join(served)}; MeshLab reads "
            f"{kind} as {', '.join(info.api_versions)}"
        )


def missing_group(group: str, plural: str) -> ClusterError:
    return ClusterError(
        f"Istio is not installed on this cluster: the API group {group} is not served "
        f"(CRD {plural}.{group} is missing). Install Istio first, for example "
        "`istioctl install --set profile=demo -y` (see docs/real-cluster.md)"
    )
