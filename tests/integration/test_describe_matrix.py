"""`describe` predicts what `call` really gets, over a matrix of configurations.

One embedded mesh for the module (real Envoy sidecars): service-a and service-b-v1 with
sidecars in istio-meshlab, legacy-client and a second service-b-v1 without sidecars in
legacy, and a Service `b-alt` (port 80 -> container port 8080) in front of service-b-v1.
Each configuration applies PeerAuthentications / DestinationRules (and sets auto mTLS),
then for every probe compares describe's predicted status and mTLS with the real call's
status and with whether service-b-v1 saw a caller identity (its /hello returns "caller":
the XFCC URI, or null over plaintext). The expected outcomes of the two main probes are
written down too, so the matrix cannot drift into testing nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from meshlab.analysis import findings_for
from tests.conftest import DEPLOYMENTS, NS

LEGACY = "legacy"
A_ID = f"spiffe://cluster.local/ns/{NS}/sa/service-a"

B_ALT = """\
apiVersion: v1
kind: Service
metadata: {name: b-alt, namespace: istio-meshlab}
spec:
  selector: {app: service-b-v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nowhere, namespace: istio-meshlab}
spec:
  selector: {app: nothing-runs-here}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"""


def pa(name, mode=None, ns=NS, selector=None, ports=None):
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {},
    }
    if mode:
        doc["spec"]["mtls"] = {"mode": mode}
    if selector:
        doc["spec"]["selector"] = {"matchLabels": {"app": selector}}
    if ports:
        doc["spec"]["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
    return json.dumps(doc)


def dr(name, mode=None, host="service-b-v1", ns=NS, ports=None, export_to=None, **tls):
    spec: dict = {"host": host, "trafficPolicy": {}}
    if mode:
        spec["trafficPolicy"]["tls"] = {"mode": mode, **tls}
    if ports:
        spec["trafficPolicy"]["portLevelSettings"] = [
            {"port": {"number": p}, "tls": {"mode": m}} for p, m in ports.items()
        ]
    if export_to:
        spec["exportTo"] = export_to
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    return json.dumps(doc)


NS_STRICT = pa("ns", "STRICT")
MUTUAL_CERTS = {"clientCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem"}


@dataclass
class Config:
    name: str
    apply: list[str] = field(default_factory=list)  # applied one at a time, in order
    a_to_b: str = ""  # expected outcome of service-a -> service-b-v1
    legacy_to_b: str = ""  # expected outcome of legacy-client -> service-b-v1
    auto_mtls: bool = True


MTLS, PLAIN, RESET, E503 = "mTLS 200", "plaintext 200", "reset", "503"

CONFIGS = [
    Config("no-policy", [], MTLS, PLAIN),
    Config("namespace-strict", [NS_STRICT], MTLS, RESET),
    Config("namespace-permissive", [pa("ns", "PERMISSIVE")], MTLS, PLAIN),
    Config("namespace-disable", [pa("ns", "DISABLE")], PLAIN, PLAIN),
    Config("mesh-strict", [pa("default", "STRICT", ns="istio-system")], MTLS, RESET),
    Config(
        "mesh-strict-namespace-permissive",
        [pa("default", "STRICT", ns="istio-system"), pa("ns", "PERMISSIVE")], MTLS, PLAIN,
    ),
    Config(
        "mesh-disable-workload-strict",
        [pa("default", "DISABLE", ns="istio-system"), pa("b", "STRICT", selector="service-b-v1")],
        MTLS, RESET,
    ),
    Config(
        "namespace-strict-workload-disable",
        [NS_STRICT, pa("b", "DISABLE", selector="service-b-v1")], PLAIN, PLAIN,
    ),
    Config("namespace-strict-workload-unset", [NS_STRICT, pa("b", selector="service-b-v1")],
           MTLS, RESET),
    Config(
        "workload-strict-port-8080-disable",
        [pa("b", "STRICT", selector="service-b-v1", ports={8080: "DISABLE"})], PLAIN, PLAIN,
    ),
    Config(
        "workload-strict-service-port-80-ignored",
        [pa("b", "STRICT", selector="service-b-v1", ports={80: "DISABLE"})], MTLS, RESET,
    ),
    Config(
        "workload-disable-port-strict",
        [pa("b", "DISABLE", selector="service-b-v1", ports={8080: "STRICT"})], MTLS, RESET,
    ),
    Config(
        "workload-unset-port-strict",
        [pa("b", "UNSET", selector="service-b-v1", ports={8080: "STRICT"})], MTLS, RESET,
    ),
    Config("dr-disable-strict", [NS_STRICT, dr("b", "DISABLE")], E503, RESET),
    Config("dr-disable-permissive", [dr("b", "DISABLE")], PLAIN, PLAIN),
    Config("dr-istio-mutual-strict", [NS_STRICT, dr("b", "ISTIO_MUTUAL")], MTLS, RESET),
    Config("dr-istio-mutual-disable", [pa("ns", "DISABLE"), dr("b", "ISTIO_MUTUAL")], E503, PLAIN),
    Config("dr-simple", [dr("b", "SIMPLE")], E503, PLAIN),
    Config("dr-simple-strict", [NS_STRICT, dr("b", "SIMPLE")], E503, RESET),
    Config("dr-mutual", [dr("b", "MUTUAL", **MUTUAL_CERTS)], E503, PLAIN),
    Config(
        "dr-port-level-disable-strict",
        [NS_STRICT, dr("b", "ISTIO_MUTUAL", ports={8080: "DISABLE"})], E503, RESET,
    ),
    Config(
        "dr-root-namespace-disable-strict",
        [NS_STRICT, dr("b", "DISABLE", host=f"service-b-v1.{NS}.svc.cluster.local",
                       ns="istio-system")],
        E503, RESET,
    ),
    Config(
        "dr-exported-elsewhere-strict",
        [NS_STRICT, dr("b", "DISABLE", export_to=[LEGACY])], MTLS, RESET,
    ),
    Config(
        "dr-istio-mutual-to-the-legacy-b",
        [dr("b-legacy", "ISTIO_MUTUAL", host="service-b-v1.legacy.svc.cluster.local")],
        MTLS, PLAIN,
    ),
    Config(
        "two-namespace-policies-strict-oldest",
        [NS_STRICT, pa("later", "PERMISSIVE")], MTLS, RESET,
    ),
    Config(
        "two-namespace-policies-permissive-oldest",
        [pa("first", "PERMISSIVE"), pa("later", "STRICT")], MTLS, PLAIN,
    ),
    Config(
        "root-namespace-selector-ignored",
        [pa("b", "STRICT", ns="istio-system", selector="service-b-v1")], MTLS, PLAIN,
    ),
    Config("auto-off", [], PLAIN, PLAIN, auto_mtls=False),
    Config("auto-off-strict", [NS_STRICT], E503, RESET, auto_mtls=False),
    Config(
        "auto-off-strict-dr-istio-mutual",
        [NS_STRICT, dr("b", "ISTIO_MUTUAL")], MTLS, RESET, auto_mtls=False,
    ),
    Config(
        "auto-off-strict-dr-port-level-istio-mutual",
        [NS_STRICT, dr("b", ports={8080: "ISTIO_MUTUAL"})], MTLS, RESET, auto_mtls=False,
    ),
]  # fmt: skip

# (client, its namespace, URL): the probes every configuration runs.
PROBES = [
    ("service-a", NS, "http://service-b-v1:8080/hello"),
    ("legacy-client", LEGACY, f"http://service-b-v1.{NS}:8080/hello"),
    ("service-a", NS, "http://b-alt/hello"),  # Service port 80 -> container port 8080
    ("service-a", NS, "http://service-b-v1.legacy:8080/hello"),  # a destination without sidecar
]


@pytest.fixture(scope="module")
def matrix_mesh(mesh):
    mesh.apply(DEPLOYMENTS / "namespace.yaml")
    mesh.apply(DEPLOYMENTS / "service-a.yaml")
    mesh.apply(DEPLOYMENTS / "service-b-v1.yaml")
    mesh.apply(DEPLOYMENTS / "legacy-client.yaml")
    legacy_b = (
        (DEPLOYMENTS / "service-b-v1.yaml")
        .read_text()
        .replace(f"namespace: {NS}", "namespace: legacy")
    )
    mesh.apply(legacy_b)
    mesh.apply(B_ALT)
    assert {(p.namespace, p.workload): p.sidecar for p in mesh.pods()} == {
        (NS, "service-a"): True,
        (NS, "service-b-v1"): True,
        (LEGACY, "legacy-client"): False,
        (LEGACY, "service-b-v1"): False,
    }
    yield mesh
    mesh.configure(auto_mtls=True)


def outcome(status, mtls) -> str:
    if status is None:
        return RESET
    if status == 200:
        return MTLS if mtls else PLAIN
    return str(status)


def check_probe(mesh, client, ns, url) -> tuple[str, str]:
    described = mesh.describe(client, url, ns)
    predicted = described.predicted
    if described.source_sidecar:
        # describe predicts new connections. A client sidecar may still hold a keep-alive
        # connection opened under the previous configuration: when only the server's policy
        # changed, Envoy drains the replaced filter chain and serves one more request on it
        # (then closes it). A first call lets that happen; the compared call is the next one.
        mesh.call(client, url, ns)
    actual = mesh.call(client, url, ns)
    where = f"{described}\nactual: {actual.status} {actual.error} {actual.body[:200]}"
    assert predicted.status == actual.status, where
    saw_identity = False
    if actual.status == 200:
        caller = actual.json()["caller"]
        saw_identity = caller is not None
        if saw_identity:
            assert caller == A_ID, where
    assert predicted.mtls == saw_identity, where
    if actual.status is None:
        assert predicted.error == actual.error, where
    if predicted.body_contains:
        assert predicted.body_contains in actual.body, where
    return outcome(predicted.status, predicted.mtls), outcome(actual.status, saw_identity)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_describe_agrees_with_call(matrix_mesh, config):
    mesh = matrix_mesh
    mesh.configure(auto_mtls=config.auto_mtls)
    applied = []
    try:
        for doc in config.apply:
            mesh.apply(doc)
            applied.append(doc)
        results = [check_probe(mesh, *probe) for probe in PROBES]
    finally:
        for doc in reversed(applied):
            mesh.delete(doc)
    assert results[0][1] == config.a_to_b, "service-a -> service-b-v1"
    assert results[1][1] == config.legacy_to_b, "legacy-client -> service-b-v1"


def test_the_matrix_covers_every_outcome():
    """The matrix checks its expectations against the real calls, so these are seen."""
    expected = {c.a_to_b for c in CONFIGS} | {c.legacy_to_b for c in CONFIGS}
    assert len(CONFIGS) >= 20 and expected == {MTLS, PLAIN, RESET, E503}
    assert {c.auto_mtls for c in CONFIGS} == {True, False}


def test_no_ready_endpoint_gives_503(matrix_mesh):
    url = "http://nowhere:8080/"
    described = matrix_mesh.describe("service-a", url, NS)
    actual = matrix_mesh.call("service-a", url, NS)
    assert described.predicted.status == actual.status == 503
    assert described.predicted.body_contains in actual.body


def test_unresolved_host_is_predicted_as_call_reports_it(matrix_mesh):
    url = "http://service-a:8080/healthz"  # a short name from another namespace
    described = matrix_mesh.describe("legacy-client", url, LEGACY)
    actual = matrix_mesh.call("legacy-client", url, LEGACY)
    assert described.predicted.status is actual.status is None
    assert described.predicted.error == actual.error == "could not resolve host: service-a"
    assert "short name only resolves from its own namespace" in described.explanation[0]


def test_analyze_and_apply_findings_on_the_real_mesh(matrix_mesh, tmp_path):
    mesh = matrix_mesh
    proposed = tmp_path / "dr.yaml"
    proposed.write_text(dr("service-b-v1-plaintext", "DISABLE"))
    mesh.apply(NS_STRICT)
    try:
        before = mesh.analyze(proposed)
        assert "MLB0101" in before.codes() and before.exit_code() == 79
        assert mesh.get("DestinationRule") == []  # analyze applies nothing
        assert "MLB0101" not in mesh.analyze().codes()
        mesh.apply(proposed)
        try:
            from meshlab.resources import load

            after = findings_for(load(proposed), mesh.analysis_state())
            assert [f.code for f in after] == ["MLB0101"]
            assert "MLB0101" in mesh.analyze(namespace=NS).codes()
        finally:
            mesh.delete(proposed)
    finally:
        mesh.delete(NS_STRICT)
    assert mesh.analyze().errors == []


def test_cli_describe_json(matrix_mesh, monkeypatch, capsys):
    import meshlab.cli
    from tests.unit.test_analysis_cli import parser_with_commands

    matrix_mesh.configure(auto_mtls=True)
    monkeypatch.setattr(meshlab.cli, "build_parser", parser_with_commands)
    monkeypatch.setenv("MESHLAB_HOME", str(matrix_mesh.home))
    code = meshlab.cli.main(
        ["--home", str(matrix_mesh.home), "describe", "--from", "legacy-client", "-n", LEGACY,
         f"http://service-b-v1.{NS}:8080/hello", "-o", "json"]
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["predicted"]["status"] == 200 and data["predicted"]["mtls"] is False
    assert data["client"]["sidecar"] is False and data["server"]["accepts"] == "PERMISSIVE"
    code = meshlab.cli.main(
        ["--home", str(matrix_mesh.home), "describe", "--from", "service-a",
         "http://service-b-v1:8080/hello"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "mTLS 200" in text and "auto mTLS" in text
