"""Check one parsed document and turn it into a ``Resource``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from meshlab.resources.kinds import KINDS, ROOT_NAMESPACE, loadable_kinds_text
from meshlab.resources.problems import pydantic_problems, where
from meshlab.resources.resource import Resource
from meshlab.resources.schemas import istio, kubernetes
from meshlab.resources.schemas.common import (
    describe,
    dns1035_label_problem,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    suggest,
)
from meshlab.resources.yamlsafe import Document

MODELS: dict[str, type[BaseModel]] = {
    "Namespace": kubernetes.NamespaceObject,
    "ServiceAccount": kubernetes.ServiceAccountObject,
    "Service": kubernetes.ServiceObject,
    "Deployment": kubernetes.DeploymentObject,
    "PeerAuthentication": istio.PeerAuthenticationObject,
    "DestinationRule": istio.DestinationRuleObject,
}

# Kubernetes' rule for each kind's metadata.name.
NAME_RULES = {
    "Namespace": dns1123_label_problem,
    "Service": dns1035_label_problem,
}

KEPT_METADATA = ("name", "namespace", "labels", "annotations", "creationTimestamp")


def _type_problems(data: dict[str, Any]) -> list[str]:
    out = []
    for field in ("apiVersion", "kind"):
        value = data.get(field)
        if field not in data:
            out.append(f"{field}: required field is missing")
        elif not isinstance(value, str) or not value:
            out.append(f"{field}: expected a non-empty string, got {describe(value)}")
    return out


def _kind_problem(kind: str) -> str:
    match = suggest(kind, [k for k, info in KINDS.items() if info.loadable])
    if match:
        return f'kind "{kind}" is not known (kinds are case-sensitive): did you mean {match}?'
    return f'kind "{kind}" is not supported; MeshLab manifests can hold {loadable_kinds_text()}'


def _body(data: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    """The object as it will be applied: server-set metadata and status dropped."""
    meta = data["metadata"]
    metadata = {k: meta[k] for k in KEPT_METADATA if meta.get(k) is not None}
    if namespace is None:
        metadata.pop("namespace", None)
    else:
        metadata["namespace"] = namespace
    body = {"apiVersion": data["apiVersion"], "kind": data["kind"], "metadata": metadata}
    body.update({k: v for k, v in data.items() if k not in body and k != "status"})
    return body


def _warnings(kind: str, spec: Any, namespace: str | None) -> list[str]:
    if kind == "PeerAuthentication" and spec is not None and namespace is not None:
        return istio.peer_authentication_warnings(spec, namespace, ROOT_NAMESPACE)
    if kind == "DestinationRule":
        return istio.destination_rule_warnings(spec)
    if kind == "Service" and spec.type not in (None, "ClusterIP"):
        return [f"spec.type: {spec.type} is accepted; the embedded mesh treats it as ClusterIP"]
    return []


def validate_document(doc: Document, namespace: str | None) -> tuple[list[Resource], list[str]]:
    """The resources in one document (a ``List`` holds several), or the problems found."""
    data = doc.data
    if not isinstance(data, dict):
        return [], [
            f"{doc.source}: expected a Kubernetes object (a mapping with apiVersion, kind "
            f"and metadata), got {describe(data)}"
        ]
    problems = _type_problems(data)
    if problems:
        return [], [f"{doc.source}: {p}" for p in problems]
    kind, api_version = data["kind"], data["apiVersion"]
    if kind == "List" and api_version == "v1":
        return _validate_list(doc, namespace)

    meta = data.get("metadata")
    raw_name = meta.get("name") if isinstance(meta, dict) else None
    label = where(doc.source, kind, raw_name if isinstance(raw_name, str) else None)
    info = KINDS.get(kind)
    if info is None or not info.loadable:
        return [], [f"{doc.source}: {_kind_problem(kind)}"]
    if api_version not in info.api_versions:
        served = " or ".join(info.api_versions)
        return [], [f'{label}: apiVersion "{api_version}" does not serve kind {kind}; use {served}']

    model = MODELS[kind]
    obj: Any = None
    try:
        obj = model.model_validate(data)
    except ValidationError as err:
        problems += [
            f"{label}: {path}: {message}" for path, message in pydantic_problems(err, model)
        ]

    # Names and namespaces are checked even when the model failed, to report everything.
    if isinstance(raw_name, str):
        name_problem = NAME_RULES.get(kind, dns1123_subdomain_problem)(raw_name)
        if name_problem:
            problems.append(f"{label}: metadata.name: {name_problem}")
    own_namespace = meta.get("namespace") if isinstance(meta, dict) else None
    warnings: list[str] = []
    resolved: str | None = None
    if not isinstance(own_namespace, str) or not own_namespace:
        own_namespace = None  # unset ("" is unset too); a wrong type was reported by the model
    elif not info.namespaced:
        warnings.append(f"metadata.namespace is ignored: a {kind} is not namespaced")
        own_namespace = None
    elif dns1123_label_problem(own_namespace):
        problems.append(f"{label}: metadata.namespace: {dns1123_label_problem(own_namespace)}")
    elif namespace and own_namespace != namespace:
        problems.append(
            f'{label}: the namespace from the provided object "{own_namespace}" does not '
            f'match the namespace "{namespace}"; pass namespace "{own_namespace}" '
            f"(kubectl: --namespace={own_namespace}) or remove metadata.namespace"
        )
    if info.namespaced:
        resolved = own_namespace or namespace or "default"
    if problems or obj is None:
        return [], problems

    spec = getattr(obj, "spec", None)
    warnings += _warnings(kind, spec, resolved)
    resource = Resource(
        api_version=api_version,
        kind=kind,
        name=obj.metadata.name,
        namespace=resolved,
        body=_body(data, resolved),
        source=doc.source,
        warnings=tuple(warnings),
        spec=spec,
    )
    return [resource], []


def _validate_list(doc: Document, namespace: str | None) -> tuple[list[Resource], list[str]]:
    """``kind: List`` (what ``kubectl get -o yaml`` prints): each item is an object."""
    items = doc.data.get("items")
    extra = sorted(set(doc.data) - {"apiVersion", "kind", "items", "metadata"})
    if extra:
        return [], [f'{doc.source} (List): {extra[0]}: unknown field "{extra[0]}"']
    if not isinstance(items, list):
        return [], [f"{doc.source} (List): items: expected a list, got {describe(items)}"]
    resources: list[Resource] = []
    problems: list[str] = []
    for i, item in enumerate(items, 1):
        found, bad = validate_document(Document(f"{doc.source}, item {i}", item), namespace)
        resources += found
        problems += bad
    return resources, problems
