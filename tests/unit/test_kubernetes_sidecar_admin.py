"""kubernetes backend, sidecar admin: the certificate from a config dump, and the update
counters that tell when a change is in force.

The config dump comes from a real Envoy (the one the embedded mesh uses) holding an
Istio-shaped SDS secret, so the parser reads what Envoy really prints; on a cluster the
same JSON comes from ``pilot-agent request GET config_dump?resource=dynamic_active_secrets``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlab.embedded.ca import CertificateAuthority, load_certificate
from meshlab.errors import MeshlabError, NotFoundError
from meshlab.kubernetes.certs import config_dump_argv, secret_pem
from meshlab.kubernetes.inforce import Updates, parse_updates, stats_argv, wait_in_force

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
EXT = "type.googleapis.com/envoy.extensions"
SECRET = f"{EXT}.transport_sockets.tls.v3.Secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def envoy_dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real Envoy whose listener uses SDS secrets ``default`` and ``ROOTCA`` (inline bytes,
    as istio-agent sends them); yields its config dumps and the certificates."""
    envoy = shutil.which("envoy") or (str(ENVOY) if ENVOY.exists() else None)
    if envoy is None:
        pytest.skip("envoy binary not installed")
    folder = tmp_path_factory.mktemp("envoy-sds")
    ca = CertificateAuthority.load_or_create(folder / "ca")
    workload = ca.issue("istio-meshlab", "service-b-v1")
    (folder / "default.json").write_text(
        json.dumps(
            {
                "resources": [
                    {
                        "@type": SECRET,
                        "name": "default",
                        "tls_certificate": {
                            "certificate_chain": {"inline_bytes": _b64(workload.chain_pem)},
                            "private_key": {"inline_bytes": _b64(workload.key_pem)},
                        },
                    }
                ]
            }
        )
    )
    (folder / "rootca.json").write_text(
        json.dumps(
            {
                "resources": [
                    {
                        "@type": SECRET,
                        "name": "ROOTCA",
                        "validation_context": {"trusted_ca": {"inline_bytes": _b64(ca.root_pem)}},
                    }
                ]
            }
        )
    )

    def sds(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "sds_config": {
                "path_config_source": {"path": str(folder / f"{name.lower()}.json")},
                "resource_api_version": "V3",
            },
        }

    listener = {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": _free_port()}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": f"{EXT}.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "inbound",
                            "cluster": "inbound|8080||",
                        },
                    }
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": f"{EXT}.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [sds("default")],
                            "validation_context_sds_secret_config": sds("ROOTCA"),
                        },
                    },
                },
            }
        ],
    }
    cluster = {
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "inbound|8080||",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "inbound|8080||",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 9}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    xds = folder / "xds"
    xds.mkdir()
    (xds / "lds.json").write_text(json.dumps({"resources": [listener]}))
    (xds / "cds.json").write_text(json.dumps({"resources": [cluster]}))

    def watched(name: str) -> dict[str, Any]:
        return {
            "path_config_source": {
                "path": str(xds / name),
                "watched_directory": {"path": str(xds)},
            },
            "resource_api_version": "V3",
        }

    admin = _free_port()
    bootstrap = {
        "node": {
            "id": "sidecar~10.244.0.9~service-b-v1-1.istio-meshlab~istio-meshlab.svc.cluster.local",
            "cluster": "service-b-v1.istio-meshlab",
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {"lds_config": watched("lds.json"), "cds_config": watched("cds.json")},
    }
    (folder / "bootstrap.json").write_text(json.dumps(bootstrap))
    proc = subprocess.Popen(
        [
            envoy,
            "-c",
            str(folder / "bootstrap.json"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{admin}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/ready", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"envoy did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                    )
                time.sleep(0.05)

        def admin_get(path: str) -> str:
            return urllib.request.urlopen(f"{base}/{path}", timeout=5).read().decode()

        stats_path = stats_argv()[-1]
        initial = admin_get(stats_path)
        # a listener Envoy must refuse (unknown filter): renamed in, as istiod's push would land
        bad = dict(
            listener,
            filter_chains=[
                {
                    "filters": [
                        {
                            "name": "no.such.filter",
                            "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"},
                        }
                    ]
                }
            ],
        )
        (folder / "lds.tmp").write_text(json.dumps({"resources": [bad]}))
        (folder / "lds.tmp").rename(xds / "lds.json")
        deadline = time.monotonic() + 10
        while "lds.update_rejected: 0" in admin_get(stats_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {
            "full": json.loads(admin_get("config_dump")),
            "secrets": json.loads(admin_get(config_dump_argv("dynamic_active_secrets")[-1])),
            "stats_before": initial,
            "stats_after": admin_get(stats_path),
            "workload": workload,
            "root_pem": ca.root_pem,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_config_dump_command_is_istios() -> None:
    assert config_dump_argv("dynamic_active_secrets") == [
        "pilot-agent",
        "request",
        "GET",
        "config_dump?resource=dynamic_active_secrets",
    ]
    assert config_dump_argv() == ["pilot-agent", "request", "GET", "config_dump"]


@pytest.mark.parametrize("shape", ["secrets", "full"])
def test_workload_certificate_from_a_real_envoy_dump(
    envoy_dumps: dict[str, Any], shape: str
) -> None:
    pem = secret_pem(envoy_dumps[shape], "default")
    cert = load_certificate(pem)
    expected = envoy_dumps["workload"]
    assert cert.spiffe_id == "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"
    assert cert.serial == load_certificate(expected.cert_pem).serial
    assert cert.fingerprint_sha256 == load_certificate(expected.cert_pem).fingerprint_sha256


def test_private_key_never_leaves_the_dump(envoy_dumps: dict[str, Any]) -> None:
    text = json.dumps(envoy_dumps["secrets"])
    assert _b64(envoy_dumps["workload"].key_pem) not in text
    assert _b64(b"[redacted]") in text


def test_root_ca_from_the_dump(envoy_dumps: dict[str, Any]) -> None:
    assert secret_pem(envoy_dumps["secrets"], "ROOTCA") == envoy_dumps["root_pem"]


def test_missing_secret_names_those_present(envoy_dumps: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError) as err:
        secret_pem(envoy_dumps["secrets"], "file-cert:/etc/certs/cert-chain.pem")
    assert "(its secrets: default, ROOTCA)" in str(
        err.value
    ) or "(its secrets: ROOTCA, default)" in str(err.value)
    with pytest.raises(NotFoundError, match="its secrets: none"):
        secret_pem({"configs": []})


# ---- when is a change in force -------------------------------------------------------------
def test_stats_command_filters_the_update_counters() -> None:
    argv = stats_argv()
    assert argv[:3] == ["pilot-agent", "request", "GET"]
    assert argv[3].startswith("stats?filter=")


def test_update_counters_from_a_real_envoy(envoy_dumps: dict[str, Any]) -> None:
    # the filter the backend sends selects exactly the four counters, and they add up:
    # one LDS and one CDS update accepted at start, then the bad listener rejected
    before, after = envoy_dumps["stats_before"], envoy_dumps["stats_after"]
    assert sorted(line.split(":")[0] for line in before.splitlines()) == [
        "cluster_manager.cds.update_rejected",
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_rejected",
        "listener_manager.lds.update_success",
    ]
    assert parse_updates(before) == Updates(accepted=2, rejected=0)
    later = parse_updates(after)
    # (the rename also makes Envoy re-read the unchanged CDS file, which it counts as an
    # accepted update too: counts move even when the content does not)
    assert later.rejected == 1 and later.accepted >= 2


def test_parse_update_counters() -> None:
    text = (
        "cluster_manager.cds.update_rejected: 0\n"
        "cluster_manager.cds.update_success: 7\n"
        "listener_manager.lds.update_rejected: 1\n"
        "listener_manager.lds.update_success: 5\n"
    )
    assert parse_updates(text) == Updates(accepted=12, rejected=1)
    with pytest.raises(ValueError):
        parse_updates("server.live: 1\n")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def scripted(steps: list[dict[str, Updates]]):
    """A reader that returns the next snapshot each time (the last one forever)."""
    it = iter(steps)
    last: list[dict[str, Updates]] = []

    def read() -> dict[str, Updates]:
        with contextlib.suppress(StopIteration):
            last[:] = [next(it)]
        return last[0]

    return read


BEFORE = {"istio-meshlab/a": Updates(5, 0), "istio-meshlab/b": Updates(9, 0)}


def test_in_force_when_every_sidecar_took_an_update() -> None:
    clock = Clock()
    read = scripted(
        [
            BEFORE,
            {"istio-meshlab/a": Updates(6, 0), "istio-meshlab/b": Updates(9, 0)},
            {"istio-meshlab/a": Updates(6, 0), "istio-meshlab/b": Updates(11, 0)},
        ]
    )
    assert wait_in_force(read, BEFORE, settle=10, quiet=2, clock=clock, sleep=clock.sleep) == []
    assert clock.now < 1.0


def test_in_force_after_a_quiet_period_when_one_sidecar_was_not_affected() -> None:
    clock = Clock()
    read = scripted([{"istio-meshlab/a": Updates(6, 0), "istio-meshlab/b": Updates(9, 0)}])
    assert wait_in_force(read, BEFORE, settle=10, quiet=2, clock=clock, sleep=clock.sleep) == []
    assert 2.0 <= clock.now < 3.0


def test_no_update_at_all_warns_after_the_settle_time() -> None:
    clock = Clock()
    warnings = wait_in_force(
        scripted([BEFORE]), BEFORE, settle=5, quiet=2, clock=clock, sleep=clock.sleep
    )
    assert len(warnings) == 1 and "within 5 s" in warnings[0]
    assert 5.0 <= clock.now < 6.0


def test_rejected_update_raises_at_once() -> None:
    clock = Clock()
    read = scripted([{"istio-meshlab/a": Updates(5, 1), "istio-meshlab/b": Updates(10, 0)}])
    with pytest.raises(MeshlabError, match="sidecar of pod istio-meshlab/a rejected"):
        wait_in_force(read, BEFORE, clock=clock, sleep=clock.sleep)
    assert clock.now == 0.0


def test_nothing_to_wait_for_without_sidecars() -> None:
    def read() -> dict[str, Updates]:
        raise AssertionError("must not be read")

    assert wait_in_force(read, {}) == []
