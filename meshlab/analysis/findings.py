"""Findings: what ``meshlab analyze`` reports, in istioctl analyze's shape.

One line per finding, as istioctl prints its messages::

    Error [MLB0101] (DestinationRule istio-meshlab/service-b-v1-plaintext) ...

Codes are stable: ``MLB01xx`` client/server mTLS conflicts (calls will fail), ``MLB02xx``
policies that do nothing (ignored or matching nothing), ``MLB03xx`` sidecar injection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ERROR, WARNING, INFO = "Error", "Warning", "Info"
SEVERITIES = (INFO, WARNING, ERROR)  # weakest first

# istioctl's exit code when analyze finds issues at or above --failure-threshold.
EXIT_FOUND_ISSUES = 79


@dataclass(frozen=True)
class Check:
    code: str
    severity: str
    title: str


CHECKS: dict[str, Check] = {
    c.code: c
    for c in (
        Check("MLB0101", ERROR, "DestinationRule sends plaintext or plain TLS to STRICT"),
        Check("MLB0102", ERROR, "DestinationRule sends mTLS to a workload that takes none"),
        Check("MLB0103", ERROR, "auto mTLS off: sidecars send plaintext to a STRICT workload"),
        Check("MLB0104", WARNING, "clients without a sidecar cannot call a STRICT workload"),
        Check("MLB0201", WARNING, "portLevelMtls keyed by a port that is not a container port"),
        Check("MLB0202", WARNING, "PeerAuthentication selector matches no workload"),
        Check("MLB0203", WARNING, "DestinationRule host matches no service"),
        Check("MLB0204", WARNING, "selector policy in the root namespace is ignored"),
        Check("MLB0205", WARNING, "several namespace-wide PeerAuthentications: the oldest wins"),
        Check("MLB0206", WARNING, "several workload PeerAuthentications select one workload"),
        Check("MLB0301", WARNING, "namespace labelled for injection, but pods have no sidecar"),
        Check("MLB0302", INFO, "pods keep a sidecar that their namespace no longer asks for"),
    )
}  # fmt: skip


def ref(kind: str, namespace: str | None, name: str) -> str:
    """How a finding names a resource: ``DestinationRule istio-meshlab/name``."""
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


@dataclass(frozen=True)
class Finding:
    """One problem found, on one resource. ``related`` names the other resources involved
    (the policy that made a workload STRICT, the workloads concerned...)."""

    code: str
    kind: str
    name: str
    namespace: str | None
    message: str
    fix: str = ""
    related: tuple[str, ...] = ()
    severity: str = field(default="")

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", CHECKS[self.code].severity)

    @property
    def resource(self) -> str:
        return ref(self.kind, self.namespace, self.name)

    @property
    def refs(self) -> set[str]:
        return {self.resource, *self.related}

    def concerns_namespace(self, namespace: str) -> bool:
        return any(
            r == ref("Namespace", None, namespace)
            or r.split(" ", 1)[-1].startswith(f"{namespace}/")
            for r in self.refs
        )

    def line(self) -> str:
        return f"{self.severity} [{self.code}] ({self.resource}) {self.message}"

    def apply_warning(self) -> str:
        """The text ``apply`` shows (after its own ``Warning:``)."""
        severity = " Error" if self.severity == ERROR else ""
        return f"[{self.code}{severity}] ({self.resource}) {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "resource": self.resource,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "message": self.message,
            "fix": self.fix,
            "related": list(self.related),
        }

    def __str__(self) -> str:
        return self.line()


def at_least(severity: str, threshold: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then by code and resource; duplicates dropped."""
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda f: (-SEVERITIES.index(f.severity), f.code, f.resource))


@dataclass
class AnalysisReport:
    """The findings of one analysis, with what was analysed."""

    findings: list[Finding] = field(default_factory=list)
    namespace: str | None = None  # None: every namespace
    files: list[str] = field(default_factory=list)  # proposed files (loaded, not applied)

    def of_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of_severity(ERROR)

    @property
    def warnings(self) -> list[Finding]:
        return self.of_severity(WARNING)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def exit_code(self, failure_threshold: str = ERROR) -> int:
        """0, or istioctl's 79 when a finding is at or above ``failure_threshold``."""
        if failure_threshold not in SEVERITIES:
            raise ValueError(f"failure threshold must be one of {', '.join(SEVERITIES)}")
        failing = any(at_least(f.severity, failure_threshold) for f in self.findings)
        return EXIT_FOUND_ISSUES if failing else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "files": list(self.files),
            "counts": {s: len(self.of_severity(s)) for s in reversed(SEVERITIES)},
            "findings": [f.to_dict() for f in self.findings],
        }

    def __str__(self) -> str:
        from meshlab.analysis.render import report_text

        return report_text(self)

    def _repr_html_(self) -> str:
        from meshlab.analysis.render import report_html

        return report_html(self)
