"""Data plane: latency of service-a -> service-b-v1, with and without the sidecars.

The load generator stands in for service-a's app: it sends what the app's HTTP client sends
to its HTTP_PROXY (service-a's ``virtualOutbound``, ``inner_ip:15001``): ``GET
http://service-b-v1:8080/hello`` in absolute form. Paths:

- ``direct``: straight to service-b-v1's app (``inner_ip:8080``), no proxy, no relay.
- ``sidecars_plaintext``: both sidecars, auto mTLS off (no DestinationRule, no policy).
- ``sidecars_mtls``: both sidecars, auto mTLS (Istio mutual TLS between them).
- ``sidecars_mtls_capture``: the same while a capture records service-b-v1's port 8080.
- ``b_inbound_via_relay`` / ``b_inbound_bypass``: service-b-v1's pod address (the capture
  relay, then Envoy's ``virtualInbound``) against ``virtualInbound`` reached directly with
  the PROXY v2 header the relay would have added. Their difference is the idle relay's cost.
- ``plain_b_via_relay`` / ``plain_b_direct``: the same comparison for a pod without a sidecar.

Each round runs every path once, in a rotating order; figures are the min/median/max of the
per-round percentiles. wrk runs closed-loop with one connection (pure latency) and, in the
full run, paced to about ``paced_rate`` requests/s over ``paced_connections`` connections
(Istio's published setting: 1000 rps, 16 connections). The Python client is httpx on one
keep-alive connection, sequential requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks import memory
from benchmarks.common import (
    A_ID,
    B_HOST,
    B_URL,
    NS,
    PodAddr,
    Settings,
    cpu_seconds,
    fmt,
    fmt_spread,
    machine_busy_seconds,
    roles,
    spread,
)
from benchmarks.loadgen import (
    Target,
    proxy_v2_header,
    raw_get,
    run_httpx,
    run_wrk,
    wrk_binary,
    wrk_version,
)

NAME = "dataplane"
TARGET_RELAY_PCT = 10.0
ISTIO_ADDED_MS = {"p90": 0.228, "p99": 0.298}  # Istio 1.20, 1 kB, 1000 rps, 16 connections, mTLS
PLAIN_NS = "bench-plain"
PLAIN_B = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {PLAIN_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: service-b-plain
  namespace: {PLAIN_NS}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: service-b-plain
  template:
    metadata:
      labels:
        app: service-b-plain
    spec:
      containers:
        - name: service-b
          image: istio-meshlab/service-b-v1:0.1.0
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet:
              path: /healthz
              port: 8080
"""
PCTS = ("p50", "p90", "p99")
LABELS = {
    "direct": "direct app to app",
    "sidecars_plaintext": "two sidecars, plaintext",
    "sidecars_mtls": "two sidecars, mTLS",
    "sidecars_mtls_capture": "two sidecars, mTLS, capture active",
    "b_inbound_via_relay": "B's pod address (relay → Envoy inbound → app)",
    "b_inbound_bypass": "B's Envoy inbound directly (PROXY v2 header, no relay)",
    "plain_b_via_relay": "pod without sidecar: relay → app",
    "plain_b_direct": "pod without sidecar: app directly",
}


@dataclass(frozen=True)
class Route:
    name: str
    target: Target
    auto_mtls: bool = True
    capture: str | None = None  # namespace/workload to capture on port 8080
    expect_caller: str | None = None  # the caller service-b sees; checked before measuring
    httpx: tuple[str, str | None] | None = None  # (url, proxy) for the Python client
    paced: bool = False


def paths(a: PodAddr, b: PodAddr, plain: PodAddr | None) -> list[Route]:
    outbound = Target(f"http://{a.inner_ip}:15001/", B_URL, B_HOST)
    proxy = f"http://{a.inner_ip}:15001"
    direct_url = f"http://{b.inner_ip}:8080/hello"
    out = [
        Route(
            "direct", Target(direct_url, "/hello", B_HOST),
            httpx=(direct_url, None), paced=True, expect_caller="",
        ),
        Route(
            "sidecars_plaintext", outbound, auto_mtls=False,
            httpx=(B_URL, proxy), paced=True, expect_caller="",
        ),
        Route("sidecars_mtls", outbound, httpx=(B_URL, proxy), paced=True, expect_caller=A_ID),
        Route(
            "sidecars_mtls_capture", outbound, capture=f"{NS}/service-b-v1",
            httpx=(B_URL, proxy), expect_caller=A_ID,
        ),
        Route("b_inbound_via_relay", Target(f"http://{b.ip}:8080/hello", "/hello", B_HOST)),
        Route(
            "b_inbound_bypass",
            Target(
                f"http://{b.inner_ip}:15006/hello", "/hello", B_HOST,
                proxy_header=proxy_v2_header((a.ip, 40000), (b.ip, 8080)),
            ),
        ),
    ]  # fmt: skip
    if plain is not None:
        out += [
            Route("plain_b_via_relay", Target(f"http://{plain.ip}:8080/hello", "/hello", B_HOST)),
            Route(
                "plain_b_direct", Target(f"http://{plain.inner_ip}:8080/hello", "/hello", B_HOST)
            ),
        ]
    return out


class Runner:
    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self.auto_mtls: bool | None = None

    def set_auto_mtls(self, value: bool) -> None:
        if self.auto_mtls != value:
            self.mesh.configure(auto_mtls=value)
            self.auto_mtls = value

    @contextlib.contextmanager
    def on(self, path: Route) -> Iterator[dict[str, Any]]:
        """The mesh set up for ``path`` (auto mTLS, capture); yields capture facts."""
        self.set_auto_mtls(path.auto_mtls)
        facts: dict[str, Any] = {}
        if path.capture is None:
            yield facts
            return
        ns, workload = path.capture.split("/")
        with self.mesh.capture(workload, ns, 8080) as cap:
            yield facts
        facts["capture_flows"] = len(cap.flows)
        facts["capture_bytes"] = sum(len(c.data) for f in cap.flows for c in f.chunks)

    def check(self, path: Route) -> None:
        """One request by hand: the path answers 200 with the caller identity expected."""
        t = path.target
        host_port = t.url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        with self.on(path):
            answer = raw_get((host, int(port)), t.path, t.host, prefix=t.proxy_header or b"")
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"path {path.name} ({t.url}) did not answer 200: {answer[:200]!r}")
        if path.expect_caller is not None:
            caller = json.loads(body).get("caller") or ""
            if caller != path.expect_caller:
                raise RuntimeError(
                    f"path {path.name}: service-b-v1 saw caller {caller!r}, "
                    f"expected {path.expect_caller!r}"
                )


def _cpu_by_role(before: dict[int, float], after: dict[int, float], names: dict[int, str],
                 requests: int) -> dict[str, float]:  # fmt: skip
    out: dict[str, float] = {}
    for pid, role in names.items():
        if pid in before and pid in after and requests:
            out[role] = out.get(role, 0.0) + (after[pid] - before[pid]) * 1e6 / requests
    return out


def run(settings: Settings, lab: Any) -> dict[str, Any]:
    mesh = lab.mesh
    runner = Runner(mesh)
    have_wrk = wrk_binary() is not None
    plain = None
    if settings.plain_b:
        mesh.apply(PLAIN_B)
        mesh.wait_ready(timeout=60)
    try:
        pods = lab.pods()
        if settings.plain_b:
            plain = pods[f"{PLAIN_NS}/service-b-plain"]
        all_paths = paths(pods[f"{NS}/service-a"], pods[f"{NS}/service-b-v1"], plain)
        for path in all_paths:
            runner.check(path)
        names = roles(mesh)
        per_round: list[dict[str, Any]] = []
        for r in range(settings.rounds):
            shift = r % len(all_paths)
            order = all_paths[shift:] + all_paths[:shift]
            per_round.append(_round(runner, order, settings, have_wrk, names))
        runner.set_auto_mtls(True)
        after_load = [memory.sample(mesh, skip="service-b-plain")["pss_mb"] for _ in range(3)]
    finally:
        runner.set_auto_mtls(True)
        if settings.plain_b:
            mesh.delete(PLAIN_B)
    return summarize(per_round, settings, have_wrk, after_load)


def _round(
    runner: Runner, order: list[Route], settings: Settings, have_wrk: bool, names: dict[int, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"wrk": {}, "paced": {}, "httpx": {}, "cpu": {}, "capture": {}}
    for path in order:
        with runner.on(path) as facts:
            if have_wrk:
                before = {pid: cpu_seconds(pid) for pid in names}
                busy, start = machine_busy_seconds(), time.monotonic()
                res = run_wrk(path.target, settings.wrk_seconds)
                busy, took = machine_busy_seconds() - busy, time.monotonic() - start
                after = {pid: cpu_seconds(pid) for pid in names}
                cpu = _cpu_by_role(before, after, names, res["requests"])
                cpu["load generator (wrk)"] = res["client_cpu_s"] * 1e6 / max(res["requests"], 1)
                ours = sum(after[p] - before[p] for p in names if p in before and p in after)
                res["other_cpu_pct"] = max(
                    0.0, (busy - ours - res["client_cpu_s"]) / (took * (os.cpu_count() or 1)) * 100
                )
                out["wrk"][path.name] = res
                out["cpu"][path.name] = cpu
            if path.httpx is not None:
                url, proxy = path.httpx
                out["httpx"][path.name] = run_httpx(url, proxy, settings.http_requests)
            if have_wrk and path.paced and settings.paced_rate:
                conns = settings.paced_connections
                delay = max(0, round(conns * 1000 / settings.paced_rate) - 1)
                out["paced"][path.name] = run_wrk(
                    path.target, settings.wrk_seconds, connections=conns, threads=2, delay_ms=delay
                )
        if facts:
            out["capture"][path.name] = facts
    return out


def _added(rounds: list[dict[str, Any]], kind: str, path: str, base: str) -> dict[str, Any]:
    out = {}
    for pct in PCTS:
        diffs = [
            r[kind][path][f"{pct}_ms"] - r[kind][base][f"{pct}_ms"]
            for r in rounds
            if path in r[kind] and base in r[kind]
        ]
        out[pct] = spread(diffs, 3)
    return out


def _pct_of(rounds: list[dict[str, Any]], kind: str, path: str, base: str,
            of: str | None = None) -> dict[str, Any]:  # fmt: skip
    """(path - base) / of, in percent, at p50 (``of`` defaults to ``base``)."""
    values = []
    for r in rounds:
        got = r[kind]
        if path in got and base in got and (of or base) in got:
            diff = got[path]["p50_ms"] - got[base]["p50_ms"]
            values.append(diff / got[of or base]["p50_ms"] * 100)
    return spread(values, 1)


def summarize(
    rounds: list[dict[str, Any]], settings: Settings, have_wrk: bool, after_load: list[float]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rounds": len(rounds),
        "wrk_version": wrk_version(),
        "wrk_seconds": settings.wrk_seconds,
        "http_requests": settings.http_requests,
        "paced_rate": settings.paced_rate,
        "paced_connections": settings.paced_connections,
        "pss_after_load_mb": spread(after_load, 1),
    }
    for kind in ("wrk", "paced", "httpx"):
        names = list(dict.fromkeys(n for r in rounds for n in r[kind]))
        result[kind] = {
            name: {
                **{
                    pct: spread([r[kind][name][f"{pct}_ms"] for r in rounds if name in r[kind]], 3)
                    for pct in PCTS
                },
                "rps": spread([r[kind][name].get("rps") for r in rounds if name in r[kind]], 0),
                "errors": sum(r[kind][name]["errors"] for r in rounds if name in r[kind]),
            }
            for name in names
        }
        result[f"{kind}_added_ms"] = {
            mode: _added(rounds, kind, mode, "direct")
            for mode in ("sidecars_plaintext", "sidecars_mtls", "sidecars_mtls_capture")
        }
    roles_seen = sorted({role for r in rounds for cpu in r["cpu"].values() for role in cpu})
    result["cpu_us_per_request"] = {
        name: {role: spread([r["cpu"][name].get(role) for r in rounds if name in r["cpu"]], 0)
               for role in roles_seen}
        for name in dict.fromkeys(n for r in rounds for n in r["cpu"])
    }  # fmt: skip
    result["capture"] = {name: facts for r in rounds[-1:] for name, facts in r["capture"].items()}
    result["relay_added_ms"] = spread(
        [
            r["wrk"]["b_inbound_via_relay"]["p50_ms"] - r["wrk"]["b_inbound_bypass"]["p50_ms"]
            for r in rounds
            if "b_inbound_via_relay" in r["wrk"]
        ],
        3,
    )
    result["relay_idle_pct"] = _pct_of(rounds, "wrk", "b_inbound_via_relay", "b_inbound_bypass")
    result["relay_share_of_mtls_path_pct"] = _pct_of(
        rounds, "wrk", "b_inbound_via_relay", "b_inbound_bypass", of="sidecars_mtls"
    )
    result["plain_relay_idle_pct"] = _pct_of(rounds, "wrk", "plain_b_via_relay", "plain_b_direct")
    result["capture_active_pct"] = _pct_of(rounds, "wrk", "sidecars_mtls_capture", "sidecars_mtls")
    result["capture_active_pct_httpx"] = _pct_of(
        rounds, "httpx", "sidecars_mtls_capture", "sidecars_mtls"
    )
    result["used_wrk"] = have_wrk
    result["other_cpu_pct"] = spread(
        [run.get("other_cpu_pct") for r in rounds for run in r["wrk"].values()], 0
    )
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    kind = "wrk" if result["used_wrk"] else "httpx"
    return {
        "sidecar_added_p90_ms": result[f"{kind}_added_ms"]["sidecars_mtls"]["p90"]["median"],
        # The target is about service-a -> service-b-v1: what the idle relay adds to
        # that path. Its cost on B's inbound hop alone is in the table too.
        "capture_idle_overhead_pct": result["relay_share_of_mtls_path_pct"]["median"],
    }


def _latency_table(result: dict[str, Any], kind: str) -> list[str]:
    lines = [
        "| path | p50 ms | p90 ms | p99 ms | req/s | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result[kind].items():
        lines.append(
            f"| {LABELS.get(name, name)} | {fmt_spread(s['p50'], 3)} | {fmt_spread(s['p90'], 3)} "
            f"| {fmt_spread(s['p99'], 3)} | {fmt_spread(s['rps'], 0)} | {s['errors']} |"
        )
    return lines


def _added_table(result: dict[str, Any], kind: str) -> list[str]:
    lines = [
        "| added to the direct path | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for mode, added in result[f"{kind}_added_ms"].items():
        if added["p50"]["n"]:
            lines.append(
                f"| {LABELS[mode]} | {fmt_spread(added['p50'], 3)} | "
                f"{fmt_spread(added['p90'], 3)} | {fmt_spread(added['p99'], 3)} |"
            )
    lines.append(
        f"| Istio 1.20, two sidecars, mTLS (1 kB, 1000 rps, 16 connections) | - | "
        f"{ISTIO_ADDED_MS['p90']} | {ISTIO_ADDED_MS['p99']} |"
    )
    return lines


def render(result: dict[str, Any]) -> str:
    lines = [
        "## Data plane: service-a -> service-b-v1",
        "",
        f"{result['rounds']} rounds; each figure is median (min-max) of the per-round value "
        "(an added latency: of the per-round differences).",
        "",
    ]
    if result["used_wrk"]:
        lines += [
            "Other processes on the machine used "
            f"{fmt_spread(result['other_cpu_pct'], 0)} % of its CPU during the closed-loop wrk "
            "runs (0 on a quiet machine): tail latencies (p90, p99) are the first to suffer.",
            "",
        ]
    if result["used_wrk"]:
        lines += [
            f"### wrk, closed loop, 1 connection, {result['wrk_seconds']} s per path per round",
            f"({result['wrk_version']})",
            "",
            *_latency_table(result, "wrk"),
            "",
            *_added_table(result, "wrk"),
            "",
        ]
        if result["paced"]:
            lines += [
                f"### wrk paced to ~{result['paced_rate']} req/s over "
                f"{result['paced_connections']} connections",
                "",
                "Debian's wrk 4.1 has no constant-rate mode (wrk2's `-R`); pacing uses Lua's "
                "`delay()`, so latencies are not corrected for coordinated omission. The load "
                "generator, both Envoys, both Python apps and the daemon share the 2 cores.",
                "",
                *_latency_table(result, "paced"),
                "",
                *_added_table(result, "paced"),
                "",
            ]
    else:
        lines += ["wrk is not installed: native-client figures were not measured.", ""]
    lines += [
        f"### Python client: httpx, one keep-alive connection, {result['http_requests']} "
        "sequential requests",
        "",
        *_latency_table(result, "httpx"),
        "",
        *_added_table(result, "httpx"),
        "",
        "### The capture relay",
        "",
        "| measured (p50) | value |",
        "|---|---|",
        f"| idle relay, added to B's inbound path (relay vs PROXY-header bypass) | "
        f"{fmt_spread(result['relay_added_ms'], 3)} ms = "
        f"**{fmt_spread(result['relay_idle_pct'], 1)} %** |",
        f"| … as a share of the whole two-sidecar mTLS path | "
        f"{fmt_spread(result['relay_share_of_mtls_path_pct'], 1)} % |",
        f"| idle relay in front of a pod without sidecar (relay vs app directly) | "
        f"{fmt_spread(result['plain_relay_idle_pct'], 1)} % |",
        f"| active capture, added to the mTLS path (wrk) | "
        f"{fmt_spread(result['capture_active_pct'], 1)} % |",
        f"| active capture, added to the mTLS path (httpx) | "
        f"{fmt_spread(result['capture_active_pct_httpx'], 1)} % |",
        "",
    ]
    cap = result["capture"].get("sidecars_mtls_capture")
    if cap:
        lines += [
            f"The last capture held {cap['capture_flows']} flows, {cap['capture_bytes']} bytes.",
            "",
        ]
    if result["cpu_us_per_request"]:
        table = result["cpu_us_per_request"]
        # Only the processes on the measured paths (the others stay near 0).
        roles_seen = sorted(
            {r for cpu in table.values() for r, s in cpu.items() if (s["median"] or 0) > 10}
        )
        lines += [
            "### CPU per request (µs, median of rounds; wrk closed loop)",
            "",
            "| path | " + " | ".join(roles_seen) + " |",
            "|---|" + "---|" * len(roles_seen),
        ]
        for name, cpu in result["cpu_us_per_request"].items():
            cells = [fmt(cpu[r]["median"], 0) if cpu[r]["n"] else "-" for r in roles_seen]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"PSS of the lesson mesh after this load: {fmt_spread(result['pss_after_load_mb'], 1)} MB.",
        "",
    ]
    return "\n".join(lines)
