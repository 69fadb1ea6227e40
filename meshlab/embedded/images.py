"""Container images the embedded mesh can run, and how it runs each one locally.

On a real cluster the manifests' images are pulled (or loaded into kind by
``meshlab images build --kind``). The embedded mesh has no container runtime: this table is
the one place that maps an image to a local command. The tag is ignored.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from meshlab.errors import NotSupportedError


@dataclass(frozen=True)
class LocalImage:
    repository: str
    kind: str  # "uvicorn": a FastAPI app from services/; "command": run the container command
    app_dir: str = ""  # services/<app_dir>
    description: str = ""


IMAGES: dict[str, LocalImage] = {
    "istio-meshlab/service-a": LocalImage(
        "istio-meshlab/service-a", "uvicorn", "service_a", "Service A (FastAPI)"
    ),
    "istio-meshlab/service-b-v1": LocalImage(
        "istio-meshlab/service-b-v1", "uvicorn", "service_b_v1", "Service B v1 (FastAPI)"
    ),
    "curlimages/curl": LocalImage(
        "curlimages/curl", "command", description="a client that sleeps; calls are sent for it"
    ),
}

# Commands a "command" image may run locally: the idle process of a client pod.
ALLOWED_COMMANDS = {"sleep", "/bin/sleep", "/usr/bin/sleep"}


def repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "localhost/", "localhost:5000/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def services_dir() -> Path:
    spec = importlib.util.find_spec("services")
    if spec is None or not spec.submodule_search_locations:
        raise NotSupportedError("the services package is not installed next to meshlab")
    return Path(next(iter(spec.submodule_search_locations)))


def command_for(
    image: str, container_command: list[str], container_args: list[str], host: str, port: int
) -> list[str]:
    """The argv that runs ``image`` as a pod process on ``host:port``."""
    local = IMAGES.get(repository(image))
    if local is None:
        known = ", ".join(sorted(IMAGES))
        raise NotSupportedError(
            f"image {image!r} is not available in the embedded mesh (it runs only: {known}); "
            "use the kubernetes backend for other images"
        )
    if local.kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "app:app",
            "--app-dir", str(services_dir() / local.app_dir),
            "--host", host, "--port", str(port),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    argv = list(container_command) + list(container_args)
    if not argv or argv[0] not in ALLOWED_COMMANDS:
        raise NotSupportedError(
            f"image {image!r}: the embedded mesh runs this image only with a sleep command "
            f"(got {argv or 'none'}); requests are sent for the pod with `meshlab call`"
        )
    binary = shutil.which("sleep") or "/bin/sleep"
    return [binary, *argv[1:]]
