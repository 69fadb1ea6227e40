"""A FAKE Kubernetes API server, for request-shape tests of the kubernetes backend only.

It is not Kubernetes: a local HTTP server that answers the few paths the backend uses with
plausible JSON, keeps applied objects in a dict, and records every request (method, path,
query, content type, body) so tests can check what the backend sent. Deployments become
available the moment they are applied (unless ``deployments_available`` is False); there
are no controllers, no admission, no websockets (exec requests are recorded, then refused
with 400, which is what an apiserver answers a non-upgrade exec request).

    with FakeApiServer() as fake:
        kubeconfig = fake.kubeconfig(tmp_path)
        mesh = KubernetesMesh(kubeconfig=kubeconfig)
        ...
        assert fake.requests[-1].path == "/apis/..."
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

GROUPS = {
    "apps": ["v1"],
    "security.istio.io": ["v1", "v1beta1"],
    "networking.istio.io": ["v1", "v1alpha3", "v1beta1"],
}
KINDS = {  # plural -> kind (for list responses)
    "namespaces": "Namespace",
    "serviceaccounts": "ServiceAccount",
    "services": "Service",
    "deployments": "Deployment",
    "pods": "Pod",
    "peerauthentications": "PeerAuthentication",
    "destinationrules": "DestinationRule",
}
PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<plural>[^/]+))?(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


@dataclass
class Recorded:
    method: str
    path: str
    query: str  # raw query string, as sent
    content_type: str
    body: Any  # parsed JSON when it was JSON, else text

    @property
    def url(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query))


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def pod(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    sidecar: bool = False,
    ready: bool = True,
    waiting: tuple[str, str] | None = None,  # (reason, image)
    image: str = "istio-meshlab/service-a:0.1.0",
) -> dict[str, Any]:
    """A pod object as the apiserver lists it."""
    containers = [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]
    statuses: list[dict[str, Any]] = [
        {
            "name": "app",
            "image": image,
            "ready": ready,
            "restartCount": 0,
            "state": {"running": {}}
            if waiting is None
            else {"waiting": {"reason": waiting[0], "message": f"pulling {waiting[1]} failed"}},
        }
    ]
    if waiting is not None:
        statuses[0]["image"] = waiting[1]
        containers[0]["image"] = waiting[1]
    if sidecar:
        containers.append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.2"})
        statuses.append(
            {"name": "istio-proxy", "ready": ready, "restartCount": 1, "state": {"running": {}}}
        )
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "uid": str(uuid.uuid4()),
        },
        "spec": {"containers": containers, "serviceAccountName": "default"},
        "status": {
            "phase": "Running" if waiting is None else "Pending",
            "podIP": "10.244.0.9",
            "hostIP": "172.18.0.2",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": statuses,
        },
    }


class FakeApiServer:
    """See the module docstring. Everything is in memory; ``stop`` (or the ``with`` block)
    ends the server thread."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.objects: dict[str, dict[str, Any]] = {}  # object path -> object
        self.groups: dict[str, list[str]] = copy.deepcopy(GROUPS)
        self.pods: list[dict[str, Any]] = [
            pod(
                "istiod-5d4c7f7b9-x2x9q",
                "istio-system",
                labels={"app": "istiod"},
                image="docker.io/istio/pilot:1.24.2",
            ),
        ]
        self.deployments_available = True
        self.logs: dict[str, str] = {}  # "ns/pod/container" -> text
        self.overrides: dict[tuple[str, str], tuple[int, Any]] = {}  # (method, path) -> answer
        self._rv = 1000
        self._lock = threading.Lock()
        for ns in ("default", "kube-system", "istio-system"):
            self._store(
                f"/api/v1/namespaces/{ns}",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, folder: Path, context: str = "fake", server: str | None = None) -> Path:
        """Write a kubeconfig whose current context points at this server (token auth)."""
        path = Path(folder) / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": context,
                    "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
                    "users": [{"name": "learner", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {"name": context, "context": {"cluster": "fake", "user": "learner"}}
                    ],
                }
            )
        )
        return path

    def sent(self, method: str | None = None, prefix: str = "") -> list[Recorded]:
        return [
            r for r in self.requests if (method in (None, r.method)) and r.path.startswith(prefix)
        ]

    # ---- state --------------------------------------------------------------------------------
    def _store(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        self.objects[path] = obj
        return obj

    def _deployment_status(self, obj: dict[str, Any]) -> None:
        replicas = int((obj.get("spec") or {}).get("replicas", 1))
        ready = replicas if self.deployments_available else 0
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }

    # ---- request handling -------------------------------------------------------------------
    def answer(self, rec: Recorded) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(rec)
            if (rec.method, rec.path) in self.overrides:
                return self.overrides[(rec.method, rec.path)]
            return self._answer(rec)

    def _answer(self, rec: Recorded) -> tuple[int, Any]:
        if rec.path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}
        if rec.path.startswith("/apis/") and rec.path.count("/") == 2:
            group = rec.path.split("/")[2]
            if group not in self.groups:
                return 404, status(
                    404, "NotFound", "the server could not find the requested resource"
                )
            versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self.groups[group]]
            return 200, {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": versions,
                "preferredVersion": versions[0],
            }
        match = PATH.match(rec.path)
        if not match:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        parts = match.groupdict()
        group = parts["group"]
        if group and (group not in self.groups or parts["version"] not in self.groups[group]):
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        ns, plural, name, sub = parts["ns"], parts["plural"], parts["name"], parts["sub"]
        if ns and not plural:  # /api/v1/namespaces/NAME
            plural, name, ns = "namespaces", ns, None
        if plural == "pods":
            return self._pods(rec, ns, name, sub)
        if name is None:
            if rec.method != "GET":
                return 405, status(405, "MethodNotAllowed", "not supported by the fake")
            prefix = rec.path.rsplit(f"/{plural}", 1)[0]
            items = [
                copy.deepcopy(o)
                for p, o in sorted(self.objects.items())
                if p.rsplit("/", 1)[0].endswith(f"/{plural}")
                and (ns is None or p.startswith(prefix + "/"))
            ]
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
            return 200, {"kind": f"{KINDS.get(plural, plural)}List", "items": items}
        if ns and f"/api/v1/namespaces/{ns}" not in self.objects:
            return 404, status(
                404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
            )
        existing = self.objects.get(rec.path)
        missing = status(
            404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural}
        )
        if rec.method == "GET":
            return (200, existing) if existing else (404, missing)
        if rec.method == "DELETE":
            if not existing:
                return 404, missing
            del self.objects[rec.path]
            return 200, {"kind": "Status", "status": "Success", "details": {"name": name}}
        if rec.method == "PATCH" and rec.content_type == "application/apply-patch+yaml":
            return self._apply(rec, existing, plural)
        if rec.method == "PATCH" and rec.content_type.startswith("application/strategic-merge"):
            if not existing:
                return 404, missing
            merged = _merge(copy.deepcopy(existing), rec.body)
            merged["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
            if plural == "deployments":
                self._deployment_status(merged)
            return 200, self._store(rec.path, merged)
        return 405, status(405, "MethodNotAllowed", "not supported by the fake")

    def _apply(self, rec: Recorded, existing: dict | None, plural: str) -> tuple[int, Any]:
        body = copy.deepcopy(rec.body)
        if not isinstance(body, dict) or "metadata" not in body:
            return 400, status(400, "BadRequest", "the apply patch is not an object")
        dry_run = rec.params.get("dryRun") == "All"
        if existing is None:
            obj = body
            obj["metadata"].update(
                uid=str(uuid.uuid4()), generation=1, creationTimestamp="2026-01-01T00:00:00Z"
            )
            code = 201
        else:
            same = {k: v for k, v in existing.items() if k not in ("metadata", "status")} == {
                k: v for k, v in body.items() if k not in ("metadata", "status")
            } and existing["metadata"].get("labels") == body["metadata"].get("labels")
            if same:
                return 200, existing
            obj = body
            obj["metadata"].update(
                {
                    k: existing["metadata"][k]
                    for k in ("uid", "creationTimestamp")
                    if k in existing["metadata"]
                }
            )
            obj["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
            code = 200
        if plural == "deployments":
            self._deployment_status(obj)
        if dry_run:
            return code, obj
        return code, self._store(rec.path, obj)

    def _pods(self, rec: Recorded, ns: str | None, name: str | None, sub: str | None):
        pods = [p for p in self.pods if ns is None or p["metadata"]["namespace"] == ns]
        if name is None:
            selector = rec.params.get("labelSelector", "")
            wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
            items = [
                p
                for p in pods
                if all(p["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
            ]
            return 200, {"kind": "PodList", "items": copy.deepcopy(items)}
        found = next((p for p in pods if p["metadata"]["name"] == name), None)
        if found is None:
            return 404, status(404, "NotFound", f'pods "{name}" not found', {"name": name})
        if sub is None and rec.method == "GET":
            return 200, found
        if sub == "log":
            key = f"{ns}/{name}/{rec.params.get('container', '')}"
            return 200, self.logs.get(key, "")
        if sub == "ephemeralcontainers" and rec.method == "PATCH":
            # The container "starts" at once and its script reports tcpdump listening.
            for container in (rec.body or {}).get("spec", {}).get("ephemeralContainers", []):
                found["spec"].setdefault("ephemeralContainers", []).append(container)
                found["status"].setdefault("ephemeralContainerStatuses", []).append(
                    {"name": container["name"], "state": {"running": {}}}
                )
                self.logs[f"{ns}/{name}/{container['name']}"] = (
                    "tcpdump: listening on eth0, link-type EN10MB (Ethernet)\nMESHLAB-READY\n"
                )
            return 200, found
        if sub == "exec":
            return 400, status(400, "BadRequest", "Upgrade request required")
        return 405, status(405, "MethodNotAllowed", "not supported by the fake")


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


class _Handler(BaseHTTPRequestHandler):
    fake: FakeApiServer

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = Recorded(self.command, parts.path, parts.query, content_type, body)
        code, answer = self.fake.answer(rec)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        data = text.encode()
        self.send_response(code)
        self.send_header(
            "Content-Type", "text/plain" if isinstance(answer, str) else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _handle

    def log_message(self, *args: object) -> None:
        pass
