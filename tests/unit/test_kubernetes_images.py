"""``meshlab images build``: the commands it would run, and its errors when tools are missing
(kind is not installed on this machine, and docker has no daemon here)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from meshlab.kubernetes.cli import register_cli
from meshlab.kubernetes.images import IMAGES, ImageError, build, build_plan, services_dir
from meshlab.resources import load

ROOT = Path(__file__).resolve().parents[2]


def test_images_are_the_ones_the_manifests_reference() -> None:
    referenced = {
        c["image"]
        for r in load(ROOT / "deployments")
        if r.kind == "Deployment"
        for c in r.body["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("istio-meshlab/")
    }
    assert referenced == set(IMAGES)
    for folder in IMAGES.values():
        assert (services_dir() / folder / "Dockerfile").is_file()


def test_docker_plan_builds_then_loads_into_kind() -> None:
    services = Path("/src/services")
    assert build_plan("docker", "meshlab", services) == [
        ["docker", "build", "-t", "istio-meshlab/service-a:0.1.0", "/src/services/service_a"],
        ["docker", "build", "-t", "istio-meshlab/service-b-v1:0.1.0", "/src/services/service_b_v1"],
        [
            "kind",
            "load",
            "docker-image",
            "istio-meshlab/service-a:0.1.0",
            "istio-meshlab/service-b-v1:0.1.0",
            "--name",
            "meshlab",
        ],
    ]
    assert len(build_plan("docker", None, services)) == 2


def test_podman_plan_uses_qualified_names_and_an_archive() -> None:
    plan = build_plan("podman", "meshlab", Path("/s"), archive="/tmp/x/images.tar")
    assert plan[0][:4] == ["podman", "build", "-t", "docker.io/istio-meshlab/service-a:0.1.0"]
    assert plan[2] == [
        "podman",
        "save",
        "-o",
        "/tmp/x/images.tar",
        "docker.io/istio-meshlab/service-a:0.1.0",
        "docker.io/istio-meshlab/service-b-v1:0.1.0",
    ]
    assert plan[3] == ["kind", "load", "image-archive", "/tmp/x/images.tar", "--name", "meshlab"]


def test_every_missing_tool_is_named_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no docker, no kind
    with pytest.raises(ImageError) as err:
        build(kind_cluster="meshlab", tool="docker")
    text = str(err.value)
    assert "`docker` was not found on PATH" in text and "--tool podman" in text
    assert "`kind` was not found on PATH" in text and "kind.sigs.k8s.io" in text
    with pytest.raises(ImageError, match="`podman` was not found on PATH"):
        build(tool="podman")


@pytest.mark.skipif(shutil.which("kind") is not None, reason="kind is installed here")
def test_kind_missing_on_this_machine() -> None:
    with pytest.raises(ImageError) as err:
        build(kind_cluster="meshlab", tool="docker")
    assert "`kind` was not found on PATH" in str(err.value)
    assert ("`docker` was not found" in str(err.value)) == (shutil.which("docker") is None)


def _docker_daemon_down() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    return done.returncode != 0


@pytest.mark.skipif(not _docker_daemon_down(), reason="needs a docker CLI without a daemon")
def test_docker_without_daemon() -> None:
    with pytest.raises(ImageError) as err:
        build(tool="docker")
    assert str(err.value).startswith("docker is installed but cannot reach its engine")
    assert "is the Docker daemon running?" in str(err.value)


def test_unknown_tool() -> None:
    with pytest.raises(ImageError, match="unknown tool 'nerdctl'"):
        build(tool="nerdctl")


def test_cli_registration() -> None:
    parser = argparse.ArgumentParser(prog="meshlab")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "build", "--kind", "meshlab", "--tool", "podman"])
    assert (args.kind, args.tool) == ("meshlab", "podman")
    assert args.func.__name__ == "cmd_images_build"
    defaults = parser.parse_args(["images", "build"])
    assert (defaults.kind, defaults.tool) == (None, "docker")
    with pytest.raises(SystemExit):
        parser.parse_args(["images", "build", "--tool", "nerdctl"])
    bare = parser.parse_args(["images"])
    assert bare.func(bare) == 2


def test_cli_reports_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    parser = argparse.ArgumentParser(prog="meshlab")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "build", "--kind", "meshlab"])
    with pytest.raises(ImageError, match="`kind` was not found"):
        args.func(args)
