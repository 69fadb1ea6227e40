"""The whole tutorial, headless: ``python -m meshlab.tutorial`` (``make tutorial``), timed.

Runs in a state folder and output folder of its own, so a lab open elsewhere is not touched.
Records the wall-clock time of the whole command and each lesson's own time from its
summary line; when the tutorial runner or the lessons do not exist yet, says so.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Settings, fmt, fmt_spread, spread

NAME = "tutorial"
TARGET_S = 60.0
LESSON_LINE = re.compile(r"^\s+(PASS|FAIL)\s+(.*?)\s+([\d.]+) s$")


def available() -> str | None:
    """None when the tutorial can run; otherwise why not."""
    if importlib.util.find_spec("meshlab.tutorial") is None:
        return "meshlab/tutorial.py does not exist yet"
    if not list((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        return "no lesson notebooks in notebooks/ yet"
    return None


def one_run() -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-tutorial-"))
    home = folder / "home"
    try:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "meshlab.tutorial", "--output", str(folder / "out"),
             "--home", str(home)],
            capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
        )  # fmt: skip
        took = time.perf_counter() - start
    finally:
        from meshlab.embedded.client import EmbeddedMesh

        EmbeddedMesh(home, start=False).down()
        shutil.rmtree(folder, ignore_errors=True)
    lessons = {}
    for line in out.stdout.splitlines():
        match = LESSON_LINE.match(line)
        if match:
            lessons[match.group(2)] = {"ok": match.group(1) == "PASS", "s": float(match.group(3))}
    return {
        "seconds": took,
        "exit": out.returncode,
        "lessons": lessons,
        "last_line": (out.stdout.strip().splitlines() or [""])[-1],
        "stderr_tail": out.stderr.strip().splitlines()[-5:],
    }


def run(settings: Settings, lab: Any = None) -> dict[str, Any]:
    why_not = available()
    if settings.tutorial_runs <= 0:
        why_not = "skipped (--quick)"
    if why_not:
        return {"measured": False, "reason": why_not, "seconds": spread([])}
    runs = [one_run() for _ in range(settings.tutorial_runs)]
    names = list(dict.fromkeys(n for r in runs for n in r["lessons"]))
    return {
        "measured": True,
        "runs": len(runs),
        "seconds": spread([r["seconds"] for r in runs], 2),
        "all_passed": all(r["exit"] == 0 for r in runs),
        "lessons": {
            n: spread([r["lessons"][n]["s"] for r in runs if n in r["lessons"]], 2) for n in names
        },
        "last_lines": [r["last_line"] for r in runs],
        "stderr_tail": runs[-1]["stderr_tail"] if runs[-1]["exit"] else [],
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    return {"tutorial_s": result["seconds"]["median"]}


def render(result: dict[str, Any]) -> str:
    lines = ["## The whole tutorial, headless (`make tutorial`)", ""]
    if not result["measured"]:
        return "\n".join([*lines, f"Not measured yet: {result['reason']}.", ""])
    lines += [
        f"{result['runs']} runs; seconds, median (min-max). Every lesson passed: "
        f"{'yes' if result['all_passed'] else 'NO'} ({'; '.join(result['last_lines'])}).",
        "",
        "| lesson | seconds |",
        "|---|---|",
    ]
    for name, s in result["lessons"].items():
        lines.append(f"| {name} | {fmt_spread(s)} |")
    lines += [f"| **whole command** | **{fmt_spread(result['seconds'])}** |", ""]
    slowest = max(result["lessons"].items(), key=lambda kv: kv[1]["median"] or 0, default=None)
    if slowest:
        lines += [f"Slowest lesson: {slowest[0]} ({fmt(slowest[1]['median'])} s).", ""]
    return "\n".join(lines)
