"""Shared fixtures: a real embedded mesh per test module, torn down (and proven gone) after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ROOT / "deployments"
NS = "istio-meshlab"


def start_mesh(home: Path, **options: object):
    from meshlab.embedded.client import EmbeddedMesh

    return EmbeddedMesh(home, owner=os.getpid(), **options)


def stop_mesh(mesh) -> None:
    mesh.down()
    left = mesh.processes()
    assert left == [], f"processes of the mesh survived `down`: {left}"


@pytest.fixture(scope="module")
def mesh_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("meshlab-home")


@pytest.fixture(scope="module")
def mesh(mesh_home: Path) -> Iterator[object]:
    """One embedded mesh for the whole module (starting Envoys per test would be slow)."""
    m = start_mesh(mesh_home)
    try:
        yield m
    finally:
        stop_mesh(m)


@pytest.fixture(scope="module")
def lesson_mesh(mesh) -> object:
    """The lesson's workloads deployed: namespace istio-meshlab (injection on), service-a,
    service-b-v1 and the legacy client (namespace legacy, no sidecar)."""
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.apply(DEPLOYMENTS / "service-a.yaml")
    mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
    mesh.apply(DEPLOYMENTS / "legacy-client.yaml")
    return mesh
