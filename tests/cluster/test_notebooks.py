"""Every lesson notebook, executed on the cluster with papermill and ``-p backend kubernetes``.

The notebooks are globbed when the suite runs, so new lessons are included without editing
this file. Each notebook ends with its own assertions: a failing cell fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import ENABLED, REASON, ROOT, cluster_only, context

pytestmark = cluster_only
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _params() -> list[object]:
    if NOTEBOOKS:
        return [pytest.param(nb, id=nb.stem) for nb in NOTEBOOKS]
    reason = REASON if not ENABLED else "no notebooks in notebooks/ yet"
    return [pytest.param(None, id="no-notebooks", marks=pytest.mark.skip(reason=reason))]


@pytest.mark.parametrize("notebook", _params())
def test_notebook_runs_on_the_cluster(
    notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill

    monkeypatch.setenv("MESHLAB_BACKEND", "kubernetes")
    if context():  # else the kubeconfig's current context
        monkeypatch.setenv("MESHLAB_CONTEXT", context() or "")
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / notebook.name),
        parameters={"backend": "kubernetes"},
        cwd=str(notebook.parent),
        progress_bar=False,
        execution_timeout=900,
    )
