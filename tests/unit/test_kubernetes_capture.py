"""kubernetes backend, captures: the debug container's spec and scripts.

The scripts the ephemeral container runs are run here for real (POSIX sh + tcpdump, on
``lo`` instead of a pod's ``eth0``), and what they print is read by ``Capture.from_pcap``
exactly as the backend does. The request that adds the container is checked against the
fake apiserver."""

from __future__ import annotations

import http.server
import os
import shlex
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlab.capture import Capture
from meshlab.errors import ClusterError, NotFoundError
from meshlab.kubernetes import KubernetesMesh
from meshlab.kubernetes.capture import (
    DEFAULT_IMAGE,
    READY,
    Files,
    bpf_filter,
    capture_image,
    capture_script,
    ephemeral_container,
    stop_script,
)
from tests.unit.fake_apiserver import FakeApiServer, pod


def test_filter_keeps_the_port_and_drops_the_node() -> None:
    assert bpf_filter(8080) == "tcp port 8080"
    assert bpf_filter(8080, "172.18.0.2") == "tcp port 8080 and not host 172.18.0.2"


def test_image_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLAB_CAPTURE_IMAGE", raising=False)
    assert capture_image() == DEFAULT_IMAGE
    monkeypatch.setenv("MESHLAB_CAPTURE_IMAGE", "docker.io/corfr/tcpdump")
    assert capture_image() == "docker.io/corfr/tcpdump"
    assert capture_image("my/tcpdump:1") == "my/tcpdump:1"


def test_script_quotes_what_it_is_given() -> None:
    files = Files.under("/tmp/with space")
    script = capture_script("tcp port 8080", files, interface="eth0")
    assert "-w '/tmp/with space/meshlab-capture.pcap'" in script
    assert "'tcp port 8080'" in script
    assert "--immediate-mode" in script  # without it tcpdump loses the last packets on SIGINT
    assert " -p " in script  # no promiscuous mode: no NET_ADMIN needed


def test_debug_container_spec() -> None:
    spec = ephemeral_container("meshlab-capture-abc123", "nicolaka/netshoot:v0.13", "echo hi")
    assert spec["command"] == ["sh", "-c", "echo hi"]
    assert spec["securityContext"] == {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "capabilities": {"add": ["NET_RAW"]},
    }
    assert spec["imagePullPolicy"] == "IfNotPresent"


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hello() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.root
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("tcpdump"), reason="needs root and tcpdump"
)
def test_scripts_capture_real_traffic(hello: int, tmp_path: Path) -> None:
    files = Files.under(str(tmp_path))
    script = capture_script(bpf_filter(hello, "127.0.0.9"), files, interface="lo", max_seconds=60)
    main = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert main.stdout is not None
        assert main.stdout.readline().strip() == READY
        for path in ("/one", "/two"):
            assert (
                urllib.request.urlopen(f"http://127.0.0.1:{hello}{path}", timeout=5).read()
                == b"hello"
            )
        stopped = subprocess.run(["sh", "-c", stop_script(files)], capture_output=True, timeout=30)
        assert stopped.returncode == 0
        assert main.wait(timeout=10) == 0  # the container's main process ends: nothing lingers
    finally:
        if main.poll() is None:
            main.kill()
    pcap = tmp_path / "read-back.pcap"
    pcap.write_bytes(stopped.stdout)
    capture = Capture.from_pcap(pcap, port=hello)
    assert capture.http_request_lines == ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]
    assert capture.readable_http and not capture.tls


@pytest.mark.skipif(not shutil.which("sh"), reason="needs sh")
def test_stop_script_without_tcpdump_still_releases_the_container(tmp_path: Path) -> None:
    files = Files.under(str(tmp_path))
    Path(files.pcap).write_bytes(b"")
    done = subprocess.run(["sh", "-c", stop_script(files)], capture_output=True, timeout=30)
    assert done.returncode == 0 and Path(files.done).exists()


def test_capture_adds_an_ephemeral_container(tmp_path: Path) -> None:
    with FakeApiServer() as fake:
        server = pod(
            "service-b-v1-6d8f9", "istio-meshlab", labels={"app": "service-b-v1"}, sidecar=True
        )
        fake.pods.append(server)
        mesh = KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path), capture_image="my/tcpdump:1")
        wrong_port = pytest.raises(
            NotFoundError, match=r"no container port 9090 \(its ports: 8080\)"
        )
        with wrong_port, mesh.capture("service-b-v1", port=9090):
            pass
        no_exec = pytest.raises(ClusterError, match="cannot exec into")  # the fake has no exec
        with no_exec, mesh.capture("service-b-v1", port=8080):
            pass
        patch = next(r for r in fake.sent("PATCH") if r.path.endswith("/ephemeralcontainers"))
        assert (
            patch.path
            == "/api/v1/namespaces/istio-meshlab/pods/service-b-v1-6d8f9/ephemeralcontainers"
        )
        assert patch.content_type == "application/strategic-merge-patch+json"
        (container,) = patch.body["spec"]["ephemeralContainers"]
        assert container["name"].startswith("meshlab-capture-")
        assert container["image"] == "my/tcpdump:1"
        script = container["command"][2]
        assert "tcpdump -i eth0" in script
        assert shlex.quote("tcp port 8080 and not host 172.18.0.2") in script
        # it waited for tcpdump to listen (the container's log) before the lesson went on
        assert fake.sent("GET", f"{patch.path.rsplit('/', 1)[0]}/log")
