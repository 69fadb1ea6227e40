"""Run the benchmarks; write ``results.md`` and ``results.json``.

    python -m benchmarks.run                      # everything (make bench), a few minutes
    python -m benchmarks.run --quick              # tiny setting (smoke test), well under 1 min
    python -m benchmarks.run --only dataplane     # some of them (repeat or comma-separate)
    python -m benchmarks.run --out /tmp/b         # write the results elsewhere

Names: cold_start, memory, propagation, dataplane, tutorial. Writing into ``benchmarks/``
(the default) also refreshes the results table of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import cold_start, dataplane, memory, propagation, tutorial
from benchmarks.common import ROOT, Lab, Settings, fmt, fmt_spread, load_average
from benchmarks.loadgen import wrk_version

HERE = Path(__file__).resolve().parent
MODULES: list[ModuleType] = [cold_start, memory, propagation, dataplane, tutorial]
NEEDS_LAB = {"memory", "propagation", "dataplane"}
HEADLINE_KEYS = (
    "cold_start_s",
    "apply_p95_ms",
    "tutorial_s",
    "mesh_pss_mb",
    "sidecar_added_p90_ms",
    "capture_idle_overhead_pct",
)
# (key, what, unit, target (None: a reference figure), lower is better)
TARGETS = [
    ("cold_start_s", "cold start: `meshlab up` + lesson ready", "s", 3.0),
    ("apply_p95_ms", "policy `apply` until enforced, p95", "ms", 50.0),
    ("sidecar_added_p90_ms", "two sidecars (mTLS) add, p90 (Istio 1.20: 0.228 ms)", "ms", None),
    ("capture_idle_overhead_pct", "idle capture relay adds to A -> B (p50)", "%", 10.0),
    ("mesh_pss_mb", "PSS of the lesson mesh", "MB", 350.0),
    ("tutorial_s", "whole tutorial, headless", "s", 60.0),
]
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
BUSY_PCT = 10  # % of the machine's CPU used by other processes that makes a run "busy"


# ---- the machine -----------------------------------------------------------------------------
def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _envoy_version() -> str:
    from meshlab.embedded.sidecar import envoy_binary

    text = _first_line([envoy_binary(), "--version"])
    match = re.search(r"version: \S+/(\d+\.\d+\.\d+)/", text)
    return match.group(1) if match else text


def _git() -> str:
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}"


def machine() -> dict[str, Any]:
    import os

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": _envoy_version(),
        "wrk": wrk_version(),
        "packages": {
            p: _version(p)
            for p in ("istio-meshlab", "fastapi", "uvicorn", "httpx", "cryptography", "pydantic")
        },
        "commit": _git(),
    }


# ---- running ---------------------------------------------------------------------------------
def select(only: list[str]) -> list[ModuleType]:
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    known = {m.NAME: m for m in MODULES}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(known)})")
    return [m for m in MODULES if not wanted or m.NAME in wanted]


def run_all(modules: list[ModuleType], settings: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {}
    lab: Lab | None = None
    try:
        for module in modules:
            if module.NAME in NEEDS_LAB and lab is None:
                lab = Lab.start()
            elif module.NAME not in NEEDS_LAB and lab is not None:
                lab.close()
                lab = None
            print(f"[bench] {module.NAME} …", flush=True)
            started = time.perf_counter()
            try:
                results[module.NAME] = module.run(settings, lab)
            except Exception as err:
                results[module.NAME] = {"error": f"{type(err).__name__}: {err}"}
                traceback.print_exc()
            took = time.perf_counter() - started
            print(f"[bench] {module.NAME} done in {took:.1f} s", flush=True)
    finally:
        if lab is not None:
            left = lab.close()
            if left:
                print(f"[bench] processes survived down(): {left}", file=sys.stderr)
    if "memory" in results and "pss_after_load_mb" in results.get("dataplane", {}):
        results["memory"]["after_load"] = results["dataplane"]["pss_after_load_mb"]
    return results


def headlines(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(HEADLINE_KEYS)
    for module in MODULES:
        result = results.get(module.NAME)
        if result and "error" not in result:
            out.update(module.headline(result))
    return out


# ---- writing ---------------------------------------------------------------------------------
def targets_table(heads: dict[str, Any], results: dict[str, Any]) -> list[str]:
    spreads = {
        "cold_start_s": results.get("cold_start", {}).get("total_s"),
        "mesh_pss_mb": results.get("memory", {}).get("pss_mb"),
        "tutorial_s": results.get("tutorial", {}).get("seconds"),
        "sidecar_added_p90_ms": (results.get("dataplane", {}).get("wrk_added_ms") or {})
        .get("sidecars_mtls", {})
        .get("p90"),
        "capture_idle_overhead_pct": results.get("dataplane", {}).get(
            "relay_share_of_mtls_path_pct"
        ),
    }
    lines = [
        "| figure | target | median (min-max) | |",
        "|---|---|---|---|",
    ]
    for key, what, unit, target in TARGETS:
        value = heads.get(key)
        s = spreads.get(key)
        digits = {"sidecar_added_p90_ms": 3, "cold_start_s": 2, "apply_p95_ms": 1}.get(key, 1)
        if key != "apply_p95_ms" and s and s.get("n"):
            shown = fmt_spread(s, digits)
        else:
            shown = fmt(value, digits)
        if value is None:
            verdict = "not measured"
        elif target is None:
            verdict = "reference"
        else:
            verdict = "within" if value <= target else "**over**"
        goal = f"≤ {target:g} {unit}" if target is not None else "-"
        lines.append(
            f"| {what} | {goal} | {shown} {unit if value is not None else ''} | {verdict} |"
        )
    return lines


def busy_note(results: dict[str, Any]) -> list[str]:
    """A warning when other work used the machine during the data-plane runs."""
    other = (results.get("dataplane", {}).get("other_cpu_pct") or {}).get("median")
    if other is None or other < BUSY_PCT:
        return []
    return [
        f"**Recorded on a busy machine**: other processes used {other:.0f} % of the CPU during "
        "the data-plane runs; latencies, tails first, and cold start are pessimistic. "
        "Re-run `make bench` on a quiet machine.",
        "",
    ]


def markdown(
    info: dict[str, Any], settings: Settings, results: dict[str, Any], loads: dict[str, Any]
) -> str:
    heads = headlines(results)
    pk = info["packages"]
    lines = [
        "# MeshLab benchmark results",
        "",
        "Written by `make bench` (`python -m benchmarks.run"
        f"{' --quick' if settings.quick else ''}`); how each figure is measured: "
        "[README.md](README.md).",
        "",
        f"- date: {info['date']}; commit {info['commit']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
        f"{info['os']}, Linux {info['kernel']}",
        f"- versions: Python {info['python']}, Envoy {info['envoy']}, {info['wrk']}, "
        f"fastapi {pk['fastapi']}, uvicorn {pk['uvicorn']}, httpx {pk['httpx']}, "
        f"cryptography {pk['cryptography']}",
        f"- load average (1/5/15 min) before: {loads['before']}, after: {loads['after']}: "
        "other work on the machine shows up as noise",
        "",
        *busy_note(results),
        *targets_table(heads, results),
        "",
    ]
    for module in MODULES:
        result = results.get(module.NAME)
        if result is None:
            continue
        if "error" in result:
            lines += [f"## {module.NAME}", "", f"Failed: `{result['error']}`", ""]
        else:
            lines.append(module.render(result))
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, heads: dict[str, Any], results: dict[str, Any],
                  info: dict[str, Any]) -> None:  # fmt: skip
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    table = "\n".join(
        [
            f"Last full run: {info['date']}, {info['cpu']}, {info['cores']} cores "
            "(details in [results.md](results.md)).",
            "",
            *busy_note(results),
            *targets_table(heads, results),
        ]
    )
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    readme.write_text(f"{before}{README_START}\n{table}\n{README_END}{after}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny setting (smoke test)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these (repeat or comma-separate)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.md/.json")
    args = parser.parse_args(argv)
    modules = select(args.only)
    settings = Settings.for_run(args.quick)
    info = machine()
    loads = {"before": load_average()}
    started = time.perf_counter()
    results = run_all(modules, settings)
    loads["after"] = load_average()
    heads = headlines(results)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        **heads,
        "machine": info,
        "load_average": loads,
        "settings": settings.to_dict(),
        "benchmarks_run": [m.NAME for m in modules],
        "seconds": round(time.perf_counter() - started, 1),
        "details": results,
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(info, settings, results, loads))
    if args.out.resolve() == HERE and not args.quick and len(modules) == len(MODULES):
        update_readme(HERE / "README.md", heads, results, info)
    print(f"[bench] wrote {args.out / 'results.md'} and results.json")
    for key in HEADLINE_KEYS:
        print(f"[bench]   {key}: {heads[key]}")
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
