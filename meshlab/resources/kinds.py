"""The kinds MeshLab knows: their API versions, scope and the names kubectl accepts for them."""

from __future__ import annotations

from dataclasses import dataclass

from meshlab.errors import ResourceError


@dataclass(frozen=True)
class KindInfo:
    kind: str
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, preferred first
    namespaced: bool
    plural: str
    short_names: tuple[str, ...] = ()
    loadable: bool = True  # False: only for `get` (objects the cluster creates, like Pods)

    @property
    def api_versions(self) -> tuple[str, ...]:
        """The ``apiVersion`` values a manifest may use, preferred first."""
        return tuple(f"{self.group}/{v}" if self.group else v for v in self.versions)

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("Namespace", "", ("v1",), False, "namespaces", ("ns",)),
        KindInfo("ServiceAccount", "", ("v1",), True, "serviceaccounts", ("sa",)),
        KindInfo("Service", "", ("v1",), True, "services", ("svc",)),
        KindInfo("Deployment", "apps", ("v1",), True, "deployments", ("deploy",)),
        KindInfo(
            "PeerAuthentication",
            "security.istio.io",
            ("v1", "v1beta1"),
            True,
            "peerauthentications",
            ("pa",),
        ),
        KindInfo(
            "DestinationRule",
            "networking.istio.io",
            ("v1", "v1beta1", "v1alpha3"),
            True,
            "destinationrules",
            ("dr",),
        ),
        KindInfo("Pod", "", ("v1",), True, "pods", ("po",), loadable=False),
    )
}

ROOT_NAMESPACE = "istio-system"  # meshConfig.rootNamespace's default


def _aliases() -> dict[str, str]:
    names: dict[str, str] = {}
    for info in KINDS.values():
        for alias in (info.singular, info.plural, *info.short_names):
            names[alias] = info.kind
            if info.group:
                # kubectl also takes the fully qualified form: peerauthentications.security.istio.io
                names[f"{alias}.{info.group}"] = info.kind
    return names


_ALIASES = _aliases()


def resolve_kind(text: str) -> str:
    """Turn what a user typed (``pa``, ``svc``, ``DestinationRules``...) into a kind name."""
    key = text.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(
        f"{info.kind} ({'/'.join((info.plural, *info.short_names))})" for info in KINDS.values()
    )
    raise ResourceError([f'unknown resource type "{text}": known kinds are {known}'])


def loadable_kinds_text() -> str:
    """``Namespace (v1), ..., DestinationRule (networking.istio.io/v1, ...)`` for error messages."""
    return ", ".join(
        f"{info.kind} ({', '.join(info.api_versions)})" for info in KINDS.values() if info.loadable
    )
