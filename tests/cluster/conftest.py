"""The cluster suite: runs only against a real Kubernetes cluster with Istio.

    MESHLAB_TEST_CLUSTER=1 [MESHLAB_TEST_CONTEXT=kind-meshlab] pytest -m cluster tests/cluster

Without MESHLAB_TEST_CLUSTER=1 every test here is skipped, saying so: there is no cluster on
this machine or in CI. docs/real-cluster.md sets one up with kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("MESHLAB_TEST_CLUSTER") == "1"
REASON = (
    "needs a real Kubernetes cluster with Istio and the lab's images: set "
    "MESHLAB_TEST_CLUSTER=1 (and MESHLAB_TEST_CONTEXT to pick a kubeconfig context); "
    "see docs/real-cluster.md"
)
cluster_only = [pytest.mark.cluster, pytest.mark.skipif(not ENABLED, reason=REASON)]


def context() -> str | None:
    return os.environ.get("MESHLAB_TEST_CONTEXT") or None
