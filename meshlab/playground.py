"""Lesson 06's playground: four controls that rewrite the lab's mTLS settings, then show who
can still reach service-b-v1 and what crossed the wire.

The logic is plain functions, tested without widgets:

- ``Settings`` (PeerAuthentication mode, DestinationRule TLS mode, auto mTLS, injection);
- ``manifests(settings)`` -> the Istio objects those settings mean (pure);
- ``apply_settings(mesh, settings)`` -> makes the mesh match, returns kubectl-style lines;
- ``observe(mesh)`` -> calls service-b-v1 from both clients while capturing at its pod.

``Playground(mesh)`` wires ipywidgets to them. Errors inside widget callbacks never reach a
notebook runner, so the playground records them (``.error``) for a plain cell to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meshlab import lesson
from meshlab.api import CallResult, Mesh
from meshlab.display import Markup, esc, table
from meshlab.errors import MeshlabError

PA_MODES = ("none", "PERMISSIVE", "STRICT", "DISABLE")
DR_MODES = ("none", "ISTIO_MUTUAL", "DISABLE")
PA_NAME = "default"  # istio.io's convention for a namespace-wide policy
DR_NAME = "service-b-v1"
TARGET = f"{lesson.SERVICE_B}.{lesson.NS}"


@dataclass(frozen=True)
class Settings:
    """``peer_authentication``: mode of a namespace-wide PeerAuthentication in istio-meshlab
    ("none": no policy); ``destination_rule``: ``trafficPolicy.tls.mode`` of a
    DestinationRule for service-b-v1 ("none": no rule); ``auto_mtls``:
    ``meshConfig.enableAutoMtls``; ``injection``: the namespace label, pods restarted."""

    peer_authentication: str = "none"
    destination_rule: str = "none"
    auto_mtls: bool = True
    injection: bool = True

    def __post_init__(self) -> None:
        if self.peer_authentication not in PA_MODES:
            raise MeshlabError(
                f"PeerAuthentication mode {self.peer_authentication!r}: expected one of "
                f"{', '.join(PA_MODES)}"
            )
        if self.destination_rule not in DR_MODES:
            raise MeshlabError(
                f"DestinationRule TLS mode {self.destination_rule!r}: expected one of "
                f"{', '.join(DR_MODES)}"
            )

    def describe(self) -> str:
        return (
            f"PeerAuthentication {self.peer_authentication}, DestinationRule "
            f"{self.destination_rule}, auto mTLS {'on' if self.auto_mtls else 'off'}, "
            f"injection {'on' if self.injection else 'off'}"
        )


def manifests(settings: Settings) -> list[dict[str, Any]]:
    """The Istio objects the settings stand for, as manifests."""
    docs: list[dict[str, Any]] = []
    if settings.peer_authentication != "none":
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": PA_NAME, "namespace": lesson.NS},
                "spec": {"mtls": {"mode": settings.peer_authentication}},
            }
        )
    if settings.destination_rule != "none":
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": DR_NAME, "namespace": lesson.NS},
                "spec": {
                    "host": lesson.SERVICE_B,
                    "trafficPolicy": {"tls": {"mode": settings.destination_rule}},
                },
            }
        )
    return docs


def apply_settings(mesh: Mesh, settings: Settings) -> list[str]:
    """Make the mesh match ``settings``; returns what changed, kubectl-style."""
    changes: list[str] = []
    before = lesson.mesh_settings(mesh).get("auto_mtls", True)
    lesson.configure(mesh, auto_mtls=settings.auto_mtls, tls_max_version="TLSv1_3")
    if before != settings.auto_mtls:
        changes.append(f"meshConfig.enableAutoMtls set to {str(settings.auto_mtls).lower()}")
    changes += lesson.set_injection(mesh, settings.injection)
    changes += lesson.sync_policies(mesh, manifests(settings))
    mesh.wait_ready()
    return changes


@dataclass
class Observation:
    """Both clients calling service-b-v1, and what a capture at its pod saw per client."""

    matrix: lesson.Matrix
    wire: dict[str, str] = field(default_factory=dict)  # client -> what crossed the wire
    identity: dict[str, str | None] = field(default_factory=dict)  # client -> caller seen by B

    def status(self, client: str) -> str:
        return self.matrix.status(client, TARGET)

    def lines(self) -> list[str]:
        out = []
        for client in self.matrix.clients:
            result = self.matrix.result(client, TARGET)
            seen = self.identity.get(client)
            who = f", B saw caller {seen}" if seen else ""
            out.append(
                f"{client} to {TARGET}: {self.matrix.cell(client, TARGET)}"
                f"  [wire: {self.wire.get(client, 'nothing captured')}{who}]"
            )
            if result.status not in (None, 200):
                out.append(f"    body: {lesson._short_body(result.body)}")
        return out

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        rows = []
        for client in self.matrix.clients:
            result = self.matrix.result(client, TARGET)
            css = "ok" if result.ok else "bad"
            detail = ""
            if result.status is None:
                detail = f" <small>curl exit {result.curl_exit_code}: {esc(result.error)}</small>"
            elif not result.ok:
                detail = f" <small>{esc(lesson._short_body(result.body))}</small>"
            rows.append(
                [
                    Markup(f"<code>{esc(client)}</code>"),
                    Markup(f'<span class="{css}">{esc(result.code)}</span>{detail}'),
                    self.wire.get(client, "nothing captured"),
                    self.identity.get(client) or "none (no XFCC)",
                ]
            )
        style = (
            "<style>.mlpg td,.mlpg th{padding:3px 10px;text-align:left;vertical-align:top}"
            ".mlpg .ok{color:#067647;font-weight:700}.mlpg .bad{color:#b42318;"
            "font-weight:700}.mlpg small{color:#57606a}</style>"
        )
        headers = [f"client → {TARGET}", "HTTP code", "on the wire at B's pod", "caller B saw"]
        return f'<div class="mlpg">{style}{table(headers, rows)}</div>'


def _wire_summary(flows: list[Any]) -> str:
    if not flows:
        return "nothing captured"
    words = []
    for flow in flows:
        analysis = flow.analysis
        if analysis.protocol == "tls" and analysis.category != "encrypted":
            words.append(analysis.verdict)  # e.g. a ClientHello answered in plaintext
        elif analysis.category == "encrypted":
            # No version: a pooled connection opened before the capture shows no handshake.
            words.append("encrypted (TLS)")
        elif analysis.readable_http:
            answered = bool(analysis.http_responses)
            words.append("plaintext HTTP" + ("" if answered else ", reset unanswered"))
        else:
            words.append(analysis.verdict)
    return ", ".join(dict.fromkeys(words))


def observe(mesh: Mesh) -> Observation:
    """``curl http://service-b-v1.istio-meshlab:8080/hello`` from service-a's pod (through
    its sidecar, if any) and from the legacy client's, while capturing at B's pod."""
    clients = list(lesson.CLIENTS)
    results: dict[tuple[str, str], CallResult] = {}
    with mesh.capture(lesson.SERVICE_B, lesson.NS, port=lesson.PORT) as cap:
        for client in clients:
            workload, ns = client.split(".", 1)
            results[(client, TARGET)] = mesh.call(workload, lesson.B_FROM_LEGACY_URL, ns)
    ips = {p.ip: f"{p.workload}.{p.namespace}" for p in mesh.pods()}
    by_client: dict[str, list[Any]] = {}
    for flow in cap.flows:
        by_client.setdefault(ips.get(flow.client[0], flow.client[0]), []).append(flow)
    matrix = lesson.Matrix(clients, [TARGET], results, path="/hello")
    observation = Observation(matrix)
    for client in clients:
        observation.wire[client] = _wire_summary(by_client.get(client, []))
        observation.identity[client] = lesson.caller(results[(client, TARGET)])
    return observation


class Playground:
    """The widgets: change a control, the mesh is reconfigured and observed again.

    ``settings`` and ``observation`` hold the last state; ``changes`` what the last update
    did; ``error`` the last error message (None when the update worked).
    """

    def __init__(self, mesh: Mesh, settings: Settings | None = None) -> None:
        import ipywidgets as widgets

        self.mesh = mesh
        self.settings = settings or Settings()
        self.observation: Observation | None = None
        self.changes: list[str] = []
        self.error: str | None = None
        self.updates = 0
        style = {"description_width": "150px"}
        self.peer_authentication = widgets.Dropdown(
            options=PA_MODES, value=self.settings.peer_authentication,
            description="PeerAuthentication", style=style)  # fmt: skip
        self.destination_rule = widgets.Dropdown(
            options=DR_MODES, value=self.settings.destination_rule,
            description="DestinationRule tls", style=style)  # fmt: skip
        self.auto_mtls = widgets.Checkbox(value=self.settings.auto_mtls, description="auto mTLS")
        self.injection = widgets.Checkbox(
            value=self.settings.injection, description="sidecar injection"
        )
        self.status = widgets.HTML()
        self.result = widgets.HTML()
        self.box = widgets.VBox(
            [
                widgets.HBox([self.peer_authentication, self.destination_rule]),
                widgets.HBox([self.auto_mtls, self.injection]),
                self.status,
                self.result,
            ]
        )
        for control in self.controls:
            control.observe(self._changed, names="value")
        self.update()

    @property
    def controls(self) -> list[Any]:
        return [self.peer_authentication, self.destination_rule, self.auto_mtls, self.injection]

    def _changed(self, _change: Any) -> None:
        self.update()

    def current(self) -> Settings:
        return Settings(
            peer_authentication=self.peer_authentication.value,
            destination_rule=self.destination_rule.value,
            auto_mtls=bool(self.auto_mtls.value),
            injection=bool(self.injection.value),
        )

    def set(self, **values: Any) -> Observation | None:
        """Set several controls at once (one update), e.g. ``set(peer_authentication="STRICT",
        destination_rule="DISABLE")``."""
        wanted = replace(self.current(), **values)
        with self._held():
            self.peer_authentication.value = wanted.peer_authentication
            self.destination_rule.value = wanted.destination_rule
            self.auto_mtls.value = wanted.auto_mtls
            self.injection.value = wanted.injection
        return self.update()

    def _held(self) -> Any:
        playground = self

        class _Hold:
            def __enter__(self) -> None:
                for control in playground.controls:
                    control.unobserve(playground._changed, names="value")

            def __exit__(self, *exc: object) -> None:
                for control in playground.controls:
                    control.observe(playground._changed, names="value")

        return _Hold()

    def update(self) -> Observation | None:
        """Apply the controls' settings to the mesh and observe it again."""
        for control in self.controls:
            control.disabled = True
        self.status.value = "<i>applying…</i>"
        try:
            self.settings = self.current()
            self.changes = apply_settings(self.mesh, self.settings)
            self.observation = observe(self.mesh)
            self.error = None
        except Exception as err:  # shown in the widget; a plain cell checks .error
            self.error = f"{type(err).__name__}: {err}"
            self.observation = None
        finally:
            for control in self.controls:
                control.disabled = False
        self.updates += 1
        self.status.value = self._status_html()
        self.result.value = self.observation._repr_html_() if self.observation else ""
        return self.observation

    def _status_html(self) -> str:
        if self.error:
            return f'<span style="color:#b42318"><b>error:</b> {esc(self.error)}</span>'
        done = "; ".join(self.changes) if self.changes else "nothing to change"
        return f"<small>{esc(self.settings.describe())}. Applied: {esc(done)}</small>"

    def summary(self) -> str:
        lines = [f"Playground: {self.settings.describe()}"]
        if self.error:
            lines.append(f"error: {self.error}")
        elif self.observation:
            lines += self.observation.lines()
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.box._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.summary()
        return data
