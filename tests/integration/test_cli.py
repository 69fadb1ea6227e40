"""The `meshlab` command line against a real embedded mesh, as a learner types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEPLOYMENTS

BAD_MODE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict-mtls
  namespace: istio-meshlab
spec:
  mtls:
    mode: STRICTT
"""

GOOD_THEN_BAD = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: fine
  namespace: istio-meshlab
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: broken
  namespace: istio-meshlab
spec:
  host: service-b-v1
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
      clientCertificate: /etc/certs/cert.pem
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("cli-home")
    env = {**os.environ, "MESHLAB_HOME": str(home)}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshlab.cli", *args],
            env=env, capture_output=True, text=True, input=stdin, timeout=120,
        )  # fmt: skip

    run.home = home  # type: ignore[attr-defined]
    yield run
    result = run("down")
    assert result.returncode == 0, result.stderr
    from meshlab.embedded.processes import find_processes

    assert find_processes(home) == []


def test_up_is_idempotent(cli):
    first = cli("up")
    assert first.returncode == 0, first.stderr
    assert "Embedded mesh started" in first.stdout
    second = cli("up")
    assert second.returncode == 0
    assert "already running" in second.stdout


def test_apply_prints_kubectl_style_lines(cli):
    for name in ("namespace.yaml", "service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml"):
        result = cli("apply", "-f", str(DEPLOYMENTS / name))
        assert result.returncode == 0, result.stderr
    again = cli("apply", "-f", str(DEPLOYMENTS / "service-a.yaml"))
    assert again.stdout.splitlines() == [
        "serviceaccount/service-a unchanged",
        "deployment.apps/service-a unchanged",
        "service/service-a unchanged",
    ]
    status = json.loads(cli("status", "-o", "json").stdout)
    pods = {p["workload"]: p for p in status["pods"]}
    assert pods["service-a"]["sidecar"] and pods["service-a"]["ready"]
    assert not pods["legacy-client"]["sidecar"]


def test_call_json_and_exit_codes(cli):
    ok = cli("call", "--from", "service-a", "http://service-b-v1:8080/hello", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert set(data) >= {"status", "error", "body", "headers"}
    assert data["status"] == 200 and data["error"] is None
    assert json.loads(data["body"])["caller"].endswith("/sa/service-a")

    cli("apply", "-f", str(DEPLOYMENTS / "istio-mtls-peer-auth.yaml"))
    refused = cli(
        "call", "--from", "legacy-client", "-n", "legacy",
        "http://service-b-v1.istio-meshlab:8080/hello", "-o", "json",
    )  # fmt: skip
    assert refused.returncode != 0
    data = json.loads(refused.stdout)
    assert data["status"] is None and data["error"] == "connection reset by peer"
    human = cli(
        "call", "--from", "legacy-client", "-n", "legacy",
        "http://service-b-v1.istio-meshlab:8080/hello",
    )  # fmt: skip
    assert human.returncode != 0
    assert "000" in human.stderr and "connection reset by peer" in human.stderr
    cli("delete", "-f", str(DEPLOYMENTS / "istio-mtls-peer-auth.yaml"))


def test_get_formats(cli):
    cli("apply", "-f", str(DEPLOYMENTS / "service-b-v1-destination-rule.yaml"))
    table = cli("get", "dr", "-n", "istio-meshlab")
    assert "service-b-v1-mtls" in table.stdout and "service-b-v1" in table.stdout
    as_json = json.loads(
        cli(
            "get", "destinationrule", "service-b-v1-mtls", "-n", "istio-meshlab", "-o", "json"
        ).stdout
    )
    assert as_json["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert as_json["metadata"]["creationTimestamp"]
    as_yaml = cli("get", "destinationrules", "-o", "yaml")
    assert "ISTIO_MUTUAL" in as_yaml.stdout
    missing = cli("get", "pa", "nope", "-n", "istio-meshlab")
    assert missing.returncode != 0 and "not found" in missing.stderr
    unknown = cli("get", "gizmos")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    cli("delete", "-f", str(DEPLOYMENTS / "service-b-v1-destination-rule.yaml"))


def _policies(cli) -> list[str]:
    listed = json.loads(cli("get", "pa", "-o", "json").stdout) + json.loads(
        cli("get", "dr", "-o", "json").stdout
    )
    return sorted(o["metadata"]["name"] for o in listed)


def test_bad_input_is_reported_and_changes_nothing(cli, tmp_path: Path):
    before = _policies(cli)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MODE)
    result = cli("apply", "-f", str(bad))
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "document 1" in result.stderr
    assert "spec.mtls.mode" in result.stderr and "STRICTT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(GOOD_THEN_BAD)
    result = cli("apply", "-f", str(mixed))
    assert result.returncode == 2
    assert "document 2" in result.stderr and "ISTIO_MUTUAL" in result.stderr
    assert _policies(cli) == before  # all-or-nothing: the valid document was not applied

    piped = cli("apply", "-f", "-", stdin="kind: [unclosed\n")
    assert piped.returncode == 2 and "Traceback" not in piped.stderr


def test_missing_namespace_is_an_error(cli):
    doc = BAD_MODE.replace("STRICTT", "STRICT").replace("istio-meshlab", "nowhere")
    result = cli("apply", "-f", "-", stdin=doc)
    assert result.returncode != 0
    assert 'namespaces "nowhere" not found' in result.stderr


def test_rollout_restart_recreates_pods(cli):
    before = {p["name"] for p in json.loads(cli("status", "-o", "json").stdout)["pods"]}
    result = cli("rollout", "restart", "deployment/service-b-v1", "-n", "istio-meshlab")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/service-b-v1 restarted"
    after = {p["name"] for p in json.loads(cli("status", "-o", "json").stdout)["pods"]}
    assert len(after) == len(before) and after != before
    bad = cli("rollout", "restart", "service-b-v1")
    assert bad.returncode != 0 and "deployment/NAME" in bad.stderr


def test_socket_and_ca_key_are_private(cli):
    home = Path(cli.home)
    assert (home.stat().st_mode & 0o777) == 0o700
    sock = Path((home / "run" / "socket-path").read_text())
    assert (sock.stat().st_mode & 0o777) == 0o600
    assert (sock.parent.stat().st_mode & 0o077) == 0
    key = next((home / "ca").glob("*key*"))
    assert (key.stat().st_mode & 0o777) == 0o600


def test_capture_command_writes_a_pcap(cli, tmp_path: Path):
    pcap = tmp_path / "cli.pcap"
    env = {**os.environ, "MESHLAB_HOME": str(cli.home)}
    capture = subprocess.Popen(
        [sys.executable, "-m", "meshlab.cli", "capture", "service-b-v1", "-n", "istio-meshlab",
         "--count", "1", "-w", str(pcap)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert capture.stderr is not None
        started = capture.stderr.readline()  # "Capturing on ...": recording has begun
        assert started.startswith("Capturing on service-b-v1.istio-meshlab:8080"), started
        call = cli("call", "--from", "legacy-client", "-n", "legacy",
                   "http://service-b-v1.istio-meshlab:8080/hello")  # fmt: skip
        assert call.returncode == 0, call.stderr
        stdout, stderr = capture.communicate(timeout=30)
    finally:
        if capture.poll() is None:
            capture.kill()
    assert capture.returncode == 0, stderr
    assert "plaintext: HTTP request and response readable" in stdout
    assert f"Wrote 1 flow(s) to {pcap}" in stderr
    assert pcap.stat().st_size > 0


def test_capture_unknown_port_is_a_clear_error(cli):
    result = cli("capture", "service-b-v1", "-n", "istio-meshlab", "--port", "9", "--seconds", "1")
    assert result.returncode != 0
    assert "no container port 9" in result.stderr and "Traceback" not in result.stderr


def test_up_without_auto_mtls(tmp_path: Path):
    env = {**os.environ, "MESHLAB_HOME": str(tmp_path / "noauto")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshlab.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    try:
        assert run("up", "--no-auto-mtls").returncode == 0
        details = json.loads(run("status", "-o", "json").stdout)["details"]
        assert details["auto_mtls"] is False
    finally:
        assert run("down").returncode == 0
