"""``meshlab analyze``: the applied state plus proposed resources (loaded, not applied) in,
an ``AnalysisReport`` out; and ``findings_for``, the part of it that ``apply`` shows.

The checks themselves are in ``checks.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshlab.analysis.checks import DEPLOY, DR, NS, PA, run_checks
from meshlab.analysis.findings import AnalysisReport, Finding, ref
from meshlab.analysis.state import (
    MeshState,
    created_at,
    destination_rule_from,
    peer_authentication_from,
    service_from,
    template_ports,
    workload_of,
)
from meshlab.embedded.model import Pod, Snapshot
from meshlab.embedded.policy import injects_sidecar
from meshlab.resources import Resource

__all__ = ["analyze", "apply_warnings", "findings_for", "merge_proposed", "run_checks"]


# ---- proposed resources -------------------------------------------------------------------------


def _hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _planned_pods(body: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> list[Pod]:
    """The pods a Deployment will have once applied (injection decided now, as at creation)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace") or "default")
    spec = body.get("spec") or {}
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    tspec = template.get("spec") or {}
    thash = _hash(template)
    sidecar = injects_sidecar(namespace_labels, tmeta)
    labels = {str(k): str(v) for k, v in (tmeta.get("labels") or {}).items()}
    labels["pod-template-hash"] = thash
    if sidecar:
        labels["security.istio.io/tlsMode"] = "istio"
    ports, named = template_ports(template)
    replicas = spec.get("replicas")
    count = 1 if replicas is None else int(replicas)
    return [
        Pod(
            name=f"{name}-{thash}-new{i}",
            namespace=namespace,
            labels=labels,
            service_account=str(
                tspec.get("serviceAccountName") or tspec.get("serviceAccount") or "default"
            ),
            ip="",
            inner_ip="",
            sidecar=sidecar,
            container_ports=ports,
            named_ports=named,
            ready=True,
        )
        for i in range(count)
    ]


def merge_proposed(
    state: MeshState, proposed: Sequence[Resource], now: float | None = None
) -> MeshState:
    """The state once ``proposed`` is applied (as ``apply`` would: same-named objects are
    replaced, keeping their creation time; new ones are the newest; a Deployment whose pod
    template changes gets new pods, with injection decided again)."""
    if not proposed:
        return state
    snap = state.snapshot
    stamp = time.time() if now is None else now
    namespaces = {k: dict(v) for k, v in snap.namespaces.items()}
    services = {(s.namespace, s.name): s for s in snap.services}
    pas = {(p.namespace, p.name): p for p in snap.peer_authentications}
    drs = {(d.namespace, d.name): d for d in snap.destination_rules}
    objects = {
        (o.get("kind"), (o.get("metadata") or {}).get("namespace"),
         (o.get("metadata") or {}).get("name")): o
        for o in state.objects
    }  # fmt: skip
    deployments: list[Resource] = []
    for index, res in enumerate(proposed):
        ns = res.namespace or "default"
        created = stamp + index * 1e-3
        if res.kind == NS:
            namespaces[res.name] = res.labels
        elif res.kind == "Service":
            services[(ns, res.name)] = service_from(res.body)
        elif res.kind == PA:
            old = pas.get((ns, res.name))
            pas[(ns, res.name)] = peer_authentication_from(
                res.body, old.created if old else created_at(res.body, created)
            )
        elif res.kind == DR:
            old_dr = drs.get((ns, res.name))
            drs[(ns, res.name)] = destination_rule_from(
                res.body, old_dr.created if old_dr else created_at(res.body, created)
            )
        elif res.kind == DEPLOY:
            deployments.append(res)
        if res.kind != NS:
            objects[(res.kind, ns, res.name)] = res.body
    pods = list(snap.pods)
    for res in deployments:
        ns = res.namespace or "default"
        current = [p for p in pods if p.namespace == ns and workload_of(p) == res.name]
        stored = state.template(ns, res.name)
        new_template = (res.body.get("spec") or {}).get("template") or {}
        if current and stored in (None, new_template):
            continue  # same template (or unknown): the running pods stay
        pods = [p for p in pods if p not in current]
        pods += _planned_pods(res.body, namespaces.get(ns, {}))
    merged = dataclasses.replace(
        snap,
        pods=tuple(pods),
        services=tuple(services.values()),
        peer_authentications=tuple(pas.values()),
        destination_rules=tuple(drs.values()),
        namespaces=namespaces,
    )
    return MeshState(merged, tuple(objects.values()))


# ---- entry points -------------------------------------------------------------------------------


def analyze(
    state: MeshState | Snapshot,
    proposed: Sequence[Resource] = (),
    namespace: str | None = None,
    files: Sequence[str] = (),
) -> AnalysisReport:
    """Findings for the applied state plus ``proposed`` resources (loaded, not applied).

    ``namespace``: keep only findings about resources in that namespace (or that involve
    one there, such as a mesh-wide policy that makes one of its workloads STRICT).
    """
    if isinstance(state, Snapshot):
        state = MeshState(state)
    merged = merge_proposed(state, proposed)
    found = run_checks(merged)
    if namespace:
        found = [f for f in found if f.concerns_namespace(namespace)]
    return AnalysisReport(found, namespace, list(files))


def resource_ref(resource: Resource | Mapping[str, Any]) -> str:
    if isinstance(resource, Resource):
        kind, ns, name = resource.kind, resource.namespace, resource.name
    else:
        meta = resource.get("metadata") or {}
        kind, name = str(resource.get("kind")), str(meta.get("name"))
        ns = meta.get("namespace") or (None if kind == NS else "default")
    return ref(kind, None if kind == NS else (ns or "default"), name)


def findings_for(
    applied: Iterable[Resource | Mapping[str, Any]], state: MeshState | Snapshot
) -> list[Finding]:
    """The findings of ``state`` (the state after an apply) that concern the applied
    resources: on one of them, or involving one of them. What ``apply`` should print as
    warnings (``finding.apply_warning()``)."""
    refs = {resource_ref(r) for r in applied}
    return [f for f in run_checks(state) if f.refs & refs]


def apply_warnings(
    applied: Iterable[Resource | Mapping[str, Any]], state: MeshState | Snapshot
) -> list[str]:
    """``findings_for`` as the lines ``apply`` adds to its warnings (``ApplyResult.warnings``
    prints each after ``Warning:``): ``[MLB0101 Error] (DestinationRule ns/name) ...``.

    A root-namespace selector policy already carries the loader's own warning (load() says
    it has no effect), so its MLB0204 finding is not printed a second time."""
    applied = list(applied)
    warned = {
        (r.namespace, r.name)
        for r in applied
        if isinstance(r, Resource) and any("root namespace" in w for w in r.warnings)
    }
    return [
        f.apply_warning()
        for f in findings_for(applied, state)
        if not (f.code == "MLB0204" and (f.namespace, f.name) in warned)
    ]
