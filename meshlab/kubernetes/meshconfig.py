"""Istio's mesh-wide settings on a cluster: meshConfig, kept in a ConfigMap.

istiod reads meshConfig from the ConfigMap ``istio`` in its namespace (``istio-<revision>``
for a control plane installed with a revision), key ``mesh``: one YAML document
(``enableAutoMtls: false``, ``defaultConfig: ...``). It watches that ConfigMap through the
API server and, when it changes, pushes new configuration to every sidecar; no restart.

MeshLab changes one field of that document at a time, as ``kubectl edit`` would: the line
is rewritten in place (or added at the end), so every other setting and comment stays, and
the result is parsed again to prove that only that field changed. The write is a strategic
merge patch of ``data.mesh`` carrying the ``resourceVersion`` that was read, so a change
made by someone else in between is refused by the API server (409) instead of lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from meshlab.errors import ClusterError
from meshlab.kubernetes.connection import MERGE_PATCH, Api, ApiError
from meshlab.kubernetes.pods import is_ready, list_pods

CONFIGMAP = "istio"
KEY = "mesh"
AUTO_MTLS = "enableAutoMtls"  # meshConfig field; Istio's default is true
REVISION_LABEL = "istio.io/rev"
FIELD_MANAGER = "meshlab"
WRITE_ATTEMPTS = 3  # read-modify-write rounds when the ConfigMap changes under us (409)


def configmaps_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps"


def configmap_path(namespace: str, name: str) -> str:
    return f"{configmaps_path(namespace)}/{quote(name, safe='')}"


def configmap_name(revision: str = "") -> str:
    """``istio`` for the default control plane, ``istio-<rev>`` for a revisioned one."""
    return CONFIGMAP if revision in ("", "default") else f"{CONFIGMAP}-{revision}"


@dataclass
class MeshConfigMap:
    """The ConfigMap that holds meshConfig, as read: its text and what the text says."""

    namespace: str
    name: str
    resource_version: str
    text: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return configmap_path(self.namespace, self.name)

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}, key {KEY}"

    @property
    def auto_mtls(self) -> bool:
        """``enableAutoMtls``; absent means Istio's default, true."""
        value = self.settings.get(AUTO_MTLS, True)
        if not isinstance(value, bool):
            raise ClusterError(
                f"{self.where}: {AUTO_MTLS} is {value!r}; Istio expects true or false"
            )
        return value

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> MeshConfigMap:
        meta = obj.get("metadata") or {}
        found = cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            text=str((obj.get("data") or {}).get(KEY) or ""),
        )
        found.settings = parse(found.text, found.where)
        return found


def parse(text: str, where: str) -> dict[str, Any]:
    """The meshConfig document as a dict (an empty text is an empty document)."""
    import yaml

    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ClusterError(f"{where} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClusterError(
            f"{where} holds a YAML {type(data).__name__}; istiod expects a mapping of "
            "meshConfig fields"
        )
    return data


def with_field(text: str, name: str, value: bool) -> str:
    """``text`` with the top-level field ``name`` set to ``value``.

    The field's line is rewritten in place (a trailing comment kept), or appended when the
    document does not have it. If the result does not parse to exactly the old document
    with that one field changed (flow style, a multi-line value, an end marker...), the
    document is written out again from its parsed form instead: right, without comments."""
    import yaml

    before = parse(text, "the mesh config")
    wanted = {**before, name: value}
    rendered = f"{name}: {'true' if value else 'false'}"
    line = re.compile(rf"^{re.escape(name)}[ \t]*:(?P<value>[^\n]*)$", re.MULTILINE)
    matches = list(line.finditer(text))
    if len(matches) == 1:
        match = matches[0]
        comment = re.search(r"[ \t]+#.*$", match.group("value"))
        edited = (
            text[: match.start()]
            + rendered
            + (comment.group(0) if comment else "")
            + text[match.end() :]
        )
    elif not matches:
        body = text.rstrip("\n")
        edited = f"{body}\n{rendered}\n" if body.strip() else f"{rendered}\n"
    else:
        edited = ""
    try:
        if edited and parse(edited, "the edited mesh config") == wanted:
            return edited
    except ClusterError:
        pass
    return str(yaml.safe_dump(wanted, sort_keys=False, default_flow_style=False))


def find(api: Api, namespace: str) -> MeshConfigMap:
    """The ConfigMap istiod reads meshConfig from: ``istio``, else the one ``istio-<rev>``
    of the running istiod's revision. ``ClusterError`` says what was looked for."""
    try:
        return MeshConfigMap.from_object(api.get(configmap_path(namespace, CONFIGMAP)))
    except ApiError as err:
        if err.status != 404:
            raise _refused("read", namespace, CONFIGMAP, err) from None
    try:
        listed = api.get(configmaps_path(namespace)).get("items") or []
    except ApiError as err:
        raise _refused("list", namespace, "", err) from None
    candidates = sorted(
        str(item["metadata"]["name"])
        for item in listed
        if str(item.get("metadata", {}).get("name", "")).startswith(f"{CONFIGMAP}-")
        and KEY in (item.get("data") or {})
    )
    if len(candidates) > 1:
        revisions = _istiod_revisions(api, namespace)
        chosen = [n for n in candidates if n in {configmap_name(r) for r in revisions}]
        if len(chosen) == 1:
            candidates = chosen
    if len(candidates) == 1:
        return MeshConfigMap.from_object(
            next(i for i in listed if i["metadata"]["name"] == candidates[0])
        )
    if candidates:
        raise ClusterError(
            f"namespace {namespace} has several Istio mesh configs ({', '.join(candidates)}: "
            "one per control plane revision) and MeshLab cannot tell which one the lab's "
            f"sidecars use; change {AUTO_MTLS} in that one yourself (`kubectl -n {namespace} "
            "edit configmap NAME`)"
        )
    raise ClusterError(
        f"no Istio mesh config in namespace {namespace} (context {api.context}): neither "
        f"ConfigMap {CONFIGMAP} nor an {CONFIGMAP}-<revision> with a key {KEY!r} exists. Is "
        f"istiod installed in {namespace}? Pass istio_namespace=... if it runs elsewhere"
    )


def set_auto_mtls(api: Api, found: MeshConfigMap, value: bool) -> MeshConfigMap:
    """Set ``enableAutoMtls`` (read-modify-write, retried when the ConfigMap changed in
    between); returns the ConfigMap as written. Nothing is sent when it is already in force
    (an absent field counts as Istio's default, true)."""
    current = found
    for _ in range(WRITE_ATTEMPTS):
        if current.auto_mtls is value:
            return current
        text = with_field(current.text, AUTO_MTLS, value)
        body = {
            "metadata": {"resourceVersion": current.resource_version},
            "data": {KEY: text},
        }
        try:
            written = api.request(
                "PATCH", current.path, body=body, content_type=MERGE_PATCH,
                query=[("fieldManager", FIELD_MANAGER)],
            ).data  # fmt: skip
        except ApiError as err:
            if err.status == 409:  # changed since we read it: read again, edit again
                current = _reread(api, current)
                continue
            raise _refused("change", current.namespace, current.name, err) from None
        return MeshConfigMap.from_object(written)
    raise ClusterError(
        f"{current.where} kept changing while MeshLab wrote {AUTO_MTLS}; is another tool (an "
        "operator, a GitOps controller) managing it? Try again, or change it there"
    )


def _reread(api: Api, found: MeshConfigMap) -> MeshConfigMap:
    try:
        return MeshConfigMap.from_object(api.get(found.path))
    except ApiError as err:
        raise _refused("read", found.namespace, found.name, err) from None


def _istiod_revisions(api: Api, namespace: str) -> set[str]:
    try:
        pods = list_pods(api, namespace, {"app": "istiod"})
    except ApiError:
        return set()
    return {
        str((p["metadata"].get("labels") or {}).get(REVISION_LABEL, "default"))
        for p in pods
        if is_ready(p)
    }


def _refused(verb: str, namespace: str, name: str, err: ApiError) -> ClusterError:
    what = f"ConfigMap {namespace}/{name}" if name else f"the ConfigMaps of namespace {namespace}"
    if err.status in (401, 403):
        return ClusterError(
            f"cannot {verb} {what}: {err}. Changing mesh-wide settings needs get, list and "
            f"patch on configmaps in {namespace} (cluster-admin on kind has them)"
        )
    return ClusterError(f"cannot {verb} {what}: {err}")
