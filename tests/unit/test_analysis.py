"""`meshlab analyze` checks (meshlab.analysis.analyze), each with pure snapshots: one case
where the finding must appear, and the nearby cases where it must not."""

from __future__ import annotations

import pytest

from meshlab.analysis import (
    CHECKS,
    EXIT_FOUND_ISSUES,
    analyze,
    apply_warnings,
    findings_for,
    run_checks,
)
from meshlab.analysis.analyze import merge_proposed
from meshlab.analysis.findings import AnalysisReport, Finding
from meshlab.analysis.state import MeshState
from meshlab.api import ApplyResult
from meshlab.embedded.model import (
    DestinationRule,
    MeshConfig,
    PeerAuthentication,
    Pod,
    Service,
    ServicePort,
    Snapshot,
)
from meshlab.resources import load

NS = "istio-meshlab"
ROOT = "istio-system"
LEGACY = "legacy"
INJECTED = {"istio-injection": "enabled"}


# ---- building snapshots -------------------------------------------------------------------------


def pod(workload, ns=NS, sidecar=True, ports=(8080,), labels=None, ready=True, index=0):
    thash = "5d8f7c9b6d"
    return Pod(
        name=f"{workload}-{thash}-{index:05d}",
        namespace=ns,
        labels={"app": workload, "pod-template-hash": thash, **(labels or {})},
        service_account=workload,
        ip=f"127.1.0.{index + 2}",
        inner_ip=f"127.1.1.{index + 2}",
        sidecar=sidecar,
        container_ports=tuple(ports),
        ready=ready,
    )


def service(name, ns=NS, port=8080, target=8080, app=None):
    return Service(name, ns, {"app": app or name}, (ServicePort(port, target, "http"),))


def pa(name, ns=NS, mode=None, selector=None, created=1.0, ports=None):
    return PeerAuthentication(name, ns, created, selector, mode, dict(ports or {}))


def dr(name, host, ns=NS, mode="ISTIO_MUTUAL", created=1.0, export_to=(), ports=None):
    return DestinationRule(name, ns, created, host, mode, dict(ports or {}), tuple(export_to))


def snap(*objs, pods=(), services=(), auto_mtls=True, namespaces=None):
    return Snapshot(
        pods=tuple(pods),
        services=tuple(services),
        peer_authentications=tuple(o for o in objs if isinstance(o, PeerAuthentication)),
        destination_rules=tuple(o for o in objs if isinstance(o, DestinationRule)),
        mesh=MeshConfig(auto_mtls=auto_mtls),
        namespaces=namespaces if namespaces is not None else {NS: INJECTED, LEGACY: {}, ROOT: {}},
    )


def lesson(*objs, legacy=True, auto_mtls=True, b_sidecar=True, extra_pods=(), services=()):
    """service-a and service-b-v1 (sidecars) in istio-meshlab; legacy-client (no sidecar)."""
    pods = [pod("service-a"), pod("service-b-v1", sidecar=b_sidecar, index=1), *extra_pods]
    if legacy:
        pods.append(pod("legacy-client", LEGACY, sidecar=False, ports=(), index=2))
    svcs = [service("service-a"), service("service-b-v1"), *services]
    return snap(*objs, pods=pods, services=svcs, auto_mtls=auto_mtls)


STRICT_NS = pa("strict-mtls", mode="STRICT")


def codes(state, code=None):
    found = run_checks(state)
    return [f for f in found if f.code == code] if code else found


def only(state, code) -> Finding:
    found = codes(state, code)
    assert len(found) == 1, found
    return found[0]


# ---- MLB0101: DestinationRule DISABLE/SIMPLE/MUTUAL toward STRICT -------------------------------


@pytest.mark.parametrize("mode", ["DISABLE", "SIMPLE", "MUTUAL"])
def test_mlb0101_rule_toward_strict(mode):
    f = only(lesson(STRICT_NS, dr("b-plain", "service-b-v1", mode=mode)), "MLB0101")
    assert f.severity == "Error"
    assert f.resource == "DestinationRule istio-meshlab/b-plain"
    assert f"tls.mode is {mode}" in f.message and "503" in f.message
    assert "namespace level by PeerAuthentication istio-meshlab/strict-mtls" in f.message
    assert "istio-meshlab/service-a" in f.message  # the callers that will fail
    assert "PeerAuthentication istio-meshlab/strict-mtls" in f.related
    assert "Deployment istio-meshlab/service-b-v1" in f.related
    assert str(f).startswith("Error [MLB0101] (DestinationRule istio-meshlab/b-plain) ")


def test_mlb0101_port_level_setting_is_named():
    rule = dr("b", "service-b-v1", mode="ISTIO_MUTUAL", ports={8080: "DISABLE"})
    f = only(lesson(STRICT_NS, rule), "MLB0101")
    assert "portLevelSettings for port 8080 set tls.mode DISABLE" in f.message


def test_mlb0101_not_when_the_server_accepts_plaintext():
    assert not codes(lesson(dr("b", "service-b-v1", mode="DISABLE")), "MLB0101")
    workload_permissive = pa("b-perm", mode="PERMISSIVE", selector={"app": "service-b-v1"})
    state = lesson(STRICT_NS, workload_permissive, dr("b", "service-b-v1", mode="DISABLE"))
    assert not codes(state, "MLB0101")


def test_mlb0101_not_for_istio_mutual_or_a_port_level_exception():
    assert not codes(lesson(STRICT_NS, dr("b", "service-b-v1")), "MLB0101")
    port_open = pa("b-port", mode="STRICT", selector={"app": "service-b-v1"},
                   ports={8080: "PERMISSIVE"})  # fmt: skip
    assert not codes(lesson(port_open, dr("b", "service-b-v1", mode="DISABLE")), "MLB0101")


def test_mlb0101_not_for_a_rule_every_client_overrides():
    # The root namespace's rule loses to the service namespace's one everywhere.
    root_rule = dr("root-plain", f"service-b-v1.{NS}.svc.cluster.local", ns=ROOT, mode="DISABLE")
    state = lesson(STRICT_NS, root_rule, dr("b-mtls", "service-b-v1"))
    assert not codes(state, "MLB0101")
    assert codes(lesson(STRICT_NS, root_rule), "MLB0101")


# ---- MLB0102: ISTIO_MUTUAL toward a workload that takes no mTLS ---------------------------------


def test_mlb0102_istio_mutual_toward_no_sidecar():
    f = only(lesson(dr("b", "service-b-v1"), b_sidecar=False), "MLB0102")
    assert f.severity == "Error"
    assert "has no sidecar" in f.message and "503" in f.message


def test_mlb0102_istio_mutual_toward_disable():
    b_off = pa("b-off", mode="DISABLE", selector={"app": "service-b-v1"})
    f = only(lesson(b_off, dr("b", "service-b-v1")), "MLB0102")
    assert "DISABLE" in f.message and "PeerAuthentication istio-meshlab/b-off" in f.message


def test_mlb0102_not_toward_a_sidecar_that_takes_mtls():
    assert not codes(lesson(dr("b", "service-b-v1")), "MLB0102")
    assert not codes(lesson(dr("b", "service-b-v1", mode="DISABLE"), b_sidecar=False), "MLB0102")


# ---- MLB0103: auto mTLS off toward STRICT -------------------------------------------------------


def test_mlb0103_auto_mtls_off_and_no_rule():
    f = only(lesson(STRICT_NS, auto_mtls=False), "MLB0103")
    assert f.resource == "PeerAuthentication istio-meshlab/strict-mtls"
    assert "enableAutoMtls: false" in f.message and "istio-meshlab/service-a" in f.message


def test_mlb0103_not_with_auto_mtls_or_a_rule_or_no_sidecar_client():
    assert not codes(lesson(STRICT_NS), "MLB0103")
    # a rule for every service that is STRICT
    rules = (dr("b", "service-b-v1"), dr("a", "service-a"))
    assert not codes(lesson(STRICT_NS, *rules, auto_mtls=False), "MLB0103")
    lonely = snap(STRICT_NS, pods=[pod("service-b-v1")], services=[service("service-b-v1")],
                  auto_mtls=False)  # fmt: skip
    assert not codes(lonely, "MLB0103")


# ---- MLB0104: plaintext-only clients of STRICT workloads ----------------------------------------


def test_mlb0104_legacy_client_of_strict():
    f = only(lesson(STRICT_NS), "MLB0104")
    assert f.severity == "Warning"
    assert "legacy/legacy-client has no sidecar" in f.message
    assert "service-b-v1.istio-meshlab:8080" in f.message and "curl exit 56" in f.message
    assert "Deployment legacy/legacy-client" in f.related


def test_mlb0104_mesh_wide_strict_is_the_resource():
    f = only(lesson(pa("default", ROOT, "STRICT")), "MLB0104")
    assert f.resource == "PeerAuthentication istio-system/default"
    assert f.concerns_namespace(NS)  # through the workloads it makes STRICT


def test_mlb0104_not_without_plaintext_clients_or_strict():
    assert not codes(lesson(STRICT_NS, legacy=False), "MLB0104")
    assert not codes(lesson(pa("p", mode="PERMISSIVE")), "MLB0104")
    b_off = pa("b-off", mode="DISABLE", selector={"app": "service-b-v1"})
    f = only(lesson(STRICT_NS, b_off), "MLB0104")
    assert "service-b-v1" not in f.message  # B is DISABLE now; only service-a is STRICT


# ---- MLB0201: portLevelMtls keys ----------------------------------------------------------------


def test_mlb0201_service_port_instead_of_container_port():
    alt = Service("b-alt", NS, {"app": "service-b-v1"}, (ServicePort(80, 8080, "http"),))
    policy = pa("b-port", mode="STRICT", selector={"app": "service-b-v1"}, ports={80: "DISABLE"})
    f = only(lesson(policy, services=[alt]), "MLB0201")
    assert "Service port of b-alt (80 -> targetPort 8080)" in f.message
    assert "silently ignored" in f.message
    assert "portLevelMtls: {8080: ...}" in f.fix


def test_mlb0201_unknown_port():
    policy = pa("b-port", mode="STRICT", selector={"app": "service-b-v1"}, ports={9999: "DISABLE"})
    f = only(lesson(policy), "MLB0201")
    assert "9999" in f.message and "its ports: 8080" in f.message


def test_mlb0201_not_for_a_container_port():
    policy = pa("b-port", mode="STRICT", selector={"app": "service-b-v1"}, ports={8080: "DISABLE"})
    assert not codes(lesson(policy), "MLB0201")


# ---- MLB0202: selector matches nothing ----------------------------------------------------------


def test_mlb0202_selector_matches_no_pod():
    f = only(lesson(pa("typo", mode="STRICT", selector={"app": "service-b"})), "MLB0202")
    assert "app=service-b matches no pod in namespace istio-meshlab" in f.message


def test_mlb0202_hints_at_another_namespace():
    f = only(lesson(pa("x", LEGACY, "STRICT", selector={"app": "service-b-v1"})), "MLB0202")
    assert "other namespaces: service-b-v1" in f.message


def test_mlb0202_not_when_it_matches():
    assert not codes(lesson(pa("b", mode="STRICT", selector={"app": "service-b-v1"})), "MLB0202")


# ---- MLB0203: DestinationRule host matches no service -------------------------------------------


def test_mlb0203_unknown_host():
    f = only(lesson(dr("typo", "service-b")), "MLB0203")
    assert "read as service-b.istio-meshlab.svc.cluster.local" in f.message


def test_mlb0203_short_name_in_the_wrong_namespace():
    f = only(lesson(dr("b", "service-b-v1", ns=LEGACY)), "MLB0203")
    assert "did you mean service-b-v1.istio-meshlab.svc.cluster.local" in f.message


@pytest.mark.parametrize(
    "host",
    ["service-b-v1", f"service-b-v1.{NS}.svc.cluster.local", f"*.{NS}.svc.cluster.local", "*"],
)
def test_mlb0203_not_for_matching_hosts(host):
    assert not codes(lesson(dr("b", host)), "MLB0203")


# ---- MLB0204: selector policy in the root namespace ---------------------------------------------


def test_mlb0204_root_namespace_selector():
    f = only(lesson(pa("b", ROOT, "STRICT", selector={"app": "service-b-v1"})), "MLB0204")
    assert "ignored" in f.message
    assert not codes(lesson(pa("b", ROOT, "STRICT", selector={"app": "service-b-v1"})), "MLB0104")


def test_mlb0204_not_for_a_mesh_wide_policy():
    assert not codes(lesson(pa("default", ROOT, "STRICT")), "MLB0204")


# ---- MLB0205: several namespace-wide policies ---------------------------------------------------


def test_mlb0205_only_the_oldest_applies():
    old = pa("strict-mtls", mode="STRICT", created=1.0)
    new = pa("permissive-mtls", mode="PERMISSIVE", created=2.0)
    f = only(lesson(new, old), "MLB0205")
    assert f.resource == "PeerAuthentication istio-meshlab/permissive-mtls"
    assert "only the oldest, strict-mtls (mode STRICT), applies" in f.message
    assert f.related == ("PeerAuthentication istio-meshlab/strict-mtls",)


def test_mlb0205_mesh_wide_too():
    f = only(lesson(pa("a", ROOT, "STRICT", created=1), pa("b", ROOT, "DISABLE", created=2)),
             "MLB0205")  # fmt: skip
    assert "mesh-wide" in f.message and f.name == "b"


def test_mlb0205_not_for_different_levels_or_namespaces():
    assert not codes(
        lesson(STRICT_NS, pa("b", mode="DISABLE", selector={"app": "service-b-v1"})), "MLB0205"
    )
    assert not codes(lesson(STRICT_NS, pa("other", LEGACY, "STRICT")), "MLB0205")


# ---- MLB0206: several workload policies on one workload -----------------------------------------


def test_mlb0206_two_selectors_on_one_workload():
    old = pa("b-strict", mode="STRICT", selector={"app": "service-b-v1"}, created=1)
    new = pa("b-v1-off", mode="DISABLE", selector={"app": "service-b-v1"}, created=2)
    f = only(lesson(old, new), "MLB0206")
    assert f.name == "b-v1-off" and "only the oldest, b-strict, applies" in f.message


def test_mlb0206_not_for_different_workloads():
    a = pa("a", mode="STRICT", selector={"app": "service-a"})
    b = pa("b", mode="STRICT", selector={"app": "service-b-v1"})
    assert not codes(lesson(a, b), "MLB0206")


# ---- MLB0301 / MLB0302: injection ---------------------------------------------------------------


def test_mlb0301_labelled_namespace_pod_without_sidecar():
    f = only(lesson(b_sidecar=False), "MLB0301")
    assert f.resource == "Deployment istio-meshlab/service-b-v1"
    assert "istio-injection=enabled" in f.message
    assert f.fix == "meshlab rollout restart deployment/service-b-v1 -n istio-meshlab"
    assert "Namespace istio-meshlab" in f.related


def test_mlb0301_not_when_the_pod_opts_out_or_the_namespace_is_not_labelled():
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "service-b-v1", "namespace": NS},
        "spec": {"template": {"metadata": {"labels": {"app": "service-b-v1"},
                 "annotations": {"sidecar.istio.io/inject": "false"}}}},
    }  # fmt: skip
    assert not codes(MeshState(lesson(b_sidecar=False), (deployment,)), "MLB0301")
    assert not codes(lesson(), "MLB0301")  # legacy-client: namespace legacy is not labelled


def test_mlb0302_sidecar_left_after_unlabelling():
    state = snap(pods=[pod("service-b-v1")], services=[service("service-b-v1")],
                 namespaces={NS: {}})  # fmt: skip
    f = only(state, "MLB0302")
    assert f.severity == "Info" and "re-created" in f.message
    assert not codes(lesson(), "MLB0302")


def test_every_check_has_a_positive_case_here():
    """Guard: the catalogue and the checks stay in step with these tests."""
    states = [
        lesson(STRICT_NS, dr("b", "service-b-v1", mode="DISABLE")),
        lesson(dr("b", "service-b-v1"), b_sidecar=False),
        lesson(STRICT_NS, auto_mtls=False),
        lesson(pa("b", mode="STRICT", selector={"app": "service-b-v1"}, ports={9999: "DISABLE"})),
        lesson(pa("typo", mode="STRICT", selector={"app": "nope"}), dr("t", "nope")),
        lesson(pa("b", ROOT, "STRICT", selector={"app": "x"})),
        lesson(pa("a", created=1), pa("b", created=2)),
        lesson(
            pa("a", selector={"app": "service-a"}, created=1),
            pa("b", selector={"app": "service-a"}, created=2),
        ),
        snap(pods=[pod("service-b-v1")], namespaces={NS: {}}),
    ]
    seen = {f.code for s in states for f in run_checks(s)}
    assert seen == set(CHECKS)


def test_a_clean_lesson_has_no_findings():
    assert run_checks(lesson(dr("b", "service-b-v1"))) == []
    assert run_checks(lesson(pa("p", mode="PERMISSIVE"))) == []


# ---- proposed files, findings_for, reports ------------------------------------------------------

DR_DISABLE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: service-b-v1-plaintext, namespace: istio-meshlab}
spec:
  host: service-b-v1
  trafficPolicy: {tls: {mode: DISABLE}}
"""

NS_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-mtls, namespace: istio-meshlab}
spec: {mtls: {mode: STRICT}}
"""

NS_PERMISSIVE = NS_STRICT.replace("strict-mtls", "permissive-mtls").replace("STRICT", "PERMISSIVE")


def test_analyze_a_proposed_file_against_the_applied_state():
    report = analyze(lesson(STRICT_NS), load(DR_DISABLE), files=["dr.yaml"])
    assert "MLB0101" in report.codes()
    assert report.exit_code() == EXIT_FOUND_ISSUES == 79
    first = str(report).splitlines()[0]
    assert first.startswith(
        "Error [MLB0101] (DestinationRule istio-meshlab/service-b-v1-plaintext) "
    )
    assert report.to_dict()["files"] == ["dr.yaml"]


def test_proposed_objects_are_newest_and_replacements_keep_their_age():
    # a proposed second namespace-wide policy is the newer one: it is the one ignored
    f = only(merge_proposed(MeshState(lesson(STRICT_NS)), load(NS_PERMISSIVE)), "MLB0205")
    assert f.name == "permissive-mtls"
    # re-applying strict-mtls with another mode keeps its creation time (still the oldest)
    newer = pa("late", mode="PERMISSIVE", created=5.0)
    merged = merge_proposed(MeshState(lesson(STRICT_NS, newer)), load(NS_STRICT))
    assert only(merged, "MLB0205").name == "late"


def test_proposed_deployment_gets_planned_pods_with_injection():
    deploy = load("deployments/service-a.yaml")
    empty = MeshState(snap(namespaces={NS: INJECTED}))
    merged = merge_proposed(empty, deploy)
    (planned,) = merged.snapshot.pods
    assert planned.sidecar and planned.container_ports == (8080,)
    # an existing pod with the same template is kept
    kept = merge_proposed(MeshState(merged.snapshot, merged.objects), deploy)
    assert kept.snapshot.pods == merged.snapshot.pods


def test_proposed_template_change_recreates_pods_with_injection_decided_again():
    (deploy,) = [r for r in load("deployments/service-b-v1.yaml") if r.kind == "Deployment"]
    old_body = {**deploy.body, "spec": {**deploy.body["spec"], "replicas": 2}}
    old_body["spec"]["template"] = {**deploy.body["spec"]["template"], "metadata": {}}
    stale = MeshState(
        snap(pods=[pod("service-b-v1", sidecar=False)], namespaces={NS: INJECTED}), (old_body,)
    )
    assert codes(stale, "MLB0301")
    merged = merge_proposed(stale, [deploy])
    (new_pod,) = merged.snapshot.pods
    assert new_pod.sidecar and new_pod.name != stale.snapshot.pods[0].name
    assert not codes(merged, "MLB0301")


def test_proposed_relabel_flags_the_restart():
    plain = snap(pods=[pod("service-b-v1", sidecar=False)], namespaces={NS: {}})
    report = analyze(plain, load("deployments/namespace.yaml"))
    assert report.codes() == ["MLB0301"]
    assert report.exit_code() == 0  # a warning only
    assert report.exit_code("Warning") == EXIT_FOUND_ISSUES


def test_relabel_applied_warns_about_the_restart():
    plain = snap(pods=[pod("service-b-v1", sidecar=False)], namespaces={NS: INJECTED})
    (f,) = findings_for(load("deployments/namespace.yaml"), plain)
    assert f.code == "MLB0301" and f.concerns_namespace(NS)
    assert not f.concerns_namespace("istio")


def test_namespace_filter_keeps_findings_that_concern_it():
    state = lesson(STRICT_NS, dr("t", "nope", ns=LEGACY))
    assert {f.code for f in analyze(state, namespace=LEGACY).findings} == {"MLB0104", "MLB0203"}
    assert {f.code for f in analyze(state, namespace=NS).findings} == {"MLB0104"}


def test_findings_for_what_apply_changed():
    state = lesson(STRICT_NS, dr("service-b-v1-plaintext", "service-b-v1", mode="DISABLE"))
    (dr_res,) = load(DR_DISABLE)
    got = findings_for([dr_res], state)
    assert [f.code for f in got] == ["MLB0101"]
    # applying the STRICT policy concerns the rule's conflict too, and the legacy client
    got = findings_for(load(NS_STRICT), state)
    assert {f.code for f in got} == {"MLB0101", "MLB0104"}
    # an unrelated object: nothing
    svc = {"kind": "Service", "metadata": {"name": "other", "namespace": LEGACY}}
    assert findings_for([svc], state) == []
    assert got[0].apply_warning().startswith("[MLB0101 Error] (DestinationRule ")
    lines = apply_warnings([dr_res], state)
    assert lines == [got[0].apply_warning()]
    assert (
        str(ApplyResult(["x created"], lines))
        .splitlines()[1]
        .startswith(
            "Warning: [MLB0101 Error] (DestinationRule istio-meshlab/service-b-v1-plaintext) "
        )
    )


def test_report_without_findings_says_so():
    report = AnalysisReport([], namespace=NS)
    assert (
        str(report) == "\u2714 No validation issues found when analyzing namespace: istio-meshlab."
    )
    assert report.exit_code() == 0
    assert report.to_dict()["counts"] == {"Error": 0, "Warning": 0, "Info": 0}
    with pytest.raises(ValueError):
        report.exit_code("Fatal")


def test_report_html_escapes():
    f = Finding("MLB0203", "DestinationRule", "<x>", NS, "host <b> matches no Service")
    html = AnalysisReport([f])._repr_html_()
    assert "&lt;b&gt;" in html and "<b>" not in html
