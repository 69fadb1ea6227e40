"""Captures on a cluster: tcpdump in an ephemeral debug container of the server's pod.

An ephemeral container shares the pod's network namespace, so ``tcpdump -i eth0`` sees the
packets on the pod's interface: traffic addressed to the pod IP, before iptables hands it
to the sidecar (TLS records under mTLS, readable HTTP in plaintext). That is the vantage
point of the embedded mesh's relay. Loopback (sidecar -> app, always plaintext) is not
captured. kubelet probes from the node's address are filtered out.

The container's script writes a pcap file and prints ``MESHLAB-READY`` to its log once
tcpdump listens; ``stop_script`` (run by exec) stops tcpdump, prints the file and lets the
container exit. Ephemeral containers cannot be removed: the pod keeps a terminated
``meshlab-capture-*`` entry until it is re-created.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from meshlab.errors import ClusterError, MeshTimeoutError
from meshlab.kubernetes.connection import MERGE_PATCH, Api, ApiError
from meshlab.kubernetes.exec import run

DEFAULT_IMAGE = "nicolaka/netshoot:v0.13"
IMAGE_ENV = "MESHLAB_CAPTURE_IMAGE"
READY = "MESHLAB-READY"
FAILED = "MESHLAB-FAILED"
WORKDIR = "/tmp"
MAX_SECONDS = 3600  # a forgotten capture stops by itself


def capture_image(explicit: str | None = None) -> str:
    return explicit or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def bpf_filter(port: int, exclude_host: str | None = None) -> str:
    """Packets of TCP port ``port``, minus the node's own (kubelet probes)."""
    text = f"tcp port {int(port)}"
    if exclude_host:
        text += f" and not host {exclude_host}"
    return text


@dataclass(frozen=True)
class Files:
    pcap: str
    log: str
    pid: str
    done: str

    @classmethod
    def under(cls, folder: str = WORKDIR, tag: str = "meshlab-capture") -> Files:
        base = f"{folder.rstrip('/')}/{tag}"
        return cls(f"{base}.pcap", f"{base}.log", f"{base}.pid", f"{base}.done")


def capture_script(
    filter_text: str, files: Files, interface: str = "eth0", max_seconds: int = MAX_SECONDS
) -> str:
    """The ephemeral container's command (POSIX sh): start tcpdump, say when it listens,
    then idle until ``stop_script`` is done (or ``max_seconds`` pass)."""
    q = shlex.quote
    return "\n".join(
        [
            f"tcpdump -i {q(interface)} -p -n -U --immediate-mode -s 0 -w {q(files.pcap)} "
            f"{q(filter_text)} "
            f"2>{q(files.log)} &",
            f"echo $! > {q(files.pid)}",
            "i=0",
            f"until grep -q 'listening on' {q(files.log)} 2>/dev/null; do",
            "  i=$((i+1))",
            f"  if [ $i -gt 150 ]; then cat {q(files.log)}; echo {FAILED}; exit 1; fi",
            "  sleep 0.1",
            "done",
            f"echo {READY}",
            "i=0",
            f"while [ ! -e {q(files.done)} ] && [ $i -lt {int(max_seconds)} ]; do",
            "  sleep 1; i=$((i+1))",
            "done",
            f"kill $(cat {q(files.pid)}) 2>/dev/null",
            "exit 0",
        ]
    )


def stop_script(files: Files) -> str:
    """Stop tcpdump (it flushes and prints its counts), print the pcap, release the container."""
    q = shlex.quote
    return "\n".join(
        [
            f"if kill -INT $(cat {q(files.pid)} 2>/dev/null) 2>/dev/null; then",
            "  i=0",
            f"  until grep -q 'packets captured' {q(files.log)} 2>/dev/null || [ $i -gt 50 ]; do",
            "    i=$((i+1)); sleep 0.1",
            "  done",
            "fi",
            f"cat {q(files.pcap)}",
            f"touch {q(files.done)}",
        ]
    )


def ephemeral_container(name: str, image: str, script: str) -> dict[str, Any]:
    """The debug container: root with CAP_NET_RAW (tcpdump needs raw sockets), no
    promiscuous mode (so no NET_ADMIN)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "stdin": False,
        "tty": False,
        "terminationMessagePolicy": "File",
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_RAW"]},
        },
    }


@dataclass
class Session:
    namespace: str
    pod: str
    container: str
    files: Files
    started: float


def pod_path(namespace: str, pod: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"


def start(
    api: Api,
    pod: dict[str, Any],
    port: int,
    image: str,
    timeout: float = 120.0,
    interface: str = "eth0",
) -> Session:
    """Add the debug container to ``pod`` and return once tcpdump listens."""
    meta = pod["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    container = f"meshlab-capture-{secrets.token_hex(3)}"
    files = Files.under()
    host_ip = (pod.get("status") or {}).get("hostIP")
    script = capture_script(bpf_filter(port, host_ip), files, interface)
    patch = {"spec": {"ephemeralContainers": [ephemeral_container(container, image, script)]}}
    try:
        api.request(
            "PATCH", f"{pod_path(namespace, name)}/ephemeralcontainers", body=patch,
            content_type=MERGE_PATCH,
        )  # fmt: skip
    except ApiError as err:
        raise ClusterError(
            f"cannot add a capture container to pod {namespace}/{name}: {err}. Captures need "
            "ephemeral containers (Kubernetes 1.25+), the pods/ephemeralcontainers "
            "permission, and a namespace policy that allows CAP_NET_RAW"
        ) from None
    wait_ready(api, namespace, name, container, image, timeout)
    return Session(namespace, name, container, files, time.time())


def container_state(pod: dict[str, Any], container: str) -> dict[str, Any]:
    for st in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if st.get("name") == container:
            return dict(st.get("state") or {})
    return {}


def wait_ready(
    api: Api, namespace: str, pod: str, container: str, image: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    where = f"capture container {container} in pod {namespace}/{pod}"
    while True:
        state = container_state(api.get(pod_path(namespace, pod)), container)
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            raise ClusterError(
                f"{where} cannot pull image {image} ({waiting['reason']}); set another image "
                f"carrying tcpdump with capture_image=... or ${IMAGE_ENV}"
            )
        if "running" in state or "terminated" in state:
            log = _log(api, namespace, pod, container)
            if READY in log:
                return
            if FAILED in log or "terminated" in state:
                raise ClusterError(f"{where}: tcpdump did not start:\n{log.strip()}")
        if time.monotonic() >= deadline:
            raise MeshTimeoutError(f"{where} did not start within {timeout:.0f} s ({state})")
        time.sleep(0.3)


def _log(api: Api, namespace: str, pod: str, container: str) -> str:
    try:
        data = api.get(
            f"{pod_path(namespace, pod)}/log", query=[("container", container)], accept="*/*"
        )
    except ApiError:
        return ""
    return data if isinstance(data, str) else str(data)


def stop(api: Api, session: Session, timeout: float = 60.0) -> bytes:
    """Stop tcpdump and return the pcap file's bytes."""
    result = run(
        api, session.namespace, session.pod, session.container,
        ["sh", "-c", stop_script(session.files)], timeout=timeout,
    )  # fmt: skip
    if result.exit_code not in (0, None) or not result.stdout:
        detail = result.stderr.decode("utf-8", "replace").strip() or result.message
        raise ClusterError(
            f"could not read the capture from {session.namespace}/{session.pod} "
            f"({session.container}): {detail or 'empty output'}"
        )
    return result.stdout
