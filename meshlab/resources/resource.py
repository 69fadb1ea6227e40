"""``Resource``: one validated object from a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from meshlab.resources.kinds import KINDS


@dataclass(frozen=True)
class Resource:
    """A Kubernetes or Istio object that passed validation.

    ``body`` is the object as plain JSON-able data (what ``kubectl apply`` would send):
    apiVersion, kind, metadata (name, namespace when namespaced, labels, annotations,
    creationTimestamp when given) and the rest of the manifest unchanged. ``spec`` is the
    validated model of the ``spec`` section (None for kinds without one).
    """

    api_version: str
    kind: str
    name: str
    namespace: str | None  # None for cluster-scoped kinds (Namespace)
    body: dict[str, Any]
    source: str  # "deployments/service-a.yaml, document 2"
    warnings: tuple[str, ...] = ()
    spec: BaseModel | None = None

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.body.get("metadata", {}).get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body.get("metadata", {}).get("annotations") or {})

    @property
    def ref(self) -> str:
        """How kubectl names the object in its output: ``deployment.apps/service-a``."""
        info = KINDS[self.kind]
        kind = f"{info.singular}.{info.group}" if info.group else info.singular
        return f"{kind}/{self.name}"

    def __hash__(self) -> int:
        return hash(self.key)
