"""Text, HTML and rich tables for descriptions and analysis reports.

Rows are built once (``description_rows``) and shown three ways: plain text (``str()``,
terminals and logs), HTML (notebooks) and a rich table (the CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlab.display import esc, table

if TYPE_CHECKING:
    from meshlab.analysis.describe import Description, ServerSide
    from meshlab.analysis.findings import AnalysisReport

COLUMNS = ("", "DECISION", "WHY")


def description_heading(desc: Description) -> str:
    src = f"{desc.workload}.{desc.namespace} ({'sidecar' if desc.source_sidecar else 'no sidecar'})"
    if desc.service is None:
        return f"{src} -> {desc.url}"
    dest = f"{desc.service.name}.{desc.service.namespace}:{desc.port}"
    server = desc.server
    if server is None:
        return f"{src} -> {dest} -> no ready endpoint"
    side = "sidecar" if server.sidecar else "no sidecar"
    return f"{src} -> {dest} -> pod {server.pod}:{server.container_port} ({side})"


def _level_rows(server: ServerSide) -> list[tuple[str, str, str]]:
    rows = []
    for level in server.levels:
        if level.level == "port" and level.policy is None:
            continue  # only shown when a port-level setting exists for this port
        name = f"port {server.container_port}" if level.level == "port" else level.level
        if level.policy is None:
            rows.append((f"  {name}", "-", "no policy"))
        else:
            note = " (inherits)" if level.mode == "UNSET" else ""
            rows.append((f"  {name}", str(level.mode), f"PeerAuthentication {level.policy}{note}"))
    rows += [("  ignored", policy_name, why) for policy_name, why in server.ignored]
    return rows


def description_rows(desc: Description) -> list[tuple[str, str, str]]:
    """(side, decision, why) rows: client, server (and its levels), result."""
    rows: list[tuple[str, str, str]] = []
    predicted = desc.predicted
    client, server = desc.client, desc.server
    if client is not None:
        decision = client.sends + (f" ({client.mode})" if client.mode else "")
        rows.append(("client", decision, client.reason))
    if server is not None:
        if server.sidecar:
            rows.append(("server", f"accepts {server.accepts}", server.reason))
            rows += _level_rows(server)
        else:
            rows.append(("server", "plaintext only", server.reason))
    elif desc.service is not None:
        rows.append(("server", "-", "no ready endpoint"))
    why = desc.explanation[-1] if desc.explanation else ""
    rows.append(("result", predicted.summary, why.strip()))
    if not desc.consistent:
        others = ", ".join(
            f"{e.server.pod}: {e.predicted.summary}" for e in desc.endpoints if e.server
        )
        rows.append(("note", "endpoints differ", others))
    return rows


def _text_table(rows: list[tuple[str, ...]], headers: tuple[str, ...] | None = None) -> str:
    all_rows = ([headers] if headers else []) + rows
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]) - 1)]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def description_text(desc: Description) -> str:
    return description_heading(desc) + "\n" + _text_table(description_rows(desc), COLUMNS)


def description_html(desc: Description) -> str:
    body = table(COLUMNS, description_rows(desc), css_class="meshlab-describe")
    return f"<div><p><code>{esc(description_heading(desc))}</code></p>{body}</div>"


def description_rich(desc: Description) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, pad_edge=False, header_style="bold")
    for col in COLUMNS:
        grid.add_column(col, overflow="fold")
    colour = "green" if desc.predicted.mtls else "yellow"
    if desc.predicted.status is None or desc.predicted.status >= 500:
        colour = "red"
    for side, decision, why in description_rows(desc):
        style = colour if side == "result" else ("bold" if not side.startswith(" ") else "")
        grid.add_row(Text(side, style="bold" if side.strip() else ""), Text(decision, style=style),
                     Text(why))  # fmt: skip
    return Group(Text(description_heading(desc)), grid)


# ---- analysis reports ---------------------------------------------------------------------------


def _scope(report: AnalysisReport) -> str:
    where = f"namespace: {report.namespace}" if report.namespace else "all namespaces"
    if report.files:
        where += f" (with {len(report.files)} proposed file{'s' if len(report.files) > 1 else ''})"
    return where


def report_text(report: AnalysisReport) -> str:
    if not report.findings:
        return f"\u2714 No validation issues found when analyzing {_scope(report)}."
    return "\n".join(f.line() for f in report.findings)


def report_html(report: AnalysisReport) -> str:
    if not report.findings:
        return f"<p>&#10004; No validation issues found when analyzing {esc(_scope(report))}.</p>"
    rows = [(f.severity, f.code, f.resource, f.message, f.fix) for f in report.findings]
    return table(
        ("SEVERITY", "CODE", "RESOURCE", "MESSAGE", "FIX"), rows, css_class="meshlab-analyze"
    )
