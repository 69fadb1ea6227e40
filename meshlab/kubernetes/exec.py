"""Run a command in a pod's container, like ``kubectl exec`` (the apiserver's websocket).

``run`` returns stdout and stderr as bytes and the exit code; ``exec_status`` (pure) reads
the status the apiserver sends on the error channel when the command ends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from meshlab.errors import ClusterError, MeshTimeoutError
from meshlab.kubernetes.connection import Api

STDOUT, STDERR, ERROR = 1, 2, 3
NOT_FOUND = 127  # the shell's code for "command not found"


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int | None  # None: the command could not be started (see ``message``)
    message: str = ""

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def exec_status(raw: bytes | str) -> tuple[int | None, str]:
    """(exit code, message) from the error channel's ``Status``.

    ``Success`` -> 0; ``NonZeroExitCode`` -> the ``ExitCode`` cause; a command that could not
    start (no such executable) -> ``127``; anything else -> None with the message.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not text.strip():
        return None, "the exec session ended without a status"
    try:
        status = json.loads(text)
    except ValueError:
        try:
            status = yaml.safe_load(text)
        except yaml.YAMLError:
            return None, text.strip()
    if not isinstance(status, dict):
        return None, text.strip()
    if status.get("status") == "Success":
        return 0, ""
    message = str(status.get("message") or "")
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message")), message
            except (TypeError, ValueError):
                break
    lowered = message.lower()
    if "executable file not found" in lowered or "no such file or directory" in lowered:
        return NOT_FOUND, message
    return None, message


def run(
    api: Api,
    namespace: str,
    pod: str,
    container: str,
    argv: list[str],
    timeout: float = 30.0,
) -> ExecResult:
    """Run ``argv`` (no shell) in the container; raises ``ClusterError`` when the apiserver
    refuses the exec (RBAC, no such container) and ``MeshTimeoutError`` after ``timeout``."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream

    core = CoreV1Api(api.client)
    try:
        session: Any = stream(
            core.connect_get_namespaced_pod_exec, pod, namespace, command=argv,
            container=container, stderr=True, stdin=False, stdout=True, tty=False,
            _preload_content=False, binary=True,
        )  # fmt: skip
    except ApiException as err:
        code, detail = handshake_failure(err.reason or str(err))
        hint = (
            "; the kubernetes backend needs the pods/exec permission "
            "(kubectl auth can-i create pods/exec)"
            if code == 403
            else ""
        )
        raise ClusterError(
            f"cannot exec into {namespace}/{pod} (container {container}): {detail}{hint}"
        ) from None
    try:
        session.run_forever(timeout=timeout)
        if session.is_open():
            raise MeshTimeoutError(
                f"`{' '.join(argv[:3])} ...` in {namespace}/{pod} ({container}) did not finish "
                f"within {timeout:.0f} s"
            )
        out = session.read_channel(STDOUT) or b""
        err = session.read_channel(STDERR) or b""
        code, message = exec_status(session.read_channel(ERROR) or b"")
    finally:
        session.close()
    return ExecResult(_bytes(out), _bytes(err), code, message)


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def handshake_failure(text: str) -> tuple[int | None, str]:
    """(HTTP status, message) from the websocket client's failed-handshake text, which holds
    the status line, the headers and the apiserver's ``Status`` body."""
    status = re.search(r"Handshake status (\d{3})\s*([A-Za-z ]*)", text)
    message = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    code = int(status.group(1)) if status else None
    parts = []
    if status:
        parts.append(f"{status.group(1)} {status.group(2).strip()}".strip())
    if message:
        try:
            parts.append(json.loads(f'"{message.group(1)}"'))
        except ValueError:
            parts.append(message.group(1))
    if not parts:
        lines = text.strip().splitlines()
        parts.append(lines[0][:300] if lines else "the exec request was refused")
    return code, ": ".join(parts)
