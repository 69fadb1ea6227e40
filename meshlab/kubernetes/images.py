"""``meshlab images build``: the services' container images, tagged as the manifests expect,
optionally loaded into a kind cluster (whose nodes cannot pull ``istio-meshlab/*`` from any
registry: these images exist only where they were built)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from meshlab.errors import MeshlabError

# image the manifests reference -> folder under services/ with its Dockerfile
IMAGES = {
    "istio-meshlab/service-a:0.1.0": "service_a",
    "istio-meshlab/service-b-v1:0.1.0": "service_b_v1",
}
TOOLS = ("docker", "podman")
INSTALL = {
    "docker": "install Docker (https://docs.docker.com/get-docker/) or use --tool podman",
    "podman": "install Podman (https://podman.io/docs/installation) or use --tool docker",
    "kind": "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
}


class ImageError(MeshlabError):
    """Images cannot be built or loaded: a tool is missing or failed."""


def services_dir() -> Path:
    from meshlab.embedded.images import services_dir as find

    return find()


def image_name(image: str, tool: str) -> str:
    """The name to build under. Podman would call an unqualified name ``localhost/...``;
    fully qualified, it matches what the cluster resolves the manifests' name to."""
    return f"docker.io/{image}" if tool == "podman" else image


def build_plan(
    tool: str, kind_cluster: str | None, services: Path, archive: str = "images.tar"
) -> list[list[str]]:
    """The commands, in order: one build per image, then the load into kind."""
    if tool not in TOOLS:
        raise ImageError(f"unknown tool {tool!r}: expected one of {', '.join(TOOLS)}")
    names = [image_name(image, tool) for image in IMAGES]
    plan = [
        [tool, "build", "-t", name, str(services / folder)]
        for name, folder in zip(names, IMAGES.values(), strict=True)
    ]
    if kind_cluster:
        if tool == "docker":
            plan.append(["kind", "load", "docker-image", *names, "--name", kind_cluster])
        else:
            plan.append([tool, "save", "-o", archive, *names])
            plan.append(["kind", "load", "image-archive", archive, "--name", kind_cluster])
    return plan


def check_tools(tool: str, kind_cluster: str | None) -> None:
    """Every program the plan needs is on PATH, else one error naming all that are missing."""
    needed = [tool] + (["kind"] if kind_cluster else [])
    missing = [name for name in needed if shutil.which(name) is None]
    if missing:
        lines = [f"`{name}` was not found on PATH: {INSTALL.get(name, 'install it')}"
                 for name in missing]  # fmt: skip
        raise ImageError(
            "cannot build MeshLab's images:\n" + "\n".join(f"  - {line}" for line in lines)
        )


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def check_daemon(tool: str) -> None:
    result = _run([tool, "info", "--format", "{{.ServerVersion}}"] if tool == "docker"
                  else [tool, "info"])  # fmt: skip
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ImageError(
            f"{tool} is installed but cannot reach its engine"
            + (f": {detail[-1]}" if detail else "")
            + (" (is the Docker daemon running?)" if tool == "docker" else "")
        )


def kind_env(tool: str) -> dict[str, str]:
    env = dict(os.environ)
    if tool == "podman":
        env["KIND_EXPERIMENTAL_PROVIDER"] = "podman"
    return env


def check_kind_cluster(name: str, tool: str) -> None:
    result = _run(["kind", "get", "clusters"], env=kind_env(tool))
    clusters = result.stdout.split()
    if result.returncode != 0 or name not in clusters:
        known = ", ".join(clusters) if clusters else "none"
        raise ImageError(
            f"there is no kind cluster named {name!r} (kind get clusters: {known}); create it "
            f"with `kind create cluster --name {name}` (see docs/real-cluster.md)"
        )


def build(
    kind_cluster: str | None = None,
    tool: str = "docker",
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Build the images (and load them into kind cluster ``kind_cluster``); returns their names.

    Every precondition is checked before the first build, so nothing half-happens because
    ``kind`` is missing.
    """
    if tool not in TOOLS:
        raise ImageError(f"unknown tool {tool!r}: expected one of {', '.join(TOOLS)}")
    check_tools(tool, kind_cluster)
    check_daemon(tool)
    if kind_cluster:
        check_kind_cluster(kind_cluster, tool)
    services = services_dir()
    with tempfile.TemporaryDirectory(prefix="meshlab-images-") as folder:
        plan = build_plan(tool, kind_cluster, services, str(Path(folder) / "images.tar"))
        for argv in plan:
            echo("$ " + " ".join(argv))
            env = kind_env(tool) if argv[0] == "kind" else None
            done = subprocess.run(argv, env=env, check=False)
            if done.returncode != 0:
                raise ImageError(f"`{' '.join(argv)}` failed (exit code {done.returncode})")
    return [image_name(image, tool) for image in IMAGES]
