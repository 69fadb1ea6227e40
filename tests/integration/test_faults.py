"""Faults: the embedded mesh recovers like a cluster, and never leaves processes behind.

kill -9 of an app, of a sidecar and of the daemon during traffic; a container that cannot
start (CrashLoopBackOff with its last log lines); an owner (notebook kernel) killed; and 20
up/down cycles that must leave no process and free every address.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from meshlab.embedded import home as homes
from meshlab.embedded.addresses import lock_dir
from meshlab.embedded.client import EmbeddedMesh
from meshlab.embedded.processes import find_processes
from meshlab.errors import DaemonError
from tests.conftest import DEPLOYMENTS, NS, stop_mesh

B_URL = "http://service-b-v1:8080/hello"
KINDS = ("Namespace", "ServiceAccount", "Service", "Deployment", "PeerAuthentication",
         "DestinationRule")  # fmt: skip

STRICT_B = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-b
  namespace: istio-meshlab
spec:
  selector:
    matchLabels:
      app: service-b-v1
  mtls:
    mode: STRICT
"""

CRASHER = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: crasher
  namespace: legacy
spec:
  selector:
    matchLabels: {app: crasher}
  template:
    metadata:
      labels: {app: crasher}
    spec:
      containers:
        - name: crasher
          image: curlimages/curl
          command: ["sleep", "forever-and-a-day"]
"""

OWNED = """
apiVersion: v1
kind: Namespace
metadata:
  name: owned
  labels: {istio-injection: enabled}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleeper
  namespace: owned
spec:
  selector:
    matchLabels: {app: sleeper}
  template:
    metadata:
      labels: {app: sleeper}
    spec:
      containers:
        - name: sleeper
          image: curlimages/curl
          command: ["sleep", "3600"]
"""


# ---- helpers ----------------------------------------------------------------------------------
def processes(home: Path) -> dict[tuple[str, str], int]:
    """{(kind, pod name): pid} for every live process of the cluster; kind is daemon,
    istio-proxy or app."""
    out = {}
    for pid in find_processes(home):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        pod = next((e[9:].decode() for e in env if e.startswith(b"POD_NAME=")), "")
        if b"meshlab.embedded.daemon" in argv:
            kind = "daemon"
        elif Path(argv[0].decode()).name == "envoy":
            kind = "istio-proxy"
        else:
            kind = "app"
        out[(kind, pod)] = pid
    return out


def pid_of(home: Path, kind: str, workload: str) -> int:
    found = [pid for (k, pod), pid in processes(home).items() if k == kind and
             pod.startswith(f"{workload}-")]  # fmt: skip
    assert len(found) == 1, f"expected one {kind} process of {workload}: {processes(home)}"
    return found[0]


def pod(mesh, workload: str, namespace: str = NS):
    (found,) = [p for p in mesh.pods(namespace) if p.workload == workload]
    return found


def inner_ip(mesh, workload: str, namespace: str = NS) -> str:
    pods = mesh._request("snapshot")["pods"]
    return next(
        p["inner_ip"] for p in pods if p["namespace"] == namespace and p["name"].startswith(
            f"{workload}-")
    )  # fmt: skip


def addresses(mesh) -> list[tuple[str, int]]:
    """Every address:port the cluster's pods listen on (relays, apps, sidecars)."""
    out = []
    for p in mesh._request("snapshot")["pods"]:
        ports = list(p["container_ports"])
        out += [(p["ip"], port) for port in ports]
        inner = ports + ([15000, 15001, 15006] if p["sidecar"] else [15001])
        out += [(p["inner_ip"], port) for port in inner]
    return out


def bindable(address: tuple[str, int]) -> bool:
    """True when a new server could listen on ``address`` now. SO_REUSEADDR, as every server
    sets it: connections of the old one may linger in TIME_WAIT, but no listener may."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen()
        except OSError:
            return False
    return True


def objects(mesh) -> dict[str, list[dict]]:
    return {kind: mesh.get(kind) for kind in KINDS}


class Traffic:
    """service-a's app calling service-b-v1 in a loop, through service-a's sidecar (what the
    app's HTTP client does with HTTP_PROXY), recording each outcome."""

    def __init__(self, mesh) -> None:
        self.proxy = f"http://{inner_ip(mesh, 'service-a')}:15001"
        self.results: list[tuple[float, str]] = []
        self.details: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(proxy=self.proxy, trust_env=False, timeout=3.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(B_URL)
                    outcome = str(response.status_code)
                    if response.status_code != 200:
                        self.details.append(f"{outcome} {response.text[:200]}")
                except httpx.HTTPError as err:
                    outcome = type(err).__name__
                    self.details.append(f"{outcome}: {err}")
                self.results.append((time.monotonic(), outcome))
                time.sleep(0.01)

    def wait_for_success(self, after: float, count: int = 20, timeout: float = 20.0) -> None:
        """Wait until ``count`` calls in a row after ``after`` answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = [o for t, o in self.results if t > after][-count:]
            if len(recent) == count and set(recent) == {"200"}:
                return
            time.sleep(0.05)
        tail = [o for t, o in self.results if t > after][-10:]
        raise AssertionError(f"no recovery within {timeout} s; last outcomes {tail}")

    def assert_only_503s(self, after: float) -> None:
        """Failures after ``after`` were the client sidecar's 503s, except at most one
        request cut off mid-response (the process died while answering it: curl's
        "transfer closed" / httpx's RemoteProtocolError)."""
        failures = [o for t, o in self.results if t > after and o != "200"]
        cut = failures.count("RemoteProtocolError")
        assert set(failures) <= {"503", "RemoteProtocolError"} and cut <= 1, self.details


def watch(mesh, workload: str, until, timeout: float = 20.0, namespace: str = NS) -> list:
    """Poll the pod's status every 50 ms until ``until(status)``; returns what was seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = pod(mesh, workload, namespace)
        seen.append(status)
        if until(status):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{workload}: condition not reached; last status {seen[-1]}")


@pytest.fixture(scope="module")
def faults_mesh(lesson_mesh):
    lesson_mesh.wait_ready()
    return lesson_mesh


# ---- a container dies ----------------------------------------------------------------------------
def test_killed_app_restarts_and_its_endpoint_follows_readiness(faults_mesh, mesh_home):
    mesh = faults_mesh
    pushes = mesh.status().details["pushes"]
    with Traffic(mesh) as traffic:
        traffic.wait_for_success(0)
        killed_at = time.monotonic()
        os.kill(pid_of(mesh_home, "app", "service-b-v1"), signal.SIGKILL)
        seen = watch(mesh, "service-b-v1", lambda s: s.restarts >= 1 and s.ready)
        traffic.wait_for_success(killed_at)
    assert any(not s.ready for s in seen), "the pod never showed NotReady while its app was down"
    assert seen[-1].phase == "Running"
    # NotReady took the endpoint out of service-a's sidecar, Ready put it back: two pushes.
    assert mesh.status().details["pushes"] >= pushes + 2
    # While the endpoint was gone the client sidecar answered 503 (no healthy upstream),
    # never a hang or a connection error.
    traffic.assert_only_503s(killed_at)
    log = mesh.logs("service-b-v1", NS)
    assert "--- meshlab: restart #1 (exit -9) ---" in log


def test_killed_sidecar_restarts_with_the_current_config(faults_mesh, mesh_home):
    """Envoy killed, and a policy applied while it is down: the new Envoy loads the config
    files as they are now (STRICT in force), and pushes reach it afterwards."""
    mesh = faults_mesh
    before = pod(mesh, "service-b-v1").restarts
    with Traffic(mesh) as traffic:
        traffic.wait_for_success(0)
        killed_at = time.monotonic()
        os.kill(pid_of(mesh_home, "istio-proxy", "service-b-v1"), signal.SIGKILL)
        mesh.apply(STRICT_B)
        watch(mesh, "service-b-v1", lambda s: s.restarts > before and s.ready)
        traffic.wait_for_success(killed_at)
    traffic.assert_only_503s(killed_at)
    files = mesh_home / "pods" / NS / pod(mesh, "service-b-v1").name / "envoy"
    dump = mesh.sidecar_config("service-b-v1", NS)
    versions = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
    lds_file = json.loads((files / "lds" / "lds.json").read_text())
    cds_file = json.loads((files / "cds" / "cds.json").read_text())
    assert versions["ListenersConfigDump"]["version_info"] == lds_file["version_info"]
    assert versions["ClustersConfigDump"]["version_info"] == cds_file["version_info"]
    # STRICT is in force on the restarted sidecar: the legacy client (no sidecar) is reset.
    legacy = mesh.call("legacy-client", "http://service-b-v1.istio-meshlab:8080/hello", "legacy")
    assert legacy.status is None and legacy.error == "connection reset by peer"
    # And a later push reaches it: back to PERMISSIVE, the legacy client gets in again.
    mesh.delete(STRICT_B)
    legacy = mesh.call("legacy-client", "http://service-b-v1.istio-meshlab:8080/hello", "legacy")
    assert legacy.status == 200


def test_killed_client_sidecar_restarts(faults_mesh, mesh_home):
    mesh = faults_mesh
    before = pod(mesh, "service-a").restarts
    os.kill(pid_of(mesh_home, "istio-proxy", "service-a"), signal.SIGKILL)
    watch(mesh, "service-a", lambda s: s.restarts > before and s.ready)
    with Traffic(mesh) as traffic:
        traffic.wait_for_success(0)


def test_container_that_cannot_start_is_in_crashloopbackoff_with_its_log(faults_mesh):
    mesh = faults_mesh
    mesh.apply(CRASHER)
    try:
        seen = watch(mesh, "crasher", lambda s: s.phase == "CrashLoopBackOff", 15, "legacy")
        status = seen[-1]
        assert not status.ready
        assert status.restarts >= 2
        # The last lines of the container's log, as `kubectl describe` / `logs --previous`.
        assert "invalid time interval" in status.message
        assert "[app]" in status.message
        # Backoff grows (0.5 s, 1 s, 2 s, ...): a few seconds later only a few restarts more.
        time.sleep(2.0)
        assert pod(mesh, "crasher", "legacy").restarts <= status.restarts + 2
    finally:
        mesh.delete(CRASHER)
    assert [p for p in mesh.pods("legacy") if p.workload == "crasher"] == []


# ---- the daemon dies ---------------------------------------------------------------------------
def test_killed_daemon_takes_its_pods_and_the_next_command_recovers(faults_mesh, mesh_home):
    mesh = faults_mesh
    mesh.configure(tls_max_version="TLSv1_2")
    before = objects(mesh)
    used = addresses(mesh)
    daemon = homes.read_pid(mesh_home)
    with Traffic(mesh) as traffic:
        traffic.wait_for_success(0)
        os.kill(daemon, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while find_processes(mesh_home) and time.monotonic() < deadline:
            time.sleep(0.02)
        # PDEATHSIG: every app and sidecar died with the daemon.
        assert find_processes(mesh_home) == []
        time.sleep(0.2)
    busy = [a for a in used if not bindable(a)]
    assert busy == [], f"pod addresses still held after the daemon died: {busy}"

    with pytest.raises(DaemonError) as info:
        mesh.call("service-a", B_URL, NS)
    assert f"the mesh daemon (pid {daemon}) stopped unexpectedly" in str(info.value)
    assert "`meshlab up`" in str(info.value)
    assert not mesh.status().running

    # The next CLI command says what happened, starts a new daemon and restores the objects.
    cli = subprocess.run(
        [sys.executable, "-m", "meshlab.cli", "get", "pods", "-n", NS],
        env={**os.environ, "MESHLAB_HOME": str(mesh_home)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"the previous mesh daemon (pid {daemon}) had stopped unexpectedly" in cli.stderr
    count = sum(len(v) for v in before.values())
    assert f"restored {count} object(s)" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert "service-b-v1-" in cli.stdout  # its pods run again
    mesh.up()  # the test process is the owner again
    assert objects(mesh) == before
    assert mesh.status().details["tls_max_version"] == "TLSv1_2"
    mesh.wait_ready()
    with Traffic(mesh) as traffic:
        traffic.wait_for_success(0)
    mesh.configure(tls_max_version="TLSv1_3")


# ---- the owner (a notebook kernel) dies; up/down cycles ------------------------------------------
@pytest.fixture(scope="module")
def owned_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("owned-home")
    yield home
    EmbeddedMesh(home, start=False).down()
    assert find_processes(home) == []


def test_daemon_stops_when_its_owner_is_killed(owned_home):
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        mesh = EmbeddedMesh(owned_home, owner=kernel.pid)
        mesh.apply(OWNED)
        assert mesh.status().details["owners"] == [kernel.pid]
        assert len(processes(owned_home)) == 3  # daemon, sidecar, app
        used = addresses(mesh)
    finally:
        kernel.kill()
        kernel.wait()
    deadline = time.monotonic() + 10
    while find_processes(owned_home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert find_processes(owned_home) == []
    # A clean stop: no PID file, no socket left to trip on; the addresses are free.
    assert sorted(p.name for p in (owned_home / "run").iterdir()) == []
    assert not homes.socket_path(owned_home).exists()
    assert [a for a in used if not bindable(a)] == []
    # The next start (the next `make tutorial`) just works, with the objects restored.
    again = EmbeddedMesh(owned_home, owner=os.getpid())
    assert [d["metadata"]["name"] for d in again.get("Deployment", namespace="owned")] == [
        "sleeper"
    ]
    again.wait_ready()
    again.delete(OWNED)
    again.down(wipe=False)


def test_twenty_up_down_cycles_leave_nothing(owned_home):
    mesh = EmbeddedMesh(owned_home, owner=os.getpid(), start=False)
    for cycle in range(20):
        mesh.up()
        if cycle == 0:
            mesh.apply(DEPLOYMENTS / "namespace.yaml")
            mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
        mesh.wait_ready()
        used = addresses(mesh)
        # service-b-v1: relay on the pod IP, app, admin, outbound, inbound on the inner one
        assert len(used) == 5
        block = mesh.status().details["address_block"].split(".")[1]
        mesh.down(wipe=False)
        assert find_processes(owned_home) == [], f"cycle {cycle}: processes left"
        busy = [a for a in used if not bindable(a)]
        assert busy == [], f"cycle {cycle}: addresses still held: {busy}"
        assert not homes.socket_path(owned_home).exists()
        fd = os.open(lock_dir() / f"127.{block}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the block is free again
        finally:
            os.close(fd)
    stop_mesh(mesh)
