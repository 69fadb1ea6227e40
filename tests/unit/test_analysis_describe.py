"""`meshlab describe` (meshlab.analysis.describe) over pure snapshots: client side, server
side level by level, predictions, the JSON shape and the table."""

from __future__ import annotations

import json

import pytest

from meshlab.analysis import describe_call
from meshlab.errors import MeshlabError, NotFoundError
from tests.unit.test_analysis import LEGACY, NS, ROOT, STRICT_NS, dr, lesson, pa, pod, service

B_URL = "http://service-b-v1:8080/hello"
B_FROM_LEGACY = "http://service-b-v1.istio-meshlab:8080/hello"


def a_to_b(*objs, **kw):
    return describe_call(lesson(*objs, **kw), "service-a", B_URL, NS)


def legacy_to_b(*objs, **kw):
    return describe_call(lesson(*objs, **kw), "legacy-client", B_FROM_LEGACY, LEGACY)


def test_auto_mtls_between_sidecars():
    d = a_to_b()
    assert (d.predicted.status, d.predicted.mtls, d.predicted.summary) == (200, True, "mTLS 200")
    assert d.client.mode == "ISTIO_MUTUAL" and d.client.auto_mtls
    assert d.client.destination_rule is None
    assert "auto mTLS" in d.client.reason
    assert d.server.accepts == "PERMISSIVE" and d.server.decided_by is None
    assert "default" in d.server.reason
    assert [(lv.level, lv.policy) for lv in d.server.levels] == [
        ("mesh", None), ("namespace", None), ("workload", None), ("port", None),
    ]  # fmt: skip


def test_every_level_is_reported_and_the_port_level_decides():
    objs = (
        pa("default", ROOT, "STRICT"),
        pa("ns", mode="PERMISSIVE"),
        pa("b", mode="UNSET", selector={"app": "service-b-v1"}, ports={8080: "DISABLE"}),
    )
    d = legacy_to_b(*objs)
    levels = {lv.level: (lv.policy, lv.mode) for lv in d.server.levels}
    assert levels == {
        "mesh": (f"{ROOT}/default", "STRICT"),
        "namespace": (f"{NS}/ns", "PERMISSIVE"),
        "workload": (f"{NS}/b", "UNSET"),
        "port": (f"{NS}/b", "DISABLE"),
    }
    assert d.server.accepts == "DISABLE"
    assert d.server.decided_by.level == "port"
    assert (d.predicted.status, d.predicted.mtls) == (200, False)


def test_plaintext_client_into_strict_is_reset():
    d = legacy_to_b(STRICT_NS)
    assert d.client.sidecar is False and d.client.mode is None and d.client.sends == "plaintext"
    assert d.predicted.status is None and d.predicted.code == "000"
    assert d.predicted.error == "connection reset by peer"
    assert "reset" in d.predicted.summary


def test_destination_rule_decides_the_client_side():
    d = a_to_b(STRICT_NS, dr("b-plain", "service-b-v1", mode="DISABLE"))
    assert d.client.destination_rule == f"{NS}/b-plain" and not d.client.auto_mtls
    assert (d.predicted.status, d.predicted.mtls) == (503, False)
    assert d.predicted.body_contains == "reset reason: connection termination"


def test_auto_mtls_off_without_rule_sends_plaintext():
    d = a_to_b(auto_mtls=False)
    assert d.client.mode == "DISABLE" and d.client.destination_rule is None
    assert "auto mTLS is off" in d.client.reason
    assert (d.predicted.status, d.predicted.mtls) == (200, False)


@pytest.mark.parametrize("mode", ["SIMPLE", "MUTUAL"])
def test_simple_and_mutual_end_in_503(mode):
    d = a_to_b(dr("b", "service-b-v1", mode=mode))
    assert (d.predicted.status, d.predicted.mtls) == (503, False)
    assert d.client.sends == f"TLS ({mode})"
    assert not any("not simulated" in line for line in d.explanation)


def test_istio_mutual_toward_no_sidecar_is_a_tls_error():
    d = a_to_b(dr("b", "service-b-v1"), b_sidecar=False)
    assert d.server.sidecar is False and d.server.accepts is None
    assert (d.predicted.status, d.predicted.outcome) == (503, "503-tls-error")


def test_ignored_policies_are_listed():
    d = a_to_b(pa("b", ROOT, "STRICT", selector={"app": "service-b-v1"}))
    assert d.server.accepts == "PERMISSIVE"
    assert d.server.ignored and "root namespace" in d.server.ignored[0][1]
    assert "ignored" in str(d)


def test_no_ready_endpoint():
    state = lesson(extra_pods=[pod("service-c", ready=False, index=5)],
                   services=[service("service-c")])  # fmt: skip
    d = describe_call(state, "service-a", "http://service-c:8080/", NS)
    assert d.server is None
    assert (d.predicted.status, d.predicted.outcome) == (503, "503-no-healthy-upstream")
    d = describe_call(state, "legacy-client", "http://service-c.istio-meshlab:8080/", LEGACY)
    assert d.predicted.status is None and d.predicted.error == "connection refused"


def test_endpoints_that_differ_are_flagged():
    second_b = pod("service-b-v1", sidecar=False, index=7)
    d = a_to_b(dr("b", "service-b-v1"), extra_pods=[second_b])
    assert not d.consistent
    assert {e["predicted"]["status"] for e in d.to_dict()["endpoints"]} == {200, 503}
    assert "endpoints differ" in str(d)


def test_unresolved_hosts_are_explained_like_call_reports_them():
    d = describe_call(lesson(), "legacy-client", B_URL, LEGACY)
    assert (
        d.predicted.status is None and d.predicted.error == "could not resolve host: service-b-v1"
    )
    assert "use service-b-v1.istio-meshlab" in d.explanation[0]
    d = describe_call(lesson(), "service-a", "http://service-b-v1:9090/", NS)
    assert "has no port 9090 (8080)" in d.explanation[0]
    d = describe_call(lesson(), "service-a", "http://nope/", NS)
    assert d.to_dict()["client"] is None and d.to_dict()["server"] is None


def test_bad_requests_are_clear_errors():
    with pytest.raises(NotFoundError, match=r"no pod of workload 'ghost'.*workloads there: "):
        describe_call(lesson(), "ghost", B_URL, NS)
    with pytest.raises(MeshlabError, match="localhost never crosses the mesh"):
        describe_call(lesson(), "service-a", "http://localhost:8080/call-b", NS)
    with pytest.raises(MeshlabError, match="port must be a number"):
        describe_call(lesson(), "service-a", "http://service-b-v1:80a80/", NS)
    with pytest.raises(MeshlabError, match="http:// URL"):
        describe_call(lesson(), "service-a", "https://service-b-v1:8080/", NS)


def test_the_client_pod_is_found_by_pod_name_too():
    state = lesson()
    name = next(p.name for p in state.pods if p.labels["app"] == "service-a")
    assert describe_call(state, name, B_URL, NS).source_pod == name


def test_json_shape():
    d = a_to_b(STRICT_NS).to_dict()
    json.dumps(d)  # serialisable
    assert set(d) == {
        "source", "url", "destination", "client", "server", "predicted", "explanation",
        "consistent", "endpoints",
    }  # fmt: skip
    assert d["predicted"]["status"] == 200 and d["predicted"]["mtls"] is True
    assert set(d["predicted"]) == {
        "status", "mtls", "code", "outcome", "summary", "error", "body_contains",
    }  # fmt: skip
    assert d["source"]["sidecar"] is True and d["destination"]["container_port"] == 8080
    assert d["destination"]["service"] == f"{NS}/service-b-v1"
    assert d["server"]["decided_by"] == {
        "level": "namespace", "policy": f"{NS}/strict-mtls", "mode": "STRICT",
    }  # fmt: skip
    refused = legacy_to_b(STRICT_NS).to_dict()["predicted"]
    assert refused["status"] is None and refused["mtls"] is False


def test_table_text_and_html():
    d = a_to_b(STRICT_NS)
    text = str(d)
    lines = text.splitlines()
    assert lines[0].startswith(
        "service-a.istio-meshlab (sidecar) -> service-b-v1.istio-meshlab:8080"
    )
    assert any(line.startswith("client") and "mTLS (ISTIO_MUTUAL)" in line for line in lines)
    assert any(line.startswith("server") and "accepts STRICT" in line for line in lines)
    assert any("namespace" in line and f"{NS}/strict-mtls" in line for line in lines)
    assert lines[-1].startswith("result") and "mTLS 200" in lines[-1]
    html = d._repr_html_()
    assert "<table" in html and "accepts STRICT" in html
