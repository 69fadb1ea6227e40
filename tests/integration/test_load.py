"""Load through the mesh: service-a's sidecar to service-b-v1's sidecar over mTLS.

The client is what service-a's app would be: an HTTP client whose proxy is its sidecar's
``virtualOutbound`` (a pooled httpx client, 32 connections). Speeds are printed (run with
``-s``) and kept out of the assertions; benchmarks/ records them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import DEPLOYMENTS, NS

B_URL = "http://service-b-v1:8080/hello"
B_FROM_LEGACY = "http://service-b-v1.istio-meshlab:8080/hello"
A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
CONCURRENCY = 32

PEER_AUTH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-meshlab
spec:
  mtls:
    mode: {mode}
"""


@pytest.fixture(scope="module")
def load_mesh(lesson_mesh):
    lesson_mesh.wait_ready()
    return lesson_mesh


@pytest.fixture(scope="module")
def proxy(load_mesh) -> str:
    """service-a's HTTP_PROXY: its sidecar's virtualOutbound."""
    pods = load_mesh._request("snapshot")["pods"]
    inner = next(p["inner_ip"] for p in pods if p["name"].startswith("service-a-"))
    return f"http://{inner}:15001"


def run_load(proxy: str, requests: int) -> tuple[Counter[str], list[float], float, set]:
    """``requests`` GETs to service-b-v1 from ``CONCURRENCY`` workers sharing one pooled
    client; returns (outcomes, latencies, seconds, callers seen by service-b-v1)."""

    async def main() -> tuple[Counter[str], list[float], float, set]:
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        callers = set()
        todo = iter(range(requests))
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            proxy=proxy, trust_env=False, timeout=15.0, limits=limits
        ) as client:

            async def worker() -> None:
                for _ in todo:
                    started = time.perf_counter()
                    try:
                        response = await client.get(B_URL)
                        outcome = str(response.status_code)
                        if response.status_code == 200:
                            callers.add(response.json()["caller"])
                        else:
                            outcome += " " + response.text[:120]
                    except httpx.HTTPError as err:
                        outcome = f"{type(err).__name__}: {err}"
                    latencies.append(time.perf_counter() - started)
                    outcomes[outcome] += 1

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            took = time.perf_counter() - began
        return outcomes, latencies, took, callers

    return asyncio.run(main())


def summary(latencies: list[float], took: float) -> str:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return (
        f"{len(ordered)} requests, concurrency {CONCURRENCY}: {len(ordered) / took:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def test_2000_requests_at_concurrency_32_over_mtls(load_mesh, proxy):
    before = sum(p.restarts for p in load_mesh.pods(NS))
    outcomes, latencies, took, callers = run_load(proxy, 2000)
    print(f"\nmTLS load A->B: {summary(latencies, took)}")
    assert outcomes == Counter({"200": 2000})
    assert callers == {A_ID}  # every request reached B over mTLS, as service-a
    assert sum(p.restarts for p in load_mesh.pods(NS)) == before


def test_flipping_strict_and_permissive_during_load(load_mesh, proxy):
    """A->B is mTLS either way: every request must succeed while the policy flips. The
    legacy client (plaintext) gets 200 or a reset depending on the moment, nothing else."""
    stop = threading.Event()
    flips: list[str] = []
    legacy: Counter[str] = Counter()
    problems: list[BaseException] = []

    def flipper() -> None:
        try:
            while not stop.is_set():
                mode = "STRICT" if len(flips) % 2 == 0 else "PERMISSIVE"
                load_mesh.apply(PEER_AUTH.format(mode=mode))
                flips.append(mode)
                result = load_mesh.call("legacy-client", B_FROM_LEGACY, "legacy")
                legacy[str(result.status or result.error)] += 1
        except BaseException as err:  # surfaced by the assertions below
            problems.append(err)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    callers: set = set()
    took = 0.0
    try:
        # Rounds of 200 requests until the policy has flipped at least 10 times.
        while len(outcomes) <= 1 and (sum(outcomes.values()) < 600 or len(flips) < 10):
            more, lat, seconds, seen = run_load(proxy, 200)
            outcomes.update(more)
            latencies += lat
            took += seconds
            callers |= seen
            assert sum(outcomes.values()) < 10_000, "the policy does not flip"
    finally:
        stop.set()
        thread.join(30)
        load_mesh.delete(PEER_AUTH.format(mode="PERMISSIVE"))
    print(f"\nmTLS load A->B with {len(flips)} policy flips: {summary(latencies, took)}")
    assert problems == []
    assert len(flips) >= 10
    assert outcomes == Counter({"200": len(latencies)})
    assert callers == {A_ID}
    assert set(legacy) <= {"200", "connection reset by peer"}, legacy
    status = load_mesh.status()
    assert status.running and all(p.ready and p.restarts == 0 for p in status.pods)


def test_pooled_plaintext_connection_is_refused_right_after_strict(load_mesh):
    """Sidecars drain changed filter chains gracefully, but a kept-alive connection whose
    transport the new policy refuses must not carry one more request: with a DestinationRule
    DISABLE, service-a's sidecar holds plaintext connections to service-b-v1; after STRICT
    the very next call is refused (503), as on a new connection."""
    load_mesh.apply(DEPLOYMENTS / "examples" / "destination-rule-disable.yaml")
    try:
        for _ in range(3):
            plain = load_mesh.call("service-a", B_URL, NS)
            assert plain.status == 200 and plain.json()["caller"] is None
        load_mesh.apply(PEER_AUTH.format(mode="STRICT"))
        refused = load_mesh.call("service-a", B_URL, NS)
        assert refused.status == 503
        assert "reset reason: connection termination" in refused.body
    finally:
        load_mesh.delete(DEPLOYMENTS / "examples" / "destination-rule-disable.yaml")
        load_mesh.delete(PEER_AUTH.format(mode="STRICT"))
    assert load_mesh.call("service-a", B_URL, NS).status == 200
