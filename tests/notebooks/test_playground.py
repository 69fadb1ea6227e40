"""meshlab.playground: the settings -> manifests logic, what each combination does on a real
embedded mesh (Istio's semantics), and the widget wiring driven from Python."""

from __future__ import annotations

import pytest

from meshlab import lesson, playground
from meshlab.errors import MeshlabError
from meshlab.playground import Playground, Settings

A, LEGACY = "service-a.istio-meshlab", "legacy-client.legacy"
A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"


def test_settings_reject_unknown_modes_with_the_choices():
    with pytest.raises(MeshlabError, match="'STRICTT': expected one of none, PERMISSIVE, STRICT"):
        Settings(peer_authentication="STRICTT")
    with pytest.raises(MeshlabError, match="DestinationRule TLS mode 'MUTUAL'"):
        Settings(destination_rule="MUTUAL")


def test_manifests_are_valid_istio_objects():
    import yaml

    from meshlab.resources import load

    assert playground.manifests(Settings()) == []
    docs = playground.manifests(Settings("STRICT", "DISABLE"))
    resources = load(yaml.safe_dump_all(docs))
    assert [(r.kind, r.namespace, r.name) for r in resources] == [
        ("PeerAuthentication", "istio-meshlab", "default"),
        ("DestinationRule", "istio-meshlab", "service-b-v1"),
    ]
    assert docs[0]["spec"] == {"mtls": {"mode": "STRICT"}}
    assert docs[1]["spec"]["trafficPolicy"] == {"tls": {"mode": "DISABLE"}}


@pytest.fixture(scope="module")
def lab(mesh):
    lesson.prepare(mesh, "sidecars")
    return mesh


# (settings, service-a's code, what crossed the wire from it, caller B saw, legacy's code)
CASES = [
    (Settings(), "200", "encrypted (TLS)", A_ID, "200"),
    (Settings("STRICT"), "200", "encrypted (TLS)", A_ID, "000"),
    # a client-side DISABLE never relaxes STRICT: 503 from service-a's own sidecar
    (Settings("STRICT", "DISABLE"), "503", "plaintext HTTP, reset unanswered", None, "000"),
    # no auto mTLS and no rule: the client sidecar sends plaintext
    (Settings("STRICT", auto_mtls=False), "503", "plaintext HTTP, reset unanswered", None, "000"),
    (Settings("STRICT", "ISTIO_MUTUAL", auto_mtls=False), "200", "encrypted (TLS)", A_ID, "000"),
    # auto mTLS sees the server's DISABLE and sends plaintext
    (Settings("DISABLE"), "200", "plaintext HTTP", None, "200"),
    # an explicit ISTIO_MUTUAL wins over auto mTLS: the ClientHello meets a plaintext listener
    (Settings("DISABLE", "ISTIO_MUTUAL"), "503",
     "TLS ClientHello answered in plaintext: HTTP/1.1 400 Bad Request", None, "200"),
    # no sidecars: nothing enforces STRICT
    (Settings("STRICT", injection=False), "200", "plaintext HTTP", None, "200"),
    (Settings("PERMISSIVE"), "200", "encrypted (TLS)", A_ID, "200"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "a_code", "a_wire", "a_caller", "legacy_code"), CASES,
                         ids=[c[0].describe() for c in CASES])  # fmt: skip
def test_each_combination_behaves_as_istio(lab, settings, a_code, a_wire, a_caller, legacy_code):
    playground.apply_settings(lab, settings)
    seen = playground.observe(lab)
    assert seen.status(A) == a_code, seen
    assert seen.wire[A] == a_wire, seen
    assert seen.identity[A] == a_caller, seen
    assert seen.status(LEGACY) == legacy_code, seen
    if legacy_code == "000":
        assert seen.matrix.result(LEGACY, playground.TARGET).curl_exit_code == 56
        assert seen.wire[LEGACY] == "plaintext HTTP, reset unanswered"
    assert lesson.sidecars(lab) == {"service-a": settings.injection,
                                    "service-b-v1": settings.injection}  # fmt: skip
    # the same settings again change nothing
    assert playground.apply_settings(lab, settings) == []


def test_apply_settings_reports_what_changed(lab):
    playground.apply_settings(lab, Settings())
    changes = playground.apply_settings(lab, Settings("STRICT", "DISABLE", auto_mtls=False))
    assert changes == [
        "meshConfig.enableAutoMtls set to false",
        "peerauthentication.security.istio.io/default created",
        "destinationrule.networking.istio.io/service-b-v1 created",
    ]
    assert playground.apply_settings(lab, Settings()) == [
        "meshConfig.enableAutoMtls set to true",
        "peerauthentication.security.istio.io/default deleted",
        "destinationrule.networking.istio.io/service-b-v1 deleted",
    ]


def test_widgets_drive_the_mesh(lab):
    pg = Playground(lab)
    assert pg.error is None and pg.updates == 1
    assert pg.observation.status(LEGACY) == "200"

    pg.peer_authentication.value = "STRICT"  # what choosing it in the menu does
    assert pg.error is None and pg.updates == 2
    assert pg.observation.status(LEGACY) == "000"
    assert [o["spec"]["mtls"]["mode"] for o in lab.get("pa")] == ["STRICT"]
    assert "peerauthentication.security.istio.io/default created" in pg.status.value
    assert "000" in pg.result.value
    assert not any(c.disabled for c in pg.controls)

    pg.set(destination_rule="DISABLE", auto_mtls=False)  # two controls, one update
    assert pg.updates == 3 and pg.settings == Settings("STRICT", "DISABLE", auto_mtls=False)
    assert pg.observation.status(A) == "503"

    pg.set(peer_authentication="none", destination_rule="none", auto_mtls=True)
    assert pg.observation.status(A) == "200" and pg.observation.status(LEGACY) == "200"
    bundle = pg._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == pg.summary()
    assert bundle["text/plain"].splitlines()[0] == (
        "Playground: PeerAuthentication none, DestinationRule none, auto mTLS on, injection on"
    )


def test_an_error_in_a_callback_is_recorded_and_shown(lab, monkeypatch):
    pg = Playground(lab)

    def broken(mesh, settings):
        raise MeshlabError("the mesh daemon is not running")

    monkeypatch.setattr(playground, "apply_settings", broken)
    pg.peer_authentication.value = "DISABLE"
    assert pg.error == "MeshlabError: the mesh daemon is not running"
    assert pg.observation is None
    assert "the mesh daemon is not running" in pg.status.value
    assert not any(c.disabled for c in pg.controls)
    assert "error: MeshlabError" in pg.summary()
