"""Bad input against a running mesh: the corpus of malformed manifests (tests/bad_inputs),
through the API and the CLI, raw documents and malformed requests on the control socket,
and valid-but-suspicious objects. Every case gets a specific message, no traceback, and
leaves the mesh exactly as it was; the daemon keeps serving."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlab.embedded import home as homes
from meshlab.errors import DaemonError, ResourceError
from tests.conftest import NS
from tests.unit.test_resources import BAD_INPUTS, EXPECTED, LEAKS

KINDS = ("Namespace", "ServiceAccount", "Service", "Deployment", "PeerAuthentication",
         "DestinationRule")  # fmt: skip

# Corpus files whose documents are valid once parsed: their fault exists only in the YAML
# text (a duplicate key) or against the -n flag. Sent raw to the daemon they would apply.
VALID_ONCE_PARSED = {"duplicate-key.yaml", "namespace-mismatch.yaml", "empty.yaml"}

DR_NO_SERVICE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: typo-host
  namespace: istio-meshlab
spec:
  host: service-b-v2
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
"""

ROOT_SELECTOR_PA = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: selector-in-root
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: service-b-v1
  mtls:
    mode: STRICT
"""


def fragments(name: str) -> tuple[list[str], str | None]:
    entry = EXPECTED[name]
    namespace = None
    if isinstance(entry, dict):
        namespace, entry = entry.get("namespace"), entry["expect"]
    return ([entry] if isinstance(entry, str) else list(entry)), namespace


def state(mesh) -> dict[str, Any]:
    """Everything `get` shows, plus the pods' identity and how many pushes were made."""
    out: dict[str, Any] = {kind: mesh.get(kind) for kind in KINDS}
    status = mesh.status()
    out["pods"] = [(p.namespace, p.name, p.ready, p.restarts) for p in status.pods]
    out["pushes"] = status.details["pushes"]
    return out


def raw_request(mesh, payload: bytes, timeout: float = 30.0) -> dict[str, Any] | None:
    """Send bytes to the control socket; the daemon's JSON answer, or None if it closed."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(homes.socket_path(mesh.home)))
        # It may answer and close before taking everything (the huge line).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    return json.loads(data) if data else None


@pytest.fixture(scope="module")
def bad_mesh(lesson_mesh):
    lesson_mesh.wait_ready()
    return lesson_mesh


@pytest.fixture(scope="module")
def huge_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.yaml"
    with path.open("w") as out:
        out.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge\ndata:\n")
        i = 0
        while out.tell() < 5 * 1024 * 1024:
            out.write(f"  k{i}: {'x' * 100}\n")
            i += 1
    return path


# ---- the corpus through the API and the CLI --------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_through_the_api_changes_nothing(bad_mesh, name):
    expect, namespace = fragments(name)
    before = state(bad_mesh)
    with pytest.raises(ResourceError) as info:
        bad_mesh.apply(BAD_INPUTS / name, namespace=namespace)
    message = str(info.value)
    for fragment in expect:
        assert fragment in message
    for leak in LEAKS:
        assert leak not in message
    assert all(line.startswith(str(BAD_INPUTS / name)) for line in info.value.problems)
    assert state(bad_mesh) == before


def test_five_megabyte_file_through_the_api(bad_mesh, huge_file):
    before = state(bad_mesh)
    with pytest.raises(ResourceError, match=r"the manifest is 5\.0 MB.*at most 2 MB"):
        bad_mesh.apply(huge_file)
    assert state(bad_mesh) == before


def _cli_problems(name: str, expect: list[str], code: int, stdout: str, stderr: str) -> str:
    wrong = []
    if code != 2:
        wrong.append(f"exit code {code}")
    if not stderr.startswith("error: "):
        wrong.append("stderr does not start with 'error: '")
    wrong += [f"missing {f!r}" for f in expect if f not in " ".join(stderr.split())]
    wrong += [f"leaks {leak!r}" for leak in LEAKS if leak in stderr]
    if stdout:
        wrong.append(f"stdout {stdout!r}")
    return f"{name}: {'; '.join(wrong)}\n{stderr}" if wrong else ""


def test_corpus_through_the_cli(bad_mesh, huge_file, monkeypatch, capsys):
    """`meshlab apply -f FILE [-n NS]` for every corpus file (the CLI's main, in this
    process): exit code 2, `error:` and the specific message on stderr, nothing on stdout,
    no traceback; the mesh is unchanged."""
    from meshlab.cli import main

    monkeypatch.setenv("MESHLAB_HOME", str(bad_mesh.home))
    cases = [(str(BAD_INPUTS / name), *fragments(name)) for name in sorted(EXPECTED)]
    cases.append((str(huge_file), ["the manifest is 5.0 MB"], None))
    before = state(bad_mesh)
    failures = []
    for path, expect, namespace in cases:
        code = main(["apply", "-f", path, *(["-n", namespace] if namespace else [])])
        out = capsys.readouterr()
        failures.append(_cli_problems(path, expect, code, out.out, out.err))
    assert [f for f in failures if f] == []
    assert state(bad_mesh) == before


SUBPROCESS_SAMPLE = ["yaml-unclosed-bracket.yaml", "binary-junk.yaml", "mode-typo.yaml",
                     "alias-bomb.yaml", "namespace-mismatch.yaml"]  # fmt: skip


def test_corpus_sample_through_the_meshlab_command(bad_mesh, huge_file):
    """The same through `python -m meshlab.cli` processes, as a learner types it, for one
    file of each kind of fault (syntax, bytes, schema, limits, the -n flag) and the 5 MB one."""
    env = {**os.environ, "MESHLAB_HOME": str(bad_mesh.home)}
    cases = [(str(BAD_INPUTS / name), *fragments(name)) for name in SUBPROCESS_SAMPLE]
    cases.append((str(huge_file), ["the manifest is 5.0 MB"], None))

    def run(case: tuple[str, list[str], str | None]) -> str:
        path, expect, namespace = case
        args = [sys.executable, "-m", "meshlab.cli", "apply", "-f", path]
        done = subprocess.run(
            args + (["-n", namespace] if namespace else []),
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return _cli_problems(path, expect, done.returncode, done.stdout, done.stderr)

    before = state(bad_mesh)
    with ThreadPoolExecutor(3) as pool:
        failures = [f for f in pool.map(run, cases) if f]
    assert failures == []
    assert state(bad_mesh) == before


# ---- the daemon on its own: raw documents and malformed requests ---------------------------------
def test_raw_documents_are_validated_by_the_daemon_too(bad_mesh):
    """The client validates before sending; the daemon must not trust it. The corpus's
    parsed documents, sent straight to the control socket, are refused there."""
    before = state(bad_mesh)
    sent = 0
    for name in sorted(EXPECTED):
        if name in VALID_ONCE_PARSED:
            continue
        text = (BAD_INPUTS / name).read_bytes()
        try:
            if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text)):
                continue  # JSON has no aliases: the bombs exist only as YAML text
            documents = [d for d in yaml.safe_load_all(text) if d]
        except (yaml.YAMLError, ValueError):
            continue  # not YAML at all: only the client's loader ever sees it
        with pytest.raises(ResourceError) as info:
            bad_mesh._request("apply", documents=documents)
        assert info.value.problems, name
        assert all(line.startswith("(inline YAML)") for line in info.value.problems), name
        sent += 1
    assert sent >= 30
    assert state(bad_mesh) == before


MALFORMED = [
    (b"garbage\n", "malformed request: not a JSON document"),
    (b"\xff\xfe\x00binary\n", "malformed request: not a JSON document"),
    (b"[1, 2, 3]\n", 'malformed request: expected a JSON object with a string "op"'),
    (b'"apply"\n', 'malformed request: expected a JSON object with a string "op"'),
    (b'{"documents": []}\n', 'malformed request: expected a JSON object with a string "op"'),
    (b'{"op": 5}\n', 'malformed request: expected a JSON object with a string "op"'),
    (b"[" * 200_000 + b"\n", "malformed request: not a JSON document"),
    (b'{"op": "reboot"}\n', "unknown operation 'reboot'"),
    (b'{"op": "__init__"}\n', "unknown operation '__init__'"),
    (b'{"op": "status", "verbose": true}\n',
     "bad arguments for status: got an unexpected keyword argument 'verbose'"),
    (b'{"op": "apply"}\n',
     "bad arguments for apply: missing a required argument: 'documents'"),
    (b'{"op": "apply", "documents": 5}\n',
     "bad arguments for apply: documents must be an array, got an integer"),
    (b'{"op": "apply", "documents": "abc"}\n',
     "bad arguments for apply: documents must be an array, got a string"),
    (b'{"op": "apply", "documents": [[[[1]]]]}\n', "expected a Kubernetes object"),
    (b'{"op": "delete", "documents": [{"kind": 7}]}\n', "kind"),
    (b'{"op": "get", "kind": {"a": 1}, "name": "x"}\n',
     "bad arguments for get: kind must be a string, got an object"),
    (b'{"op": "call", "workload": ["a"], "namespace": 3, "url": null}\n',
     "bad arguments for call: workload must be a string, got an array"),
    (b'{"op": "call", "workload": "service-a", "namespace": "istio-meshlab", '
     b'"url": "http://service-b-v1:8080/", "call_timeout": "soon"}\n',
     "bad arguments for call: call_timeout must be a number, got a string"),
    (b'{"op": "logs", "workload": "service-b-v1", "namespace": "istio-meshlab", '
     b'"container": "../../ca/ca-key"}\n', None),
    (b'{"op": "capture_stop", "id": {"x": 1}}\n',
     "bad arguments for capture_stop: id must be a string, got an object"),
    (b'{"op": "capture_stop", "id": "42"}\n', "no active capture 42"),
    (b'{"op": "mesh_config", "auto_mtls": "yes"}\n',
     'mesh setting auto_mtls: expected true or false, got "yes"'),
    (b'{"op": "mesh_config", "tls_max_version": "SSLv3"}\n',
     'mesh setting tls_max_version: expected "TLSv1_2" or "TLSv1_3", got "SSLv3"'),
    (b'{"op": "mesh_config", "root_namespace": "default"}\n', "unknown mesh setting"),
    (b'{"op": "rollout_restart", "deployment": "nope", "namespace": "istio-meshlab"}\n',
     'deployments.apps "nope" not found'),
]  # fmt: skip


def test_malformed_requests_get_an_error_and_the_daemon_keeps_serving(bad_mesh):
    before = state(bad_mesh)
    pid = bad_mesh._request("ping")["pid"]
    for payload, expect in MALFORMED:
        answer = raw_request(bad_mesh, payload)
        label = payload[:60]
        assert answer is not None, label
        if expect is None:  # a harmless request: it may succeed, it must not leak the key
            assert "PRIVATE KEY" not in json.dumps(answer), label
            continue
        assert answer["ok"] is False, label
        assert expect in json.dumps(answer) or expect in answer["error"], (label, answer)
        assert "internal error" not in answer["error"], (label, answer)
        assert "Traceback" not in answer["error"], label
    # A connection that closes at once, and one that sends half a line and stalls, do not
    # hold the daemon up: the next request is answered.
    socket.socket(socket.AF_UNIX).connect(str(homes.socket_path(bad_mesh.home)))
    staller = socket.socket(socket.AF_UNIX)
    staller.connect(str(homes.socket_path(bad_mesh.home)))
    staller.sendall(b'{"op": "pi')
    try:
        assert bad_mesh._request("ping", timeout=5)["pid"] == pid
    finally:
        staller.close()
    assert state(bad_mesh) == before


def test_a_request_larger_than_the_limit_is_refused(bad_mesh):
    line = b'{"op": "apply", "documents": ["' + b"x" * (65 * 1024 * 1024) + b'"]}\n'
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(answer=raw_request(bad_mesh, line)))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the daemon hung on a huge request"
    answer = result["answer"]
    assert answer == {
        "ok": False,
        "error": "malformed request: request larger than 64 MiB",
        "type": "DaemonError",
    }
    assert bad_mesh._request("ping")["pid"]


def test_the_client_turns_daemon_errors_into_exceptions(bad_mesh):
    with pytest.raises(DaemonError, match="unknown operation 'nope'"):
        bad_mesh._request("nope")
    with pytest.raises(DaemonError, match="bad arguments for ping: got an unexpected keyword"):
        bad_mesh._request("ping", extra=1)


# ---- valid, but probably not what was meant ----------------------------------------------------
def test_destination_rule_for_a_host_without_service_is_applied_with_a_warning(bad_mesh):
    try:
        result = bad_mesh.apply(DR_NO_SERVICE)
        assert result.changes == ["destinationrule.networking.istio.io/typo-host created"]
        # The analyzer's finding (what `meshlab analyze` reports), printed by apply.
        assert result.warnings == [
            "[MLB0203] (DestinationRule istio-meshlab/typo-host) host service-b-v2 (read as "
            "service-b-v2.istio-meshlab.svc.cluster.local) matches no Service. The rule applies "
            "to no traffic."
        ]
        assert bad_mesh.call("service-a", "http://service-b-v1:8080/hello", NS).status == 200
    finally:
        bad_mesh.delete(DR_NO_SERVICE)


def test_selector_policy_in_the_root_namespace_is_applied_with_a_warning(bad_mesh):
    try:
        result = bad_mesh.apply(ROOT_SELECTOR_PA)
        assert result.changes == ["peerauthentication.security.istio.io/selector-in-root created"]
        assert result.warnings == [
            "peerauthentication.security.istio.io/selector-in-root: spec.selector has no "
            "effect: Istio ignores workload selectors in the root namespace istio-system; "
            "this policy does nothing",
        ]  # once: the analyzer's MLB0204 says the same and is not repeated
        # ...and indeed it does nothing: the legacy client still gets in.
        legacy = bad_mesh.call("legacy-client", "http://service-b-v1.istio-meshlab:8080/hello",
                               "legacy")  # fmt: skip
        assert legacy.status == 200
    finally:
        bad_mesh.delete(ROOT_SELECTOR_PA)


def test_cli_prints_the_warnings(bad_mesh, tmp_path):
    manifest = tmp_path / "dr.yaml"
    manifest.write_text(DR_NO_SERVICE)
    env = {**os.environ, "MESHLAB_HOME": str(bad_mesh.home)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "meshlab.cli", "apply", "-f", str(manifest)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        bad_mesh.delete(DR_NO_SERVICE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "destinationrule.networking.istio.io/typo-host created"
    assert "Warning: [MLB0203]" in done.stderr and "matches no Service" in done.stderr
