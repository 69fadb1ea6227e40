"""What every benchmark shares: settings, statistics, a lesson mesh, and /proc readings."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ROOT / "deployments"
NS = "istio-meshlab"
# The lesson: 3 pods (service-a and service-b-v1 with sidecars, legacy-client without).
LESSON_FILES = ("namespace.yaml", "service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml")
B_URL = "http://service-b-v1:8080/hello"
B_HOST = "service-b-v1:8080"
A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"


@dataclass
class Settings:
    """How much each benchmark repeats; ``quick`` is the smoke-test size."""

    quick: bool = False
    cold_start_runs: int = 5
    flips: int = 50
    rounds: int = 7
    wrk_seconds: int = 2
    http_requests: int = 500
    paced_rate: int = 1000
    paced_connections: int = 16
    tutorial_runs: int = 2
    plain_b: bool = True  # also measure the relay in front of a pod without a sidecar

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if not quick:
            return cls()
        return cls(
            quick=True,
            cold_start_runs=1,
            flips=6,
            rounds=1,
            wrk_seconds=1,
            http_requests=50,
            paced_rate=0,
            tutorial_runs=0,
            plain_b=False,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- statistics ----------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def spread(values: Iterable[float | None], digits: int = 3) -> dict[str, Any]:
    """min / median / max (and n) of repeated measurements; None values are left out."""
    data = [v for v in values if v is not None]
    if not data:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {
        "min": round(min(data), digits),
        "median": round(statistics.median(data), digits),
        "max": round(max(data), digits),
        "n": len(data),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_spread(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``median (min-max)`` for a results table."""
    if not s or s.get("median") is None:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# ---- a mesh to measure -----------------------------------------------------------------------
def new_home(name: str) -> Path:
    """A fresh state folder under the temp folder (``/tmp/bench-NAME-…``)."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


def start_mesh(home: Path, **options: Any) -> Any:
    from meshlab.embedded.client import EmbeddedMesh

    # This process owns the mesh: if the benchmark dies, the daemon stops by itself.
    return EmbeddedMesh(home, owner=os.getpid(), **options)


def stop_mesh(mesh: Any, home: Path | None = None) -> list[int]:
    """``down()``; returns the PIDs that survived it (none expected)."""
    try:
        mesh.down()
    finally:
        left = mesh.processes()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    return left


def deploy_lesson(mesh: Any) -> dict[str, float]:
    """Apply the lesson's files one by one, as the notebooks do; seconds per file."""
    took = {}
    for name in LESSON_FILES:
        took[name], _ = timed(lambda n=name: mesh.apply(DEPLOYMENTS / n))
    return took


@dataclass
class PodAddr:
    name: str
    namespace: str
    ip: str
    inner_ip: str
    sidecar: bool


def pod_addresses(mesh: Any) -> dict[str, PodAddr]:
    """``namespace/workload`` -> addresses, from the daemon's snapshot (pods and inner IPs)."""
    workloads = {(p.namespace, p.name): p.workload for p in mesh.status().pods}
    out = {}
    for pod in mesh._request("snapshot")["pods"]:
        workload = workloads.get((pod["namespace"], pod["name"]), pod["name"])
        out[f"{pod['namespace']}/{workload}"] = PodAddr(
            pod["name"], pod["namespace"], pod["ip"], pod["inner_ip"], pod["sidecar"]
        )
    return out


@dataclass
class Lab:
    """One lesson mesh shared by the benchmarks that measure a running mesh."""

    home: Path
    mesh: Any
    deploy_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls) -> Lab:
        home = new_home("lab")
        mesh = start_mesh(home)
        try:
            took = deploy_lesson(mesh)
            mesh.wait_ready(timeout=60)
        except BaseException:
            stop_mesh(mesh, home)
            raise
        return cls(home, mesh, took)

    def pods(self) -> dict[str, PodAddr]:
        return pod_addresses(self.mesh)

    def close(self) -> list[int]:
        return stop_mesh(self.mesh, self.home)


# ---- /proc readings ------------------------------------------------------------------------------
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def role_of(pid: int, workloads: dict[str, str] | None = None) -> str:
    """``daemon``, ``envoy:WORKLOAD``, ``app:WORKLOAD`` (from the process's POD_NAME)."""
    cmdline = _read(f"/proc/{pid}/cmdline").split(b"\0")
    if any(b"meshlab.embedded.daemon" in part for part in cmdline):
        return "daemon"
    env = dict(
        item.split(b"=", 1) for item in _read(f"/proc/{pid}/environ").split(b"\0") if b"=" in item
    )
    pod = env.get(b"POD_NAME", b"?").decode()
    workload = (workloads or {}).get(pod) or pod.rsplit("-", 2)[0]
    exe = os.path.basename(cmdline[0].decode(errors="replace")) if cmdline and cmdline[0] else ""
    kind = "envoy" if exe == "envoy" else "app"
    return f"{kind}:{workload}"


def roles(mesh: Any) -> dict[int, str]:
    workloads = {p.name: p.workload for p in mesh.status().pods}
    return {pid: role_of(pid, workloads) for pid in mesh.processes()}


def memory_kb(pid: int) -> dict[str, int]:
    """Pss and Rss (kB) from ``/proc/PID/smaps_rollup``."""
    out = {}
    for line in _read(f"/proc/{pid}/smaps_rollup").decode(errors="replace").splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss", "Pss_Anon", "Pss_File"):
            with contextlib.suppress(ValueError, IndexError):
                out[key] = int(rest.split()[0])
    return out


def footprint_kb(pids: Iterable[int]) -> int:
    """Memory of these processes as if nothing else ran: private pages, plus each shared
    file mapping once (PSS instead splits shared pages with every process on the machine
    that maps them, e.g. other meshes' Envoys)."""
    private = 0
    shared: dict[tuple[str, str], int] = {}
    for pid in pids:
        key = ("", "")
        for line in _read(f"/proc/{pid}/smaps").decode(errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            if not parts[0].endswith(":"):  # a mapping: address perms offset dev inode [path]
                path = parts[5] if len(parts) > 5 else ""
                # The same file segment maps at the same offset in every process.
                key = (path, parts[2]) if path.startswith("/") else (f"{pid} {parts[0]}", "")
            elif parts[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(parts[1])
            elif parts[0] in ("Shared_Clean:", "Shared_Dirty:"):
                part = (key[0], f"{key[1]} {parts[0]}")
                shared[part] = max(shared.get(part, 0), int(parts[1]))
    return private + sum(shared.values())


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(b")", 1)[-1].split()
    # After the command: state(0) ... utime is field 14 overall, i.e. index 11 here.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from ``/proc/stat``."""
    fields = _read("/proc/stat").split(b"\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLOCK_TICKS


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
