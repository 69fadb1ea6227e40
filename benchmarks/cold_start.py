"""Cold start: ``meshlab up`` plus the lesson's four files applied, until every pod is ready.

Each run uses a new state folder (new CA, new certificates): the CLI's ``meshlab up`` starts
the daemon, then the files are applied one by one through the Python API as the notebooks
do (each ``apply`` returns when its pods are ready and their sidecars configured). A second
series applies the four files in one call, which starts the pods side by side.

What bounds it is measured alongside, outside the mesh: Python importing the daemon,
uvicorn importing and starting a lesson app, and Envoy starting until its admin ``/ready``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEPLOYMENTS,
    LESSON_FILES,
    ROOT,
    Settings,
    fmt,
    fmt_spread,
    new_home,
    spread,
    stop_mesh,
    timed,
)

NAME = "cold_start"
TARGET_S = 3.0


def _cli_up(home: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MESHLAB_HOME"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "meshlab.cli", "--home", str(home), "up"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"meshlab up failed: {out.stderr.strip() or out.stdout.strip()}")
    return took


def one_run(together: bool) -> dict[str, Any]:
    home = new_home("cold")
    from meshlab.embedded.client import EmbeddedMesh

    mesh = EmbeddedMesh(home, start=False)
    phases: dict[str, float] = {}
    try:
        start = time.perf_counter()
        phases["meshlab up"] = _cli_up(home)
        if together:
            text = "\n---\n".join((DEPLOYMENTS / n).read_text() for n in LESSON_FILES)
            phases["apply (4 files, one call)"], _ = timed(lambda: mesh.apply(text))
        else:
            for name in LESSON_FILES:
                phases[f"apply {name}"], _ = timed(lambda n=name: mesh.apply(DEPLOYMENTS / n))
        phases["wait_ready"], _ = timed(lambda: mesh.wait_ready(timeout=60))
        total = time.perf_counter() - start
        pods = mesh.status().pods
        if len(pods) != 3 or not all(p.ready for p in pods):
            raise RuntimeError(f"the lesson did not come up: {pods}")
    finally:
        down_s, left = timed(lambda: stop_mesh(mesh, home))
    if left:
        raise RuntimeError(f"processes survived down(): {left}")
    return {"total_s": total, "phases_s": phases, "down_s": down_s}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(port: int, path: str, deadline: float) -> bool:
    from benchmarks.loadgen import raw_get

    while time.perf_counter() < deadline:
        if raw_get(("127.0.0.1", port), path, "localhost", timeout=0.5).startswith(b"HTTP/1.1 200"):
            return True
        time.sleep(0.005)
    return False


def _time_process(argv: list[str], port: int, path: str, cwd: Path | None = None) -> float | None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    try:
        ok = _wait_http(port, path, start + 20)
        took = time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return took if ok else None


def envoy_start_s() -> float | None:
    """Envoy (as the sidecars run it) from exec to admin ``/ready`` = 200, minimal bootstrap."""
    from meshlab.embedded.sidecar import envoy_argv

    port = _free_port()
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
        "node": {"id": "bench", "cluster": "bench"},
    }
    with tempfile.TemporaryDirectory(prefix="bench-envoy-") as folder:
        path = Path(folder) / "bootstrap.json"
        path.write_text(json.dumps(bootstrap))
        return _time_process(envoy_argv(path), port, "/ready")


def app_start_s() -> float | None:
    """A lesson app under uvicorn (as the pods run it) from exec to answering ``/healthz``."""
    from meshlab.embedded.images import command_for

    port = _free_port()
    argv = command_for("istio-meshlab/service-b-v1:0.1.0", [], [], "127.0.0.1", port)
    return _time_process(argv, port, "/healthz", cwd=ROOT)


def import_s(module: str) -> float:
    """Seconds for a fresh interpreter to import ``module`` (and exit)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)
    return time.perf_counter() - start


def run(settings: Settings, lab: Any = None) -> dict[str, Any]:
    runs = [one_run(together=False) for _ in range(settings.cold_start_runs)]
    together = [one_run(together=True) for _ in range(settings.cold_start_runs)]
    phase_names = list(runs[0]["phases_s"])
    bounds_runs = max(1, min(3, settings.cold_start_runs))
    bounds = {
        "python -c pass": spread([import_s("sys") for _ in range(bounds_runs)]),
        "import meshlab.embedded.daemon": spread(
            [import_s("meshlab.embedded.daemon") for _ in range(bounds_runs)]
        ),
        "uvicorn app start to /healthz": spread([app_start_s() for _ in range(bounds_runs)]),
        "envoy start to /ready": spread([envoy_start_s() for _ in range(bounds_runs)]),
    }
    return {
        "total_s": spread([r["total_s"] for r in runs]),
        "phases_s": {n: spread([r["phases_s"][n] for r in runs]) for n in phase_names},
        "one_apply_total_s": spread([r["total_s"] for r in together]),
        "one_apply_phases_s": {
            n: spread([r["phases_s"][n] for r in together]) for n in together[0]["phases_s"]
        },
        "down_s": spread([r["down_s"] for r in runs + together]),
        "bounds_s": bounds,
        "runs": len(runs),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    return {"cold_start_s": result["total_s"]["median"]}


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Cold start: `meshlab up` + the lesson until ready",
        "",
        f"{result['runs']} runs, each in a new state folder; seconds, median (min-max).",
        "",
        "| step | lesson files one by one | all four in one `apply` |",
        "|---|---|---|",
    ]
    together = result["one_apply_phases_s"]
    for name, s in result["phases_s"].items():
        other = together.get(name)
        lines.append(f"| {name} | {fmt_spread(s)} | {fmt_spread(other) if other else ''} |")
    for name, s in together.items():
        if name not in result["phases_s"]:
            lines.append(f"| {name} | | {fmt_spread(s)} |")
    lines += [
        f"| **total** | **{fmt_spread(result['total_s'])}** | "
        f"**{fmt_spread(result['one_apply_total_s'])}** |",
        f"| `down()` afterwards | {fmt_spread(result['down_s'])} | |",
        "",
        "What bounds it, measured alone (seconds, median (min-max)):",
        "",
        "| component | time |",
        "|---|---|",
    ]
    for name, s in result["bounds_s"].items():
        lines.append(f"| {name} | {fmt_spread(s, 3)} |")
    b = result["bounds_s"]
    app = b["uvicorn app start to /healthz"]["median"]
    envoy = b["envoy start to /ready"]["median"]
    daemon = b["import meshlab.embedded.daemon"]["median"]
    one_by_one, together = result["total_s"]["median"], result["one_apply_total_s"]["median"]
    if together < one_by_one:
        verdict = (
            f"faster here ({fmt(together)} s against {fmt(one_by_one)} s): their imports "
            "overlap on the 2 cores"
        )
    else:
        verdict = (
            f"no faster here ({fmt(together)} s against {fmt(one_by_one)} s): their imports "
            "compete for the same cores"
        )
    lines += [
        "",
        f"A pod is ready when its app answers; the app (Python importing FastAPI and uvicorn, "
        f"{fmt(app)} s) is far slower than its Envoy ({fmt(envoy)} s), which starts beside it. "
        f"`meshlab up` is mostly the daemon's imports ({fmt(daemon)} s). One `apply` of all "
        f"four files starts both app pods side by side: {verdict}.",
        "",
    ]
    return "\n".join(lines)
