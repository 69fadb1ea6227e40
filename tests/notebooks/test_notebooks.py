"""The lessons run headless (papermill, through ``meshlab.tutorial``): each one alone in a
fresh state folder, and all of them in order in one. The committed notebooks are checked
too: generated from notebooks/_build.py, fully executed, and free of run-specific metadata.
(``pytest --nbval notebooks/`` then proves their committed outputs true.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from meshlab import tutorial
from meshlab.embedded.client import EmbeddedMesh
from tests.conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
LESSONS = tutorial.find_lessons(NOTEBOOKS)
MAX_NOTEBOOK_BYTES = 64 * 1024


def load_source():
    spec = importlib.util.spec_from_file_location("lesson_source", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_mesh_gone(home: Path) -> None:
    left = EmbeddedMesh(home, start=False).processes()
    assert left == [], f"processes of the lesson mesh survived: {left}"


def test_the_lessons_are_numbered_from_welcome_to_cleanup():
    names = [p.stem for p in LESSONS]
    assert names[0] == "00-welcome" and names[-1] == "07-cleanup"
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(len(names))]


# ---- the committed notebooks ----------------------------------------------------------------


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_committed_notebook_matches_its_source(path):
    source = load_source()
    built = source.build(path.stem, source.LESSONS[path.stem])
    committed = nbformat.read(path, as_version=4)
    assert [(c.id, c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells] == [
        (c.id, c.cell_type, c.source, c.metadata.get("tags", [])) for c in built.cells
    ], f"{path.name} differs from notebooks/_build.py: rebuild it and run `make notebooks`"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_committed_outputs_are_complete_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    for key in ("papermill", "widgets"):
        assert key not in nb.metadata, f"{path.name}: notebook metadata.{key} must be stripped"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: not executed top to bottom (run `make notebooks`)"
    )
    for cell in code:
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata
        assert "injected-parameters" not in cell.metadata.get("tags", [])
        assert all(o.output_type != "error" for o in cell.outputs), f"{path.name}: error output"
        assert all(tutorial.WIDGET_VIEW not in o.get("data", {}) for o in cell.outputs)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].source.startswith('backend = "embedded"')
    assert tutorial.shown_lines(nb) and tutorial.shown_lines(nb)[-1].startswith(path.stem[:2])
    assert tutorial.title_of(nb).startswith(path.stem[:2] + " · ")


# ---- executing them -------------------------------------------------------------------------


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_each_lesson_runs_alone_in_a_fresh_lab(path, tmp_path):
    home = tmp_path / "home"
    [result] = tutorial.run([path], output_dir=tmp_path / "out", home=home)
    assert result.ok, f"{path.name}: {result.error} (see {result.output})"
    assert result.shown[-1].startswith(path.stem[:2])
    executed = nbformat.read(result.output, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'backend = "embedded"' in injected[0].source
    assert_mesh_gone(home)


def test_all_lessons_run_in_order_in_one_lab(tmp_path):
    home = tmp_path / "home"
    seen = []
    results = tutorial.run(LESSONS, output_dir=tmp_path / "out", home=home, report=seen.append)
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    assert not failed, failed
    assert [r.name for r in seen] == [p.stem for p in LESSONS]
    assert all((tmp_path / "out" / p.name).exists() for p in LESSONS)
    assert_mesh_gone(home)


# ---- the runner on small notebooks of its own ------------------------------------------------


def toy(folder: Path, name: str, *sources: str, title: str = "") -> Path:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})  # fmt: skip
    nb.cells.append(new_markdown_cell(f"# {title or name}"))
    nb.cells.append(new_code_cell('backend = "embedded"', metadata={"tags": ["parameters"]}))
    nb.cells += [new_code_cell(s) for s in sources]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toys(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    toy(folder, "00-ok", 'print("PASSED 00: all good, backend", backend)', title="00 · Fine")
    toy(folder, "01-broken", "assert 1 == 2, 'the mesh misbehaved'", title="01 · Broken")
    toy(folder, "02-silent", "x = 1", title="02 · Silent")
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlab.tutorial", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def test_cli_summarises_each_lesson_and_fails_when_one_fails(toys, tmp_path):
    done = run_cli("--notebooks", str(toys), "--output", str(tmp_path / "out"))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Running 3 lessons (embedded backend) into " + str(tmp_path / "out")
    assert any(line.startswith("  PASS  00 · Fine") for line in lines)
    assert "        00: all good, backend embedded" in lines
    assert any(line.startswith("  FAIL  01 · Broken") for line in lines)
    assert any("AssertionError: the mesh misbehaved (cell [" in line for line in lines)
    assert any(line.startswith("  FAIL  02 · Silent") for line in lines)
    assert any("printed no PASSED line" in line for line in lines)
    assert lines[-1].startswith("1 passed, 2 failed in ")
    assert "Kernel is running over TCP" not in done.stdout + done.stderr


def test_cli_only_picks_lessons_and_names_the_known_ones(toys, tmp_path):
    done = run_cli("--notebooks", str(toys), "--output", str(tmp_path / "out"), "--only", "00")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout
    bad = run_cli("--notebooks", str(toys), "--only", "42")
    assert bad.returncode != 0
    assert "no lesson matches 42 (lessons: 00-ok, 01-broken, 02-silent)" in bad.stderr


def test_in_place_refresh_rewrites_only_passing_lessons_without_run_metadata(toys, tmp_path):
    broken_before = (toys / "01-broken.ipynb").read_bytes()
    results = tutorial.run(
        tutorial.find_lessons(toys), output_dir=tmp_path / "scratch", in_place=True,
        home=tmp_path / "home",
    )  # fmt: skip
    assert [r.ok for r in results] == [True, False, False]
    refreshed = nbformat.read(toys / "00-ok.ipynb", as_version=4)
    assert "papermill" not in refreshed.metadata and "widgets" not in refreshed.metadata
    assert [c.metadata.get("tags", []) for c in refreshed.cells if c.cell_type == "code"] == [
        ["parameters"], []
    ]
    assert all("papermill" not in c.metadata and "execution" not in c.metadata
               for c in refreshed.cells)  # fmt: skip
    assert refreshed.cells[-1].outputs[0].text == "PASSED 00: all good, backend embedded\n"
    assert (toys / "01-broken.ipynb").read_bytes() == broken_before
    assert not list((tmp_path / "scratch").glob(".refresh-00-ok.ipynb"))
