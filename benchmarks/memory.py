"""Memory: the proportional set size (PSS) of the whole lesson mesh, daemon included.

PSS divides each shared page among the processes that map it, so the two Envoys' shared
binary text (~55 MB of their RSS) counts once: the sum is what the mesh really costs.
Read from ``/proc/PID/smaps_rollup`` for every process of ``mesh.processes()``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from benchmarks.common import NS, Settings, fmt, fmt_spread, footprint_kb, memory_kb, roles, spread

NAME = "memory"
TARGET_MB = 350.0
SAMPLES = 3
LEGACY_URL = "http://service-b-v1.istio-meshlab:8080/hello"


def sample(mesh: Any, skip: str = "") -> dict[str, Any]:
    """One reading: totals and per-role PSS/RSS in MB (roles containing ``skip`` left out)."""
    by_role: dict[str, dict[str, float]] = defaultdict(lambda: {"pss_mb": 0.0, "rss_mb": 0.0})
    total_pss = total_rss = 0.0
    found = {pid: role for pid, role in roles(mesh).items() if not (skip and skip in role)}
    for pid, role in found.items():
        mem = memory_kb(pid)
        pss, rss = mem.get("Pss", 0) / 1024, mem.get("Rss", 0) / 1024
        by_role[role]["pss_mb"] += pss
        by_role[role]["rss_mb"] += rss
        total_pss += pss
        total_rss += rss
    return {
        "pss_mb": total_pss,
        "footprint_mb": footprint_kb(found) / 1024,
        "rss_mb": total_rss,
        "processes": len(found),
        "by_role": dict(by_role),
    }


def run(settings: Settings, lab: Any) -> dict[str, Any]:
    mesh = lab.mesh
    # A few calls first, so every process has served traffic (as in a lesson).
    for _ in range(3):
        mesh.call("service-a", "http://localhost:8080/call-b", NS)
        mesh.call("legacy-client", LEGACY_URL, "legacy")
    readings = []
    for _ in range(SAMPLES):
        readings.append(sample(mesh))
        time.sleep(0.2)
    role_names = sorted(readings[0]["by_role"])
    return {
        "pss_mb": spread([r["pss_mb"] for r in readings], 1),
        "rss_mb": spread([r["rss_mb"] for r in readings], 1),
        "footprint_mb": spread([r["footprint_mb"] for r in readings], 1),
        "processes": readings[0]["processes"],
        "by_role": {
            role: {
                "pss_mb": spread([r["by_role"].get(role, {}).get("pss_mb") for r in readings], 1),
                "rss_mb": spread([r["by_role"].get(role, {}).get("rss_mb") for r in readings], 1),
            }
            for role in role_names
        },
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    return {"mesh_pss_mb": result["pss_mb"]["median"]}


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Memory of the lesson mesh (PSS)",
        "",
        f"{result['processes']} processes (daemon, 2 Envoys, 2 apps, the legacy client's "
        f"sleep), {SAMPLES} readings after a few calls; MB, median (min-max).",
        "",
        "| process | PSS | RSS |",
        "|---|---|---|",
    ]
    for role, mem in result["by_role"].items():
        lines.append(
            f"| {role} | {fmt_spread(mem['pss_mb'], 1)} | {fmt_spread(mem['rss_mb'], 1)} |"
        )
    lines += [
        f"| **whole mesh** | **{fmt_spread(result['pss_mb'], 1)}** | "
        f"{fmt_spread(result['rss_mb'], 1)} |",
        "",
        f"The mesh as if alone on the machine (private pages, each shared file mapping once): "
        f"{fmt_spread(result['footprint_mb'], 1)} MB. PSS splits a shared page among every "
        "process that maps it, on the whole machine: other meshes' Envoys and Pythons running "
        "beside this one lower it.",
        "",
    ]
    envoys = [m["pss_mb"]["median"] for r, m in result["by_role"].items() if r.startswith("envoy")]
    if envoys:
        low, high = fmt(min(envoys), 0), fmt(max(envoys), 0)
        lines += [
            f"Each Envoy costs {low if low == high else f'{low}-{high}'} MB PSS here (Istio "
            "1.24 reports ~60 MB per sidecar at 1000 rps). RSS counts Envoy's ~55 MB of shared "
            "binary text in every Envoy; PSS splits it among all the Envoys on the machine.",
            "",
        ]
    if "after_load" in result:
        lines += [
            f"After the data-plane benchmark's load: {fmt_spread(result['after_load'], 1)} MB "
            "PSS (the extra pod that benchmark adds is left out).",
            "",
        ]
    return "\n".join(lines)
