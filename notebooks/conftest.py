"""`pytest --nbval notebooks/`: re-run the lessons and compare with their committed outputs.

The lessons run in order against one fresh embedded mesh in a temporary state folder (never
your lab's .meshlab/), owned by this pytest process. Outputs are compared after the
substitutions in tests/notebooks/nbval-sanitize.cfg (used unless --nbval-sanitize-with is
given). See docs/notebooks.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SANITIZE = Path(__file__).resolve().parent.parent / "tests" / "notebooks" / "nbval-sanitize.cfg"
_state: dict[str, object] = {}


def _nbval(config: pytest.Config) -> bool:
    option = config.option
    return bool(getattr(option, "nbval", False) or getattr(option, "nbval_lax", False))


def pytest_configure(config: pytest.Config) -> None:
    if _nbval(config) and not getattr(config.option, "nbval_sanitize_with", None):
        config.option.nbval_sanitize_with = str(SANITIZE)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _nbval(session.config):
        return
    home = Path(tempfile.mkdtemp(prefix="meshlab-nbval-"))
    _state["home"] = home
    _state["saved"] = {k: os.environ.get(k) for k in ("MESHLAB_HOME", "MESHLAB_BACKEND")}
    os.environ["MESHLAB_HOME"] = str(home)  # the kernels inherit it
    os.environ["MESHLAB_BACKEND"] = "embedded"
    from meshlab.embedded.client import EmbeddedMesh

    _state["mesh"] = EmbeddedMesh(home, owner=os.getpid())


def pytest_sessionfinish(session: pytest.Session) -> None:
    mesh = _state.pop("mesh", None)
    if mesh is not None:
        mesh.down()  # type: ignore[attr-defined]
    saved = _state.pop("saved", {})
    for key, value in saved.items():  # type: ignore[union-attr]
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    home = _state.pop("home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)  # type: ignore[arg-type]
