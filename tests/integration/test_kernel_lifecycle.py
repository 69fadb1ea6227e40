"""A Jupyter kernel that starts the mesh owns it: when the kernel goes, so does the mesh."""

from __future__ import annotations

import time
from pathlib import Path

import nbclient
import nbformat
import pytest

from meshlab.embedded.processes import find_processes


def run_cells(home: Path, *sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import os\nos.environ['MESHLAB_HOME'] = {str(home)!r}")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    return nb


def wait_gone(home: Path, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := find_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_kernel_shutdown_stops_the_mesh_it_started(tmp_path: Path) -> None:
    home = tmp_path / "kernel-home"
    nb = run_cells(
        home,
        "import meshlab\nmesh = meshlab.connect()\n"
        "mesh.apply('''apiVersion: v1\\nkind: Namespace\\nmetadata:\\n  name: legacy\\n''')\n"
        "print(os.getpid() in mesh.status().details['owners'])",
    )
    assert nb.cells[1].outputs[0]["text"].strip() == "True"
    assert wait_gone(home) == [], "the mesh outlived the kernel that started it"


def test_kernel_does_not_stop_a_mesh_started_from_the_cli(tmp_path: Path) -> None:
    from meshlab.embedded.client import EmbeddedMesh

    home = tmp_path / "cli-home"
    mesh = EmbeddedMesh(home)  # started outside any kernel: no owner
    try:
        run_cells(home, "import meshlab\nmeshlab.connect().status()")
        time.sleep(1.0)
        assert mesh.running(), "a kernel that merely used the mesh stopped it"
    finally:
        mesh.down()
    assert find_processes(home) == []


@pytest.fixture(autouse=True)
def _kernel_available() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no python3 Jupyter kernel installed")
