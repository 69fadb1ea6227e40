"""The connection to a cluster: a kubeconfig context, and the few REST requests the backend sends.

``Api`` wraps the official client's ``ApiClient`` (authentication, TLS, proxies, exec
credential plugins all come from it) but speaks plain JSON: every request returns the
decoded body, or raises ``ApiError`` with the apiserver's ``Status``. Network failures
become ``ClusterError`` with what to check.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab.errors import ClusterError

JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/strategic-merge-patch+json"
DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
REQUEST_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
SEE_DOCS = "see docs/real-cluster.md, or use the embedded mesh (MESHLAB_BACKEND=embedded)"


@dataclass
class ApiError(ClusterError):
    """The apiserver answered with an error ``Status`` (404, 409, 422...).

    Callers turn the statuses they expect into better errors; any other one reaches the
    user as a ``ClusterError`` with the apiserver's own message."""

    status: int
    reason: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}".strip()

    @classmethod
    def from_body(cls, status: int, body: bytes) -> ApiError:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {"message": body.decode("utf-8", "replace").strip()}
        if not isinstance(data, dict):
            data = {"message": str(data)}
        return cls(
            status,
            str(data.get("reason", "")),
            str(data.get("message", "")),
            dict(data.get("details") or {}),
        )


@dataclass
class Response:
    status: int
    data: Any
    warnings: list[str] = field(default_factory=list)


def kubeconfig_paths(explicit: str | Path | None = None) -> list[Path]:
    """Where kubectl would look: the explicit file, else ``$KUBECONFIG`` (a list), else
    ``~/.kube/config``."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env.strip():
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return [Path(DEFAULT_KUBECONFIG).expanduser()]


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and IN_CLUSTER_TOKEN.is_file()


def load_configuration(
    context: str | None = None, kubeconfig: str | Path | None = None
) -> tuple[Any, str]:
    """A client ``Configuration`` for the context (or the current one), and its name.

    Raises ``ClusterError`` naming the files looked at when there is no usable kubeconfig.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    from yaml import YAMLError

    paths = kubeconfig_paths(kubeconfig)
    existing = [p for p in paths if p.is_file()]
    cfg = client.Configuration()
    if not existing:
        if kubeconfig is None and context is None and _in_cluster():
            config.load_incluster_config(client_configuration=cfg)
            return _tune(cfg), "in-cluster"
        looked = ", ".join(str(p) for p in paths)
        raise ClusterError(
            f"no kubeconfig found (looked for {looked}): the kubernetes backend needs a "
            "cluster with Istio and a kubeconfig for it (kind create cluster writes one); "
            f"set KUBECONFIG or pass kubeconfig=...; {SEE_DOCS}"
        )
    joined = os.pathsep.join(str(p) for p in existing)
    try:
        contexts, current = config.list_kube_config_contexts(config_file=joined)
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, YAMLError) as err:
        raise ClusterError(f"kubeconfig {joined} is not usable: {err}") from None
    names = [c.get("name", "") for c in contexts or []]
    if context is None:
        if not current:
            raise ClusterError(
                f"kubeconfig {joined} has no current context: pass context=... "
                f"(contexts there: {', '.join(names) or 'none'}) or run "
                "`kubectl config use-context NAME`"
            )
        context = str(current.get("name"))
    elif context not in names:
        raise ClusterError(
            f"context {context!r} is not in kubeconfig {joined} "
            f"(contexts there: {', '.join(names) or 'none'})"
        )
    try:
        config.load_kube_config(
            config_file=joined, context=context, client_configuration=cfg, persist_config=False
        )
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, YAMLError) as err:
        raise ClusterError(f"kubeconfig {joined}, context {context!r}: {err}") from None
    return _tune(cfg), context


def _tune(cfg: Any) -> Any:
    # One retry: an unreachable server should be reported in seconds, not after urllib3's
    # default three retries per request.
    cfg.retries = 1
    return cfg


class Api:
    """JSON requests to the apiserver of one kubeconfig context."""

    def __init__(self, api_client: Any, context: str) -> None:
        self.client = api_client
        self.context = context

    @classmethod
    def connect(cls, context: str | None = None, kubeconfig: str | Path | None = None) -> Api:
        from kubernetes.client import ApiClient

        cfg, name = load_configuration(context, kubeconfig)
        return cls(ApiClient(cfg), name)

    @property
    def server(self) -> str:
        return str(self.client.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Response:
        """Send one request; 2xx returns the decoded JSON (text when ``accept`` is not JSON),
        anything else raises ``ApiError``."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            m, url, hdrs, payload, post = self.client.param_serialize(
                method, path, query_params=list(query or []), header_params=headers,
                body=body, auth_settings=["BearerToken"],
            )  # fmt: skip
            raw = self.client.call_api(m, url, hdrs, payload, post, _request_timeout=timeout)
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise self.unreachable(err) from None
        except ApiException as err:  # the client reports TLS failures this way
            raise self.unreachable(err.reason or err) from None
        warnings = _warnings(raw.headers)
        if not 200 <= raw.status < 300:
            raise ApiError.from_body(raw.status, data)
        if accept != JSON:
            return Response(raw.status, data.decode("utf-8", "replace"), warnings)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = data.decode("utf-8", "replace")
        return Response(raw.status, decoded, warnings)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).data

    def unreachable(self, err: object) -> ClusterError:
        reason = _short_reason(err)
        return ClusterError(
            f"cannot reach the Kubernetes API server {self.server} (context {self.context}): "
            f"{reason}. Is the cluster running? Check with `kubectl cluster-info --context "
            f"{self.context}`; {SEE_DOCS}"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a pool that never opened
            self.client.close()


def _warnings(headers: Any) -> list[str]:
    """The apiserver's ``Warning: 299 - "text"`` headers, as text."""
    values: list[str] = []
    getlist = getattr(headers, "getlist", None)
    raw = getlist("Warning") if getlist else [headers.get("Warning")] if headers else []
    for value in raw:
        if not value:
            continue
        text = value.split(" ", 2)[-1].strip() if value[:3].isdigit() else value
        values.append(text.strip('"'))
    return values


def _short_reason(err: object) -> str:
    text = str(getattr(err, "reason", None) or err)
    markers = ("Connection refused", "Name or service not known", "timed out",
               "No route to host", "certificate verify failed", "Temporary failure")  # fmt: skip
    for marker in markers:
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(err).__name__
