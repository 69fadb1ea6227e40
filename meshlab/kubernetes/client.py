"""``KubernetesMesh``: the ``Mesh`` API on a real cluster with Istio.

It talks to the cluster of a kubeconfig context with the official client, like kubectl:
server-side apply for manifests, exec for calls and sidecar admin, ephemeral containers for
captures. Nothing runs locally and nothing is left behind except what the lessons apply
(``delete -f deployments/`` cleans up). See docs/real-cluster.md.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshlab.api import ApplyResult, CallResult, Mesh, MeshStatus, Source
from meshlab.errors import (
    ClusterError,
    MeshlabError,
    MeshTimeoutError,
    NotFoundError,
    NotSupportedError,
)
from meshlab.kubernetes import calls, certs, inforce, meshconfig, pods, rollout
from meshlab.kubernetes import capture as captures
from meshlab.kubernetes.apply import apply_resources, delete_resources
from meshlab.kubernetes.connection import Api, ApiError
from meshlab.kubernetes.exec import NOT_FOUND, run
from meshlab.kubernetes.objects import ISTIO_KINDS, Discovery, as_shown, collection_path
from meshlab.kubernetes.objects import object_path as _object_path
from meshlab.kubernetes.preconditions import check_all

TLS_VERSION_HINT = (
    "Istio has no mesh setting for the highest TLS version client sidecars "
    "offer (istiod gives them TLS 1.2 up to 1.3); meshConfig.meshMTLS.minProtocolVersion "
    "only raises the minimum. Comparing TLS 1.2 with 1.3 on the wire needs the embedded mesh "
    "(MESHLAB_BACKEND=embedded)"
)
ISTIO_TLS_MAX = "TLSv1_3"  # what istiod's client sidecars offer at most (not configurable)
MESH_SETTINGS = ("auto_mtls", "tls_max_version")
MESH_SETTLE = 30.0  # seconds a mesh config change may take to reach the first sidecar
CONTEXT_ENV = "MESHLAB_CONTEXT"  # the kubeconfig context when none is passed
EMBEDDED_ONLY = ("home", "start", "owner")  # options of the embedded mesh, meaningless here
MAX_WATCHED = 20  # sidecars read to decide that a change is in force (one exec each)


class KubernetesMesh(Mesh):
    backend = "kubernetes"

    def __init__(
        self,
        context: str | None = None,
        *,
        kubeconfig: str | Path | None = None,
        namespace: str = "istio-meshlab",
        istio_namespace: str = "istio-system",
        capture_image: str | None = None,
        timeout: float = 180.0,
        settle: float = 10.0,
        check: bool = True,
        auto_mtls: bool | None = None,
        tls_max_version: str | None = None,
        cert_ttl: str | None = None,
        **embedded_options: Any,
    ) -> None:
        unknown = set(embedded_options) - set(EMBEDDED_ONLY)
        if unknown:
            raise TypeError(f"unknown option(s) for the kubernetes backend: {sorted(unknown)}")
        asked = {k: v for k, v in (("auto_mtls", auto_mtls), ("tls_max_version", tls_max_version),
                                   ("cert_ttl", cert_ttl)) if v is not None}  # fmt: skip
        if asked:
            raise NotSupportedError(
                f"{', '.join(asked)}: on a cluster these are not options of the connection. "
                "auto mTLS is istiod's meshConfig.enableAutoMtls, shared by every workload: "
                "change it with mesh.configure(auto_mtls=...) once connected. The workload "
                "certificate lifetime is the proxies' SECRET_TTL variable; the TLS version: "
                "meshConfig.meshMTLS.minProtocolVersion sets only the minimum"
            )
        self.context = context or os.environ.get(CONTEXT_ENV) or None
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.istio_namespace = istio_namespace
        self.capture_image = captures.capture_image(capture_image)
        self.timeout = timeout
        self.settle = settle
        self._api: Api | None = None
        self._discovery: Discovery | None = None
        self._details: dict[str, str] = {}
        self._tools: dict[tuple[str, str, str], str] = {}
        if check:
            self.up()

    # ---- connection --------------------------------------------------------------------------
    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api.connect(self.context, self.kubeconfig)
            self._discovery = Discovery(self._api)
        return self._api

    @property
    def discovery(self) -> Discovery:
        api = self.api
        if self._discovery is None:
            self._discovery = Discovery(api)
        return self._discovery

    def up(self) -> dict[str, Any]:
        """Check the preconditions (reachable cluster, Istio CRDs, istiod); nothing is started."""
        self._details = check_all(self.api, self.discovery, self.istio_namespace)
        return {"started": False, "home": f"context {self.api.context}", **self.info()}

    def info(self) -> dict[str, Any]:
        return {"context": self.api.context, "server": self.api.server, **self._details}

    def down(self) -> None:
        """Forget the connection. Nothing on the cluster is deleted: `delete -f deployments/`
        (or `kubectl delete -f deployments/`) cleans up."""
        if self._api is not None:
            self._api.close()
        self._api = None
        self._discovery = None

    # ---- manifests ---------------------------------------------------------------------------
    def apply(self, source: Source, namespace: str | None = None) -> ApplyResult:
        from meshlab.resources import load

        resources = load(source, namespace=namespace)
        scope = self._affected_namespaces(resources)
        watch = scope is None or bool(scope)
        before = self._read_sidecars(scope) if watch else ({}, [])
        changes, warnings = apply_resources(self.api, self.discovery, resources)
        for r in resources:
            if r.kind == "Deployment":
                rollout.wait_rollout(self.api, r.namespace or "default", r.name, self.timeout)
        if watch and any(not line.endswith(" unchanged") for line in changes):
            warnings += self._wait_in_force(scope, *before)
        from meshlab.analysis import apply_warnings

        warnings += apply_warnings(resources, self.analysis_state())
        return ApplyResult(changes, _unique(warnings))

    def delete(self, source: Source, namespace: str | None = None) -> ApplyResult:
        from meshlab.resources import load

        resources = load(source, namespace=namespace)
        scope = self._affected_namespaces(resources)
        watch = scope is None or bool(scope)
        before = self._read_sidecars(scope) if watch else ({}, [])
        changes, warnings = delete_resources(self.api, resources, self.timeout)
        if watch and changes:
            warnings += self._wait_in_force(scope, *before)
        return ApplyResult(changes, _unique(warnings))

    def _affected_namespaces(self, resources: list[Any]) -> set[str] | None:
        """Where sidecars must take an Istio change before apply/delete returns: the
        namespaces of its objects and the lab's own; every namespace for a mesh-wide policy
        (root namespace). ``set()``: no Istio object, nothing to wait for; None: all."""
        istio = {r.namespace or "default" for r in resources if r.kind in ISTIO_KINDS}
        if not istio:
            return set()
        if self.istio_namespace in istio:
            return None
        return istio | {self.namespace}

    def get(
        self, kind: str, name: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        from meshlab.resources import KINDS, resolve_kind

        kind = resolve_kind(kind)
        if kind == "Pod":
            found = [
                p.to_dict()
                for p in map(pods.pod_status, pods.list_pods(self.api, namespace))
                if name in (None, p.name)
            ]
            if name is not None and not found:
                raise NotFoundError(f'pod "{name}" not found' + _where(namespace))
            return found
        info = KINDS[kind]
        version = self.discovery.api_version(kind)
        ns = namespace if info.namespaced else None
        try:
            if name is not None:
                obj = self.api.get(_object_path(version, info.plural, name, ns))
                return [as_shown(obj, version, kind)]
            items = self.api.get(collection_path(version, info.plural, ns)).get("items") or []
        except ApiError as err:
            if err.status == 404 and name is not None:
                raise NotFoundError(f'{kind.lower()} "{name}" not found' + _where(ns)) from None
            raise
        shown = [as_shown(item, version, kind) for item in items]
        return sorted(
            shown, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    # ---- workloads ---------------------------------------------------------------------------
    def rollout_restart(self, deployment: str, namespace: str | None = None) -> list[str]:
        return rollout.restart(self.api, namespace or self.namespace, deployment, self.timeout)

    def status(self) -> MeshStatus:
        try:
            listed = pods.list_pods(self.api)
        except ClusterError as err:
            return MeshStatus(backend=self.backend, running=False, details={"error": str(err)})
        shown = [
            pods.pod_status(p)
            for p in listed
            if p["metadata"].get("namespace") not in pods.SYSTEM_NAMESPACES
        ]
        return MeshStatus(
            backend=self.backend, running=True, pods=shown,
            details={**self.info(), **self._mesh_settings()},
        )  # fmt: skip

    def _mesh_settings(self) -> dict[str, Any]:
        """``auto_mtls`` from istiod's meshConfig and where it was read; only the error when
        the ConfigMap cannot be read (status() reports, it does not fail)."""
        try:
            found = meshconfig.find(self.api, self.istio_namespace)
            return {"auto_mtls": found.auto_mtls, "mesh_config": found.where}
        except ClusterError as err:
            return {"mesh_config_error": str(err)}

    def wait_ready(self, namespace: str | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = [p for p in self.pods(namespace) if not p.ready]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(f"{p.namespace}/{p.name} ({p.phase})" for p in waiting)
                raise MeshTimeoutError(f"pods not ready after {timeout:.0f} s: {names}")
            time.sleep(0.5)

    def logs(self, workload: str, namespace: str | None = None, container: str = "app") -> str:
        ns = namespace or self.namespace
        pod = pods.find_pod(self.api, workload, ns)
        name = pods.app_container(pod) if container == "app" else container
        text = self.api.get(
            f"{captures.pod_path(ns, pod['metadata']['name'])}/log",
            query=[("container", name), ("tailLines", "500")], accept="*/*",
        )  # fmt: skip
        return str(text)

    # ---- requests from a pod -----------------------------------------------------------------
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
        ns = namespace or self.namespace
        scheme = urlsplit(url).scheme
        if scheme != "http":
            return CallResult(
                status=None, url=url,
                error=f"unsupported scheme {scheme or '(none)'!r}: send plain http:// — the "
                "sidecar adds TLS (as an app in a mesh does)",
            )  # fmt: skip
        pod = pods.find_pod(self.api, source_workload, ns)
        name = pod["metadata"]["name"]
        container = pods.app_container(pod)
        image = next(
            (c.get("image", "") for c in pod["spec"]["containers"] if c.get("name") == container),
            "",
        )
        marker = calls.new_marker()
        started = time.monotonic()
        result = None
        for tool in self._tool_order(ns, name, container, image):
            argv = (
                calls.curl_argv(method, url, headers, timeout, marker)
                if tool == "curl"
                else calls.python_argv(method, url, headers, timeout, marker, python=tool)
            )
            result = run(self.api, ns, name, container, argv, timeout=timeout + 20)
            if result.exit_code != NOT_FOUND or result.stdout:
                self._tools[(ns, name, container)] = tool
                break
        else:
            raise ClusterError(
                f"container {container} of pod {ns}/{name} has neither curl nor Python to send "
                "the request from"
            )
        assert result is not None
        out = calls.parse_call(result.stdout, result.stderr, result.exit_code, marker)
        return CallResult(
            status=out.status, error=out.error, body=out.body, headers=out.headers,
            elapsed=out.elapsed or (time.monotonic() - started), source=f"{ns}/{name}", url=url,
        )  # fmt: skip

    def _tool_order(self, ns: str, pod: str, container: str, image: str) -> list[str]:
        known = self._tools.get((ns, pod, container))
        if known:
            return [known]
        order = ["curl", "python3", "python"]
        if "curl" not in image:
            order = ["python3", "curl", "python"]
        return order

    # ---- captures ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(
        self, workload: str, namespace: str | None = None, port: int = 8080
    ) -> Iterator[Any]:
        from meshlab.capture import Capture

        ns = namespace or self.namespace
        pod = pods.find_pod(self.api, workload, ns)
        ports = sorted(
            {
                int(p["containerPort"])
                for c in pod["spec"]["containers"]
                if c.get("name") != pods.SIDECAR
                for p in c.get("ports") or []
                if p.get("containerPort")
            }
        )
        if ports and port not in ports:
            raise NotFoundError(
                f"pod {ns}/{pod['metadata']['name']} has no container port {port} "
                f"(its ports: {', '.join(map(str, ports))})"
            )
        session = captures.start(self.api, pod, port, self.capture_image, self.timeout)
        ip = (pod.get("status") or {}).get("podIP", "")
        capture = Capture([], workload=workload, namespace=ns, port=port, address=f"{ip}:{port}")
        try:
            yield capture
        except BaseException:
            with contextlib.suppress(MeshlabError):  # report the lesson's error, not ours
                captures.stop(self.api, session)
            raise
        data = captures.stop(self.api, session)
        with tempfile.TemporaryDirectory(prefix="meshlab-capture-") as folder:
            path = Path(folder) / "capture.pcap"
            path.write_bytes(data)
            recorded = Capture.from_pcap(path, port=port)
        _fill(capture, recorded)

    # ---- sidecars ----------------------------------------------------------------------------
    def _sidecar_exec(self, namespace: str, pod: dict[str, Any], argv: list[str]) -> str:
        name = pod["metadata"]["name"]
        if not pods.has_sidecar(pod):
            raise NotFoundError(
                f"pod {namespace}/{name} has no sidecar, so it has no workload certificate "
                "and no Envoy config"
            )
        result = run(self.api, namespace, name, pods.SIDECAR, argv, timeout=30)
        if result.exit_code != 0:
            detail = result.stderr.decode("utf-8", "replace").strip() or result.message
            raise ClusterError(f"`{' '.join(argv)}` failed in {namespace}/{name}: {detail}")
        return result.text

    def certificate(self, workload: str, namespace: str | None = None) -> Any:
        import json

        from meshlab.embedded.ca import load_certificate

        ns = namespace or self.namespace
        pod = pods.find_pod(self.api, workload, ns)
        dump = json.loads(self._sidecar_exec(ns, pod, certs.config_dump_argv(
            "dynamic_active_secrets")))  # fmt: skip
        return load_certificate(certs.secret_pem(dump, "default"))

    def sidecar_config(
        self, workload: str, namespace: str | None = None, resource: str = ""
    ) -> dict[str, Any]:
        """The sidecar's Envoy config dump (what `istioctl proxy-config` reads)."""
        import json

        ns = namespace or self.namespace
        pod = pods.find_pod(self.api, workload, ns)
        data: dict[str, Any] = json.loads(
            self._sidecar_exec(ns, pod, certs.config_dump_argv(resource))
        )
        return data

    def _read_sidecars(
        self, namespaces: set[str] | None
    ) -> tuple[dict[str, inforce.Updates], list[str]]:
        """Accepted/rejected LDS+CDS update counts of the ready sidecars in ``namespaces``
        (None: every namespace but the system ones, the lab's first), at most
        ``MAX_WATCHED`` of them; and why the others could not be read."""
        counts: dict[str, inforce.Updates] = {}
        problems: list[str] = []
        listed: list[dict[str, Any]] = []
        if namespaces is None:
            listed = sorted(
                pods.list_pods(self.api),
                key=lambda p: p["metadata"].get("namespace") != self.namespace,
            )
        else:
            for ns in sorted(namespaces):
                listed += pods.list_pods(self.api, ns)
        for pod in listed:
            meta = pod["metadata"]
            if len(counts) >= MAX_WATCHED:
                break
            if (
                meta.get("namespace") in pods.SYSTEM_NAMESPACES
                or meta.get("deletionTimestamp")
                or not pods.has_sidecar(pod)
                or not pods.is_ready(pod)
            ):
                continue
            name = f"{meta['namespace']}/{meta['name']}"
            try:
                result = run(self.api, meta["namespace"], meta["name"], pods.SIDECAR,
                             inforce.stats_argv(), timeout=15)  # fmt: skip
                counts[name] = inforce.parse_updates(result.text)
            except (ClusterError, MeshTimeoutError, ValueError) as err:
                problems.append(f"{name}: {err}")
        return counts, problems

    def _wait_in_force(
        self,
        scope: set[str] | None,
        before: dict[str, inforce.Updates],
        problems: list[str],
        settle: float | None = None,
    ) -> list[str]:
        settle = self.settle if settle is None else settle
        if not before and problems:  # sidecars exist but none could be read: wait blind
            time.sleep(settle)
            return [
                f"could not read the sidecars' update counters ({problems[0]}); waited "
                f"{settle:g} s for the change to reach them instead"
            ]
        return inforce.wait_in_force(lambda: self._read_sidecars(scope)[0], before, settle=settle)

    # ---- mesh-wide settings ------------------------------------------------------------------
    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change mesh-wide settings: ``auto_mtls`` is istiod's ``meshConfig.enableAutoMtls``
        (ConfigMap ``istio`` in the Istio namespace, key ``mesh``), for the whole cluster.

        Returns when the sidecars have taken the change (their update counters, as for
        policies). ``tls_max_version`` has no Istio counterpart: "TLSv1_3", what istiod's
        sidecars offer anyway, is accepted; anything else raises ``NotSupportedError``.
        A bad value or an unknown setting changes nothing."""
        unknown = sorted(set(settings) - set(MESH_SETTINGS))
        if unknown:
            raise NotSupportedError(
                f"unknown mesh setting(s) {', '.join(unknown)} (known: {', '.join(MESH_SETTINGS)})"
            )
        tls = settings.get("tls_max_version", ISTIO_TLS_MAX)
        if tls != ISTIO_TLS_MAX:
            raise NotSupportedError(f"tls_max_version={tls!r}: {TLS_VERSION_HINT}")
        wanted = settings.get("auto_mtls")
        if "auto_mtls" in settings and not isinstance(wanted, bool):
            raise MeshlabError(f"mesh setting auto_mtls: expected true or false, got {wanted!r}")
        found = meshconfig.find(self.api, self.istio_namespace)
        warnings: list[str] = []
        if isinstance(wanted, bool) and found.auto_mtls is not wanted:
            before = self._read_sidecars(None)
            found = meshconfig.set_auto_mtls(self.api, found, wanted)
            warnings = self._wait_in_force(None, *before, settle=max(self.settle, MESH_SETTLE))
        result: dict[str, Any] = {"auto_mtls": found.auto_mtls, "tls_max_version": ISTIO_TLS_MAX}
        if warnings:
            result["warnings"] = _unique(warnings)
        return result


def _where(namespace: str | None) -> str:
    return f" in namespace {namespace}" if namespace else ""


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _fill(capture: Any, recorded: Any) -> None:
    """Give the capture yielded to the lesson the flows read back from the pcap."""
    setter = getattr(capture, "set_flows", None)
    if setter is not None:
        setter(recorded.flows, started=recorded.started, stopped=recorded.stopped)
    else:
        capture.flows = list(recorded.flows)
        capture.started, capture.stopped = recorded.started, recorded.stopped
    capture.notes = list(getattr(capture, "notes", []) or []) + list(recorded.notes or [])
