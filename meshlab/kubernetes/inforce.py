"""When is an Istio change in force on a real cluster?

istiod turns a PeerAuthentication or DestinationRule into new listeners and clusters and
pushes them to the sidecars (after a 100 ms debounce). Each Envoy counts the updates it
accepted and rejected: ``listener_manager.lds.update_success``/``update_rejected`` and
``cluster_manager.cds.update_success``/``update_rejected`` (Istio keeps both prefixes in
its stats inclusion list). The backend reads them from every sidecar before the change,
then waits until:

- every sidecar reports a new accepted update; or
- some did and none has moved for ``quiet`` seconds (istiod has finished its push; a
  sidecar it left alone was not affected); or
- none moved within ``settle`` seconds (the change touched no sidecar): it stops waiting
  and says so.

A rejected update raises at once: the sidecar keeps serving its old config.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshlab.errors import MeshlabError

UPDATE_STATS = "^(listener_manager\\.lds|cluster_manager\\.cds)\\.update_(success|rejected)$"
STAT_LINE = re.compile(r"^([\w.]+):\s*(\d+)\s*$")
POLL = 0.3


@dataclass(frozen=True)
class Updates:
    """One sidecar's accepted and rejected LDS+CDS update counts."""

    accepted: int
    rejected: int


def stats_argv() -> list[str]:
    """The command that prints the counters (run in the istio-proxy container)."""
    return ["pilot-agent", "request", "GET", f"stats?filter={UPDATE_STATS}"]


def parse_updates(text: str) -> Updates:
    """Sum Envoy's ``name: value`` stat lines into accepted/rejected update counts."""
    accepted = rejected = 0
    seen = False
    for line in text.splitlines():
        match = STAT_LINE.match(line.strip())
        if not match:
            continue
        name, value = match.group(1), int(match.group(2))
        if name.endswith(".update_success"):
            accepted += value
            seen = True
        elif name.endswith(".update_rejected"):
            rejected += value
            seen = True
    if not seen:
        raise ValueError("no lds/cds update counters in the sidecar's stats")
    return Updates(accepted, rejected)


def wait_in_force(
    read: Callable[[], dict[str, Updates]],
    before: dict[str, Updates],
    *,
    settle: float = 10.0,
    quiet: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait as the module docstring says; returns warnings (empty when all went as expected).

    ``read`` returns the current counts per sidecar (pods it cannot read are left out);
    ``before`` holds the counts taken before the change.
    """
    if not before:
        return []
    start = clock()
    progressed_at: float | None = None
    updated: set[str] = set()
    while True:
        now_counts = read()
        for pod, old in before.items():
            new = now_counts.get(pod)
            if new is None:
                continue
            if new.rejected > old.rejected:
                raise MeshlabError(
                    f"the sidecar of pod {pod} rejected the new configuration (Envoy's "
                    "lds/cds update_rejected went up) and keeps serving the old one; see its "
                    "log: `meshlab logs WORKLOAD -c istio-proxy` (or kubectl logs -c istio-proxy)"
                )
            if new.accepted > old.accepted and pod not in updated:
                updated.add(pod)
                progressed_at = clock()
        present = {pod for pod in before if pod in now_counts}
        if present <= updated:
            return []
        now = clock()
        if progressed_at is not None and now - progressed_at >= quiet:
            return []
        if progressed_at is None and now - start >= settle:
            return [
                f"no sidecar reported a configuration update within {settle:g} s; the change "
                "may not affect any of them (or istiod is slow: check `istioctl proxy-status`)"
            ]
        sleep(POLL)
