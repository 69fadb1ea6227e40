"""kubernetes backend, mesh-wide settings: ``configure(auto_mtls=...)`` edits istiod's
meshConfig (ConfigMap ``istio``, key ``mesh``) and ``status()`` reports it.

The requests go to the fake apiserver (tests/unit/fake_apiserver.py), which keeps the
ConfigMap and records what was sent; the text edit is checked on its own first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlab import lesson
from meshlab.errors import ClusterError, MeshlabError, NotSupportedError
from meshlab.kubernetes import KubernetesMesh
from meshlab.kubernetes.inforce import Updates
from meshlab.kubernetes.meshconfig import with_field
from tests.unit.fake_apiserver import FakeApiServer, pod, status

CONFIGMAPS = "/api/v1/namespaces/istio-system/configmaps"
ISTIO_CM = f"{CONFIGMAPS}/istio"
STRATEGIC = "application/strategic-merge-patch+json"

# What `istioctl install` writes, plus a comment a cluster admin added.
MESH = """\
# mesh-wide defaults for the lab cluster (edited by hand)
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  holdApplicationUntilProxyStarts: true
defaultProviders:
  metrics:
  - prometheus
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: cluster.local
"""


def store(fake: FakeApiServer, name: str, text: str | None = MESH, rv: str = "700") -> str:
    """Put a ConfigMap in istio-system, as Istio's installer leaves it; returns its path."""
    path = f"{CONFIGMAPS}/{name}"
    data = {"meshNetworks": "networks: {}"}
    if text is not None:
        data["mesh"] = text
    fake.objects[path] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "istio-system", "resourceVersion": rv},
        "data": data,
    }
    return path


def mesh_text(fake: FakeApiServer, path: str = ISTIO_CM) -> str:
    return str(fake.objects[path]["data"]["mesh"])


class OneShot(dict):  # type: ignore[type-arg]
    """Overrides for the fake that answer once, then let it answer normally."""

    def __getitem__(self, key: Any) -> Any:
        return self.pop(key)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def mesh(fake: FakeApiServer, tmp_path: Path) -> KubernetesMesh:
    return KubernetesMesh(kubeconfig=fake.kubeconfig(tmp_path), settle=0.5)


# ---- the text edit ---------------------------------------------------------------------------


def test_an_absent_field_is_added_and_everything_else_kept_byte_for_byte() -> None:
    edited = with_field(MESH, "enableAutoMtls", False)
    assert edited == MESH + "enableAutoMtls: false\n"
    assert yaml.safe_load(edited) == {**yaml.safe_load(MESH), "enableAutoMtls": False}


def test_a_present_field_is_rewritten_in_place_with_its_comment() -> None:
    text = "enableAutoMtls: false   # lesson 04\ntrustDomain: cluster.local\n"
    assert with_field(text, "enableAutoMtls", True) == (
        "enableAutoMtls: true   # lesson 04\ntrustDomain: cluster.local\n"
    )
    # a nested field of the same name is not the mesh-wide one
    nested = "defaultConfig:\n  enableAutoMtls: false\n"
    assert yaml.safe_load(with_field(nested, "enableAutoMtls", False)) == {
        "defaultConfig": {"enableAutoMtls": False},
        "enableAutoMtls": False,
    }


def test_empty_and_unusual_documents_still_come_out_right() -> None:
    assert with_field("", "enableAutoMtls", False) == "enableAutoMtls: false\n"
    flow = "{trustDomain: cluster.local, enableAutoMtls: true}"
    assert yaml.safe_load(with_field(flow, "enableAutoMtls", False)) == {
        "trustDomain": "cluster.local",
        "enableAutoMtls": False,
    }
    block = "enableAutoMtls:\n  true\nrootNamespace: istio-system\n"
    assert yaml.safe_load(with_field(block, "enableAutoMtls", False)) == {
        "enableAutoMtls": False,
        "rootNamespace": "istio-system",
    }


# ---- configure(auto_mtls=...) ----------------------------------------------------------------


def test_configure_reads_then_patches_the_istio_configmap(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio")
    fake.requests.clear()
    result = mesh.configure(auto_mtls=False)
    assert result == {"auto_mtls": False, "tls_max_version": "TLSv1_3"}
    assert [(r.method, r.path) for r in fake.sent(prefix=CONFIGMAPS)] == [
        ("GET", ISTIO_CM),
        ("PATCH", ISTIO_CM),
    ]
    patch = fake.sent("PATCH")[-1]
    assert patch.content_type == STRATEGIC
    assert patch.params == {"fieldManager": "meshlab"}
    # only data.mesh, and the version that was read (a concurrent change gets a 409)
    assert patch.body == {
        "metadata": {"resourceVersion": "700"},
        "data": {"mesh": MESH + "enableAutoMtls: false\n"},
    }
    assert fake.objects[ISTIO_CM]["data"]["meshNetworks"] == "networks: {}"
    details = mesh.status().details
    assert details["auto_mtls"] is False
    assert details["mesh_config"] == "ConfigMap istio-system/istio, key mesh"
    assert lesson.mesh_settings(mesh) == {"auto_mtls": False}

    assert mesh.configure(auto_mtls=True)["auto_mtls"] is True
    assert mesh_text(fake) == MESH + "enableAutoMtls: true\n"
    assert lesson.mesh_settings(mesh) == {"auto_mtls": True}


def test_nothing_is_written_when_the_setting_is_already_in_force(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio")  # no enableAutoMtls: Istio's default, true
    assert mesh.configure(auto_mtls=True) == {"auto_mtls": True, "tls_max_version": "TLSv1_3"}
    assert mesh.configure() == {"auto_mtls": True, "tls_max_version": "TLSv1_3"}
    assert mesh.configure(tls_max_version="TLSv1_3")["tls_max_version"] == "TLSv1_3"
    assert not fake.sent("PATCH")
    assert mesh_text(fake) == MESH


def test_lesson_configure_goes_through_the_backend(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio")
    assert lesson.configure(mesh, auto_mtls=False)["auto_mtls"] is False
    assert lesson.configure(mesh, auto_mtls=False)["auto_mtls"] is False  # no second PATCH
    assert len(fake.sent("PATCH")) == 1
    assert lesson.configure(mesh, auto_mtls=True, tls_max_version="TLSv1_3") == {
        "auto_mtls": True,
        "tls_max_version": "TLSv1_3",
    }
    assert "mesh config: auto mTLS on" in str(lesson.state(mesh))


def test_configure_waits_for_the_sidecars_as_for_policies(
    fake: FakeApiServer, mesh: KubernetesMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(fake, "istio")
    reads: list[tuple[set[str] | None, int]] = []
    counts = iter([{"ns/a": Updates(4, 0)}, {"ns/a": Updates(4, 0)}, {"ns/a": Updates(5, 0)}])

    def read(scope: set[str] | None) -> tuple[dict[str, Updates], list[str]]:
        reads.append((scope, len(fake.sent("PATCH"))))
        return next(counts), []

    monkeypatch.setattr(mesh, "_read_sidecars", read)
    assert mesh.configure(auto_mtls=False) == {"auto_mtls": False, "tls_max_version": "TLSv1_3"}
    # every namespace (a mesh-wide change), read once before the PATCH, then until updated
    assert reads == [(None, 0), (None, 1), (None, 1)]


def test_a_sidecar_that_rejects_the_push_is_reported(
    fake: FakeApiServer, mesh: KubernetesMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(fake, "istio")
    counts = iter([{"ns/a": Updates(4, 0)}, {"ns/a": Updates(4, 1)}])
    monkeypatch.setattr(mesh, "_read_sidecars", lambda scope: (next(counts), []))
    with pytest.raises(MeshlabError, match="rejected the new configuration"):
        mesh.configure(auto_mtls=False)


def test_a_concurrent_change_is_kept_and_the_edit_made_again(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio")
    other = MESH + "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"
    conflict = status(409, "Conflict", 'Operation cannot be fulfilled on configmaps "istio"')
    fake.overrides = OneShot({("PATCH", ISTIO_CM): (409, conflict)})
    original_answer = fake._answer

    def someone_else_writes_first(rec: Any) -> tuple[int, Any]:
        if rec.method == "GET" and rec.path == ISTIO_CM and fake.sent("PATCH"):
            store(fake, "istio", other, rv="701")
        return original_answer(rec)

    fake._answer = someone_else_writes_first  # type: ignore[method-assign]
    assert mesh.configure(auto_mtls=False)["auto_mtls"] is False
    patches = fake.sent("PATCH")
    assert len(patches) == 2 and patches[1].body["metadata"] == {"resourceVersion": "701"}
    assert mesh_text(fake) == other + "enableAutoMtls: false\n"


def test_a_revisioned_control_plane_uses_istio_dash_revision(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio-sidecar-injector", None)  # an istio-* ConfigMap without mesh config
    path = store(fake, "istio-1-24")
    fake.requests.clear()
    assert mesh.configure(auto_mtls=False)["auto_mtls"] is False
    assert [(r.method, r.path) for r in fake.sent(prefix=CONFIGMAPS)] == [
        ("GET", ISTIO_CM),
        ("GET", CONFIGMAPS),
        ("PATCH", path),
    ]
    assert mesh_text(fake, path).endswith("enableAutoMtls: false\n")
    assert mesh.status().details["mesh_config"] == "ConfigMap istio-system/istio-1-24, key mesh"


def test_several_revisions_pick_the_running_istiods_or_say_which_exist(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    stable, canary = store(fake, "istio-stable"), store(fake, "istio-canary")
    with pytest.raises(ClusterError) as err:
        mesh.configure(auto_mtls=False)
    assert "several Istio mesh configs (istio-canary, istio-stable" in str(err.value)
    assert not fake.sent("PATCH")
    fake.pods = [
        pod("istiod-canary-1", "istio-system", labels={"app": "istiod", "istio.io/rev": "canary"})
    ]
    mesh.configure(auto_mtls=False)
    assert [r.path for r in fake.sent("PATCH")] == [canary]
    assert mesh_text(fake, stable) == MESH


def test_no_mesh_config_is_a_clear_error_and_status_still_answers(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    with pytest.raises(ClusterError) as err:
        mesh.configure(auto_mtls=False)
    assert str(err.value).startswith(
        "no Istio mesh config in namespace istio-system (context fake): neither ConfigMap "
        "istio nor an istio-<revision> with a key 'mesh' exists."
    )
    assert not fake.sent("PATCH")
    details = mesh.status().details
    assert "auto_mtls" not in details and "no Istio mesh config" in details["mesh_config_error"]
    assert lesson.mesh_settings(mesh) == {}


def test_missing_permission_names_what_is_needed(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    store(fake, "istio")
    fake.overrides[("PATCH", ISTIO_CM)] = (403, status(403, "Forbidden", "forbidden"))
    with pytest.raises(ClusterError) as err:
        mesh.configure(auto_mtls=False)
    assert "cannot change ConfigMap istio-system/istio: 403 Forbidden" in str(err.value)
    assert "patch on configmaps in istio-system" in str(err.value)
    assert mesh_text(fake) == MESH


def test_a_mesh_config_that_is_not_yaml_is_named(fake: FakeApiServer, mesh: KubernetesMesh) -> None:
    store(fake, "istio", "enableAutoMtls: [unclosed\n")
    with pytest.raises(ClusterError, match="ConfigMap istio-system/istio, key mesh is not valid"):
        mesh.configure(auto_mtls=False)
    store(fake, "istio", "enableAutoMtls: sometimes\n")
    with pytest.raises(ClusterError, match="enableAutoMtls is 'sometimes'; Istio expects true"):
        mesh.configure(auto_mtls=False)
    assert not fake.sent("PATCH")


def test_tls_version_bad_values_and_unknown_settings_change_nothing(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    store(fake, "istio")
    with pytest.raises(NotSupportedError) as err:
        mesh.configure(auto_mtls=False, tls_max_version="TLSv1_2")
    text = str(err.value)
    assert text.startswith("tls_max_version='TLSv1_2': Istio has no mesh setting")
    assert "meshMTLS.minProtocolVersion" in text and "MESHLAB_BACKEND=embedded" in text
    with pytest.raises(MeshlabError, match="auto_mtls: expected true or false, got 'no'"):
        mesh.configure(auto_mtls="no")
    with pytest.raises(NotSupportedError, match="unknown mesh setting"):
        mesh.configure(cert_ttl="1h")
    assert not fake.sent("PATCH") and mesh_text(fake) == MESH
    with pytest.raises(NotSupportedError, match=r"TLS 1\.2 up to 1\.3"):
        lesson.configure(mesh, tls_max_version="TLSv1_2")


def test_a_mesh_wide_change_watches_the_labs_sidecars_first(
    fake: FakeApiServer, mesh: KubernetesMesh
) -> None:
    fake.pods += [
        pod("billing-1", "aaa-billing", sidecar=True),
        pod("service-a-1", "istio-meshlab", sidecar=True),
        pod("legacy-client-1", "legacy"),  # no sidecar: nothing to read
    ]
    counts, problems = mesh._read_sidecars(None)
    # the fake refuses exec, so each sidecar shows up as a problem, in the order tried
    assert counts == {}
    assert [p.split(":")[0] for p in problems] == [
        "istio-meshlab/service-a-1",
        "aaa-billing/billing-1",
    ]
