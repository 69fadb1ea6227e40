"""`meshlab analyze --offline` and the commands' wiring (meshlab.analysis.cli), through
``meshlab.cli.main`` with ``register_cli`` added to its parser."""

from __future__ import annotations

import argparse
import json

import pytest

import meshlab.cli
from meshlab.analysis.cli import register_cli
from tests.conftest import DEPLOYMENTS
from tests.unit.test_analysis import DR_DISABLE, NS_STRICT

ROOT_SELECTOR = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: istio-system}
spec:
  selector: {matchLabels: {app: service-b-v1}}
  mtls: {mode: STRICT}
"""


def parser_with_commands() -> argparse.ArgumentParser:
    parser = original_build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "analyze" not in sub.choices:  # until meshlab.cli registers them itself
        register_cli(sub)
    return parser


original_build_parser = meshlab.cli.build_parser


@pytest.fixture
def run(monkeypatch, capsys):
    monkeypatch.setattr(meshlab.cli, "build_parser", parser_with_commands)

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = meshlab.cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def files(tmp_path):
    (tmp_path / "strict.yaml").write_text(NS_STRICT)
    (tmp_path / "dr.yaml").write_text(DR_DISABLE)
    (tmp_path / "root.yaml").write_text(ROOT_SELECTOR)
    (tmp_path / "deploy").mkdir()
    for name in ("namespace.yaml", "service-a.yaml", "service-b-v1.yaml"):
        (tmp_path / "deploy" / name).write_text((DEPLOYMENTS / name).read_text())
    return tmp_path


def test_offline_error_exits_79_with_istioctl_lines(run, files):
    code, out, err = run(
        "analyze", "--offline", "-f", str(files / "deploy"), "-f", str(files / "strict.yaml"),
        "-f", str(files / "dr.yaml"),
    )  # fmt: skip
    assert code == 79
    assert out.startswith("Error [MLB0101] (DestinationRule istio-meshlab/service-b-v1-plaintext) ")
    assert "fix:" in out
    assert "1 error" in err


def test_offline_warnings_exit_0_unless_the_threshold_says_so(run, files):
    code, out, _ = run("analyze", "--offline", "-f", str(files / "root.yaml"))
    assert code == 0 and "Warning [MLB0204]" in out
    code, _, _ = run("analyze", "--offline", "-f", str(files / "root.yaml"),
                     "--failure-threshold", "Warning")  # fmt: skip
    assert code == 79


def test_offline_json(run, files):
    code, out, _ = run("analyze", "--offline", "-f", str(files / "root.yaml"), "-o", "json")
    data = json.loads(out)
    assert code == 0
    assert data["counts"] == {"Error": 0, "Warning": 1, "Info": 0}
    (finding,) = data["findings"]
    assert finding["code"] == "MLB0204"
    assert finding["resource"] == "PeerAuthentication istio-system/b"
    assert set(finding) == {
        "code", "severity", "resource", "kind", "name", "namespace", "message", "fix", "related",
    }  # fmt: skip


def test_offline_clean_files(run, files):
    code, out, _ = run("analyze", "--offline", "-f", str(files / "deploy"))
    assert code == 0
    assert "No validation issues found when analyzing all namespaces" in out


def test_bad_file_is_a_clear_error_and_nothing_is_analysed(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(NS_STRICT.replace("STRICT", "STRICTT"))
    code, out, err = run("analyze", "--offline", "-f", str(bad))
    assert code == 2 and out == ""
    assert "bad.yaml" in err and "STRICTT" in err and "Traceback" not in err


def test_offline_needs_files(run):
    code, _, err = run("analyze", "--offline")
    assert code == 1 and "-f FILE" in err


def test_describe_is_registered_with_its_options():
    args = parser_with_commands().parse_args(
        ["describe", "--from", "service-a", "-n", "x", "http://b:8080/", "-o", "json"]
    )
    assert (args.source, args.namespace, args.url, args.output) == (
        "service-a", "x", "http://b:8080/", "json",
    )  # fmt: skip
    assert args.func.__name__ == "cmd_describe"
