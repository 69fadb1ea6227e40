"""A real Envoy, driven the way the control plane drives it: a rejected update is reported as
such (and does not poison the next one), and an accepted one is confirmed by its version."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlab.embedded import xds
from meshlab.embedded.addresses import acquire_block
from meshlab.embedded.model import Pod
from meshlab.embedded.sidecar import Sidecar, envoy_argv
from meshlab.errors import MeshTimeoutError


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    block = acquire_block(tmp_path)
    ip, inner = block.pod_addresses(0)
    pod = Pod("probe", "ns", {}, "sa", ip, inner, sidecar=True, container_ports=(8080,))
    car = Sidecar(pod, tmp_path / "pod" / "envoy")
    car.write_bootstrap(xds.bootstrap(pod, car.folder, "probe.ns"))
    car.write("lds", xds.discovery_response([], xds.LISTENER_TYPE, "empty"))
    car.write("cds", xds.discovery_response([], xds.CLUSTER_TYPE, "empty"))
    log = (tmp_path / "pod" / "istio-proxy.log").open("wb")
    envoy = subprocess.Popen(envoy_argv(car.bootstrap_path), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not asyncio.run(car.ready()):
            assert envoy.poll() is None and time.monotonic() < deadline, "Envoy did not start"
            time.sleep(0.05)
        yield car
    finally:
        envoy.terminate()
        envoy.wait(10)
        log.close()
        block.release()


def listener(pod: Pod, name: str, filter_type: str) -> dict[str, object]:
    return {
        "name": name,
        "address": {"socket_address": {"address": pod.inner_ip, "port_value": 15001}},
        "filter_chains": [
            {"filters": [{"name": "tcp", "typed_config": {"@type": filter_type}}]}
        ],
    }


TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def test_rejection_is_reported_and_the_next_update_still_lands(sidecar: Sidecar) -> None:
    # Envoy cannot parse this file (a filter type it does not know): update_failure.
    bad = listener(sidecar.pod, "broken", "type.googleapis.com/no.such.Filter")
    sidecar.write("lds", xds.discovery_response([bad], xds.LISTENER_TYPE, "bad-1"))
    with pytest.raises(MeshTimeoutError, match=r"rejected its new lds config.*istio-proxy\.log"):
        asyncio.run(sidecar.wait_for(["lds"], timeout=10))
    # Envoy parses this one but refuses it (two listeners on one address): update_rejected.
    one = listener(sidecar.pod, "x", TCP_PROXY)
    one["filter_chains"][0]["filters"][0]["typed_config"].update(  # type: ignore[index]
        {"stat_prefix": "x", "cluster": "none"}
    )
    twin = {**one, "name": "y"}
    sidecar.write("lds", xds.discovery_response([one, twin], xds.LISTENER_TYPE, "bad-2"))
    with pytest.raises(MeshTimeoutError, match="rejected its new lds config"):
        asyncio.run(sidecar.wait_for(["lds"], timeout=10))

    # A later good update is confirmed, not blamed on the old rejection.
    sidecar.write("lds", xds.discovery_response([], xds.LISTENER_TYPE, "good-2"))
    assert asyncio.run(sidecar.wait_for(["lds"], timeout=10)) < 10
    sidecar.write("cds", xds.discovery_response([], xds.CLUSTER_TYPE, "good-3"))
    assert asyncio.run(sidecar.wait_for(["cds"], timeout=10)) < 10
    stats = asyncio.run(sidecar.stats(r"listener_manager\.lds\."))
    assert stats["listener_manager.lds.version_text"] == "good-2"
    assert stats["listener_manager.lds.update_failure"] == "1"
    assert stats["listener_manager.lds.update_rejected"] == "1"
