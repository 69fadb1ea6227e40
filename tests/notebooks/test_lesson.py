"""meshlab.lesson: the helpers the notebooks call. Pure parts on canned data, then the
stage machinery and the views on a real embedded mesh."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from meshlab import lesson
from meshlab.api import CallResult, MeshStatus
from meshlab.capture import Capture
from meshlab.errors import MeshlabError, NotSupportedError
from tests.conftest import DEPLOYMENTS, NS

A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
B_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"
XFCC = f'By={B_ID};Hash={"ab" * 32};Subject="";URI={A_ID}'
A, B, LEGACY = "service-a.istio-meshlab", "service-b-v1.istio-meshlab", "legacy-client.legacy"
ENVOY_503 = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection "
    "termination"
)


def b_body(xfcc: str | None) -> str:
    import json

    caller = A_ID if xfcc else None
    return json.dumps({"service": "service-b-v1", "caller": caller, "xfcc": xfcc})


def a_body(xfcc: str | None) -> str:
    import json

    inner = json.loads(b_body(xfcc))
    return json.dumps({"service": "service-a", "upstream_status": 200, "upstream_body": inner})


RESET = CallResult(status=None, error="connection reset by peer")


# ---- calls and replies -------------------------------------------------------------------


def test_show_indents_json_and_redacts_the_hash():
    text = str(lesson.show(CallResult(200, body=a_body(XFCC))))
    assert text.splitlines()[0] == "HTTP 200"
    assert '"upstream_status": 200' in text
    assert "Hash=<redacted>" in text and "ab" * 32 not in text


def test_show_a_reset_like_curl():
    assert str(lesson.show(RESET)) == (
        "000  curl: (56) Recv failure: Connection reset by peer  (exit code 56)"
    )
    assert lesson.curl_line(CallResult(503, body=ENVOY_503)) == "HTTP 503"
    assert str(lesson.show(CallResult(503, body=ENVOY_503))).splitlines()[1] == ENVOY_503


def test_xfcc_and_caller_read_nested_and_direct_replies():
    nested, direct = CallResult(200, body=a_body(XFCC)), CallResult(200, body=b_body(XFCC))
    for reply in (nested, direct):
        assert lesson.xfcc(reply) == {"By": B_ID, "Hash": "ab" * 32, "Subject": '""', "URI": A_ID}
        assert lesson.caller(reply) == A_ID
    plain = CallResult(200, body=b_body(None))
    assert lesson.xfcc(plain) == {} and lesson.caller(plain) is None
    assert lesson.xfcc(CallResult(503, body=ENVOY_503)) == {}  # not JSON
    assert "plaintext" in str(lesson.show_xfcc(plain))


def test_xfcc_keeps_quoted_semicolons_and_uses_the_last_hop():
    header = f'By=spiffe://x;URI=spiffe://old,By={B_ID};Subject="CN=a;b";URI={A_ID}'
    fields = lesson.xfcc(CallResult(200, body=b_body(header)))
    assert fields == {"By": B_ID, "Subject": '"CN=a;b"', "URI": A_ID}


def test_show_xfcc_lists_each_field_with_the_hash_redacted():
    text = str(lesson.show_xfcc(CallResult(200, body=b_body(XFCC))))
    assert [line.split()[0] for line in text.splitlines()] == ["By", "Hash", "Subject", "URI"]
    assert "<redacted>" in text and "ab" * 32 not in text


# ---- the matrix --------------------------------------------------------------------------


def matrix() -> lesson.Matrix:
    results = {
        (A, A): CallResult(200),
        (A, B): CallResult(503, body=ENVOY_503),
        (LEGACY, A): RESET,
        (LEGACY, B): CallResult(200),
    }
    return lesson.Matrix([A, LEGACY], [A, B], results)


def test_matrix_prints_istio_io_lines():
    assert str(matrix()).splitlines() == [
        f"{A} to {A}: 200",
        f"{A} to {B}: 503",
        f"{LEGACY} to {A}: 000 (exit 56)",
        f"{LEGACY} to {B}: 200",
    ]
    m = matrix()
    assert m.status(LEGACY, A) == "000" and m.status(A, B) == "503"
    assert m.result(LEGACY, A).curl_exit_code == 56


def test_matrix_html_marks_failures_with_their_reason():
    html = matrix()._repr_html_()
    assert html.count('class="bad"') == 2 and html.count('class="ok"') == 2
    assert "curl exit 56: connection reset by peer" in html
    assert "connection termination" in html


def test_matrix_names_the_pair_it_does_not_have():
    with pytest.raises(KeyError, match="no call from 'nope' to"):
        matrix().status("nope", A)


# ---- stages ------------------------------------------------------------------------------


def test_every_stage_names_existing_manifests():
    for stage in lesson.STAGES.values():
        for name in stage.policies:
            assert lesson.manifest(name).is_file()
    assert lesson.deployments_dir() == DEPLOYMENTS


def test_unknown_stage_and_manifest_are_clear_errors():
    with pytest.raises(MeshlabError, match="unknown stage 'strikt': expected one of empty"):
        lesson.prepare(None, "strikt")  # type: ignore[arg-type]
    with pytest.raises(MeshlabError, match=r"no manifest 'nope\.yaml'"):
        lesson.manifest("nope.yaml")


class NoConfigureMesh:
    """A backend that reports no mesh settings and cannot change them."""

    backend = "kubernetes"

    def status(self) -> MeshStatus:
        return MeshStatus(backend=self.backend, running=True)


def test_configure_accepts_defaults_and_refuses_changes_without_backend_support():
    mesh = NoConfigureMesh()
    assert lesson.configure(mesh, auto_mtls=True)["auto_mtls"] is True  # type: ignore[arg-type]
    with pytest.raises(NotSupportedError, match="enableAutoMtls"):
        lesson.configure(mesh, auto_mtls=False)  # type: ignore[arg-type]


class SettingsMesh:
    """A backend whose mesh settings live in a dict (like a meshConfig), refusing
    ``tls_max_version`` changes when ``caps_tls`` is False (as the kubernetes one does)."""

    backend = "fake"

    def __init__(self, caps_tls: bool = True, fail_restore: bool = False) -> None:
        self.settings = {"auto_mtls": True}
        self.caps_tls = caps_tls
        self.fail_restore = fail_restore
        self.log: list[tuple[str, object]] = []

    def status(self) -> MeshStatus:
        return MeshStatus(backend=self.backend, running=True, details=dict(self.settings))

    def configure(self, **settings):
        self.log.append(("configure", settings))
        if self.fail_restore and settings.get("auto_mtls") is True:
            raise MeshlabError("the cluster went away")
        if settings.get("tls_max_version", "TLSv1_3") != "TLSv1_3" and not self.caps_tls:
            raise NotSupportedError("tls_max_version: no such mesh setting here")
        self.settings.update(settings)
        return {"tls_max_version": "TLSv1_3", **self.settings}

    def rollout_restart(self, deployment, namespace=None):
        self.log.append(("restart", deployment))
        return [f"deployment.apps/{deployment} restarted"]

    @contextlib.contextmanager
    def capture(self, workload, namespace=None, port=8080):
        self.log.append(("capture", self.settings.get("tls_max_version", "TLSv1_3")))
        yield Capture([], workload=workload, namespace=namespace or "", port=port)

    def call(self, workload, url, namespace=None, **kwargs):
        self.log.append(("call", workload))
        return CallResult(200, body=a_body(XFCC))


class Shell:
    """The part of an IPython shell the restore hook uses: its real event manager."""

    def __init__(self) -> None:
        from IPython.core.events import EventManager, available_events

        self.events = EventManager(self, available_events)


def cell(ok: bool):
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult

    result = ExecutionResult(ExecutionInfo("x", False, False, False, None))
    if not ok:
        result.error_in_exec = RuntimeError("a cell failed")
    return result


@pytest.fixture
def shell(monkeypatch):
    fake = Shell()
    monkeypatch.setattr(lesson, "_ipython", lambda: fake)
    monkeypatch.setattr(lesson._RestoreOnFailure, "active", {})
    return fake


def test_a_failing_cell_puts_changed_mesh_settings_back(shell, capsys):
    mesh = SettingsMesh()
    lesson.configure(mesh, auto_mtls=False)
    shell.events.trigger("post_run_cell", cell(ok=True))
    assert mesh.settings["auto_mtls"] is False  # cells that succeed change nothing
    shell.events.trigger("post_run_cell", cell(ok=False))
    assert mesh.log[-1] == ("configure", {"auto_mtls": True})  # only what differs
    assert mesh.settings["auto_mtls"] is True
    assert capsys.readouterr().out == (
        "A cell failed: mesh-wide settings put back to Istio's defaults (auto mTLS on; "
        "client sidecars offer TLS 1.2 up to 1.3).\n"
    )
    assert shell.events.callbacks["post_run_cell"] == []  # once only
    assert len(mesh.log) == 2


def test_the_restore_hook_leaves_with_the_defaults_and_reports_its_own_failure(shell, capsys):
    mesh = SettingsMesh()
    lesson.configure(mesh, auto_mtls=False)
    lesson.configure(mesh, auto_mtls=False)  # already so: still one hook
    assert len(shell.events.callbacks["post_run_cell"]) == 1
    lesson.configure(mesh, auto_mtls=True)  # the lesson's own restoring step
    assert shell.events.callbacks["post_run_cell"] == []
    shell.events.trigger("post_run_cell", cell(ok=False))
    assert capsys.readouterr().out == ""

    broken = SettingsMesh(fail_restore=True)
    lesson.configure(broken, auto_mtls=False)
    shell.events.trigger("post_run_cell", cell(ok=False))
    out = capsys.readouterr().out
    assert "putting Istio's defaults back failed too: the cluster went away" in out
    assert "lesson.configure(mesh, auto_mtls=True)" in out


def test_no_restore_hook_outside_ipython(monkeypatch):
    monkeypatch.setattr(lesson, "_ipython", lambda: None)
    monkeypatch.setattr(lesson._RestoreOnFailure, "active", {})
    lesson.configure(SettingsMesh(), auto_mtls=False)
    assert lesson._RestoreOnFailure.active == {}


# ---- TLS 1.2 against 1.3 ------------------------------------------------------------------


def test_compare_tls_versions_caps_then_restores_when_the_backend_can():
    mesh = SettingsMesh()
    wire = lesson.compare_tls_versions(mesh)
    assert mesh.log == [
        ("configure", {"tls_max_version": "TLSv1_2"}),
        ("capture", "TLSv1_2"),
        ("call", "service-a"),
        ("configure", {"tls_max_version": "TLSv1_3"}),
        ("capture", "TLSv1_3"),
        ("call", "service-a"),
    ]
    assert wire.tls12 is not None and not wire.refused and not wire.restarted
    assert repr(wire).splitlines() == [
        "TLS 1.2: nothing captured",
        "TLS 1.3 (Istio's choice): nothing captured",
    ]


def test_compare_tls_versions_restores_tls_13_when_the_capture_fails():
    mesh = SettingsMesh()

    def broken(*args, **kwargs):
        raise MeshlabError("capture failed")

    mesh.call = broken  # type: ignore[method-assign]
    with pytest.raises(MeshlabError, match="capture failed"):
        lesson.compare_tls_versions(mesh)
    assert mesh.settings["tls_max_version"] == "TLSv1_3"


def test_compare_tls_versions_shows_tls_13_alone_and_why_on_a_backend_that_refuses():
    mesh = SettingsMesh(caps_tls=False)
    wire = lesson.compare_tls_versions(mesh)
    assert mesh.log == [
        ("configure", {"tls_max_version": "TLSv1_2"}),
        ("restart", "service-a"),  # a new sidecar: a new connection, handshake included
        ("capture", "TLSv1_3"),
        ("call", "service-a"),
    ]
    assert wire.tls12 is None and wire.refused == "tls_max_version: no such mesh setting here"
    text = repr(wire)
    assert text.splitlines()[0] == "TLS 1.3 (Istio's choice): nothing captured"
    assert "TLS 1.2: not captured" in text and "MESHLAB_BACKEND=embedded" in text
    assert "service-a was restarted first" in text
    html = wire._repr_html_()
    assert "TLS 1.3 (Istio&#x27;s choice)" in html and "needs the embedded mesh" in html
    assert wire.explain("1.2") == "TLS 1.2: no capture on this backend (see the comparison above)."
    assert wire.explain("TLS 1.3") == wire.tls13.explain_tls()
    with pytest.raises(MeshlabError, match="expected '1.2' or '1.3'"):
        wire.explain("1.1")


def fake_capture(versions, ids, readable=False):
    from types import SimpleNamespace

    return SimpleNamespace(tls_versions=versions, spiffe_ids=ids, readable_http=readable)


def test_tls12_checks_are_kept_whenever_there_is_a_capture():
    ids = {A_ID, B_ID}
    good = lesson.TlsComparison(
        fake_capture(["TLS 1.3"], []), fake_capture(["TLS 1.2"], [B_ID, A_ID])
    )
    assert good.check_tls12(ids) == "TLS 1.2 leaks both SPIFFE IDs, TLS 1.3 none"
    for wrong, message in (
        (fake_capture(["TLS 1.3"], []), r"negotiated \['TLS 1.3'\]"),
        (fake_capture(["TLS 1.2"], [B_ID]), "identities on the wire"),
        (fake_capture(["TLS 1.2"], [B_ID, A_ID], readable=True), "HTTP readable"),
    ):
        with pytest.raises(AssertionError, match=message):
            lesson.TlsComparison(good.tls13, wrong).check_tls12(ids)
    with pytest.raises(AssertionError, match="did not refuse"):
        lesson.TlsComparison(good.tls13).check_tls12(ids)
    refused = lesson.TlsComparison(good.tls13, refused="no such setting")
    assert refused.check_tls12(ids) == "TLS 1.3 hides both SPIFFE IDs (TLS 1.2: embedded mesh only)"


# ---- sidecar config views on canned dumps --------------------------------------------------

CLUSTER = "outbound|8080||service-b-v1.istio-meshlab.svc.cluster.local"
TLS_SOCKET = {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {
        "sni": "outbound_.8080_._.service-b-v1.istio-meshlab.svc.cluster.local",
        "common_tls_context": {
            "alpn_protocols": ["istio-peer-exchange", "istio"],
            "tls_certificate_sds_secret_configs": [{"name": "default"}],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [{"matcher": {"exact": B_ID}}]
                },
                "validation_context_sds_secret_config": {"name": "ROOTCA"},
            },
        },
    },
}


class DumpMesh:
    backend = "embedded"

    def __init__(self, clusters=(), listeners=()):
        self.dumps = {
            "dynamic_active_clusters": {"configs": [{"cluster": c} for c in clusters]},
            "dynamic_listeners": {
                "configs": [{"name": lst["name"], "active_state": {"listener": lst}}
                            for lst in listeners]
            },
        }  # fmt: skip

    def sidecar_config(self, workload, namespace=None, resource=""):
        return self.dumps[resource]


def test_cluster_tls_explains_auto_mtls_matches():
    cluster = {
        "name": CLUSTER,
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": TLS_SOCKET},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"}},
        ],
    }  # fmt: skip
    lines = str(lesson.cluster_tls(DumpMesh([cluster]), "service-a", "service-b-v1")).splitlines()
    assert lines[0] == CLUSTER
    assert lines[2].startswith("    tlsMode-istio [tlsMode=istio]: TLS; SNI outbound_.8080_.")
    assert "cert SDS default; CA SDS ROOTCA; peer SAN " + B_ID in lines[2]
    assert lines[3] == "    tlsMode-disabled [any other]: plaintext (raw_buffer)"


def test_cluster_tls_names_the_destination_rule_that_set_it():
    config = "/apis/networking.istio.io/v1/namespaces/istio-meshlab/destination-rule/b-plain"
    cluster = {"name": CLUSTER, "metadata": {"filter_metadata": {"istio": {"config": config}}}}
    text = str(lesson.cluster_tls(DumpMesh([cluster]), "service-a", "service-b-v1"))
    assert text.splitlines()[1:] == [
        "  no transport_socket: plaintext (raw_buffer)",
        "  set by DestinationRule istio-meshlab/b-plain",
    ]
    assert "not in service-a's sidecar" in str(lesson.cluster_tls(DumpMesh(), "service-a", "x"))


def test_inbound_chains_show_permissive_and_strict():
    tls_chain = {
        "name": "0.0.0.0_8080",
        "filter_chain_match": {"destination_port": 8080, "transport_protocol": "tls",
                               "application_protocols": ["istio"]},
        "transport_socket": {"typed_config": {"require_client_certificate": True}},
    }  # fmt: skip
    plain_chain = {
        "name": "0.0.0.0_8080",
        "filter_chain_match": {"destination_port": 8080, "transport_protocol": "raw_buffer"},
    }
    other = {"name": "blackhole", "filter_chain_match": {"destination_port": 15006}}
    listener = {"name": "virtualInbound", "filter_chains": [other, tls_chain, plain_chain]}
    lines = str(lesson.inbound_chains(DumpMesh(listeners=[listener]), "b")).splitlines()
    assert lines == [
        "virtualInbound, filter chains for port 8080:",
        "  0.0.0.0_8080: TLS, ALPN istio; requires a client certificate (mutual TLS)",
        "  0.0.0.0_8080: plaintext (raw_buffer)",
    ]


def test_views_need_a_backend_with_config_dumps():
    with pytest.raises(NotSupportedError, match="istioctl proxy-config"):
        lesson.cluster_tls(NoConfigureMesh(), "service-a", "service-b-v1")  # type: ignore[arg-type]


# ---- certificates, environment, topology -------------------------------------------------


def test_certificate_card_shows_stable_facts_only(tmp_path):
    from meshlab.embedded.ca import CertificateAuthority

    cert = CertificateAuthority.load_or_create(tmp_path / "ca").issue(NS, "service-b-v1")
    text = str(lesson.certificate_card(cert))
    assert f"SPIFFE ID (URI SAN, critical): {B_ID}" in text
    assert "Subject:          (empty)" in text and "Issuer:           O=cluster.local" in text
    assert "Extended usage:   serverAuth, clientAuth" in text
    assert "Valid for:        24 h 02 min" in text and "about 12 h" in text
    assert f"{cert.serial:x}" not in text and cert.fingerprint_sha256 not in text
    short = CertificateAuthority.load_or_create(tmp_path / "ca").issue(
        NS, "service-a", ttl=timedelta(hours=1), key_type="EC"
    )
    assert "Key:              EC P-256" in str(lesson.certificate_card(short))


def test_check_environment_passes_here():
    report = lesson.check_environment()
    assert report.ok, report
    assert repr(report).splitlines()[0].endswith("ok")


@pytest.mark.parametrize("sidecars", [True, False])
def test_topology_draws_sidecars_only_where_they_are(sidecars):
    topo = lesson.Topology(injection=sidecars, sidecars={"service-a": sidecars,
                                                         "service-b-v1": sidecars})  # fmt: skip
    svg = ET.fromstring(topo._repr_svg_())
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert texts.count("istio-proxy") == (2 if sidecars else 0)
    assert ("[istio-proxy]" in repr(topo)) is sidecars


# ---- on a real embedded mesh ---------------------------------------------------------------


def snapshot(mesh):
    pods = sorted((p.namespace, p.name, p.sidecar) for p in mesh.pods())
    policies = sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
        for kind in ("PeerAuthentication", "DestinationRule")
        for o in mesh.get(kind)
    )
    labels = {o["metadata"]["name"]: o["metadata"].get("labels") for o in mesh.get("namespace")}
    return pods, policies, labels


EXPECTED = {
    "empty": (set(), set()),
    "no-sidecars": ({"service-a": False, "service-b-v1": False}, set()),
    "sidecars": ({"service-a": True, "service-b-v1": True}, set()),
    "strict": ({"service-a": True, "service-b-v1": True}, {"strict-mtls"}),
    "strict-dr": ({"service-a": True, "service-b-v1": True}, {"strict-mtls", "service-b-v1-mtls"}),
}


@pytest.mark.parametrize(
    "stage", ["strict", "empty", "no-sidecars", "strict-dr", "sidecars", "no-sidecars", "empty"]
)
def test_prepare_reaches_each_stage_and_a_second_call_changes_nothing(mesh, stage):
    state = lesson.prepare(mesh, stage)
    sidecars, policies = EXPECTED[stage]
    assert (lesson.sidecars(mesh) or set()) == sidecars
    names = {o["metadata"]["name"] for k in ("pa", "dr") for o in mesh.get(k)}
    assert names == policies
    assert repr(state).startswith(f"Stage {stage!r}:")
    before = snapshot(mesh)
    lesson.prepare(mesh, stage)
    assert snapshot(mesh) == before  # no restart, no object rewritten


def test_prepare_removes_leftovers_and_resets_mesh_settings(mesh):
    lesson.prepare(mesh, "sidecars")
    mesh.apply(DEPLOYMENTS / "examples" / "mesh-strict.yaml")
    mesh.apply(DEPLOYMENTS / "examples" / "peer-auth-disable-service-b.yaml")
    mesh.configure(auto_mtls=False, tls_max_version="TLSv1_2")
    state = repr(lesson.prepare(mesh, "strict"))
    assert [o["metadata"]["name"] for o in mesh.get("pa")] == ["strict-mtls"]
    assert lesson.mesh_settings(mesh) == {"auto_mtls": True, "tls_max_version": "TLSv1_3"}
    assert "mesh config: auto mTLS on; client sidecars offer TLS 1.2 up to 1.3" in state
    assert lesson.call_b_from_legacy(mesh).error == "connection reset by peer"


def test_live_matrix_and_views_under_strict(mesh):
    lesson.prepare(mesh, "strict")
    assert str(lesson.connectivity_matrix(mesh)).splitlines() == [
        f"{A} to {A}: 200",
        f"{A} to {B}: 200",
        f"{LEGACY} to {A}: 000 (exit 56)",
        f"{LEGACY} to {B}: 000 (exit 56)",
    ]
    assert str(lesson.inbound_chains(mesh, "service-b-v1")).splitlines()[1:] == [
        "  0.0.0.0_8080: TLS; requires a client certificate (mutual TLS)"
    ]
    assert "transport_socket_matches" in str(lesson.cluster_tls(mesh, "service-a", "service-b-v1"))
    table = str(lesson.pods(mesh)).splitlines()
    assert table[1].split()[:3] == ["istio-meshlab", "service-a", "2/2"]
    assert table[3].split()[:3] == ["legacy", "legacy-client", "1/1"]
    topo = lesson.topology(mesh)
    assert topo.injection and topo.sidecars == {"service-a": True, "service-b-v1": True}
