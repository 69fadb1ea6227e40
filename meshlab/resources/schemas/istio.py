"""PeerAuthentication and DestinationRule as istio/api defines them.

Fields, enums and the validation rules istiod's webhook applies (portLevelMtls needs a
selector, port numbers 1..65535, mutual TLS needs a certificate...). Fields the embedded
mesh does not simulate are accepted (they are valid Istio) and reported as warnings.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from meshlab.resources.schemas.common import (
    LabelMap,
    Opaque,
    OpaqueMap,
    Port,
    Strict,
    TypeMeta,
    dns1123_label_problem,
    fail,
    one_of,
)

PA_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")

_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")


class WorkloadSelector(Strict):
    matchLabels: LabelMap | None = None


# ---- PeerAuthentication (security.istio.io) ----


class MutualTLS(Strict):
    mode: one_of(*PA_MODES) | None = None


class PeerAuthenticationSpec(Strict):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    portLevelMtls: dict[str, MutualTLS] | None = None  # keys: container port numbers

    @field_validator("portLevelMtls")
    @classmethod
    def _ports(cls, value: dict[str, MutualTLS] | None) -> dict[str, MutualTLS] | None:
        if value is None:
            return value
        if not value:
            raise fail("port_level", "portLevelMtls needs at least one port when it is set")
        for key in value:
            if not key.isdigit():
                raise fail("port_level", f"{key!r} is not a port number", (key,))
            if not 1 <= int(key) <= 65535:
                raise fail("port_level", f"port must be between 1 and 65535, got {key}", (key,))
        return value

    @model_validator(mode="after")
    def _port_level_needs_selector(self) -> PeerAuthenticationSpec:
        if self.portLevelMtls and not self.selector_labels:
            raise fail(
                "port_level",
                "needs a workload selector (spec.selector.matchLabels): Istio rejects "
                "portLevelMtls in a namespace-wide or mesh-wide policy",
                field="portLevelMtls",
            )
        return self

    @property
    def selector_labels(self) -> dict[str, str] | None:
        """matchLabels, or None when the policy is namespace-wide (or mesh-wide)."""
        return (self.selector.matchLabels or None) if self.selector else None

    @property
    def mode(self) -> str | None:
        return self.mtls.mode if self.mtls else None

    @property
    def port_level(self) -> dict[int, str | None]:
        return {int(port): m.mode for port, m in (self.portLevelMtls or {}).items()}


class PeerAuthenticationObject(TypeMeta):
    spec: PeerAuthenticationSpec | None = None
    status: Opaque = None


def peer_authentication_warnings(
    spec: PeerAuthenticationSpec, namespace: str, root: str
) -> list[str]:
    if namespace == root and spec.selector_labels:
        return [
            f"spec.selector has no effect: Istio ignores workload selectors in the root "
            f"namespace {root}; this policy does nothing"
        ]
    return []


# ---- DestinationRule (networking.istio.io) ----


class ClientTLSSettings(Strict):
    mode: one_of(*TLS_MODES) | None = None
    clientCertificate: str | None = None
    privateKey: str | None = None
    caCertificates: str | None = None
    credentialName: str | None = None
    subjectAltNames: list[str] | None = None
    sni: str | None = None
    insecureSkipVerify: bool | None = None
    caCrl: str | None = None

    @model_validator(mode="after")
    def _mode_rules(self) -> ClientTLSSettings:
        if self.mode == "ISTIO_MUTUAL":
            # The sidecar uses its Istio-issued certificate (SDS `default`) and root (`ROOTCA`).
            own = ("clientCertificate", "privateKey", "caCertificates", "credentialName", "caCrl")
            extra = [f for f in (*own, "insecureSkipVerify") if getattr(self, f) not in (None, "")]
            if extra:
                raise fail(
                    "istio_mutual",
                    f"{', '.join(extra)} must be empty when mode is ISTIO_MUTUAL: the sidecar "
                    "uses its Istio-issued certificate",
                    field=extra[0],
                )
        if self.mode in ("SIMPLE", "MUTUAL") and self.credentialName:
            files = [
                f
                for f in ("clientCertificate", "privateKey", "caCertificates", "caCrl")
                if getattr(self, f)
            ]
            if files:
                raise fail(
                    "credential_name",
                    f"{', '.join(files)} cannot be set together with credentialName",
                    field=files[0],
                )
        elif self.mode == "MUTUAL":
            missing = [f for f in ("clientCertificate", "privateKey") if not getattr(self, f)]
            if missing:
                raise fail(
                    "mutual",
                    f"mode MUTUAL needs {' and '.join(missing)} (or credentialName)",
                    field=missing[0],
                )
        return self


class PortSelector(Strict):
    number: Port


class PortTrafficPolicy(Strict):
    port: PortSelector
    loadBalancer: OpaqueMap | None = None
    connectionPool: OpaqueMap | None = None
    outlierDetection: OpaqueMap | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(Strict):
    loadBalancer: OpaqueMap | None = None
    connectionPool: OpaqueMap | None = None
    outlierDetection: OpaqueMap | None = None
    tls: ClientTLSSettings | None = None
    portLevelSettings: list[PortTrafficPolicy] | None = Field(default=None, max_length=4096)
    tunnel: OpaqueMap | None = None
    proxyProtocol: OpaqueMap | None = None


class Subset(Strict):
    name: str
    labels: LabelMap | None = None
    trafficPolicy: TrafficPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = dns1123_label_problem(value)
        if problem:
            raise fail("subset_name", problem)
        return value


def host_problem(host: str) -> str | None:
    """Istio's rule for DestinationRule hosts: a DNS name, optionally starting with ``*``."""
    if not host:
        return "host must not be empty"
    name = host[2:] if host.startswith("*.") else ("" if host == "*" else host)
    if len(host) > 255 or (
        name and not all(_HOST_LABEL.match(p) and len(p) <= 63 for p in name.split("."))
    ):
        return (
            f"{host!r} is not a valid host: use a DNS name such as service-b-v1 or "
            "service-b-v1.istio-meshlab.svc.cluster.local"
        )
    return None


class DestinationRuleSpec(Strict):
    host: str
    trafficPolicy: TrafficPolicy | None = None
    subsets: list[Subset] | None = None
    exportTo: list[str] | None = None
    workloadSelector: WorkloadSelector | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        problem = host_problem(value)
        if problem:
            raise fail("host", problem)
        return value

    @field_validator("subsets")
    @classmethod
    def _subset_names(cls, value: list[Subset] | None) -> list[Subset] | None:
        names = [s.name for s in value or ()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise fail("subsets", f"duplicate subset name {duplicates[0]!r}")
        return value

    @field_validator("exportTo")
    @classmethod
    def _export_to(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            if item not in (".", "*", "~") and dns1123_label_problem(item):
                raise fail(
                    "export_to",
                    f"{item!r} is not '.', '*', '~' or a namespace name",
                )
        if value and "~" in value and len(value) > 1:
            raise fail("export_to", "'~' (export to no namespace) cannot be combined with others")
        if value and len(set(value)) != len(value):
            raise fail("export_to", "duplicate entries")
        return value

    @model_validator(mode="after")
    def _selector_export(self) -> DestinationRuleSpec:
        if self.workloadSelector and self.exportTo and set(self.exportTo) != {"."}:
            raise fail(
                "export_to",
                "a DestinationRule with a workloadSelector can only be exported to '.'",
                field="exportTo",
            )
        return self

    @property
    def tls_mode(self) -> str | None:
        """trafficPolicy.tls.mode; DISABLE when tls is set without a mode; None without tls."""
        tls = self.trafficPolicy.tls if self.trafficPolicy else None
        return (tls.mode or "DISABLE") if tls else None

    @property
    def port_level_tls(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for setting in (self.trafficPolicy.portLevelSettings if self.trafficPolicy else None) or ():
            if setting.tls:
                out[setting.port.number] = setting.tls.mode or "DISABLE"
        return out


class DestinationRuleObject(TypeMeta):
    spec: DestinationRuleSpec
    status: Opaque = None


_NOT_SIMULATED = ("loadBalancer", "connectionPool", "outlierDetection", "tunnel", "proxyProtocol")
_TLS_NOT_SIMULATED = (
    "sni",
    "subjectAltNames",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "insecureSkipVerify",
    "caCrl",
)


def _policy_fields(policy: TrafficPolicy | PortTrafficPolicy | None, path: str) -> list[str]:
    if policy is None:
        return []
    found = [f"{path}.{f}" for f in _NOT_SIMULATED if getattr(policy, f, None) is not None]
    if policy.tls:
        found += [
            f"{path}.tls.{f}" for f in _TLS_NOT_SIMULATED if getattr(policy.tls, f) is not None
        ]
    return found


def destination_rule_warnings(spec: DestinationRuleSpec) -> list[str]:
    fields = _policy_fields(spec.trafficPolicy, "spec.trafficPolicy")
    for i, setting in enumerate(
        (spec.trafficPolicy.portLevelSettings if spec.trafficPolicy else None) or ()
    ):
        fields += _policy_fields(setting, f"spec.trafficPolicy.portLevelSettings[{i}]")
    if spec.subsets:
        fields.append("spec.subsets")
    if spec.workloadSelector:
        fields.append("spec.workloadSelector")
    return [f"{field}: accepted but not simulated by the embedded mesh" for field in fields]
