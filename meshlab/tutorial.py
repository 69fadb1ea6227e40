"""``make tutorial``: run every lesson headless with papermill and print a summary per lesson.

    python -m meshlab.tutorial                 # all lessons -> build/notebooks/, summary
    python -m meshlab.tutorial --only 03       # one lesson (repeat or comma-separate)
    python -m meshlab.tutorial --in-place      # refresh the committed outputs (make notebooks)

Lessons run in order against one mesh, in a state folder of their own
(``build/notebooks/.meshlab`` unless ``--home``), so a lab you have open elsewhere is not
touched. With the embedded backend this process owns the mesh while the lessons run and
stops it at the end. Each lesson ends with a cell that asserts what it showed and prints a
``PASSED ...`` line; that line is the summary. The exit status is 1 if any lesson failed.

``--in-place`` executes each notebook into ``build/`` first and writes it back only when it
passed, without papermill's timing metadata or widget state, so committed outputs change
only when what they show changes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build" / "notebooks"
LESSON_PATTERN = "[0-9][0-9]-*.ipynb"
KERNEL = "python3"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 180  # seconds; a cell that hangs fails the lesson instead of the run


@dataclass
class LessonRun:
    """One executed lesson: ``ok``, how long it took, what its last cell printed."""

    name: str
    title: str
    seconds: float
    ok: bool
    shown: list[str] = field(default_factory=list)
    error: str = ""
    output: Path | None = None


def find_lessons(folder: Path = NOTEBOOKS, only: Sequence[str] = ()) -> list[Path]:
    """The numbered notebooks, in order; ``only`` keeps those whose number or name matches."""
    lessons = sorted(folder.glob(LESSON_PATTERN))
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    if wanted:
        lessons = [p for p in lessons if any(p.name.startswith(w) or p.stem == w for w in wanted)]
        if not lessons:
            known = ", ".join(p.stem for p in sorted(folder.glob(LESSON_PATTERN)))
            raise SystemExit(f"no lesson matches {', '.join(wanted)} (lessons: {known})")
    return lessons


def title_of(notebook: Any) -> str:
    """The first Markdown heading of a notebook, without its ``#``s."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return ""


def shown_lines(notebook: Any) -> list[str]:
    """``PASSED ...`` lines printed by the notebook's code cells (the last cell's, usually)."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines += [
                    line.removeprefix("PASSED ").strip()
                    for line in output.get("text", "").splitlines()
                    if line.startswith("PASSED ")
                ]
    return lines


def clean_for_commit(notebook: Any) -> Any:
    """Drop what changes on every run but shows nothing: papermill's timings and paths,
    widget state and views, the cell papermill injects for parameters."""
    notebook.metadata.pop("papermill", None)
    notebook.metadata.pop("widgets", None)
    notebook.cells = [
        c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])
    ]
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in map(_without_widget_view, cell.outputs) if o is not None]
    return notebook


def _without_widget_view(output: Any) -> Any:
    """A widget's output without its view (a random model id that no saved state backs);
    its text/plain form stays."""
    data = output.get("data")
    if not data or WIDGET_VIEW not in data:
        return output
    data.pop(WIDGET_VIEW)
    return output if data else None


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (the kernels inherit them) for the duration."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(
    path: Path,
    output: Path,
    *,
    backend: str = "embedded",
    inject: bool = True,
    kernel: str = KERNEL,
    cwd: Path | None = None,
    timeout: int = CELL_TIMEOUT,
) -> LessonRun:
    """Execute one notebook with papermill into ``output``; never raises for a failing
    lesson (the result says what failed)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    logging.getLogger("papermill").setLevel(logging.WARNING)
    output.parent.mkdir(parents=True, exist_ok=True)
    title = title_of(nbformat.read(path, as_version=4))
    started = time.monotonic()
    error = ""
    try:
        papermill.execute_notebook(
            str(path),
            str(output),
            parameters={"backend": backend} if inject else None,
            kernel_name=kernel,
            cwd=str(cwd or path.parent),
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue} (cell [{err.exec_count}])"
    except Exception as err:  # kernel died, timeout, unreadable notebook...
        error = f"{type(err).__name__}: {err}"
    seconds = time.monotonic() - started
    shown: list[str] = []
    if output.exists():
        with contextlib.suppress(Exception):
            shown = shown_lines(nbformat.read(output, as_version=4))
    ok = not error and bool(shown)
    if not error and not shown:
        error = "the lesson ran but printed no PASSED line (its checks did not run)"
    return LessonRun(path.stem, title, seconds, ok, shown, error, output)


@contextlib.contextmanager
def _kernel_stderr(log: Path) -> Iterator[None]:
    """Send what kernels print on stderr (they inherit this process's fd 2: ipykernel's
    transport warnings, say) to a log file instead of the summary."""
    sys.stderr.flush()
    saved = os.dup(2)
    with log.open("ab") as handle:
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _own_mesh(backend: str, home: Path) -> Any:
    """Start a fresh embedded mesh owned by this process (kernels attach to it)."""
    if backend != "embedded":
        return None
    from meshlab.embedded.client import EmbeddedMesh

    EmbeddedMesh(home, start=False).down()
    return EmbeddedMesh(home, owner=os.getpid())


def run(
    lessons: Sequence[Path],
    *,
    output_dir: Path = BUILD,
    in_place: bool = False,
    backend: str = "embedded",
    home: Path | None = None,
    kernel: str = KERNEL,
    timeout: int = CELL_TIMEOUT,
    report: Callable[[LessonRun], None] | None = None,
) -> list[LessonRun]:
    """Run ``lessons`` in order against one mesh in ``home`` (default OUTPUT/.meshlab),
    writing executed copies to ``output_dir``. ``in_place`` rewrites the lessons themselves
    instead, only those that pass, cleaned for committing."""
    import nbformat

    build = Path(output_dir)
    build.mkdir(parents=True, exist_ok=True)
    home = Path(home or build / ".meshlab").resolve()
    home.mkdir(parents=True, exist_ok=True)
    results = []
    with (
        _environment(MESHLAB_HOME=str(home), MESHLAB_BACKEND=backend),
        _kernel_stderr(build / "kernels.log"),
    ):
        mesh = _own_mesh(backend, home)
        try:
            for path in lessons:
                output = build / (f".refresh-{path.name}" if in_place else path.name)
                inject = not (in_place and backend == "embedded")
                result = execute(path, output, backend=backend, inject=inject, kernel=kernel,
                                 cwd=path.parent, timeout=timeout)  # fmt: skip
                if in_place and result.ok:
                    notebook = clean_for_commit(nbformat.read(output, as_version=4))
                    nbformat.write(notebook, path)
                    output.unlink()
                    result.output = path
                results.append(result)
                if report:
                    report(result)
        finally:
            if mesh is not None:
                mesh.down()
    return results


def _line(result: LessonRun) -> str:
    mark = "PASS" if result.ok else "FAIL"
    return f"  {mark}  {result.title[:56]:<56} {result.seconds:5.1f} s"


def _details(result: LessonRun) -> list[str]:
    if result.ok:
        return [f"        {line}" for line in result.shown]
    lines = [f"        {result.error}"]
    if result.output is not None:
        lines.append(f"        executed notebook: {_relative(result.output)}")
    return lines


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshlab.tutorial",
        description="Run the MeshLab lessons headless (papermill) and summarise each one.",
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="refresh the committed outputs of the notebooks themselves",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NN",
        help="run only these lessons (number or name; repeat or comma-separate)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("MESHLAB_BACKEND", "embedded"),
        choices=["embedded", "kubernetes"],
    )
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=NOTEBOOKS,
        help=f"folder of the lessons (default {_relative(NOTEBOOKS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=BUILD,
        help=f"where executed copies go (default {_relative(BUILD)}; with "
        "--in-place, scratch copies)",
    )
    parser.add_argument(
        "--home", type=Path, help="state folder of the mesh (default OUTPUT/.meshlab)"
    )
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel (default python3)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=CELL_TIMEOUT,
        help="seconds a cell may run before the lesson fails",
    )
    args = parser.parse_args(argv)

    lessons = find_lessons(args.notebooks, args.only)
    if not lessons:
        print(f"no lessons in {args.notebooks}", file=sys.stderr)
        return 1
    target = "in place" if args.in_place else f"into {_relative(args.output)}"
    print(
        f"Running {len(lessons)} lesson{'s' if len(lessons) != 1 else ''} ({args.backend} "
        f"backend) {target}"
    )
    started = time.monotonic()

    def report(result: LessonRun) -> None:
        print(_line(result))
        for line in _details(result):
            print(line)
        sys.stdout.flush()

    results = run(
        lessons,
        output_dir=args.output,
        in_place=args.in_place,
        backend=args.backend,
        home=args.home,
        kernel=args.kernel,
        timeout=args.timeout,
        report=report,
    )
    failed = [r for r in results if not r.ok]
    total = time.monotonic() - started
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {total:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
