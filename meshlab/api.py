"""The one interface that notebooks, the CLI and tests use: ``Mesh``.

Backends (``meshlab.embedded`` and ``meshlab.kubernetes``) implement it; callers never ask
which one they have. ``connect()`` picks the backend: the argument, then ``MESHLAB_BACKEND``,
then ``embedded``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlab.errors import MeshlabError

if TYPE_CHECKING:
    from meshlab.analysis import AnalysisReport, Description, MeshState
    from meshlab.capture import Capture

BACKENDS = ("embedded", "kubernetes")

# curl's exit codes for the failures a learner meets; istio.io's tasks print them.
CURL_EXIT = {
    "connection reset by peer": 56,
    "connection refused": 7,
    "could not resolve host": 6,
    "timed out": 28,
    "tls error": 35,
    "empty reply from server": 52,
}


@dataclass
class CallResult:
    """What a request sent from inside a workload's pod got back.

    ``status`` is None when no HTTP response came back (the connection failed); then
    ``error`` says why, in curl's words ("connection reset by peer", ...).
    """

    status: int | None
    error: str | None = None
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    source: str = ""
    url: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def code(self) -> str:
        """The HTTP code as curl's ``-w '%{http_code}'`` prints it: ``000`` when none."""
        return f"{self.status:03d}" if self.status is not None else "000"

    @property
    def curl_exit_code(self) -> int:
        """The exit code curl would have had (0 when a response came back)."""
        if self.status is not None:
            return 0
        err = (self.error or "").lower()
        for words, code in CURL_EXIT.items():
            if words in err:
                return code
        return 56

    def json(self) -> Any:
        """Parse the body as JSON (raises ValueError when it is not JSON)."""
        import json

        return json.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "body": self.body,
            "headers": dict(self.headers),
            "elapsed": round(self.elapsed, 6),
        }

    def summary(self) -> str:
        if self.status is None:
            return f"{self.code} ({self.error}; curl would exit {self.curl_exit_code})"
        return f"{self.status}"

    def __str__(self) -> str:
        return self.summary()


@dataclass
class PodStatus:
    name: str
    namespace: str
    workload: str
    ip: str
    phase: str  # Pending | Running | CrashLoopBackOff | Terminating | Failed
    ready: bool
    sidecar: bool
    restarts: int = 0
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MeshStatus:
    backend: str
    running: bool
    pods: list[PodStatus] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "running": self.running,
            "pods": [p.to_dict() for p in self.pods],
            "details": self.details,
        }


@dataclass
class ApplyResult:
    """One line per object, as ``kubectl apply`` prints: ``peerauthentication/x created``."""

    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = list(self.changes) + [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


Source = str | Path


class Mesh(abc.ABC):
    """A service mesh a lesson can change and observe."""

    backend: str

    @abc.abstractmethod
    def apply(self, source: Source, namespace: str | None = None) -> ApplyResult:
        """Like ``kubectl apply -f``: a file, a folder, or YAML text.

        Returns once the change is in force on every affected sidecar; raises
        ``ResourceError`` (nothing changed) for bad input, ``MeshTimeoutError`` when a sidecar
        did not load the change in time.
        """

    @abc.abstractmethod
    def delete(self, source: Source, namespace: str | None = None) -> ApplyResult:
        """Like ``kubectl delete -f``."""

    @abc.abstractmethod
    def get(
        self, kind: str, name: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The stored objects of a kind (plural, singular or short names accepted)."""

    @abc.abstractmethod
    def call(
        self,
        source_workload: str,
        url: str,
        namespace: str | None = None,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> CallResult:
        """Send one HTTP request from inside a pod of ``source_workload``, as its app would."""

    @abc.abstractmethod
    def capture(
        self, workload: str, namespace: str | None = None, port: int = 8080
    ) -> AbstractContextManager[Capture]:
        """Record the bytes crossing the network boundary of the workload's pod on ``port``."""

    @abc.abstractmethod
    def rollout_restart(self, deployment: str, namespace: str | None = None) -> list[str]:
        """Re-create the deployment's pods (sidecar injection is decided again)."""

    @abc.abstractmethod
    def status(self) -> MeshStatus:
        """Pods with readiness, sidecar yes/no and restarts."""

    @abc.abstractmethod
    def certificate(self, workload: str, namespace: str | None = None) -> Any:
        """The SPIFFE certificate that the workload's sidecar presents (a WorkloadCertificate)."""

    @abc.abstractmethod
    def down(self) -> None:
        """Stop everything this mesh started (embedded) or forget the connection (kubernetes)."""

    def wait_ready(self, namespace: str | None = None, timeout: float = 60.0) -> None:  # noqa: B027
        """Wait until every pod (of ``namespace``, or all) is ready."""

    # ---- describe / analyze (meshlab.analysis: pure logic over the mesh's state) -------------
    def analysis_state(self) -> MeshState:
        """What ``describe`` and ``analyze`` read. This default builds it from ``get`` (every
        namespace) and ``status``, for any backend; a backend may override it (the embedded
        one sends its control plane's own snapshot)."""
        from meshlab.analysis.state import ANALYZED_KINDS, state_from_mesh_objects

        objects = [obj for kind in ANALYZED_KINDS for obj in self.get(kind)]
        return state_from_mesh_objects(objects, self.status().pods)

    def describe(self, source_workload: str, url: str, namespace: str | None = None) -> Description:
        """Why a call from ``source_workload`` to ``url`` will be mutual TLS, plaintext, reset
        or a 503: client side, server side (PeerAuthentication level by level), prediction."""
        from meshlab.analysis import describe_call

        ns = namespace or getattr(self, "namespace", None) or "istio-meshlab"
        return describe_call(self.analysis_state(), source_workload, url, ns)

    def analyze(
        self, source: Source | list[Source] | None = None, namespace: str | None = None
    ) -> AnalysisReport:
        """Check the applied state plus the proposed files in ``source`` (loaded, not
        applied) for mTLS conflicts, policies that do nothing and injection mistakes.
        ``namespace``: like ``-n``, the namespace of proposed objects that name none, and
        only findings that concern it."""
        from meshlab.analysis import analyze
        from meshlab.analysis.state import source_labels
        from meshlab.resources import load

        proposed = load(source, namespace=namespace) if source else []
        return analyze(self.analysis_state(), proposed, namespace, source_labels(source))

    def pods(self, namespace: str | None = None) -> Iterator[PodStatus]:
        for pod in self.status().pods:
            if namespace is None or pod.namespace == namespace:
                yield pod

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def resolve_backend(backend: str | None = None) -> str:
    name = (backend or os.environ.get("MESHLAB_BACKEND") or "embedded").strip().lower()
    if name not in BACKENDS:
        raise MeshlabError(
            f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)} "
            "(set by the backend argument or MESHLAB_BACKEND)"
        )
    return name


def connect(backend: str | None = None, **options: Any) -> Mesh:
    """Return a ``Mesh`` for the chosen backend, starting the embedded mesh if needed."""
    name = resolve_backend(backend)
    if name == "kubernetes":
        from meshlab.kubernetes import KubernetesMesh

        return KubernetesMesh(**options)
    from meshlab.embedded.client import EmbeddedMesh

    return EmbeddedMesh(**options)
