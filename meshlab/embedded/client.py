"""``EmbeddedMesh``: the ``Mesh`` API over the daemon's control socket.

Every call is one JSON request on a fresh unix-socket connection. The first call that needs
the cluster starts the daemon (``up`` is idempotent). A notebook kernel that starts the
daemon becomes its *owner*: when the kernel exits, even killed, the cluster stops.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshlab.api import ApplyResult, CallResult, Mesh, MeshStatus, PodStatus, Source
from meshlab.embedded import home as homes
from meshlab.embedded.processes import MEMBER_ENV, find_processes, kill_all, tail
from meshlab.errors import (
    DaemonError,
    MeshlabError,
    MeshTimeoutError,
    NotFoundError,
    NotSupportedError,
    ResourceError,
)

ERRORS: dict[str, type[MeshlabError]] = {
    "ResourceError": ResourceError,
    "NotFoundError": NotFoundError,
    "NotSupportedError": NotSupportedError,
    "MeshTimeoutError": MeshTimeoutError,
    "DaemonError": DaemonError,
}
START_TIMEOUT = 20.0


def _in_kernel() -> bool:
    """True inside a running Jupyter kernel (whose exit must stop the mesh it started)."""
    if "ipykernel.kernelapp" not in sys.modules:
        return False
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return False
    return bool(IPKernelApp.initialized())


class EmbeddedMesh(Mesh):
    backend = "embedded"

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        auto_mtls: bool | None = None,
        tls_max_version: str | None = None,
        cert_ttl: str | None = None,
        start: bool = True,
        owner: int | None = None,
        namespace: str = "istio-meshlab",
    ) -> None:
        self.home = Path(home).expanduser().resolve() if home else homes.default_home()
        self.namespace = namespace
        self._options = {
            "auto_mtls": auto_mtls,
            "tls_max_version": tls_max_version,
            "cert_ttl": cert_ttl,
        }
        self._owner = owner
        if start:
            self.up()

    # ---- daemon lifecycle --------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        try:
            return Path((self.home / "run" / "socket-path").read_text().strip())
        except OSError:
            return homes.socket_path(self.home)

    def running(self) -> bool:
        try:
            self._request("ping", timeout=2.0)
        except DaemonError:
            return False
        return True

    def up(self) -> dict[str, Any]:
        """Start the daemon if it is not running; returns its ping answer."""
        if self.running():
            owner = (
                self._owner if self._owner is not None else (os.getpid() if _in_kernel() else None)
            )
            if owner:
                with contextlib.suppress(DaemonError):
                    self._request("attach", pid=owner)
            result: dict[str, Any] = self._request("ping")
            result["started"] = False
            return result
        crashed = self._crashed_daemon()
        saved = self._saved_objects()
        self._cleanup_stale()
        homes.prepare(self.home)
        argv = [sys.executable, "-m", "meshlab.embedded.daemon", "--home", str(self.home)]
        if self._options["auto_mtls"] is False:
            argv.append("--no-auto-mtls")
        if self._options["tls_max_version"]:
            argv += ["--tls-max-version", str(self._options["tls_max_version"])]
        if self._options["cert_ttl"]:
            argv += ["--cert-ttl", str(self._options["cert_ttl"])]
        owner = self._owner if self._owner is not None else (os.getpid() if _in_kernel() else None)
        if owner:
            argv += ["--owner", str(owner)]
        env = dict(os.environ)
        env[MEMBER_ENV] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = homes.log_file(self.home)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        # Reap the daemon when it exits, so it never lingers as a zombie of this process.
        threading.Thread(target=proc.wait, daemon=True, name="meshlab-daemon-reaper").start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                lines = "\n".join(tail(log_path, 15))
                raise DaemonError(f"the mesh daemon exited while starting:\n{lines}")
            if self.running():
                result = self._request("ping")
                result["started"] = True
                if crashed or saved:
                    result["recovered"] = {"crashed_pid": crashed, "objects": saved}
                    print(f"meshlab: {self._recovery_note(crashed, saved)}", file=sys.stderr)
                return result
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise DaemonError(
            f"the mesh daemon did not answer within {START_TIMEOUT:.0f} s (log: {log_path})"
        )

    def _crashed_daemon(self) -> int | None:
        """The PID of a daemon that died without cleaning up (its PID file is still there)."""
        pid = homes.read_pid(self.home)
        if pid and not (homes.pid_alive(pid) and self._is_daemon(pid)):
            return pid
        return None

    def _saved_objects(self) -> int:
        try:
            data = json.loads((self.home / "state" / "objects.json").read_text())
            return len(data.get("objects", []))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0

    def _recovery_note(self, crashed: int | None, saved: int) -> str:
        what = (
            f"the previous mesh daemon (pid {crashed}) had stopped unexpectedly and its pods "
            "with it; started a new one"
            if crashed
            else "started the mesh again"
        )
        if saved:
            what += f" and restored {saved} object(s) from {self.home / 'state' / 'objects.json'}"
        return what + " (pods are new: restart counts and captures start afresh)"

    def _not_running(self) -> str:
        crashed = self._crashed_daemon()
        if crashed:
            return (
                f"the mesh daemon (pid {crashed}) stopped unexpectedly, and every pod with it "
                f"(log: {homes.log_file(self.home)}); run `meshlab up` (or `mesh.up()`) to start "
                "a new one: it restores the applied objects"
            )
        return (
            f"the embedded mesh is not running (state folder {self.home}); "
            "start it with `meshlab up`"
        )

    def _cleanup_stale(self) -> None:
        """A previous daemon died: remove what it left (socket, PID file, processes)."""
        pid = homes.read_pid(self.home)
        if pid and homes.pid_alive(pid) and self._is_daemon(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        kill_all(find_processes(self.home))
        for name in ("daemon.pid", "ready", "socket-path"):
            with contextlib.suppress(FileNotFoundError):
                (self.home / "run" / name).unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            homes.socket_path(self.home).unlink()

    def _is_daemon(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"meshlab.embedded.daemon" in cmdline and str(self.home).encode() in cmdline

    def down(self, wipe: bool = True) -> None:
        """Stop the daemon and every process of the cluster; nothing survives."""
        pid = homes.read_pid(self.home)
        with contextlib.suppress(DaemonError):
            self._request("shutdown", timeout=5.0)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and pid and homes.pid_alive(pid):
            time.sleep(0.02)
        if pid and homes.pid_alive(pid) and self._is_daemon(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leftovers = find_processes(self.home)
        if leftovers:
            kill_all(leftovers)
            time.sleep(0.05)
        self._cleanup_stale()
        if wipe:
            for sub in ("state", "pods"):
                shutil.rmtree(self.home / sub, ignore_errors=True)

    # ---- transport ---------------------------------------------------------------------------
    def _request(self, op: str, timeout: float = 180.0, **args: Any) -> Any:
        path = self.socket_path
        payload = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(path))
                sock.sendall(payload)
                chunks = []
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if chunk.endswith(b"\n"):
                        break
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise DaemonError(self._not_running()) from err
        except TimeoutError as err:
            raise DaemonError(
                f"the mesh daemon did not answer {op!r} within {timeout:.0f} s"
            ) from err
        except OSError as err:
            raise DaemonError(f"cannot reach the mesh daemon: {err}") from err
        try:
            response = json.loads(b"".join(chunks))
        except ValueError as err:
            raise DaemonError(f"the mesh daemon gave no answer to {op!r} (did it crash?)") from err
        if response.get("ok"):
            return response.get("result")
        kind = response.get("type", "")
        if kind == "ResourceError":
            raise ResourceError(response.get("problems") or [response.get("error", "")])
        raise ERRORS.get(kind, MeshlabError)(response.get("error", "unknown error"))

    # ---- Mesh API ----------------------------------------------------------------------------
    def _documents(
        self, source: Source, namespace: str | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        from meshlab.resources import load

        resources = load(source, namespace=namespace)
        return [r.body for r in resources], [w for r in resources for w in r.warnings]

    def apply(self, source: Source, namespace: str | None = None) -> ApplyResult:
        from meshlab.analysis import apply_warnings
        from meshlab.resources import load

        resources = load(source, namespace=namespace)
        result = self._request("apply", documents=[r.body for r in resources])
        findings = apply_warnings(resources, self.analysis_state())
        return ApplyResult(result["changes"], _unique(result["warnings"] + findings))

    def delete(self, source: Source, namespace: str | None = None) -> ApplyResult:
        documents, _ = self._documents(source, namespace)
        result = self._request("delete", documents=documents)
        return ApplyResult(result["changes"], _unique(result["warnings"]))

    def get(
        self, kind: str, name: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        from meshlab.resources import resolve_kind

        result: list[dict[str, Any]] = self._request(
            "get", kind=resolve_kind(kind), name=name, namespace=namespace
        )
        return result

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
        result = self._request(
            "call", timeout=timeout + 30, workload=source_workload, namespace=ns, url=url,
            method=method, headers=headers, call_timeout=timeout,
        )  # fmt: skip
        return CallResult(
            status=result["status"],
            error=result["error"],
            body=result.get("body", ""),
            headers=result.get("headers", {}),
            elapsed=result.get("elapsed", 0.0),
            source=result.get("source", ""),
            url=url,
        )

    @contextlib.contextmanager
    def capture(
        self, workload: str, namespace: str | None = None, port: int = 8080
    ) -> Iterator[Any]:
        from meshlab.capture import Capture

        ns = namespace or self.namespace
        meta = self._request("capture_start", workload=workload, namespace=ns, port=port)
        capture = Capture([], workload=workload, namespace=ns, port=port, address=meta["address"])
        capture.capture_id = meta["id"]
        try:
            yield capture
        finally:
            data = self._request("capture_stop", id=meta["id"])
            fill_capture(capture, data)

    def capture_progress(self, capture: Any) -> dict[str, int]:
        """Flows seen so far by an active capture: ``{"flows": n, "closed": m}``."""
        result: dict[str, int] = self._request("capture_peek", id=capture.capture_id)
        return result

    def rollout_restart(self, deployment: str, namespace: str | None = None) -> list[str]:
        result: list[str] = self._request(
            "rollout_restart", deployment=deployment, namespace=namespace or self.namespace
        )
        return result

    def status(self) -> MeshStatus:
        try:
            result = self._request("status", timeout=10.0)
        except DaemonError:
            return MeshStatus(backend=self.backend, running=False, details={"home": str(self.home)})
        pods = [PodStatus(**p) for p in result["pods"]]
        return MeshStatus(backend=self.backend, running=True, pods=pods, details=result["details"])

    def certificate(self, workload: str, namespace: str | None = None) -> Any:
        from meshlab.embedded.ca import load_certificate

        result = self._request(
            "certificate", workload=workload, namespace=namespace or self.namespace
        )
        return load_certificate(result["cert_pem"].encode())

    def sidecar_config(
        self, workload: str, namespace: str | None = None, resource: str = ""
    ) -> dict[str, Any]:
        """The sidecar's Envoy config dump (what `istioctl proxy-config` reads)."""
        result: dict[str, Any] = self._request(
            "sidecar_config", workload=workload, namespace=namespace or self.namespace,
            resource=resource,
        )  # fmt: skip
        return result

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change mesh-wide settings: ``auto_mtls`` (meshConfig.enableAutoMtls) and
        ``tls_max_version`` ("TLSv1_2" or "TLSv1_3", what client sidecars offer)."""
        result: dict[str, Any] = self._request("mesh_config", **settings)
        return result

    def logs(self, workload: str, namespace: str | None = None, container: str = "app") -> str:
        result: str = self._request(
            "logs", workload=workload, namespace=namespace or self.namespace, container=container
        )
        return result

    def wait_ready(self, namespace: str | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pods = list(self.pods(namespace))
            if all(p.ready for p in pods):
                return
            if time.monotonic() > deadline:
                waiting = ", ".join(p.name for p in pods if not p.ready)
                raise MeshTimeoutError(f"pods not ready after {timeout:.0f} s: {waiting}")
            time.sleep(0.05)

    # ---- describe / analyze -------------------------------------------------------------------
    def analysis_state(self) -> Any:
        """The control plane's own snapshot (exact creation order, container ports) plus the
        stored Deployments: what ``describe`` and ``analyze`` (``Mesh``'s) read."""
        from meshlab.analysis.state import MeshState, snapshot_from_dict

        snapshot = snapshot_from_dict(self._request("snapshot"))
        return MeshState(snapshot, tuple(self._request("get", kind="Deployment")))

    def processes(self) -> list[int]:
        """PIDs of every live process of this cluster (the daemon included)."""
        return find_processes(self.home)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def fill_capture(capture: Any, data: dict[str, Any]) -> None:
    from meshlab.capture import Chunk, Flow

    flows = []
    for f in data.get("flows", []):
        chunks = [Chunk(d, t, base64.b64decode(b)) for d, t, b in f["chunks"]]
        flows.append(
            Flow(
                client=(f["client"][0], int(f["client"][1])),
                server=(f["server"][0], int(f["server"][1])),
                start=f["start"],
                end=f["end"],
                chunks=chunks,
                closed_by=f["closed_by"],
            )
        )
    capture.flows = flows
    capture.started = data.get("started")
    capture.stopped = data.get("stopped")
    if data.get("truncated"):
        capture.notes.append("the capture reached its size limit (16 MiB); later bytes are missing")
