"""``meshlab``: the command line, with kubectl's habits.

Human-readable output by default (rich; colour only on a terminal), ``-o json`` for scripts,
errors on stderr with a non-zero exit, and no tracebacks for user mistakes (``--debug``
shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshlab.api import Mesh, connect
from meshlab.errors import MeshlabError

DEFAULT_NAMESPACE = os.environ.get("MESHLAB_NAMESPACE", "istio-meshlab")

# Off a terminal (pipes, notebooks, CI logs) keep tables at their natural width, uncoloured.
_WIDTH = {"highlight": False, "soft_wrap": True}
out = Console(**_WIDTH, width=None if sys.stdout.isatty() else 200)  # type: ignore[arg-type]
err = Console(**_WIDTH, stderr=True, width=None if sys.stderr.isatty() else 200)  # type: ignore[arg-type]


def _mesh(args: argparse.Namespace, start: bool = True, **options: Any) -> Mesh:
    if args.home:
        os.environ["MESHLAB_HOME"] = args.home
    backend = args.backend
    if (backend or os.environ.get("MESHLAB_BACKEND", "embedded")) == "embedded":
        return connect(backend, start=start, **options)
    return connect(backend, **options)


def _print_table(table: Table) -> None:
    """A table without the trailing blanks rich pads its last column with."""
    with out.capture() as captured:
        out.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# ---- commands ---------------------------------------------------------------------------------
def _backend(args: argparse.Namespace) -> str:
    from meshlab.api import resolve_backend

    return resolve_backend(args.backend)


def cmd_up(args: argparse.Namespace) -> int:
    if _backend(args) == "kubernetes":
        mesh = _mesh(args)
        details = mesh.status().details
        context = details.get("context", "the current context")
        out.print(f"Connected to cluster {context}; Istio is installed. Nothing to start.")
        return 0
    started = time.monotonic()
    options: dict[str, Any] = {}
    if args.no_auto_mtls:
        options["auto_mtls"] = False
    if args.tls_max_version:
        options["tls_max_version"] = args.tls_max_version
    if args.cert_ttl:
        options["cert_ttl"] = args.cert_ttl
    with err.status("Starting the embedded mesh…") if err.is_terminal else _nullcontext():
        mesh = _mesh(args, start=False, **options)
        info = mesh.up()  # type: ignore[attr-defined]
    took = time.monotonic() - started
    if info.get("started"):
        out.print(f"Embedded mesh started in {took:.1f} s (state folder {info['home']}).")
    else:
        out.print(f"Embedded mesh already running (state folder {info['home']}).")
        if options:
            out.print(
                "Options apply when the mesh starts; use `meshlab mesh-config` to change them."
            )
    return 0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def cmd_down(args: argparse.Namespace) -> int:
    if _backend(args) == "kubernetes":
        out.print(
            "Nothing to stop on a real cluster; to remove the lab's objects run "
            "`meshlab delete -f deployments/` (or kubectl delete -f deployments/)."
        )
        return 0
    mesh = _mesh(args, start=False)
    was_running = mesh.status().running
    mesh.down()
    out.print(
        "Embedded mesh stopped; no process is left." if was_running else "Nothing was running."
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    mesh = _mesh(args, start=False)
    status = mesh.status()
    if args.output == "json":
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    if not status.running:
        out.print("The embedded mesh is not running (start it with `meshlab up`).")
        return 0
    d = status.details
    if status.backend == "kubernetes":
        out.print(f"Cluster {d.get('context', '')} · {d.get('server', '')}")
        _print_pods(status.pods)
        return 0
    auto = "on" if d.get("auto_mtls") else "off"
    out.print(
        f"Embedded mesh running · auto mTLS {auto} · client TLS max "
        f"{str(d.get('tls_max_version', '')).replace('TLSv1_', '1.')} · "
        f"addresses {d.get('address_block')}"
    )
    _print_pods(status.pods)
    return 0


def _print_pods(pods: list[Any]) -> None:
    if not pods:
        out.print("No pods.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "SIDECAR", "IP"):
        table.add_column(col)
    for p in pods:
        containers = 2 if p.sidecar else 1
        ready = containers if p.ready else 0
        table.add_row(
            p.namespace, p.name, f"{ready}/{containers}", p.phase, str(p.restarts),
            "istio-proxy" if p.sidecar else "-", p.ip,
        )  # fmt: skip
    _print_table(table)
    for p in pods:
        if p.message:
            err.print(f"[yellow]{p.namespace}/{p.name}:[/yellow] {escape(p.message)}")


def cmd_apply(args: argparse.Namespace, delete: bool = False) -> int:
    mesh = _mesh(args)
    sources = args.filename
    total = 0
    for source in sources:
        text = sys.stdin.read() if source == "-" else source
        result = mesh.delete(text, args.namespace) if delete else mesh.apply(text, args.namespace)
        for line in result.changes:
            out.print(line)
        for warning in result.warnings:
            err.print(f"[yellow]Warning:[/yellow] {escape(warning)}")
        total += len(result.changes)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from meshlab.resources import resolve_kind

    mesh = _mesh(args)
    kind = resolve_kind(args.kind)
    items = mesh.get(kind, args.name, args.namespace)
    if args.output == "json":
        print(json.dumps(items if args.name is None else items[0], indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
        return 0
    if not items:
        where = f" in {args.namespace} namespace" if args.namespace else ""
        out.print(f"No resources found{where}.")
        return 0
    if kind == "Pod":
        from meshlab.api import PodStatus

        _print_pods([PodStatus(**p) for p in items])
        return 0
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["NAMESPACE", "NAME"] if kind != "Namespace" else ["NAME"]
    extra = {
        "PeerAuthentication": (
            "MODE",
            lambda b: ((b.get("spec") or {}).get("mtls") or {}).get("mode", ""),
        ),
        "DestinationRule": ("HOST", lambda b: (b.get("spec") or {}).get("host", "")),
        "Namespace": (
            "LABELS",
            lambda b: ",".join(f"{k}={v}" for k, v in (b["metadata"].get("labels") or {}).items()),
        ),
        "Deployment": ("REPLICAS", lambda b: str((b.get("spec") or {}).get("replicas", 1))),
    }.get(kind)
    for col in columns + ([extra[0]] if extra else []) + ["AGE"]:
        table.add_column(col)
    from datetime import UTC, datetime

    for body in items:
        meta = body["metadata"]
        created = meta.get("creationTimestamp")
        age = ""
        if created:
            ts = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            age = _age((datetime.now(UTC) - ts).total_seconds())
        row = ([meta.get("namespace", "")] if kind != "Namespace" else []) + [meta["name"]]
        if extra:
            row.append(str(extra[1](body)))
        row.append(age)
        table.add_row(*row)
    _print_table(table)
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.action != "restart":
        raise MeshlabError(f"unknown rollout action {args.action!r}: only `restart` is supported")
    target = args.target
    kind, _, name = target.partition("/")
    if not name or kind.lower() not in ("deployment", "deployments", "deploy", "deployment.apps"):
        raise MeshlabError(f"expected deployment/NAME, got {target!r}")
    mesh = _mesh(args)
    for line in mesh.rollout_restart(name, args.namespace or DEFAULT_NAMESPACE):
        out.print(line)
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    headers = dict(h.split(":", 1) for h in args.header or [])
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = mesh.call(
        args.source, args.url, args.namespace or DEFAULT_NAMESPACE,
        method=args.request, headers=headers or None, timeout=args.timeout,
    )  # fmt: skip
    if args.output == "json":
        print(json.dumps(result.to_dict()))
    elif result.status is None:
        why = escape(result.error or "")
        err.print(f"[red]{result.code}[/red]  {why} (curl would exit {result.curl_exit_code})")
    else:
        colour = "green" if result.ok else "yellow"
        out.print(f"[{colour}]HTTP {result.status}[/{colour}]  ({result.elapsed * 1000:.1f} ms)")
        print(result.body)
    return 0 if result.status is not None else 1


def cmd_capture(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    namespace = args.namespace or DEFAULT_NAMESPACE
    deadline = time.monotonic() + args.seconds if args.seconds else None
    if args.count and not hasattr(mesh, "capture_progress"):
        raise MeshlabError(f"--count is not available on the {mesh.backend} backend; use --seconds")
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        with mesh.capture(args.workload, namespace, port=args.port) as cap:
            target = f"{args.workload}.{namespace}:{args.port}"
            limit = (
                f"{args.count} flows"
                if args.count
                else f"{args.seconds:g} s"
                if args.seconds
                else "Ctrl-C"
            )
            err.print(f"Capturing on {target} (until {limit})…")
            while not stop["now"]:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if args.count and _closed_flows(mesh, cap) >= args.count:
                    break
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.write:
        path = cap.to_pcap(args.write)
        err.print(f"Wrote {len(cap.flows)} flow(s) to {path}")
    if args.output == "json":
        print(json.dumps(cap.summary(), indent=2, default=str))
    else:
        print(str(cap))
    return 0


def _closed_flows(mesh: Mesh, cap: Any) -> int:
    progress = getattr(mesh, "capture_progress", None)
    return int(progress(cap)["closed"]) if progress else 0


def cmd_logs(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    print(mesh.logs(args.workload, args.namespace or DEFAULT_NAMESPACE, args.container), end="")  # type: ignore[attr-defined]
    return 0


def cmd_certificate(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    cert = mesh.certificate(args.workload, args.namespace or DEFAULT_NAMESPACE)
    info = cert.describe() if hasattr(cert, "describe") else dict(cert)
    if args.output == "json":
        print(json.dumps(info, indent=2, default=str))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        out.print(f"[bold]{key:>{width}}[/bold]  {escape(str(value))}")
    return 0


def cmd_mesh_config(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    changes: dict[str, Any] = {}
    if args.auto_mtls is not None:
        changes["auto_mtls"] = args.auto_mtls
    if args.tls_max_version:
        changes["tls_max_version"] = args.tls_max_version
    result = mesh.configure(**changes)  # type: ignore[attr-defined]
    auto = "on" if result["auto_mtls"] else "off"
    out.print(f"auto mTLS {auto} · client TLS max {result['tls_max_version']}")
    return 0


# ---- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlab",
        description="Istio MeshLab: learn Istio mutual TLS on a local mesh with real Envoys.",
    )
    parser.add_argument(
        "--home", help="state folder of the embedded mesh (default: $MESHLAB_HOME or ./.meshlab)"
    )
    parser.add_argument(
        "--backend",
        choices=["embedded", "kubernetes"],
        help="default: $MESHLAB_BACKEND or embedded",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("up", help="start the embedded mesh (idempotent)")
    p.add_argument(
        "--no-auto-mtls", action="store_true", help="like meshConfig.enableAutoMtls=false"
    )
    p.add_argument(
        "--tls-max-version",
        choices=["TLSv1_2", "TLSv1_3"],
        help="what client sidecars offer (default TLSv1_3)",
    )
    p.add_argument("--cert-ttl", help="workload certificate lifetime, e.g. 24h (default) or 20s")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the embedded mesh and every process it started")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="pods, sidecars and readiness")
    p.add_argument("-o", "--output", choices=["json"])
    p.set_defaults(func=cmd_status)

    for name, helptext in (
        ("apply", "create or update objects from YAML"),
        ("delete", "delete objects"),
    ):
        p = sub.add_parser(name, help=f"{helptext} (like kubectl {name} -f)")
        p.add_argument(
            "-f", "--filename", action="append", required=True, help="file, folder, or - for stdin"
        )
        p.add_argument("-n", "--namespace")
        p.set_defaults(func=cmd_apply if name == "apply" else lambda a: cmd_apply(a, delete=True))

    p = sub.add_parser("get", help="list objects (like kubectl get)")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace")
    p.add_argument("-o", "--output", choices=["json", "yaml"])
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("rollout", help="rollout restart deployment/NAME")
    p.add_argument("action")
    p.add_argument("target")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("call", help="send an HTTP request from inside a workload's pod")
    p.add_argument("--from", dest="source", required=True, metavar="WORKLOAD")
    p.add_argument("url")
    p.add_argument(
        "-n", "--namespace", help=f"namespace of the source workload (default {DEFAULT_NAMESPACE})"
    )
    p.add_argument("-X", "--request", default="GET", help="HTTP method")
    p.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("-o", "--output", choices=["json"])
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("capture", help="record the bytes crossing a pod's network boundary")
    p.add_argument("workload")
    p.add_argument("-n", "--namespace")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-w", "--write", metavar="FILE.pcap", help="also write a pcap file")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="stop after N connections closed")
    group.add_argument("--seconds", type=float, help="stop after S seconds")
    p.add_argument("-o", "--output", choices=["json"])
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("logs", help="a pod's app or sidecar log")
    p.add_argument("workload")
    p.add_argument("-n", "--namespace")
    p.add_argument("-c", "--container", default="app", choices=["app", "istio-proxy"])
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("certificate", help="the workload certificate a sidecar presents")
    p.add_argument("workload")
    p.add_argument("-n", "--namespace")
    p.add_argument("-o", "--output", choices=["json"])
    p.set_defaults(func=cmd_certificate)

    from meshlab.analysis.cli import register_cli as register_analysis
    from meshlab.kubernetes.cli import register_cli as register_images

    register_analysis(sub)
    register_images(sub)

    p = sub.add_parser(
        "mesh-config", help="change mesh-wide settings (auto mTLS, client TLS version)"
    )
    p.add_argument("--auto-mtls", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tls-max-version", choices=["TLSv1_2", "TLSv1_3"])
    p.set_defaults(func=cmd_mesh_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MeshlabError as error:
        if args.debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(error))}")
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
