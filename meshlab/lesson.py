"""What the notebooks call: bring the lab to a lesson's starting state, make the calls a
lesson makes, and show the results as short, stable text (and small HTML where it helps).

The notebooks stay small because the work happens here:

- ``prepare(mesh, stage)`` makes the mesh match what a lesson assumes (idempotent: a second
  call changes nothing) and returns a ``State`` that reads like *Before you begin*.
- ``call_b_from_a`` / ``call_b_from_legacy`` are the two calls every lesson makes, and
  ``show(result)`` prints a reply the way ``curl`` would (the XFCC hash redacted, as
  istio.io does).
- ``connectivity_matrix(mesh, clients, servers)`` calls every server from every client, like
  the loop in istio.io's mTLS tasks, and prints ``legacy-client.legacy to
  service-b-v1.istio-meshlab: 000 (exit 56)``.
- ``pods``, ``cat``, ``cluster_tls``, ``inbound_chains``, ``certificate_card``, ``topology``:
  small views of what a learner would get from kubectl, istioctl and openssl.

Everything printed avoids what changes from run to run (pod name suffixes, addresses,
timestamps, hashes), so the notebooks' committed outputs can be checked by nbval.
Only the public ``Mesh`` API is used, so the kubernetes backend works the same way;
mesh-wide settings (``configure``) are the one thing a backend may offer only in part (a
cluster has no TLS version cap: ``compare_tls_versions`` then shows TLS 1.3 alone and says
why).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.api import CallResult, Mesh
from meshlab.display import Markup, esc, table
from meshlab.errors import MeshlabError, NotSupportedError

NS = "istio-meshlab"
LEGACY_NS = "legacy"
SERVICE_A = "service-a"
SERVICE_B = "service-b-v1"
LEGACY = "legacy-client"
PORT = 8080
B_FROM_A_URL = f"http://{SERVICE_B}:{PORT}/hello"
B_FROM_LEGACY_URL = f"http://{SERVICE_B}.{NS}:{PORT}/hello"
CALL_B_URL = f"http://localhost:{PORT}/call-b"

CLIENTS = (f"{SERVICE_A}.{NS}", f"{LEGACY}.{LEGACY_NS}")
SERVERS = (f"{SERVICE_A}.{NS}", f"{SERVICE_B}.{NS}")

DEFAULT_MESH_SETTINGS = {"auto_mtls": True, "tls_max_version": "TLSv1_3"}

PLAIN_NAMESPACE = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n"

# curl's own words for the errors a lesson meets (curl -s -S prints them).
CURL_MESSAGES = {
    56: "Recv failure: Connection reset by peer",
    7: "Failed to connect",
    6: "Could not resolve host",
    28: "Operation timed out",
    35: "TLS connect error",
    52: "Empty reply from server",
}


# ---------------------------------------------------------------------------------------
# Files


def deployments_dir() -> Path:
    """The repository's ``deployments/`` folder (next to the package, or above the cwd)."""
    candidates = [Path(__file__).resolve().parent.parent / "deployments"]
    here = Path.cwd().resolve()
    candidates += [p / "deployments" for p in (here, *here.parents)]
    for folder in candidates:
        if (folder / "service-a.yaml").is_file():
            return folder
    raise MeshlabError(
        "cannot find the deployments/ folder (looked next to the meshlab package and above "
        f"{here}); run the notebooks from a checkout of the repository"
    )


def manifest(name: str) -> Path:
    """``deployments/<name>``, e.g. ``manifest("examples/mesh-strict.yaml")``."""
    path = deployments_dir() / name
    if not path.is_file():
        raise MeshlabError(f"no manifest {name!r} in {deployments_dir()}")
    return path


class Text:
    """Plain text that Jupyter shows as is (monospace), for ``print``-like results that a
    cell can return as its last expression."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return str(other) == self.text if isinstance(other, str | Text) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.text)


def cat(path: str | Path) -> Text:
    """The file's text, like ``cat``: show learners exactly what they apply."""
    return Text(Path(path).read_text().rstrip("\n"))


# ---------------------------------------------------------------------------------------
# Stages: the state each lesson starts from


@dataclass(frozen=True)
class Stage:
    """What a lesson assumes. ``workloads``: service-a, service-b-v1 and the legacy client
    deployed; ``injection``: namespace istio-meshlab labelled and its pods restarted with
    sidecars; ``policies``: manifests (under deployments/) applied, every other Istio policy
    object deleted; ``mesh``: mesh-wide settings."""

    name: str
    description: str
    workloads: bool = True
    injection: bool = False
    policies: tuple[str, ...] = ()
    mesh: tuple[tuple[str, Any], ...] = tuple(DEFAULT_MESH_SETTINGS.items())


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("empty", "nothing deployed", workloads=False),
        Stage("no-sidecars", "service-a, service-b-v1 and legacy-client, no sidecars"),
        Stage("sidecars", "sidecars injected in istio-meshlab, no policy", injection=True),
        Stage(
            "strict",
            "sidecars, namespace-wide STRICT PeerAuthentication",
            injection=True,
            policies=("istio-mtls-peer-auth.yaml",),
        ),
        Stage(
            "strict-dr",
            "sidecars, STRICT, and the ISTIO_MUTUAL DestinationRule",
            injection=True,
            policies=("istio-mtls-peer-auth.yaml", "service-b-v1-destination-rule.yaml"),
        ),
    )
}


def istio_policy_kinds() -> list[str]:
    """The Istio kinds the lab knows (PeerAuthentication, DestinationRule, ...)."""
    from meshlab.resources.kinds import KINDS

    return [k for k, info in KINDS.items() if info.group.endswith("istio.io")]


def mesh_settings(mesh: Mesh) -> dict[str, Any]:
    """Current mesh-wide settings (auto mTLS, TLS version), when the backend reports them."""
    details = mesh.status().details
    return {k: details[k] for k in DEFAULT_MESH_SETTINGS if k in details}


def configure(mesh: Mesh, **settings: Any) -> dict[str, Any]:
    """Change mesh-wide settings if they differ (``meshConfig.enableAutoMtls``, the TLS
    version client sidecars offer). A backend without ``configure`` accepts only Istio's
    defaults.

    While a setting differs from Istio's default, a notebook cell that fails puts the
    defaults back (see ``_RestoreOnFailure``): on a cluster meshConfig is shared by every
    workload, and a lesson that stops halfway never reaches its own restoring step."""
    current = mesh_settings(mesh)
    wanted = {k: v for k, v in settings.items() if current.get(k, DEFAULT_MESH_SETTINGS[k]) != v}
    if not wanted:
        unchanged = {**DEFAULT_MESH_SETTINGS, **current}
        _RestoreOnFailure.follow(mesh, unchanged)
        return unchanged
    configure_ = getattr(mesh, "configure", None)
    if configure_ is None:
        raise NotSupportedError(
            f"the {mesh.backend} backend cannot change mesh settings from here "
            f"({', '.join(f'{k}={v}' for k, v in wanted.items())}); on a cluster use "
            "`istioctl install --set meshConfig.enableAutoMtls=...`"
        )
    result: dict[str, Any] = configure_(**wanted)
    _RestoreOnFailure.follow(mesh, result)
    return result


def _ipython() -> Any:
    """The running IPython shell (a notebook kernel), or None in a plain interpreter."""
    module = sys.modules.get("IPython")
    get = getattr(module, "get_ipython", None) if module is not None else None
    return get() if get is not None else None


class _RestoreOnFailure:
    """A ``post_run_cell`` hook, present while a mesh's settings differ from Istio's
    defaults: when a cell fails, it puts the defaults back and says so in that cell's
    output, then removes itself. Outside IPython it does nothing."""

    active: dict[int, _RestoreOnFailure] = {}

    def __init__(self, mesh: Mesh, shell: Any) -> None:
        self.mesh = mesh
        self.shell = shell

    @classmethod
    def follow(cls, mesh: Mesh, settings: dict[str, Any]) -> None:
        changed = any(settings.get(k, v) != v for k, v in DEFAULT_MESH_SETTINGS.items())
        hook = cls.active.get(id(mesh))
        if hook is not None and not changed:
            hook.remove()
        elif hook is None and changed:
            shell = _ipython()
            if shell is not None:
                hook = cls(mesh, shell)
                shell.events.register("post_run_cell", hook)
                cls.active[id(mesh)] = hook

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            self.shell.events.unregister("post_run_cell", self)
        if self.active.get(id(self.mesh)) is self:
            del self.active[id(self.mesh)]

    def __call__(self, result: Any) -> None:
        if getattr(result, "success", True):
            return
        self.remove()
        try:
            back = configure(self.mesh, **DEFAULT_MESH_SETTINGS)
        except MeshlabError as err:
            print(
                f"A cell failed while mesh-wide settings were changed, and putting Istio's "
                f"defaults back failed too: {err}. Run lesson.configure(mesh, auto_mtls=True)."
            )
            return
        now = _settings_line({**DEFAULT_MESH_SETTINGS, **back}).removeprefix("mesh config: ")
        print(f"A cell failed: mesh-wide settings put back to Istio's defaults ({now}).")


def _reference(obj: dict[str, Any]) -> str:
    """The object as a manifest ``delete`` accepts (server-set metadata left out)."""
    import yaml

    meta = obj.get("metadata", {})
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    body["metadata"] = {"name": meta["name"], "namespace": meta.get("namespace", "default")}
    return str(yaml.safe_dump(body, sort_keys=False))


def _policy_objects(mesh: Mesh) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for kind in istio_policy_kinds():
        found += mesh.get(kind)
    return found


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("kind", ""), meta.get("namespace") or "default", meta.get("name", ""))


def sync_policies(mesh: Mesh, documents: Sequence[dict[str, Any]]) -> list[str]:
    """Make the Istio policy objects exactly ``documents``: delete every other
    PeerAuthentication/DestinationRule (in any namespace), then apply these. Returns
    kubectl-style change lines ("... unchanged" lines left out)."""
    import yaml

    wanted = {_key(d) for d in documents}
    stale = [o for o in _policy_objects(mesh) if _key(o) not in wanted]
    changes: list[str] = []
    if stale:
        changes += mesh.delete("---\n".join(_reference(o) for o in stale)).changes
    if documents:
        text = yaml.safe_dump_all(list(documents), sort_keys=False)
        changes += mesh.apply(text).changes
    return [c for c in changes if not c.endswith(" unchanged")]


def set_injection(mesh: Mesh, enabled: bool) -> list[str]:
    """Label (or unlabel) namespace istio-meshlab, then restart the deployments whose pods
    do not match, as ``kubectl rollout restart`` would. Returns change lines."""
    changes = [
        c
        for c in mesh.apply(manifest("namespace.yaml") if enabled else PLAIN_NAMESPACE).changes
        if not c.endswith(" unchanged")
    ]
    for deployment in (SERVICE_A, SERVICE_B):
        pods_ = [p for p in mesh.pods(NS) if p.workload == deployment]
        if any(p.sidecar != enabled for p in pods_):
            changes += mesh.rollout_restart(deployment, NS)
    return changes


def prepare(mesh: Mesh, stage: str) -> State:
    """Bring the mesh to ``stage`` (see ``STAGES``), changing only what differs.

    Resets mesh-wide settings, deletes Istio policy objects the stage does not list, sets
    the namespace label, deploys the three workloads, restarts deployments whose pods have
    the wrong sidecar state, then applies the stage's policies. Returns the resulting state.
    """
    from meshlab.resources import load

    if stage not in STAGES:
        raise MeshlabError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    spec = STAGES[stage]
    configure(mesh, **dict(spec.mesh))
    documents = [res.body for name in spec.policies for res in load(manifest(name))]
    if not spec.workloads:
        sync_policies(mesh, [])
        present = {o["metadata"]["name"] for o in mesh.get("namespace")}
        gone = [n for n in (NS, LEGACY_NS) if n in present]
        if gone:
            mesh.delete(
                "---\n".join(
                    f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n" for n in gone
                )
            )
        return state(mesh, spec)
    set_injection(mesh, spec.injection)  # creates the namespace if needed
    for name in ("service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml"):
        mesh.apply(manifest(name))
    mesh.wait_ready()
    set_injection(mesh, spec.injection)  # restarts pods created before a label change
    sync_policies(mesh, documents)
    mesh.wait_ready()
    return state(mesh, spec)


@dataclass
class State:
    """The lab as a lesson finds it: namespaces, workloads, policies, mesh settings."""

    stage: str
    lines: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "\n".join(self.lines)


def state(mesh: Mesh, spec: Stage | None = None) -> State:
    """Describe the lab in a few stable lines (no pod names, addresses or times)."""
    namespaces = {o["metadata"]["name"]: o for o in mesh.get("namespace")}
    lines = []
    if spec is not None:
        lines.append(f"Stage {spec.name!r}: {spec.description}.")
    pods = list(mesh.pods())
    for ns in (NS, LEGACY_NS):
        if ns not in namespaces:
            lines.append(f"namespace {ns}: not created")
            continue
        labels = namespaces[ns]["metadata"].get("labels") or {}
        injection = labels.get("istio-injection")
        label = "istio-injection=enabled" if injection == "enabled" else "no injection label"
        lines.append(f"namespace {ns} ({label})")
        for pod in sorted((p for p in pods if p.namespace == ns), key=lambda p: p.workload):
            lines.append(f"  {_pod_line(pod)}")
    policies = _policy_objects(mesh)
    if policies:
        for obj in sorted(
            policies,
            key=lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        ):
            lines.append(
                f"{obj['kind']} {obj['metadata'].get('namespace')}/"
                f"{obj['metadata']['name']}: {_policy_summary(obj)}"
            )
    else:
        lines.append("no PeerAuthentication or DestinationRule")
    settings = {**DEFAULT_MESH_SETTINGS, **mesh_settings(mesh)}
    lines.append(_settings_line(settings))
    return State(spec.name if spec else "", lines)


def _settings_line(settings: dict[str, Any]) -> str:
    auto = "on" if settings["auto_mtls"] else "off"
    top = "1.3" if settings["tls_max_version"] == "TLSv1_3" else "1.2"
    return f"mesh config: auto mTLS {auto}; client sidecars offer TLS 1.2 up to {top}"


def _pod_line(pod: Any) -> str:
    containers = 2 if pod.sidecar else 1
    ready = f"{containers if pod.ready else 0}/{containers}"
    sidecar = "with istio-proxy sidecar" if pod.sidecar else "no sidecar"
    return f"{pod.workload:<14} {ready} {pod.phase:<8} {sidecar}"


def _policy_summary(obj: dict[str, Any]) -> str:
    spec = obj.get("spec") or {}
    if obj["kind"] == "PeerAuthentication":
        mode = (spec.get("mtls") or {}).get("mode", "UNSET")
        scope = (
            "workload "
            + ",".join(
                f"{k}={v}" for k, v in (spec.get("selector") or {}).get("matchLabels", {}).items()
            )
            if spec.get("selector")
            else "namespace-wide"
        )
        ports = spec.get("portLevelMtls") or {}
        extra = "".join(f", port {p}: {(m or {}).get('mode', 'UNSET')}" for p, m in ports.items())
        return f"mtls {mode} ({scope}{extra})"
    if obj["kind"] == "DestinationRule":
        tls = ((spec.get("trafficPolicy") or {}).get("tls") or {}).get("mode", "none")
        return f"host {spec.get('host')}, tls {tls}"
    return "present"


# ---------------------------------------------------------------------------------------
# Calls


def call_b_from_a(mesh: Mesh) -> CallResult:
    """``kubectl exec deploy/service-a -- curl -s localhost:8080/call-b``: service-a's app
    calls service-b-v1 (through its sidecar when it has one) and reports what came back."""
    return mesh.call(SERVICE_A, CALL_B_URL, NS)


def call_b_from_legacy(mesh: Mesh) -> CallResult:
    """``kubectl exec -n legacy deploy/legacy-client -- curl -s
    http://service-b-v1.istio-meshlab:8080/hello``: a client with no sidecar."""
    return mesh.call(LEGACY, B_FROM_LEGACY_URL, LEGACY_NS)


def upstream(result: CallResult) -> dict[str, Any]:
    """What service-b-v1 answered to service-a's /call-b (``upstream_body``), or {}."""
    try:
        body = result.json()
    except ValueError:
        return {}
    inner = body.get("upstream_body") if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else {}


def caller(result: CallResult) -> str | None:
    """The caller identity service-b-v1 reported (from XFCC), for a direct call to B or for
    service-a's /call-b; None when B saw none (plaintext) or did not answer."""
    try:
        body = result.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "upstream_body" in body:
        body = body.get("upstream_body")
    value = body.get("caller") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def xfcc(result: CallResult) -> dict[str, str]:
    """The X-Forwarded-Client-Cert that service-b-v1 received, split into its fields
    (``By``, ``Hash``, ``Subject``, ``URI``); {} when the call carried none (plaintext)."""
    try:
        body = result.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and "upstream_body" in body:
        body = body.get("upstream_body")
    header = body.get("xfcc") if isinstance(body, dict) else None
    if not header:
        return {}
    fields: dict[str, str] = {}
    for part in _split_outside_quotes(header.split(",")[-1], ";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def redact(text: str) -> str:
    """Hide the certificate hash in XFCC values, as istio.io's tasks print them."""
    import re

    return re.sub(r"Hash=[0-9a-f]{64}", "Hash=<redacted>", text)


def curl_line(result: CallResult) -> str:
    """The status as ``curl -s -o /dev/null -w '%{http_code}'`` shows it, plus curl's error."""
    if result.status is not None:
        return f"HTTP {result.status}"
    code = result.curl_exit_code
    message = CURL_MESSAGES.get(code, result.error or "failed")
    return f"000  curl: ({code}) {message}  (exit code {code})"


def show(result: CallResult) -> Text:
    """A reply as a learner would read it: status line, then the body (JSON indented,
    the XFCC hash redacted)."""
    lines = [curl_line(result)]
    body = result.body.strip()
    if body:
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), indent=2)
        lines.append(redact(body))
    return Text("\n".join(lines))


def show_xfcc(result: CallResult) -> Text:
    """The XFCC header service-b-v1 received, one field a line (hash redacted)."""
    fields = xfcc(result)
    if not fields:
        return Text("no X-Forwarded-Client-Cert: the request arrived in plaintext")
    meaning = {
        "By": "the server's own identity (its certificate's URI SAN)",
        "Hash": "SHA-256 of the client's certificate",
        "Subject": "the client certificate's subject (empty in Istio)",
        "URI": "the client's identity, checked during the mTLS handshake",
    }
    width = max(len(k) for k in fields)
    lines = [
        f"{k:<{width}} = {redact(k + '=' + v)[len(k) + 1 :]:<58}  {meaning.get(k, '')}".rstrip()
        for k, v in fields.items()
    ]
    return Text("\n".join(lines))


# ---------------------------------------------------------------------------------------
# Connectivity matrix


def _split_name(name: str, default_ns: str = NS) -> tuple[str, str]:
    workload, _, ns = name.partition(".")
    return workload, ns or default_ns


class Matrix:
    """Every client calling every server, as in istio.io's mTLS tasks.

    ``status(client, server)`` is curl's ``%{http_code}`` ("200", "503", "000"),
    ``result(client, server)`` the full ``CallResult``; ``str()`` gives istio.io's lines.
    """

    def __init__(
        self,
        clients: Sequence[str],
        servers: Sequence[str],
        results: dict[tuple[str, str], CallResult],
        path: str = "/healthz",
    ) -> None:
        self.clients = list(clients)
        self.servers = list(servers)
        self.results = dict(results)
        self.path = path

    def result(self, client: str, server: str) -> CallResult:
        try:
            return self.results[(client, server)]
        except KeyError:
            raise KeyError(
                f"no call from {client!r} to {server!r} in this matrix (clients: "
                f"{', '.join(self.clients)}; servers: {', '.join(self.servers)})"
            ) from None

    def status(self, client: str, server: str) -> str:
        return self.result(client, server).code

    def cell(self, client: str, server: str) -> str:
        result = self.result(client, server)
        if result.status is None:
            return f"{result.code} (exit {result.curl_exit_code})"
        return result.code

    def lines(self) -> list[str]:
        return [f"{c} to {s}: {self.cell(c, s)}" for c in self.clients for s in self.servers]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        rows = []
        for client in self.clients:
            cells: list[object] = [Markup(f"<code>{esc(client)}</code>")]
            for server in self.servers:
                result = self.result(client, server)
                css = "ok" if result.ok else "bad"
                detail = ""
                if result.status is None:
                    detail = (
                        f"<br><small>curl exit {result.curl_exit_code}: {esc(result.error)}</small>"
                    )
                elif not result.ok:
                    detail = f"<br><small>{esc(_short_body(result.body))}</small>"
                cells.append(Markup(f'<span class="{css}">{esc(result.code)}</span>{detail}'))
            rows.append(cells)
        headers = ["client ↓  server →", *self.servers]
        style = (
            "<style>.mlmx td,.mlmx th{padding:3px 10px;text-align:left;vertical-align:top}"
            ".mlmx .ok{color:#067647;font-weight:700}.mlmx .bad{color:#b42318;"
            "font-weight:700}.mlmx small{color:#57606a}</style>"
        )
        return f'<div class="mlmx">{style}{table(headers, rows)}</div>'


def _short_body(body: str, limit: int = 120) -> str:
    body = " ".join(body.split())
    return body if len(body) <= limit else body[: limit - 1] + "…"


def connectivity_matrix(
    mesh: Mesh,
    clients: Sequence[str] = CLIENTS,
    servers: Sequence[str] = SERVERS,
    path: str = "/healthz",
    port: int = PORT,
) -> Matrix:
    """Call ``http://<server>:<port><path>`` from each client (``workload.namespace``)."""
    results = {}
    for client in clients:
        workload, ns = _split_name(client)
        for server in servers:
            name, server_ns = _split_name(server)
            url = f"http://{name}.{server_ns}:{port}{path}"
            results[(client, server)] = mesh.call(workload, url, ns)
    return Matrix(clients, servers, results, path)


# ---------------------------------------------------------------------------------------
# Views of pods, sidecar config and certificates


def pods(mesh: Mesh, namespaces: Sequence[str] = (NS, LEGACY_NS)) -> Text:
    """Like ``kubectl get pods``, one line per workload (pod name suffixes are random, so
    the workload name stands in for them). READY counts the app and its sidecar."""
    lines = [f"{'NAMESPACE':<15}{'WORKLOAD':<15}{'READY':<7}{'STATUS':<10}CONTAINERS"]
    for ns in namespaces:
        for pod in sorted((p for p in mesh.pods(ns)), key=lambda p: p.workload):
            containers = 2 if pod.sidecar else 1
            ready = f"{containers if pod.ready else 0}/{containers}"
            names = pod.workload + (", istio-proxy" if pod.sidecar else "")
            lines.append(f"{ns:<15}{pod.workload:<15}{ready:<7}{pod.phase:<10}{names}")
    if len(lines) == 1:
        lines.append("No resources found.")
    return Text("\n".join(lines))


def sidecars(mesh: Mesh, namespace: str = NS) -> dict[str, bool]:
    """``{workload: has a sidecar}`` for the namespace's pods."""
    return {p.workload: p.sidecar for p in mesh.pods(namespace)}


def _sidecar_config(mesh: Mesh, workload: str, namespace: str, resource: str) -> dict[str, Any]:
    dump = getattr(mesh, "sidecar_config", None)
    if dump is None:
        raise NotSupportedError(
            f"the {mesh.backend} backend does not expose sidecar config dumps here; use "
            f"`istioctl proxy-config` on the cluster"
        )
    result: dict[str, Any] = dump(workload, namespace, resource=resource)
    return result


def outbound_cluster_name(host: str, namespace: str = NS, port: int = PORT) -> str:
    return f"outbound|{port}||{host}.{namespace}.svc.cluster.local"


def _tls_line(socket: dict[str, Any]) -> str:
    name = socket.get("name", "")
    if name.endswith("raw_buffer") or not socket:
        return "plaintext (raw_buffer)"
    config = socket.get("typed_config", {})
    common = config.get("common_tls_context", {})
    parts = ["TLS"]
    if config.get("sni"):
        parts.append(f"SNI {config['sni']}")
    if common.get("alpn_protocols"):
        parts.append("ALPN " + ",".join(common["alpn_protocols"]))
    certs = [s.get("name") for s in common.get("tls_certificate_sds_secret_configs", [])]
    if certs:
        parts.append("cert SDS " + ",".join(certs))
    validation = common.get("combined_validation_context", {})
    ca = validation.get("validation_context_sds_secret_config", {}).get("name")
    if ca:
        parts.append(f"CA SDS {ca}")
    matchers = validation.get("default_validation_context", {}).get(
        "match_typed_subject_alt_names", []
    )
    sans = [m.get("matcher", {}).get("exact") for m in matchers]
    if sans:
        parts.append("peer SAN " + ",".join(s for s in sans if s))
    params = common.get("tls_params", {})
    if params.get("tls_maximum_protocol_version"):
        parts.append(f"max {params['tls_maximum_protocol_version']}")
    return "; ".join(parts)


def cluster_tls(
    mesh: Mesh,
    workload: str,
    host: str,
    namespace: str = NS,
    host_namespace: str = NS,
    port: int = PORT,
) -> Text:
    """How the workload's sidecar connects to ``host``: the transport socket(s) of cluster
    ``outbound|PORT||HOST.NS.svc.cluster.local`` (what ``istioctl proxy-config cluster
    ... -o json`` shows), in a few lines."""
    name = outbound_cluster_name(host, host_namespace, port)
    dump = _sidecar_config(mesh, workload, namespace, "dynamic_active_clusters")
    cluster = next(
        (
            c.get("cluster", {})
            for c in dump.get("configs", [])
            if c.get("cluster", {}).get("name") == name
        ),
        None,
    )
    if cluster is None:
        return Text(f"{name}: not in {workload}'s sidecar")
    lines = [name]
    source = cluster.get("metadata", {}).get("filter_metadata", {}).get("istio", {}).get("config")
    if "transport_socket_matches" in cluster:
        lines.append("  transport_socket_matches (auto mTLS picks per endpoint):")
        for match in cluster["transport_socket_matches"]:
            label = ",".join(f"{k}={v}" for k, v in match.get("match", {}).items()) or "any other"
            socket = _tls_line(match.get("transport_socket", {}))
            lines.append(f"    {match.get('name')} [{label}]: {socket}")
    elif "transport_socket" in cluster:
        lines.append(f"  transport_socket: {_tls_line(cluster['transport_socket'])}")
    else:
        lines.append("  no transport_socket: plaintext (raw_buffer)")
    if source:
        lines.append(f"  set by {_config_name(source)}")
    return Text("\n".join(lines))


def _config_name(path: str) -> str:
    """``/apis/networking.istio.io/v1/namespaces/NS/destination-rule/NAME`` ->
    ``DestinationRule NS/NAME`` (the ``config`` istiod records in cluster metadata)."""
    parts = path.strip("/").split("/")
    if len(parts) >= 6 and parts[3] == "namespaces":
        kind = "".join(word.capitalize() for word in parts[5].split("-"))
        return f"{kind} {parts[4]}/{parts[6]}" if len(parts) > 6 else f"{kind} {parts[4]}"
    return path


def inbound_chains(mesh: Mesh, workload: str, namespace: str = NS, port: int = PORT) -> Text:
    """The filter chains of the workload's ``virtualInbound`` listener for ``port``: which
    connections its sidecar accepts (TLS with Istio's ALPN, plaintext, or both)."""
    dump = _sidecar_config(mesh, workload, namespace, "dynamic_listeners")
    listener = next(
        (
            c.get("active_state", {}).get("listener", {})
            for c in dump.get("configs", [])
            if c.get("name") == "virtualInbound"
        ),
        None,
    )
    if listener is None:
        return Text(f"{workload}'s sidecar has no virtualInbound listener")
    lines = [f"virtualInbound, filter chains for port {port}:"]
    for chain in listener.get("filter_chains", []):
        match = chain.get("filter_chain_match", {})
        if match.get("destination_port") != port:
            continue
        transport = match.get("transport_protocol")
        what = {"tls": "TLS", "raw_buffer": "plaintext (raw_buffer)"}.get(transport, "any bytes")
        alpn = match.get("application_protocols")
        detail = f", ALPN {','.join(alpn)}" if alpn else ""
        tls = chain.get("transport_socket")
        if tls:
            ctx = tls.get("typed_config", {})
            if ctx.get("require_client_certificate"):
                detail += "; requires a client certificate (mutual TLS)"
        lines.append(f"  {chain.get('name')}: {what}{detail}")
    if len(lines) == 1:
        lines.append("  none")
    return Text("\n".join(lines))


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"


def certificate_card(cert: Any) -> Text:
    """A workload certificate's facts (what ``openssl x509 -text`` would tell), leaving out
    what changes with every issue (serial, dates, fingerprint)."""
    from meshlab.embedded.ca import CLOCK_SKEW, ROTATION_RATIO

    x509_cert = cert.certificate()
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        san_ext = x509_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        critical = "critical" if san_ext.critical else "not critical"
    except x509.ExtensionNotFound:
        critical = "absent"
    try:
        eku = x509_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = {
            ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
        }
        usages = ", ".join(names.get(u, u.dotted_string) for u in eku)
    except x509.ExtensionNotFound:
        usages = "none"
    lifetime = cert.lifetime.total_seconds()
    skew = CLOCK_SKEW.total_seconds()
    early = _hours(skew) if skew >= 3600 else f"{round(skew / 60)} min"
    lines = [
        f"SPIFFE ID (URI SAN, {critical}): {cert.spiffe_id}",
        f"Subject:          {cert.subject or '(empty)'}",
        f"Issuer:           {cert.issuer}",
        f"Key:              {cert.key}",
        f"Extended usage:   {usages}",
        f"CA certificate:   {'yes' if cert.is_ca else 'no'}",
        f"Valid for:        {_hours(lifetime)} (notBefore set {early} early for clock skew)",
        f"Rotated after:    about {_hours((lifetime - skew) * ROTATION_RATIO)} (half its lifetime)",
    ]
    return Text("\n".join(lines))


# ---------------------------------------------------------------------------------------
# TLS 1.2 against TLS 1.3 on the wire (lesson 05)

TLS_TITLES = ("TLS 1.2", "TLS 1.3 (Istio's choice)")
TLS12_UNAVAILABLE = (
    "TLS 1.2: not captured. This backend cannot cap the client sidecars at TLS 1.2: Istio "
    "gives them TLS 1.2 up to 1.3 and has no mesh setting to lower the maximum "
    "(meshMTLS.minProtocolVersion only raises the minimum), so the TLS 1.2 side of this "
    "comparison needs the embedded mesh (MESHLAB_BACKEND=embedded)."
)
RESTARTED_FOR_HANDSHAKE = (
    "service-a was restarted first, so that its sidecar opened a new connection and the "
    "capture shows the whole handshake."
)


@dataclass
class TlsComparison:
    """service-a calling service-b-v1, captured at service-b-v1's pod with the client
    sidecars capped at TLS 1.2 (``tls12``) and at TLS 1.3 (``tls13``). ``tls12`` is None
    when the backend cannot cap the version; ``refused`` then holds its reason, and what is
    shown and checked is the TLS 1.3 capture alone."""

    tls13: Any
    tls12: Any = None
    refused: str = ""
    restarted: bool = False

    def view(self) -> Any:
        from meshlab.capture import side_by_side
        from meshlab.capture.render import STYLE, capture_body_html
        from meshlab.display import HTML

        if self.tls12 is not None:
            return side_by_side(self.tls12, self.tls13, TLS_TITLES)
        note = TLS12_UNAVAILABLE + (f" {RESTARTED_FOR_HANDSHAKE}" if self.restarted else "")
        body = capture_body_html(self.tls13, limit=128, detailed=1, short=True)
        markup = (
            f'<div class="mlcap-sbs">{STYLE}<div class="mlcap"><div class="title">'
            f'{esc(TLS_TITLES[1])}</div>{body}</div><div class="mlcap"><div class="title">'
            f'{esc(TLS_TITLES[0])}</div><div class="meta">{esc(note)}</div></div></div>'
        )
        return HTML(markup, f"{TLS_TITLES[1]}: {self.tls13.verdict}\n{note}")

    def _repr_html_(self) -> str:
        return str(self.view()._repr_html_())

    def __repr__(self) -> str:
        return repr(self.view())

    def explain(self, version: str) -> str:
        """What an observer reads in the capture of ``version`` ("1.2" or "1.3"); a line
        saying there is none when this backend could not take the TLS 1.2 one."""
        captures = {"1.2": self.tls12, "1.3": self.tls13}
        key = version.removeprefix("TLS").strip()
        if key not in captures:
            raise MeshlabError(f"no TLS {key} capture here: expected '1.2' or '1.3'")
        capture = captures[key]
        if capture is None:
            return "TLS 1.2: no capture on this backend (see the comparison above)."
        return str(capture.explain_tls())

    def check_tls12(self, identities: set[str]) -> str:
        """Check the TLS 1.2 capture: TLS 1.2 negotiated, ``identities`` (both SPIFFE IDs)
        readable on the wire, no readable HTTP. Without one, the backend must have refused
        the cap (it said why). Raises ``AssertionError``; returns what was shown, for the
        lesson's ``PASSED`` line."""
        if self.tls12 is None:
            if not self.refused:
                raise AssertionError("no TLS 1.2 capture, and the backend did not refuse it")
            return "TLS 1.3 hides both SPIFFE IDs (TLS 1.2: embedded mesh only)"
        problems = []
        if self.tls12.tls_versions != ["TLS 1.2"]:
            problems.append(f"negotiated {self.tls12.tls_versions}, expected ['TLS 1.2']")
        if set(self.tls12.spiffe_ids) != set(identities):
            problems.append(f"identities on the wire {sorted(self.tls12.spiffe_ids)}, expected "
                            f"{sorted(identities)}")  # fmt: skip
        if self.tls12.readable_http:
            problems.append("HTTP readable")
        if problems:
            raise AssertionError("TLS 1.2 capture: " + "; ".join(problems))
        return "TLS 1.2 leaks both SPIFFE IDs, TLS 1.3 none"


def compare_tls_versions(mesh: Mesh) -> TlsComparison:
    """Capture ``call_b_from_a`` at service-b-v1's pod with the client sidecars capped at
    TLS 1.2, then at TLS 1.3 (each change reconfigures them, so each capture starts with a
    handshake). A backend that cannot cap the version (``NotSupportedError``) gets the TLS
    1.3 capture only: service-a is restarted first, since nothing reconfigured its sidecar
    and its pooled connection would hide the handshake. The setting is back at TLS 1.3 on
    return, also when a capture fails."""
    tls12 = None
    refused = ""
    try:
        configure(mesh, tls_max_version="TLSv1_2")
    except NotSupportedError as err:
        refused = str(err)
    else:
        try:
            with mesh.capture(SERVICE_B, NS) as tls12:
                call_b_from_a(mesh)
        finally:
            configure(mesh, tls_max_version="TLSv1_3")
    if refused:
        mesh.rollout_restart(SERVICE_A, NS)
    with mesh.capture(SERVICE_B, NS) as tls13:
        call_b_from_a(mesh)
    return TlsComparison(tls13, tls12, refused, restarted=bool(refused))


# ---------------------------------------------------------------------------------------
# Environment and topology


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    required: bool = True


class EnvironmentReport:
    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def __repr__(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok" if c.ok else ("MISSING" if c.required else "missing (optional)")
            lines.append(f"{c.name:<44} {mark}" + (f"  {c.detail}" if c.detail else ""))
        return "\n".join(lines)


def check_environment() -> EnvironmentReport:
    """What the lab needs, checked without starting anything: Python, the Envoy binary,
    the notebook packages; tshark is optional (to open exported pcaps)."""
    import importlib.util

    checks = [Check("Python 3.11 or newer", sys.version_info >= (3, 11))]
    envoy = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    works = False
    if Path(envoy).exists():
        try:
            done = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=20)
            works = done.returncode == 0 and "envoy" in done.stdout.lower()
        except (OSError, subprocess.SubprocessError):
            works = False
    checks.append(Check("Envoy binary (real sidecars)", works))
    for module, label in (
        ("ipywidgets", "ipywidgets (lesson 06)"),
        ("cryptography", "cryptography (the mesh CA)"),
        ("dpkt", "dpkt (captures as pcap)"),
    ):
        checks.append(Check(label, importlib.util.find_spec(module) is not None))
    checks.append(
        Check("tshark (to open exported pcaps)", shutil.which("tshark") is not None, required=False)
    )
    return EnvironmentReport(checks)


def topology(mesh: Mesh | None = None) -> Topology:
    """The lab's three workloads as a small diagram; with a mesh, sidecars are drawn only
    where pods have one, and the namespace label is the real one."""
    if mesh is None:
        return Topology(injection=True, sidecars={SERVICE_A: True, SERVICE_B: True})
    labels = {
        o["metadata"]["name"]: (o["metadata"].get("labels") or {}) for o in mesh.get("namespace")
    }
    injection = labels.get(NS, {}).get("istio-injection") == "enabled"
    return Topology(injection=injection, sidecars=sidecars(mesh))


@dataclass
class Topology:
    injection: bool
    sidecars: dict[str, bool]

    def __repr__(self) -> str:
        def box(name: str) -> list[str]:
            inner = f"{name} :8080" + ("  [istio-proxy]" if self.sidecars.get(name) else "")
            return [f"+{'-' * (len(inner) + 2)}+", f"| {inner} |", f"+{'-' * (len(inner) + 2)}+"]

        label = "istio-injection=enabled" if self.injection else "no injection label"
        a, b = box(SERVICE_A), box(SERVICE_B)
        lines = [f"namespace {NS} ({label})"]
        arrows = ("   ", "-->", "   ")
        lines += [f"  {x}   {arrow}   {y}" for x, arrow, y in zip(a, arrows, b, strict=True)]
        lines += [
            f"namespace {LEGACY_NS} (no injection label)",
            f"  {LEGACY} (no sidecar)  --> service-b-v1.istio-meshlab:8080",
        ]
        return "\n".join(lines)

    def _repr_svg_(self) -> str:
        def pod(x: int, y: int, name: str, sidecar: bool) -> str:
            w = 230
            parts = [
                f'<rect x="{x}" y="{y}" width="{w}" height="74" rx="8" fill="#fff" '
                f'stroke="#57606a"/>',
                f'<text x="{x + 10}" y="{y + 18}" class="t">pod {esc(name)}</text>',
                f'<rect x="{x + 10}" y="{y + 28}" width="{100}" height="34" rx="4" '
                f'fill="#ddf4ff" stroke="#0969da"/>',
                f'<text x="{x + 18}" y="{y + 50}" class="s">app :8080</text>',
            ]
            if sidecar:
                parts += [
                    f'<rect x="{x + 120}" y="{y + 28}" width="100" height="34" rx="4" '
                    f'fill="#dafbe1" stroke="#1a7f37"/>',
                    f'<text x="{x + 128}" y="{y + 50}" class="s">istio-proxy</text>',
                ]
            else:
                parts += [f'<text x="{x + 128}" y="{y + 50}" class="m">no sidecar</text>']
            return "".join(parts)

        label = "istio-injection=enabled" if self.injection else "no injection label"
        a = self.sidecars.get(SERVICE_A, False)
        b = self.sidecars.get(SERVICE_B, False)
        link = "sidecar to sidecar" if a and b else "plaintext HTTP"
        body = [
            '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="300" '
            'viewBox="0 0 640 300" font-family="sans-serif">',
            "<style>.t{font-size:13px;font-weight:700;fill:#1f2328}.s{font-size:12px;"
            "fill:#1f2328}.m{font-size:12px;fill:#57606a;font-style:italic}"
            ".n{font-size:12px;fill:#57606a}</style>",
            '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#57606a"/>'
            "</marker></defs>",
            '<rect x="5" y="5" width="630" height="130" rx="10" fill="#f6f8fa" '
            'stroke="#8c959f" stroke-dasharray="6 4"/>',
            f'<text x="15" y="24" class="n">namespace {NS} ({label})</text>',
            pod(20, 40, SERVICE_A, a),
            pod(390, 40, SERVICE_B, b),
            '<line x1="252" y1="85" x2="388" y2="85" stroke="#57606a" stroke-width="2" '
            'marker-end="url(#arr)"/>',
            f'<text x="262" y="78" class="n">{esc(link)}</text>',
            '<rect x="5" y="165" width="300" height="130" rx="10" fill="#f6f8fa" '
            'stroke="#8c959f" stroke-dasharray="6 4"/>',
            f'<text x="15" y="184" class="n">namespace {LEGACY_NS} (no injection label)</text>',
            pod(20, 200, LEGACY, False),
            '<path d="M252,237 C330,237 420,200 470,116" fill="none" stroke="#57606a" '
            'stroke-width="2" marker-end="url(#arr)"/>',
            '<text x="330" y="250" class="n">plaintext HTTP (no sidecar to encrypt)</text>',
            "</svg>",
        ]
        return "".join(body)


# ---------------------------------------------------------------------------------------
# End of a lesson


def passed(lesson: str, *shown: str) -> None:
    """Print the last line of a lesson's checks; ``make tutorial`` shows it in its summary."""
    print(f"PASSED {lesson}: " + "; ".join(shown))
