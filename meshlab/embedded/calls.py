"""Requests sent from inside a pod, the way its app (or ``kubectl exec … curl``) would.

The request leaves through the pod's own way out: its sidecar's ``virtualOutbound`` when it
has one, else the cluster-network forwarder. Failures are reported in curl's words.
"""

from __future__ import annotations

import errno
import time
from typing import Any
from urllib.parse import urlsplit

from meshlab.embedded.model import OUTBOUND_PORT, Service, resolve_host

LOCALHOST = ("localhost", "127.0.0.1")


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = err.__cause__ or err.__context__
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def describe_error(err: BaseException) -> str:
    """Turn an httpx/OS error into the words curl would print."""
    import httpx  # imported when first needed: it costs the daemon's start ~50 ms

    root = _root_cause(err)
    if isinstance(err, httpx.TimeoutException):
        return "timed out"
    if isinstance(root, ConnectionResetError) or getattr(root, "errno", None) == errno.ECONNRESET:
        return "connection reset by peer"
    if isinstance(root, ConnectionRefusedError) or isinstance(err, httpx.ConnectError):
        return "connection refused"
    text = str(err) or type(err).__name__
    if "Server disconnected without sending a response" in text:
        return "empty reply from server (connection closed)"
    if "Connection reset" in text:
        return "connection reset by peer"
    return text


async def send(
    inner_ip: str,
    client_namespace: str,
    services: tuple[Service, ...],
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    started = time.monotonic()
    parts = urlsplit(url)
    result: dict[str, Any] = {"status": None, "error": None, "body": "", "headers": {}}
    if parts.scheme != "http":
        result["error"] = (
            f"unsupported scheme {parts.scheme or '(none)'!r}: send plain http:// — the sidecar "
            "adds TLS (as an app in a mesh does)"
        )
        return result
    authority = parts.netloc.rsplit("@", 1)[-1]
    local = parts.hostname in LOCALHOST
    if local:
        # The pod's own loopback: straight to the app, never through the sidecar (as in a pod,
        # where Istio does not capture traffic to localhost).
        url = parts._replace(netloc=f"{inner_ip}:{parts.port or 80}").geturl()
        headers = {"host": authority, **(headers or {})}
    elif resolve_host(authority, client_namespace, services) is None:
        host = parts.hostname or authority
        result["error"] = f"could not resolve host: {host}"
        return result
    import httpx

    proxy = None if local else f"http://{inner_ip}:{OUTBOUND_PORT}"
    try:
        async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=timeout) as client:
            response = await client.request(method, url, headers=headers, content=body)
        result["status"] = response.status_code
        result["body"] = response.text
        result["headers"] = dict(response.headers)
    except httpx.HTTPError as err:
        result["error"] = describe_error(err)
    except OSError as err:
        result["error"] = describe_error(err)
    result["elapsed"] = time.monotonic() - started
    return result
