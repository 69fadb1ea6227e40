"""kubernetes backend, ``call``: the command run in the pod and how its output is read.

Exec itself (a websocket to the apiserver) is not faked. Instead the very commands the
backend would run in the container are run here, against local servers that answer, reset,
stall, close or refuse, and their output goes through the same parser. The parser must
give the embedded backend's words ("connection reset by peer", ...).
"""

from __future__ import annotations

import http.server
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshlab.api import CallResult
from meshlab.errors import ClusterError
from meshlab.kubernetes import KubernetesMesh
from meshlab.kubernetes.calls import curl_argv, curl_error, new_marker, parse_call, python_argv
from meshlab.kubernetes.exec import NOT_FOUND, exec_status, handshake_failure
from tests.unit.fake_apiserver import FakeApiServer, pod

HAS_CURL = shutil.which("curl") is not None


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path} x-test={self.headers.get('X-Test')}".encode()
        self.send_response(418 if self.path == "/teapot" else 200)
        self.send_header("X-Reply", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_DELETE = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hello() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def raw_server(behaviour: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server that reads the request, then does ``behaviour`` to the connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(65536)
            behaviour(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()


def reset(conn: socket.socket) -> None:  # what a STRICT sidecar does to plaintext
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def close(conn: socket.socket) -> None:
    conn.close()


held: list[socket.socket] = []


def stall(conn: socket.socket) -> None:
    held.append(conn)  # never answer


@pytest.fixture(scope="module")
def resetting() -> Iterator[int]:
    yield from raw_server(reset)


@pytest.fixture(scope="module")
def closing() -> Iterator[int]:
    yield from raw_server(close)


@pytest.fixture(scope="module")
def stalling() -> Iterator[int]:
    yield from raw_server(stall)


@pytest.fixture(scope="module")
def refused() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(
    tool: str,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 3,
) -> CallResult:
    marker = new_marker()
    if tool == "curl":
        argv = curl_argv(method, url, headers, timeout, marker)
    else:
        argv = python_argv(method, url, headers, timeout, marker, python=sys.executable)
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 10)
    out = parse_call(done.stdout, done.stderr, done.returncode, marker)
    result = CallResult(out.status, out.error, out.body, out.headers, out.elapsed)
    if result.status is None:
        assert done.returncode == result.curl_exit_code, (done.returncode, done.stderr)
    return result


TOOLS = [
    pytest.param("curl", marks=pytest.mark.skipif(not HAS_CURL, reason="curl not installed")),
    "python",
]


@pytest.mark.parametrize("tool", TOOLS)
def test_response_status_headers_and_body(tool: str, hello: int) -> None:
    result = send(tool, f"http://127.0.0.1:{hello}/hi", headers={"X-Test": "1"})
    assert result.status == 200 and result.error is None
    assert result.body == "hello /hi x-test=1"
    assert result.headers["x-reply"] == "yes"
    assert result.headers["content-length"] == str(len(result.body))
    assert 0 < result.elapsed < 3


@pytest.mark.parametrize("tool", TOOLS)
def test_error_status_is_a_response(tool: str, hello: int) -> None:
    result = send(tool, f"http://127.0.0.1:{hello}/teapot")
    assert result.status == 418 and result.body == "hello /teapot x-test=None"


@pytest.mark.parametrize("tool", TOOLS)
def test_other_methods(tool: str, hello: int) -> None:
    result = send(tool, f"http://127.0.0.1:{hello}/thing", method="DELETE")
    assert result.status == 200 and result.body.startswith("hello /thing")


@pytest.mark.parametrize("tool", TOOLS)
def test_reset_is_exit_56(tool: str, resetting: int) -> None:
    result = send(tool, f"http://127.0.0.1:{resetting}/hello")
    assert result.status is None and result.code == "000"
    assert result.error == "connection reset by peer"
    assert result.curl_exit_code == 56


@pytest.mark.parametrize("tool", TOOLS)
def test_refused_is_exit_7(tool: str, refused: int) -> None:
    result = send(tool, f"http://127.0.0.1:{refused}/")
    assert result.error == "connection refused" and result.curl_exit_code == 7


@pytest.mark.parametrize("tool", TOOLS)
def test_unknown_host_is_exit_6(tool: str) -> None:
    result = send(tool, "http://service-c.invalid:8080/hello")
    assert result.error == "could not resolve host: service-c.invalid"
    assert result.curl_exit_code == 6


@pytest.mark.parametrize("tool", TOOLS)
def test_no_answer_is_exit_28(tool: str, stalling: int) -> None:
    result = send(tool, f"http://127.0.0.1:{stalling}/", timeout=1)
    assert result.error == "timed out" and result.curl_exit_code == 28


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_without_answer_is_exit_52(tool: str, closing: int) -> None:
    result = send(tool, f"http://127.0.0.1:{closing}/")
    assert result.error == "empty reply from server" and result.curl_exit_code == 52


# ---- pure pieces --------------------------------------------------------------------------
def test_curl_argv() -> None:
    argv = curl_argv("post", "http://service-b-v1:8080/hello", {"X-A": "b c"}, 5.0, "__m__")
    assert argv == [
        "curl",
        "-sS",
        "-D",
        "-",
        "--max-time",
        "5",
        "-X",
        "POST",
        "-H",
        "X-A: b c",
        "-w",
        "__m__ %{http_code} %{time_total}\\n",
        "http://service-b-v1:8080/hello",
    ]
    assert "--head" in curl_argv("HEAD", "http://x/", None, 1, "m")
    assert "-X" not in curl_argv("GET", "http://x/", None, 1, "m")


def test_python_argv_passes_the_request_as_arguments() -> None:
    argv = python_argv("GET", "http://localhost:8080/healthz", {"A": "1"}, 2.5, "__m__")
    assert argv[:2] == ["python3", "-c"]
    assert argv[3:] == ["GET", "http://localhost:8080/healthz", "2.5", "__m__", "A: 1"]


def test_interim_responses_are_skipped() -> None:
    out = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-Id: 7\r\n\r\nmade__m__ 201 0.010\n"
    )
    parsed = parse_call(out, b"", 0, "__m__")
    assert (parsed.status, parsed.headers, parsed.body, parsed.elapsed) == (
        201,
        {"x-id": "7"},
        "made",
        0.01,
    )


def test_a_body_that_looks_like_the_marker_format_is_kept() -> None:
    marker = new_marker()
    body = b"__meshlab_0000000000000000__ 200 1.0\nreal body"
    out = b"HTTP/1.1 200 OK\r\n\r\n" + body + f"{marker} 200 0.5\n".encode()
    assert parse_call(out, b"", 0, marker).body == body.decode()


def test_curl_errors_in_the_embedded_backends_words() -> None:
    assert curl_error(56, "curl: (56) Recv failure: Connection reset by peer") == (
        "connection reset by peer"
    )
    assert curl_error(6, "curl: (6) Could not resolve host: service-b") == (
        "could not resolve host: service-b"
    )
    assert curl_error(7, "") == "connection refused"
    assert curl_error(28, "curl: (28) Operation timed out after 5001 milliseconds") == "timed out"
    assert curl_error(35, "curl: (35) OpenSSL SSL_connect: error") == "tls error"
    assert curl_error(3, "curl: (3) URL using bad/illegal format") == "URL using bad/illegal format"
    assert curl_error(47, "curl: (47) Maximum (50) redirects followed") == (
        "maximum (50) redirects followed"
    )


def test_no_output_at_all() -> None:
    parsed = parse_call(b"", b"", None, "__m__")
    assert parsed.status is None and parsed.error == "no output from the request command"


def test_exec_status_from_the_error_channel() -> None:
    assert exec_status('{"metadata":{},"status":"Success"}') == (0, "")
    failure = (
        '{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit '
        'code: error executing command [curl ...], exit code 56","reason":"NonZeroExitCode",'
        '"details":{"causes":[{"reason":"ExitCode","message":"56"}]}}'
    )
    assert exec_status(failure)[0] == 56
    missing = (
        '{"metadata":{},"status":"Failure","message":"OCI runtime exec failed: exec failed: '
        'unable to start container process: exec: \\"python3\\": executable file not found in '
        '$PATH: unknown","reason":"InternalError"}'
    )
    code, message = exec_status(missing)
    assert code == NOT_FOUND and "python3" in message
    assert exec_status(b"") == (None, "the exec session ended without a status")


def test_handshake_failures_are_readable() -> None:
    text = (
        "Handshake status 403 Forbidden -+-+- {'content-type': 'application/json'} -+-+- "
        '{"kind":"Status","message":"pods \\"legacy-1\\" is forbidden: User \\"bob\\" cannot '
        'create resource \\"pods/exec\\"","reason":"Forbidden","code":403}'
    )
    assert handshake_failure(text) == (
        403,
        '403 Forbidden: pods "legacy-1" is forbidden: User "bob" cannot create resource '
        '"pods/exec"',
    )


# ---- what reaches the apiserver -------------------------------------------------------------
def test_call_execs_curl_in_the_legacy_client(tmp_path: Path) -> None:
    with FakeApiServer() as fake:
        fake.pods.append(
            pod(
                "legacy-client-5f7d9",
                "legacy",
                labels={"app": "legacy-client"},
                image="curlimages/curl:8.11.1",
            )
        )
        mesh = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
        with pytest.raises(ClusterError) as err:  # the fake refuses the websocket upgrade
            mesh.call("legacy-client", "http://service-b-v1.istio-meshlab:8080/hello", "legacy")
        assert "cannot exec into legacy/legacy-client-5f7d9 (container app): 400" in str(err.value)
        exec_request = fake.requests[-1]
        assert exec_request.path == "/api/v1/namespaces/legacy/pods/legacy-client-5f7d9/exec"
        params = exec_request.query.split("&")
        commands = [p.split("=", 1)[1] for p in params if p.startswith("command=")]
        assert commands[:2] == ["curl", "-sS"]
        assert "container=app" in params and "stdout=true" in params and "tty=false" in params


def test_https_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with FakeApiServer() as fake:
        mesh = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path))
        before = len(fake.requests)
        result = mesh.call("service-a", "https://service-b-v1:8080/hello")
        assert result.status is None and "unsupported scheme 'https'" in (result.error or "")
        assert len(fake.requests) == before
