"""The benchmark script runs end to end on its tiny setting and writes its figures.

No timing is asserted here (speed targets live in benchmarks/, not in tests): only that
every figure was produced, as a number wherever this machine can measure it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = (
    "cold_start_s",
    "apply_p95_ms",
    "tutorial_s",
    "mesh_pss_mb",
    "sidecar_added_p90_ms",
    "capture_idle_overhead_pct",
)


def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    missing = [k for k in KEYS if k not in results]
    assert not missing, f"results.json lacks {missing}"
    measured = ["cold_start_s", "apply_p95_ms", "mesh_pss_mb", "sidecar_added_p90_ms"]
    if shutil.which("wrk"):
        measured.append("capture_idle_overhead_pct")
    for key in measured:
        assert isinstance(results[key], int | float), f"{key} = {results[key]!r}"
    assert results["mesh_pss_mb"] > 0 and results["cold_start_s"] > 0
    assert results["tutorial_s"] is None  # --quick skips the tutorial
    report = (tmp_path / "results.md").read_text()
    assert "| figure | target |" in report and "## Data plane" in report
