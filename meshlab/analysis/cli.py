"""``meshlab describe`` and ``meshlab analyze``.

``register_cli(subparsers)`` adds both commands to ``meshlab``'s parser (``meshlab.cli``
calls it from ``build_parser``).

Exit codes of ``analyze`` follow ``istioctl analyze``: 0 when no finding reaches
``--failure-threshold`` (default Error), 79 when one does; a bad file is a usage error (2)
and nothing is analysed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshlab.analysis.findings import ERROR, INFO, SEVERITIES, WARNING, AnalysisReport

COLOURS = {ERROR: "red", WARNING: "yellow", INFO: "cyan"}


def register_cli(subparsers: Any) -> None:
    """Add ``describe`` and ``analyze`` to ``meshlab``'s subcommands."""
    from meshlab.cli import DEFAULT_NAMESPACE

    p = subparsers.add_parser(
        "describe",
        help="explain why a call will be mTLS, plaintext, reset or a 503",
        description=(
            "For a call from a workload to a URL: what the client sidecar sends and why, what "
            "the server sidecar accepts and why (PeerAuthentication level by level), and the "
            "predicted result. Nothing is sent."
        ),
    )
    p.add_argument("--from", dest="source", required=True, metavar="WORKLOAD")
    p.add_argument("url", help="as the app calls it, e.g. http://service-b-v1:8080/hello")
    p.add_argument(
        "-n", "--namespace", help=f"namespace of the source workload (default {DEFAULT_NAMESPACE})"
    )
    p.add_argument("-o", "--output", choices=["json"])
    p.set_defaults(func=cmd_describe)

    p = subparsers.add_parser(
        "analyze",
        help="find mTLS conflicts and policies that do nothing (like istioctl analyze)",
        description=(
            "Check the applied state, plus proposed files (loaded, not applied), for "
            "PeerAuthentication/DestinationRule conflicts, ignored policies and sidecar "
            "injection mistakes. Exit code 79 when a finding reaches --failure-threshold."
        ),
    )
    p.add_argument(
        "-f", "--filename", action="append", default=[],
        help="a proposed file or folder (repeatable; - for stdin)",
    )  # fmt: skip
    p.add_argument(
        "-n", "--namespace",
        help="only findings about this namespace (and the namespace of proposed objects "
        "that name none); default: every namespace",
    )  # fmt: skip
    p.add_argument("-o", "--output", choices=["json"])
    p.add_argument(
        "--failure-threshold", choices=SEVERITIES, default=ERROR,
        help="the severity that makes the exit code non-zero (default Error)",
    )  # fmt: skip
    p.add_argument(
        "--offline", action="store_true",
        help="analyze only the files, without a running mesh",
    )  # fmt: skip
    p.set_defaults(func=cmd_analyze)


def cmd_describe(args: argparse.Namespace) -> int:
    from meshlab.analysis.render import description_rich
    from meshlab.cli import DEFAULT_NAMESPACE, _mesh, out

    mesh = _mesh(args)
    desc = mesh.describe(args.source, args.url, args.namespace or DEFAULT_NAMESPACE)
    if args.output == "json":
        print(json.dumps(desc.to_dict(), indent=2))
    else:
        with out.capture() as captured:  # rich pads the last column: drop trailing blanks
            out.print(description_rich(desc))
        print("\n".join(line.rstrip() for line in captured.get().splitlines()))
    return 0


def _sources(args: argparse.Namespace) -> list[str]:
    return [sys.stdin.read() if f == "-" else f for f in args.filename]


def cmd_analyze(args: argparse.Namespace) -> int:
    from meshlab.errors import MeshlabError

    sources = _sources(args)
    if args.offline:
        if not sources:
            raise MeshlabError("--offline analyzes files only: give at least one -f FILE")
        from meshlab.analysis import analyze
        from meshlab.analysis.state import MeshState, source_labels
        from meshlab.embedded.model import Snapshot
        from meshlab.resources import load

        proposed = load(sources, namespace=args.namespace)
        report = analyze(MeshState(Snapshot()), proposed, args.namespace, source_labels(sources))
    else:
        from meshlab.cli import _mesh

        report = _mesh(args).analyze(sources or None, args.namespace)
    print_report(report, args.output)
    return report.exit_code(args.failure_threshold)


def print_report(report: AnalysisReport, output: str | None = None) -> None:
    from rich.markup import escape

    from meshlab.cli import err, out

    if output == "json":
        print(json.dumps(report.to_dict(), indent=2))
        return
    if not report.findings:
        out.print(escape(str(report)))
        return
    for f in report.findings:
        colour = COLOURS[f.severity]
        out.print(f"[{colour}]{f.severity}[/{colour}] {escape(f.line()[len(f.severity) + 1 :])}")
        if f.fix:
            out.print(f"    [dim]fix:[/dim] {escape(f.fix)}")
    words = {ERROR: ("error", "errors"), WARNING: ("warning", "warnings"), INFO: ("info", "info")}
    counts = ", ".join(
        f"{n} {words[s][0] if n == 1 else words[s][1]}"
        for s in reversed(SEVERITIES)
        if (n := len(report.of_severity(s))) or s != INFO
    )
    err.print(f"Analyzers found {counts}.")
