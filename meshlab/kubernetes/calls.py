"""``call --from WORKLOAD`` on a cluster: the command run in the workload's container, and
how its output becomes a ``CallResult``.

Client images carry curl (the legacy client is ``curlimages/curl``); the services' images
carry Python. Both print the same thing, so one parser reads either:

    <headers, as curl -D - prints them><blank line><body><MARKER> <http_code> <time_total>

with curl's own failure text on stderr (``curl: (56) Recv failure: ...``) and curl's exit
code (the Python one-liner exits with the code curl would have used).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

# Exit code -> the words the embedded backend uses (meshlab.api.CURL_EXIT, reversed).
CURL_ERRORS = {
    7: "connection refused",
    28: "timed out",
    35: "tls error",
    52: "empty reply from server",
    56: "connection reset by peer",
}
ERROR_LINE = re.compile(r"\((\d+)\)\s*(.*)")

# Runs with any Python 3 in the container; argv: method url timeout marker [header...].
# Traffic goes where the app's would (through the sidecar's iptables capture when there
# is one), never through an HTTP proxy.
PYTHON_CALL = r"""
import http.client, socket, sys, time, urllib.error, urllib.request
method, url, timeout, marker = sys.argv[1:5]
headers = {}
for line in sys.argv[5:]:
    name, _, value = line.partition(":")
    headers[name.strip()] = value.strip()
out = sys.stdout.buffer
start = time.monotonic()
def finish(code):
    out.write(("%s %03d %.6f\n" % (marker, code, time.monotonic() - start)).encode())
    out.flush()
def fail(code, text):
    finish(0)
    sys.stderr.write("curl: (%d) %s\n" % (code, text))
    sys.exit(code)
def failure(err):
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        return 6, "Could not resolve host: %s" % urllib.request.urlparse(url).hostname
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return 28, "Operation timed out"
    if isinstance(reason, http.client.RemoteDisconnected):
        return 52, "Empty reply from server"
    if isinstance(reason, ConnectionRefusedError):
        return 7, "Failed to connect: Connection refused"
    if isinstance(reason, ConnectionResetError):
        return 56, "Recv failure: Connection reset by peer"
    return 56, "Recv failure: %s" % (reason,)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
request = urllib.request.Request(url, method=method, headers=headers)
try:
    try:
        response = opener.open(request, timeout=float(timeout))
    except urllib.error.HTTPError as err:
        response = err
    body = response.read()
except Exception as err:
    fail(*failure(err))
head = "HTTP/1.1 %d %s\r\n" % (response.getcode(), response.reason)
head += "".join("%s: %s\r\n" % item for item in response.headers.items()) + "\r\n"
out.write(head.encode("latin-1", "replace") + body)
finish(response.getcode())
"""


@dataclass
class CallOutput:
    status: int | None
    error: str | None = None
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def new_marker() -> str:
    return f"__meshlab_{secrets.token_hex(8)}__"


def curl_argv(
    method: str, url: str, headers: dict[str, str] | None, timeout: float, marker: str
) -> list[str]:
    """curl printing headers, body and then ``MARKER code seconds`` on stdout."""
    argv = ["curl", "-sS", "-D", "-", "--max-time", f"{timeout:g}"]
    if method.upper() == "HEAD":
        argv.append("--head")
    elif method.upper() != "GET":
        argv += ["-X", method.upper()]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["-w", f"{marker} %{{http_code}} %{{time_total}}\\n", url]
    return argv


def python_argv(
    method: str,
    url: str,
    headers: dict[str, str] | None,
    timeout: float,
    marker: str,
    python: str = "python3",
) -> list[str]:
    """The same request with the container's Python (service images have no curl)."""
    extra = [f"{name}: {value}" for name, value in (headers or {}).items()]
    return [python, "-c", PYTHON_CALL, method.upper(), url, f"{timeout:g}", marker, *extra]


def curl_error(exit_code: int | None, stderr: str) -> str:
    """curl's failure in the embedded backend's words (``connection reset by peer``...)."""
    match = None
    for line in reversed(stderr.strip().splitlines()):
        match = ERROR_LINE.search(line)
        if match:
            break
    code = exit_code if exit_code else int(match.group(1)) if match else None
    detail = match.group(2).strip() if match else stderr.strip()
    if code == 6:
        host = detail.split(":", 1)[1].strip() if ":" in detail else detail
        return f"could not resolve host: {host}"
    if code in CURL_ERRORS:
        return CURL_ERRORS[code]
    if detail:  # curl's sentence, in the lower case the other messages use ("URL" stays)
        return detail[:1].lower() + detail[1:] if detail[1:2].islower() else detail
    return f"request failed (exit code {code})"


def _split_head(data: bytes) -> tuple[dict[str, str], bytes]:
    """Strip the header block(s) curl -D - printed (1xx interim responses included)."""
    headers: dict[str, str] = {}
    rest = data
    while rest.startswith(b"HTTP/"):
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        block, rest = rest[:end], rest[end + 4 :]
        status_line, *lines = block.decode("latin-1").split("\r\n")
        parts = status_line.split()
        interim = len(parts) > 1 and parts[1].startswith("1")
        if interim:
            continue
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        break
    return headers, rest


def parse_call(stdout: bytes, stderr: bytes, exit_code: int | None, marker: str) -> CallOutput:
    """Read what ``curl_argv`` / ``python_argv`` printed."""
    err_text = stderr.decode("utf-8", "replace")
    cut = stdout.rfind(marker.encode())
    if cut < 0:
        return CallOutput(None, curl_error(exit_code, err_text) if exit_code or err_text
                          else "no output from the request command")  # fmt: skip
    tail = stdout[cut + len(marker) :].decode("ascii", "replace").split()
    head = stdout[:cut]
    code = int(tail[0]) if tail and tail[0].isdigit() else 0
    elapsed = float(tail[1]) if len(tail) > 1 and _is_float(tail[1]) else 0.0
    if code == 0 or exit_code not in (0, None):
        return CallOutput(None, curl_error(exit_code, err_text), elapsed=elapsed)
    headers, body = _split_head(head)
    return CallOutput(code, None, body.decode("utf-8", "replace"), headers, elapsed)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
