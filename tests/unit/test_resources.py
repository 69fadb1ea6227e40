"""meshlab.resources: loading, validation rules, error messages, limits, conversion."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from meshlab.embedded import model
from meshlab.errors import ResourceError
from meshlab.resources import KINDS, Resource, convert, load, resolve_kind
from meshlab.resources.schemas.istio import PeerAuthenticationSpec
from meshlab.resources.schemas.kubernetes import DeploymentSpec, ServiceSpec
from meshlab.resources.yamlsafe import MAX_DEPTH, parse

BAD_INPUTS = Path(__file__).resolve().parents[1] / "bad_inputs"
EXPECTED = yaml.safe_load((BAD_INPUTS / "expected.yaml").read_text())

# Words that would mean a library's raw error leaked through to the user.
LEAKS = (
    "Traceback",
    "pydantic",
    "Input should",
    "validation error",
    "Field required",
    "Extra inputs",
)

PA = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {namespace}
spec:
  mtls:
    mode: {mode}
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: service-a
spec:
  selector:
    matchLabels:
      app: service-a
  template:
    metadata:
      labels:
        app: service-a
    spec:
      containers:
        - name: service-a
          image: istio-meshlab/service-a:0.1.0
"""


def pa(name: str = "strict-mtls", namespace: str = "istio-meshlab", mode: str = "STRICT") -> str:
    return PA.format(name=name, namespace=namespace, mode=mode)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(source, namespace: str | None = None) -> list[str]:
    with pytest.raises(ResourceError) as info:
        load(source, namespace=namespace)
    message = str(info.value)
    for leak in LEAKS:
        assert leak not in message
    assert info.value.problems == message.splitlines()
    return info.value.problems


def one(text: str, namespace: str | None = None) -> Resource:
    resources = load(text, namespace=namespace)
    assert len(resources) == 1
    return resources[0]


# ---- the corpus of malformed manifests ----


def test_corpus_is_complete() -> None:
    files = {p.name for p in BAD_INPUTS.iterdir()} - {"expected.yaml"}
    assert files == set(EXPECTED)
    assert len(files) >= 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input(name: str) -> None:
    entry = EXPECTED[name]
    namespace = None
    if isinstance(entry, dict):
        namespace = entry.get("namespace")
        entry = entry["expect"]
    fragments = [entry] if isinstance(entry, str) else entry
    path = BAD_INPUTS / name
    lines = problems(path, namespace=namespace)
    message = "\n".join(lines)
    for fragment in fragments:
        assert fragment in message
    for line in lines:
        assert line.startswith(str(path))


def test_five_megabyte_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as out:
        out.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge\ndata:\n")
        line = "  k{}: " + "x" * 100 + "\n"
        i = 0
        while out.tell() < 5 * 1024 * 1024:
            out.write(line.format(i))
            i += 1
    (line,) = problems(path)
    assert line.startswith(f"{path}: the manifest is 5.0 MB")
    assert "at most 2 MB" in line


def test_huge_yaml_text_is_refused() -> None:
    text = "apiVersion: v1\nkind: Namespace\n" + "# padding\n" * 250_000
    (line,) = problems(text)
    assert line.startswith("(inline YAML): the manifest is 2.4 MB")


def test_file_just_under_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(pa() + "# " + "x" * (2 * 1024 * 1024 - len(pa()) - 10) + "\n")
    assert os.path.getsize(path) < 2 * 1024 * 1024
    assert load(path)[0].name == "strict-mtls"


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert problems(fifo) == [f"{fifo}: not a regular file"]


# ---- sources: files, folders, lists, text ----


def test_file_folder_list_and_text(tmp_path: Path) -> None:
    a = write(tmp_path, "b.yaml", pa("b"))
    write(tmp_path, "a.yml", pa("a"))
    write(tmp_path, "notes.txt", "not: yaml: at all: [")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "c.yaml", pa("c"))

    assert [r.name for r in load(a)] == ["b"]
    assert [r.name for r in load(str(a))] == ["b"]
    # a folder: *.yaml and *.yml, sorted by name, not recursive, other files ignored
    assert [r.name for r in load(tmp_path)] == ["a", "b"]
    assert [r.name for r in load([tmp_path, sub])] == ["a", "b", "c"]
    assert [r.name for r in load([str(a), pa("d")])] == ["b", "d"]
    assert load(pa("t"))[0].source == "(inline YAML), document 1"


def test_text_or_path() -> None:
    one_line = "apiVersion: v1"  # no newline, but starts like a manifest: text
    assert problems(one_line) == ["(inline YAML), document 1: kind: required field is missing"]
    assert problems("no/such/file.yaml") == ["no/such/file.yaml: no such file or folder"]
    assert problems([]) == ["no manifests given: pass a file, a folder or YAML text"]
    assert problems([42]) == ["expected a file, a folder or YAML text, got 42"]


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problems(empty) == [f"{empty}: the folder has no .yaml or .yml files"]
    f = write(tmp_path, "c.yaml", "# only a comment\n---\n---\n")
    assert problems(f) == [f"{f}: no objects found (empty, or only comments)"]
    assert problems("\n\n") == ["(inline YAML): no objects found (empty, or only comments)"]


def test_document_numbers_count_empty_documents(tmp_path: Path) -> None:
    f = write(tmp_path, "x.yaml", "---\n" + pa("a") + "---\n---\n" + pa("b"))
    assert [r.source for r in load(f)] == [f"{f}, document 1", f"{f}, document 3"]


def test_all_or_nothing_reports_every_problem(tmp_path: Path) -> None:
    good = write(tmp_path, "a-good.yaml", pa("good"))
    bad = write(tmp_path, "b-bad.yaml", pa("one", mode="STRICTT") + "---\n" + pa("two", mode="OFF"))
    worse = write(tmp_path, "c-worse.yaml", "kind: [\n")
    lines = problems([good, bad, worse])
    assert lines[2].startswith(f"{worse}, document 1: invalid YAML at line 2, column 1: ")
    assert lines[:2] == [
        f"{bad}, document 1 (PeerAuthentication one): spec.mtls.mode: 'STRICTT' is not one of "
        "UNSET, DISABLE, PERMISSIVE, STRICT; did you mean STRICT?",
        f"{bad}, document 2 (PeerAuthentication two): spec.mtls.mode: expected one of "
        "UNSET, DISABLE, PERMISSIVE, STRICT, got a boolean (false); YAML reads unquoted "
        "on/off/yes/no as booleans",
    ]


def test_syntax_error_names_its_document(tmp_path: Path) -> None:
    f = write(tmp_path, "x.yaml", pa("a") + "---\n" + pa("b") + "---\nkind: {\n")
    (line,) = problems(f)
    assert line.startswith(f"{f}, document 3: invalid YAML at line 20")


def test_duplicates_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", pa())
    b = write(tmp_path, "b.yaml", pa(mode="PERMISSIVE"))
    assert problems([a, b]) == [
        f"{b}, document 1 (PeerAuthentication strict-mtls): duplicate object: PeerAuthentication "
        f"istio-meshlab/strict-mtls is already defined in {a}, document 1"
    ]
    # same name, other namespace or other kind: not duplicates
    other = (
        pa(namespace="legacy")
        + "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: strict-mtls\n"
    )
    assert len(load([a, other])) == 3


# ---- namespaces, like kubectl -n ----


def test_namespace_defaulting() -> None:
    no_ns = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n"
    assert one(no_ns).namespace == "default"
    assert one(no_ns, namespace="legacy").namespace == "legacy"
    assert one(no_ns, namespace="").namespace == "default"
    assert one(no_ns, namespace="legacy").body["metadata"]["namespace"] == "legacy"
    assert one(pa(), namespace="istio-meshlab").namespace == "istio-meshlab"
    assert one(pa()).namespace == "istio-meshlab"


def test_namespace_conflict_is_an_error() -> None:
    (line,) = problems(pa(), namespace="legacy")
    assert (
        'the namespace from the provided object "istio-meshlab" does not match '
        'the namespace "legacy"' in line
    )


def test_invalid_namespace_argument() -> None:
    assert problems(pa(), namespace="Not_Valid") == [
        "namespace 'Not_Valid': 'Not_Valid' is not a valid DNS-1123 label: use at most 63 "
        "lowercase letters, digits and '-', starting and ending with a letter or digit"
    ]


def test_cluster_scoped_namespace() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: legacy\n"
    r = one(text, namespace="other")  # -n does not apply to cluster-scoped objects
    assert r.namespace is None and r.key == ("Namespace", None, "legacy")
    assert "namespace" not in r.body["metadata"]
    r = one(text.replace("name: legacy", "name: legacy\n  namespace: x"))
    assert r.namespace is None
    assert r.warnings == ("metadata.namespace is ignored: a Namespace is not namespaced",)


# ---- Resource ----


def test_resource_shape() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: port-level
          namespace: istio-meshlab
          labels: {team: mesh}
          annotations: {note: "8080 only"}
          uid: 0b3c9e6e-1111-2222-3333-444455556666
          resourceVersion: "123"
          generation: 2
          creationTimestamp: 2024-05-01T12:00:00Z
          managedFields: [{manager: kubectl}]
        spec:
          selector:
            matchLabels: {app: service-b-v1}
          portLevelMtls:
            8080: {mode: DISABLE}
        status: {}
        """
    )
    r = one(text)
    assert r.key == ("PeerAuthentication", "istio-meshlab", "port-level")
    assert r.api_version == "security.istio.io/v1"
    assert r.labels == {"team": "mesh"} and r.annotations == {"note": "8080 only"}
    assert r.ref == "peerauthentication.security.istio.io/port-level"
    # server-set metadata and status dropped; keys are JSON strings; timestamps stay strings
    assert r.body == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "port-level",
            "namespace": "istio-meshlab",
            "labels": {"team": "mesh"},
            "annotations": {"note": "8080 only"},
            "creationTimestamp": "2024-05-01T12:00:00Z",
        },
        "spec": {
            "selector": {"matchLabels": {"app": "service-b-v1"}},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}},
        },
    }
    assert json.loads(json.dumps(r.body)) == r.body
    assert isinstance(r.spec, PeerAuthenticationSpec)
    assert r.spec.port_level == {8080: "DISABLE"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.name = "x"  # type: ignore[misc]
    assert {r, one(text)} == {r}
    assert one(DEPLOYMENT).ref == "deployment.apps/service-a"
    assert one("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").spec is None


def test_spec_models() -> None:
    assert isinstance(one(DEPLOYMENT).spec, DeploymentSpec)
    svc = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 80}]}\n"
    assert isinstance(one(svc).spec, ServiceSpec)


# ---- kinds ----


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("pa", "PeerAuthentication"),
        ("peerauthentication", "PeerAuthentication"),
        ("peerauthentications", "PeerAuthentication"),
        ("PeerAuthentication", "PeerAuthentication"),
        ("peerauthentications.security.istio.io", "PeerAuthentication"),
        ("dr", "DestinationRule"),
        ("destinationrules", "DestinationRule"),
        ("deploy", "Deployment"),
        ("deployments", "Deployment"),
        ("svc", "Service"),
        ("ns", "Namespace"),
        ("sa", "ServiceAccount"),
        ("serviceaccounts", "ServiceAccount"),
        ("po", "Pod"),
        ("pods", "Pod"),
        (" Pod ", "Pod"),
    ],
)
def test_resolve_kind(text: str, kind: str) -> None:
    assert resolve_kind(text) == kind


def test_resolve_unknown_kind() -> None:
    with pytest.raises(ResourceError) as info:
        resolve_kind("virtualservice")
    assert 'unknown resource type "virtualservice": known kinds are' in str(info.value)
    assert "PeerAuthentication (peerauthentications/pa)" in str(info.value)


def test_kinds_table() -> None:
    assert KINDS["PeerAuthentication"].api_versions == (
        "security.istio.io/v1",
        "security.istio.io/v1beta1",
    )
    assert KINDS["DestinationRule"].api_versions == (
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    )
    assert not KINDS["Namespace"].namespaced and KINDS["Service"].namespaced
    assert not KINDS["Pod"].loadable


def test_pod_is_not_loadable() -> None:
    (line,) = problems("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    assert 'kind "Pod" is not supported' in line


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_peer_authentication_versions(version: str) -> None:
    assert (
        one(pa().replace("security.istio.io/v1", f"security.istio.io/{version}")).spec.mode
        == "STRICT"
    )


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_destination_rule_versions(version: str) -> None:
    text = f"apiVersion: networking.istio.io/{version}\nkind: DestinationRule\n"
    text += "metadata: {name: d}\nspec: {host: b}\n"
    assert one(text).api_version == f"networking.istio.io/{version}"


# ---- Istio rules ----


def dr(spec: str, name: str = "d", namespace: str = "istio-meshlab") -> str:
    head = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
    head += f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n"
    return head + textwrap.indent(textwrap.dedent(spec), "  ")


def pa_spec(spec: str, namespace: str = "istio-meshlab") -> str:
    head = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
    head += f"metadata:\n  name: p\n  namespace: {namespace}\nspec:\n"
    return head + textwrap.indent(textwrap.dedent(spec), "  ")


@pytest.mark.parametrize("mode", ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])
def test_peer_authentication_modes(mode: str) -> None:
    assert one(pa(mode=mode)).spec.mode == mode


def test_empty_peer_authentication_is_valid() -> None:
    r = one("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n")
    assert r.spec is None and r.namespace == "default"


def test_port_level_mtls_keys() -> None:
    spec = """\
        selector: {matchLabels: {app: service-b-v1}}
        mtls: {mode: STRICT}
        portLevelMtls:
          8080: {mode: DISABLE}
          "9090": {mode: PERMISSIVE}
          9091: {}
        """
    r = one(pa_spec(spec))
    assert r.spec.port_level == {8080: "DISABLE", 9090: "PERMISSIVE", 9091: None}
    assert r.spec.selector_labels == {"app": "service-b-v1"}


@pytest.mark.parametrize(
    ("port_level", "message"),
    [
        ("{0: {mode: STRICT}}", 'spec.portLevelMtls["0"]: port must be between 1 and 65535, got 0'),
        ("{abc: {mode: STRICT}}", "spec.portLevelMtls.abc: 'abc' is not a port number"),
        ("{}", "spec.portLevelMtls: portLevelMtls needs at least one port when it is set"),
        ("{8080: {mode: NONE}}", "spec.portLevelMtls[\"8080\"].mode: 'NONE' is not one of"),
    ],
)
def test_port_level_mtls_errors(port_level: str, message: str) -> None:
    spec = f"selector: {{matchLabels: {{app: b}}}}\nportLevelMtls: {port_level}\n"
    (line,) = problems(pa_spec(spec))
    assert message in line


def test_port_level_mtls_needs_selector_even_if_empty() -> None:
    (line,) = problems(
        pa_spec("selector: {matchLabels: {}}\nportLevelMtls: {8080: {mode: DISABLE}}\n")
    )
    assert "spec.portLevelMtls: needs a workload selector" in line


def test_selector_in_root_namespace_is_a_warning() -> None:
    r = one(
        pa_spec(
            "selector: {matchLabels: {app: b}}\nmtls: {mode: STRICT}\n", namespace="istio-system"
        )
    )
    assert r.warnings == (
        "spec.selector has no effect: Istio ignores workload selectors in the root namespace "
        "istio-system; this policy does nothing",
    )
    assert one(pa(namespace="istio-system")).warnings == ()


@pytest.mark.parametrize("mode", ["DISABLE", "SIMPLE", "ISTIO_MUTUAL"])
def test_destination_rule_tls_modes(mode: str) -> None:
    r = one(dr(f"host: service-b-v1\ntrafficPolicy: {{tls: {{mode: {mode}}}}}\n"))
    assert r.spec.tls_mode == mode and r.warnings == ()


def test_destination_rule_tls_without_mode_is_disable() -> None:
    assert one(dr("host: b\ntrafficPolicy: {tls: {}}\n")).spec.tls_mode == "DISABLE"
    assert one(dr("host: b\n")).spec.tls_mode is None


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        (
            "{mode: ISTIO_MUTUAL, caCertificates: /ca.pem}",
            "tls.caCertificates: caCertificates must be empty when mode is ISTIO_MUTUAL",
        ),
        (
            "{mode: ISTIO_MUTUAL, credentialName: c}",
            "credentialName must be empty when mode is ISTIO_MUTUAL",
        ),
        (
            "{mode: ISTIO_MUTUAL, insecureSkipVerify: true}",
            "insecureSkipVerify must be empty when mode is ISTIO_MUTUAL",
        ),
        (
            "{mode: MUTUAL, clientCertificate: /c.pem}",
            "tls.privateKey: mode MUTUAL needs privateKey (or credentialName)",
        ),
        (
            "{mode: MUTUAL, credentialName: c, caCertificates: /ca}",
            "caCertificates cannot be set together with credentialName",
        ),
        ("{mode: SIMPLE, sni: 7}", "tls.sni: expected a string, got an integer (7)"),
        (
            "{mode: SIMPLE, insecureSkipVerify: 'yes'}",
            "expected a boolean (true or false), got a string ('yes')",
        ),
    ],
)
def test_destination_rule_tls_errors(tls: str, message: str) -> None:
    (line,) = problems(dr(f"host: b\ntrafficPolicy: {{tls: {tls}}}\n"))
    assert message in line


def test_destination_rule_valid_tls_settings() -> None:
    mutual = (
        "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}"
    )
    assert one(dr(f"host: b\ntrafficPolicy: {{tls: {mutual}}}\n")).spec.tls_mode == "MUTUAL"
    by_secret = "{mode: SIMPLE, credentialName: secret}"
    assert one(dr(f"host: b\ntrafficPolicy: {{tls: {by_secret}}}\n")).spec.tls_mode == "SIMPLE"


def test_istio_mutual_keeps_sni_and_sans_as_istio_does() -> None:
    spec = "host: b\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL, sni: b.example, subjectAltNames: [spiffe://x]}}\n"
    r = one(dr(spec))
    assert r.warnings == (
        "spec.trafficPolicy.tls.sni: accepted but not simulated by the embedded mesh",
        "spec.trafficPolicy.tls.subjectAltNames: accepted but not simulated by the embedded mesh",
    )


def test_destination_rule_fields_not_simulated_are_warnings() -> None:
    spec = """\
        host: service-b-v1.istio-meshlab.svc.cluster.local
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          connectionPool: {tcp: {maxConnections: 10}}
          outlierDetection: {consecutive5xxErrors: 3}
          portLevelSettings:
            - port: {number: 8080}
              tls: {mode: DISABLE}
              loadBalancer: {simple: RANDOM}
        subsets:
          - name: v1
            labels: {version: v1}
        workloadSelector: {matchLabels: {app: service-a}}
        exportTo: ["."]
        """
    r = one(dr(spec))
    assert r.spec.port_level_tls == {8080: "DISABLE"}
    assert [w.split(":")[0] for w in r.warnings] == [
        "spec.trafficPolicy.loadBalancer",
        "spec.trafficPolicy.connectionPool",
        "spec.trafficPolicy.outlierDetection",
        "spec.trafficPolicy.portLevelSettings[0].loadBalancer",
        "spec.subsets",
        "spec.workloadSelector",
    ]
    assert all(w.endswith("accepted but not simulated by the embedded mesh") for w in r.warnings)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("host: ''\n", "spec.host: host must not be empty"),
        ("host: 'bad host'\n", "spec.host: 'bad host' is not a valid host"),
        (
            "host: b\nexportTo: [Bad_NS]\n",
            "spec.exportTo: 'Bad_NS' is not '.', '*', '~' or a namespace name",
        ),
        ("host: b\nexportTo: ['~', '.']\n", "'~' (export to no namespace) cannot be combined"),
        ("host: b\nexportTo: ['.', '.']\n", "spec.exportTo: duplicate entries"),
        (
            "host: b\nworkloadSelector: {matchLabels: {a: b}}\nexportTo: ['*']\n",
            "can only be exported to '.'",
        ),
        (
            "host: b\nsubsets: [{name: v1}, {name: v1}]\n",
            "spec.subsets: duplicate subset name 'v1'",
        ),
        (
            "host: b\nsubsets: [{labels: {a: b}}]\n",
            "spec.subsets[0].name: required field is missing",
        ),
        (
            "host: b\ntrafficPolicy: {portLevelSettings: [{port: {number: 0}}]}\n",
            "portLevelSettings[0].port.number: port must be between 1 and 65535, got 0",
        ),
        (
            "host: b\ntrafficPolicy: {portLevelSettings: [{tls: {mode: DISABLE}}]}\n",
            "portLevelSettings[0].port: required field is missing",
        ),
        (
            "host: b\ntrafficPolicy: {loadBalancer: ROUND_ROBIN}\n",
            "spec.trafficPolicy.loadBalancer: expected a mapping, got a string",
        ),
    ],
)
def test_destination_rule_errors(spec: str, message: str) -> None:
    (line,) = problems(dr(spec))
    assert message in line


def test_wildcard_hosts() -> None:
    assert one(dr("host: '*.istio-meshlab.svc.cluster.local'\n")).spec.host.startswith("*.")
    assert one(dr("host: '*'\n")).spec.host == "*"


# ---- Kubernetes rules ----


def test_harmless_fields_are_accepted() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: service-a
          namespace: istio-meshlab
          labels: {app.kubernetes.io/name: service-a, empty: ""}
        spec:
          replicas: 2
          revisionHistoryLimit: 3
          strategy: {type: RollingUpdate}
          selector: {matchLabels: {app: service-a}}
          template:
            metadata:
              labels: {app: service-a}
              annotations: {sidecar.istio.io/inject: "true"}
            spec:
              serviceAccountName: service-a
              terminationGracePeriodSeconds: 5
              imagePullSecrets: [{name: regcred}]
              nodeSelector: {kubernetes.io/os: linux}
              tolerations: [{operator: Exists}]
              affinity: {}
              securityContext: {runAsNonRoot: true}
              volumes: [{name: tmp, emptyDir: {}}]
              containers:
                - name: service-a
                  image: istio-meshlab/service-a:0.1.0
                  env: [{name: SERVICE_B_URL, value: "http://service-b-v1:8080/hello"}]
                  ports: [{name: http, containerPort: 8080, protocol: TCP}]
                  resources: {requests: {cpu: 10m}}
                  securityContext: {allowPrivilegeEscalation: false}
                  volumeMounts: [{name: tmp, mountPath: /tmp}]
                  readinessProbe: {httpGet: {path: /healthz, port: http}}
                  livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 10}
                  startupProbe: {exec: {command: [/bin/true]}}
        status: {replicas: 2}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: service-a, namespace: istio-meshlab}
        spec:
          type: NodePort
          sessionAffinity: None
          clusterIP: 10.0.0.10
          selector: {app: service-a}
          ports:
            - {name: http, port: 80, targetPort: http}
            - {name: metrics, port: 9090, targetPort: 9090, nodePort: 30090}
        """
    )
    deployment, service = load(text)
    assert deployment.spec.template.spec.service_account == "service-a"
    assert "status" not in deployment.body
    assert deployment.body["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert service.warnings == (
        "spec.type: NodePort is accepted; the embedded mesh treats it as ClusterIP",
    )


def test_service_account_defaults_to_default() -> None:
    assert one(DEPLOYMENT).spec.template.spec.service_account == "default"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: service-a\nspec", "name: service-a.v1\nspec", None),  # a subdomain is fine
        (
            "name: service-a\nspec",
            "name: -a\nspec",
            "metadata.name: '-a' is not a valid DNS-1123 subdomain",
        ),
        (
            "        - name: service-a",
            "        - name: a.b",
            "containers[0].name: 'a.b' is not a valid DNS-1123 label",
        ),
        (
            "          image: istio-meshlab/service-a:0.1.0",
            "          image: x\n          ports: [{containerPort: 80, name: too-long-port-name}]",
            "ports[0].name: 'too-long-port-name' is not a valid port name",
        ),
        (
            "          image: istio-meshlab/service-a:0.1.0",
            "          image: x\n          imagePullPolicy: Sometimes",
            "imagePullPolicy: 'Sometimes' is not one of Always, IfNotPresent, Never",
        ),
        (
            "          image: istio-meshlab/service-a:0.1.0",
            "          image: x\n          command: /bin/sleep",
            "command: expected a list, got a string ('/bin/sleep')",
        ),
        (
            "          image: istio-meshlab/service-a:0.1.0",
            "          image: x\n          ports: [{containerPort: 70000}]",
            "ports[0].containerPort: port must be between 1 and 65535, got 70000",
        ),
        (
            "    spec:\n      containers:",
            "    spec:\n      serviceAccountName: Bad_SA\n      containers:",
            "serviceAccountName: 'Bad_SA' is not a valid DNS-1123 subdomain",
        ),
        (
            "    spec:\n      containers:",
            "    spec:\n      restartPolicy: Never\n      containers:",
            "spec.template.spec.restartPolicy: a Deployment only allows 'Always', got 'Never'",
        ),
        (
            "  selector:\n    matchLabels:\n      app: service-a",
            "  selector: {}",
            "spec.selector: an empty selector is invalid for a Deployment",
        ),
        (
            DEPLOYMENT[DEPLOYMENT.index("      containers:") :].rstrip("\n"),
            "      containers: []",
            "spec.template.spec.containers: must have at least 1 item(s)",
        ),
        (
            "  template:",
            "  replicas: -1\n  template:",
            "spec.replicas: must be >= 0, got an integer (-1)",
        ),
        (
            "  labels:\n        app: service-a",
            "  labels:\n        app: service a",
            "label value 'service a' is invalid",
        ),
        (
            "metadata:\n  name: service-a",
            "metadata:\n  name: service-a\n  labels: {example.com/: x}",
            "key 'example.com/' is invalid",
        ),
        (
            "metadata:\n  name: service-a",
            "metadata:\n  name: service-a\n  annotations: {replicas: 3}",
            "metadata.annotations.replicas: expected a string, got an integer (3); quote it",
        ),
        (
            "metadata:\n  name: service-a",
            "metadata:\n  name: 7",
            "metadata.name: expected a string, got an integer (7)",
        ),
        (
            "metadata:\n  name: service-a",
            "metadata:\n  name: service-a\n  labels: {on: yes}",
            "metadata.labels.true: expected a string, got a boolean (true)",
        ),
    ],
)
def test_deployment_rules(old: str, new: str, message: str | None) -> None:
    assert old in DEPLOYMENT
    text = DEPLOYMENT.replace(old, new, 1)
    if message is None:
        assert one(text).kind == "Deployment"
    else:
        assert any(message in line for line in problems(text)), problems(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "{ports: [{port: 80}, {port: 81}]}",
            "spec.ports: every port needs a name when a Service has several ports",
        ),
        (
            "{ports: [{name: a, port: 80}, {name: a, port: 81}]}",
            "spec.ports: duplicate port name 'a'",
        ),
        (
            "{ports: [{port: 80, targetPort: 0}]}",
            "spec.ports[0].targetPort: port must be between 1 and 65535, got 0",
        ),
        (
            "{ports: [{port: 80, targetPort: Web_Port}]}",
            "targetPort: 'Web_Port' is not a valid port name",
        ),
        ("{ports: [{port: 80, protocol: HTTP}]}", "protocol: 'HTTP' is not one of TCP, UDP, SCTP"),
        (
            "{type: Cluster, ports: [{port: 80}]}",
            "spec.type: 'Cluster' is not one of ClusterIP, NodePort, LoadBalancer, ExternalName",
        ),
        (
            "{selector: {app: 1}, ports: [{port: 80}]}",
            "spec.selector.app: expected a string, got an integer (1)",
        ),
    ],
)
def test_service_rules(spec: str, message: str) -> None:
    (line,) = problems(f"apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {spec}\n")
    assert message in line


def test_service_names_are_dns1035_labels() -> None:
    (line,) = problems(
        "apiVersion: v1\nkind: Service\nmetadata: {name: 1b}\nspec: {ports: [{port: 80}]}\n"
    )
    assert "metadata.name: '1b' is not a valid DNS-1035 label" in line
    headless = one("apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None}\n")
    assert headless.spec.ports is None


def test_namespace_names_are_dns1123_labels() -> None:
    (line,) = problems("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n")
    assert "metadata.name: 'a.b' is not a valid DNS-1123 label" in line


def test_name_and_model_problems_are_reported_together() -> None:
    lines = problems("apiVersion: v1\nkind: Service\nmetadata: {name: Bad}\nspec: {}\n")
    assert [line.split(": ")[1] for line in lines] == ["spec.ports", "metadata.name"]


def test_unknown_fields_list_what_is_known() -> None:
    (line,) = problems("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\nfoo: 1\n")
    assert line.endswith(
        'foo: unknown field "foo" (known fields here: apiVersion, kind, metadata, '
        "automountServiceAccountToken, imagePullSecrets, secrets)"
    )


def test_kubectl_dump_loads() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: List
        metadata: {resourceVersion: ""}
        items:
          - apiVersion: v1
            kind: Namespace
            metadata:
              name: istio-meshlab
              labels: {istio-injection: enabled, kubernetes.io/metadata.name: istio-meshlab}
              creationTimestamp: "2024-05-01T12:00:00Z"
              resourceVersion: "812"
              uid: 7d2d1c4e-0000-0000-0000-000000000000
            spec: {finalizers: [kubernetes]}
            status: {phase: Active}
          - apiVersion: v1
            kind: ServiceAccount
            metadata: {name: service-a, namespace: istio-meshlab, creationTimestamp: null}
        """
    )
    ns, sa = load(text)
    assert ns.source == "(inline YAML), document 1, item 1"
    assert sa.key == ("ServiceAccount", "istio-meshlab", "service-a")
    assert ns.body["metadata"]["creationTimestamp"] == "2024-05-01T12:00:00Z"


# ---- YAML reading ----


def test_yaml_features(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Service
        metadata:
          name: b
          labels: &labels {app: b, version: v1}
          annotations:
            created: 2024-05-01
        spec:
          selector: *labels
          ports:
            - &port {name: http, port: 8080}
            - <<: *port
              name: grpc
              port: 9090
        """
    )
    (r,) = load(text)
    assert r.labels == {"app": "b", "version": "v1"}
    assert r.annotations == {"created": "2024-05-01"}  # a date stays a string
    assert [(p.name, p.port) for p in r.spec.ports] == [("http", 8080), ("grpc", 9090)]
    # a UTF-8 byte order mark and CRLF line ends are fine
    f = tmp_path / "crlf.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + pa().replace("\n", "\r\n").encode())
    assert load(f)[0].name == "strict-mtls"
    u16 = tmp_path / "utf16.yaml"
    u16.write_bytes(pa().encode("utf-16"))
    assert problems(u16) == [f"{u16}: the file is UTF-16 text; save it as UTF-8"]


def test_unsupported_yaml_values() -> None:
    (line,) = problems(pa() + "  extra: !!binary aGVsbG8=\n")
    assert (
        line
        == "(inline YAML), document 1: binary values (!!binary) are not supported in a manifest"
    )
    (line,) = problems(pa() + "  extra: !!python/object:os.system {}\n")
    assert (
        "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"
        in line
    )
    (line,) = problems("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n? [a, b]\n: c\n")
    assert line.startswith(
        "(inline YAML), document 1: invalid YAML at line 4, column 3: found unhashable key"
    )


def test_nesting_limit_boundary() -> None:
    def nested(levels: int) -> str:
        return "[" * levels + "]" * levels + "\n"

    docs, bad = parse(nested(MAX_DEPTH), "x")
    assert bad == [] and len(docs) == 1
    docs, bad = parse(nested(MAX_DEPTH + 1), "x")
    assert docs == [] and bad == [
        f"x, document 1: refused at line 1, column {MAX_DEPTH + 1}: "
        "nesting is deeper than 50 levels"
    ]


def test_nesting_through_aliases() -> None:
    deep = "[" * 30 + "]" * 30
    text = f"a: &a {deep}\nb: [[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]\n"
    _, bad = parse(text, "x")
    assert bad == [
        "x, document 1: refused: nesting is deeper than 50 levels once aliases are expanded"
    ]


def test_small_aliases_are_fine_and_a_bomb_in_one_document_spares_the_others() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)
    )
    docs, bad = parse("k: v\n---\n" + bomb + "---\nz: 1\n", "x")
    assert [d.data for d in docs] == [{"k": "v"}, {"z": 1}]
    assert bad == [
        "x, document 2: refused: the document holds more than 100,000 values once its "
        "50 YAML aliases are expanded (an alias bomb?)"
    ]


def test_value_limit_without_aliases() -> None:
    docs, bad = parse("a: [" + "1," * 99_990 + "]\n", "x")
    assert bad == [] and len(docs[0].data["a"]) == 99_990
    docs, bad = parse("a: [" + "1," * 100_001 + "]\n---\nb: 1\n", "x")
    assert bad == ["x, document 1: refused: the document holds more than 100,000 values"]
    assert [d.data for d in docs] == [{"b": 1}]


ENGINE_CASES = [
    "a: [1\n",
    "a: 1\n---\nb: 2\n---\nkind: {\n",
    "a:\n\tb: 1\n",
    "a: b\n  c: d: e\n",
    "a: é\nb: x\x07\n",
    "? [a, b]\n: c\n",
    "a: *nope\n",
    "a: 1\na: 2\n",
    "[" * 60 + "]" * 60 + "\n",
    "a: &a [x, x]\nb: [*a, *a]\n---\n---\nc: 2022-01-01\n",
]


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", ENGINE_CASES)
def test_libyaml_and_pure_python_agree(text: str) -> None:
    """Both YAML engines give the same documents, and problems at the same place."""
    fast_docs, fast_bad = parse(text, "x", fast=True)
    slow_docs, slow_bad = parse(text, "x", fast=False)
    assert fast_docs == slow_docs
    assert [line.split(": ")[:2] for line in fast_bad] == [
        line.split(": ")[:2] for line in slow_bad
    ]
    assert len(fast_bad) == len(slow_bad) == (0 if text.startswith("a: &a") else 1)


def test_invisible_characters_are_shown_in_unknown_fields() -> None:
    (line,) = problems(pa().replace("  mtls:", "  \u00a0mtls:"))
    assert line.endswith('spec["\\u00a0mtls"]: unknown field "\\u00a0mtls"; did you mean mtls?')


# ---- conversion to the embedded mesh's model ----


def test_convert_peer_authentication() -> None:
    r = one(
        pa_spec(
            "selector: {matchLabels: {app: b}}\nmtls: {mode: STRICT}\n"
            "portLevelMtls: {8080: {mode: DISABLE}, 9090: {}}\n"
        )
    )
    value = convert.peer_authentication(r, created=12.5)
    assert value == model.PeerAuthentication(
        name="p",
        namespace="istio-meshlab",
        created=12.5,
        selector={"app": "b"},
        mode="STRICT",
        port_level={8080: "DISABLE", 9090: "UNSET"},
    )
    stamped = one(
        pa().replace("  namespace:", "  creationTimestamp: 2024-05-01T12:00:00Z\n  namespace:")
    )
    assert convert.peer_authentication(stamped, created=1.0).created == 1714564800.0
    bare = one(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: p, namespace: n}\n"
    )
    assert convert.to_model(bare, created=3.0) == model.PeerAuthentication(
        "p", "n", 3.0, None, None
    )


def test_convert_destination_rule() -> None:
    spec = """\
        host: service-b-v1
        exportTo: [".", legacy]
        trafficPolicy:
          tls: {mode: ISTIO_MUTUAL}
          portLevelSettings:
            - port: {number: 9090}
              tls: {mode: DISABLE}
        """
    value = convert.destination_rule(one(dr(spec)), created=2.0)
    assert value == model.DestinationRule(
        name="d",
        namespace="istio-meshlab",
        created=2.0,
        host="service-b-v1",
        tls_mode="ISTIO_MUTUAL",
        port_level_tls={9090: "DISABLE"},
        export_to=(".", "legacy"),
    )
    assert convert.to_model(one(dr("host: b\n")), created=0.0).tls_mode is None


def test_convert_service() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec:\n"
        "  selector: {app: b}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n"
        "  - {name: raw, port: 8080, protocol: UDP}\n"
    )
    value = convert.service(one(text))
    assert value == model.Service(
        name="b",
        namespace="ns",
        selector={"app": "b"},
        ports=(
            model.ServicePort(port=80, target_port="http", name="http", protocol="TCP"),
            model.ServicePort(port=8080, target_port=8080, name="raw", protocol="UDP"),
        ),
    )
    assert convert.to_model(one(text)) == value
    assert convert.to_model(one(DEPLOYMENT)) is None
    with pytest.raises(ValueError, match="expected a PeerAuthentication, got Service b"):
        convert.peer_authentication(one(text))
