"""Explain and check mTLS configuration: ``meshlab describe`` and ``meshlab analyze``.

Pure logic over a ``MeshState`` (a ``Snapshot`` plus stored objects), so the embedded and
kubernetes backends share it::

    from meshlab.analysis import analyze, describe_call, snapshot_from_objects
    state = MeshState(snapshot_from_objects(objects, pods, MeshConfig()), tuple(objects))
    print(describe_call(state, "service-a", "http://service-b-v1:8080/hello", "istio-meshlab"))
    print(analyze(state, proposed=load("deployments/examples/")))
"""

from __future__ import annotations

from meshlab.analysis.analyze import (
    analyze,
    apply_warnings,
    findings_for,
    merge_proposed,
    run_checks,
)
from meshlab.analysis.describe import Description, Predicted, describe_call
from meshlab.analysis.findings import CHECKS, EXIT_FOUND_ISSUES, AnalysisReport, Finding
from meshlab.analysis.state import (
    MeshState,
    snapshot_from_dict,
    snapshot_from_objects,
    state_from_mesh_objects,
)

__all__ = [
    "CHECKS",
    "EXIT_FOUND_ISSUES",
    "AnalysisReport",
    "Description",
    "Finding",
    "MeshState",
    "Predicted",
    "analyze",
    "apply_warnings",
    "describe_call",
    "findings_for",
    "merge_proposed",
    "run_checks",
    "snapshot_from_dict",
    "snapshot_from_objects",
    "state_from_mesh_objects",
]
