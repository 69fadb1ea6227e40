"""Resources -> the embedded mesh's model values (``meshlab.embedded.model``)."""

from __future__ import annotations

import time
from datetime import datetime

from meshlab.embedded import model
from meshlab.resources.resource import Resource
from meshlab.resources.schemas.istio import DestinationRuleSpec, PeerAuthenticationSpec
from meshlab.resources.schemas.kubernetes import ServiceSpec


def _expect(r: Resource, kind: str) -> None:
    if r.kind != kind:
        raise ValueError(f"expected a {kind}, got {r.kind} {r.name}")


def created_at(r: Resource, created: float | None = None) -> float:
    """metadata.creationTimestamp in seconds since the epoch; else ``created``; else now."""
    stamp = r.body.get("metadata", {}).get("creationTimestamp")
    if stamp:
        return datetime.fromisoformat(stamp.upper()).timestamp()
    return time.time() if created is None else created


def peer_authentication(r: Resource, created: float | None = None) -> model.PeerAuthentication:
    _expect(r, "PeerAuthentication")
    spec = r.spec if isinstance(r.spec, PeerAuthenticationSpec) else PeerAuthenticationSpec()
    return model.PeerAuthentication(
        name=r.name,
        namespace=r.namespace or "default",
        created=created_at(r, created),
        selector=spec.selector_labels,
        mode=spec.mode,
        port_level={port: mode or "UNSET" for port, mode in spec.port_level.items()},
    )


def destination_rule(r: Resource, created: float | None = None) -> model.DestinationRule:
    _expect(r, "DestinationRule")
    assert isinstance(r.spec, DestinationRuleSpec)
    return model.DestinationRule(
        name=r.name,
        namespace=r.namespace or "default",
        created=created_at(r, created),
        host=r.spec.host,
        tls_mode=r.spec.tls_mode,
        port_level_tls=r.spec.port_level_tls,
        export_to=tuple(r.spec.exportTo or ()),
    )


def service(r: Resource) -> model.Service:
    _expect(r, "Service")
    assert isinstance(r.spec, ServiceSpec)
    ports = tuple(
        model.ServicePort(
            port=p.port,
            target_port=p.targetPort if p.targetPort is not None else p.port,
            name=p.name or "",
            protocol=p.protocol or "TCP",
        )
        for p in r.spec.ports or ()
    )
    return model.Service(
        name=r.name,
        namespace=r.namespace or "default",
        selector=dict(r.spec.selector or {}),
        ports=ports,
    )


def to_model(
    r: Resource, created: float | None = None
) -> model.PeerAuthentication | model.DestinationRule | model.Service | None:
    """The model value for a PeerAuthentication, DestinationRule or Service; None for kinds
    the model does not hold as such (Namespace, ServiceAccount, Deployment)."""
    if r.kind == "PeerAuthentication":
        return peer_authentication(r, created)
    if r.kind == "DestinationRule":
        return destination_rule(r, created)
    if r.kind == "Service":
        return service(r)
    return None
