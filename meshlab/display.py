"""Small HTML helpers for notebook output: an object Jupyter displays, escaping, tables.

Everything rendered here is self-contained (inline ``<style>`` scoped by a class name, no
scripts, no external files) and deterministic: the same input gives the same bytes, so
committed notebook outputs do not churn.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


class HTML:
    """Markup Jupyter renders (``_repr_html_``), with a plain-text form for terminals."""

    def __init__(self, markup: str, text: str = "") -> None:
        self.markup = markup
        self.text = text

    def _repr_html_(self) -> str:
        return self.markup

    def __str__(self) -> str:
        return self.text or self.markup

    def __repr__(self) -> str:
        return self.text or f"<HTML {len(self.markup)} characters>"


def esc(value: object) -> str:
    """HTML-escape any value (quotes included, so it is safe inside attributes too)."""
    return html.escape(str(value), quote=True)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Iterable[int] = (),
    css_class: str = "",
) -> str:
    """A plain ``<table>``; values are escaped, except ``Markup`` values which pass through.

    ``numeric`` are column indexes to right-align.
    """
    right = set(numeric)
    out = [f'<table class="{esc(css_class)}">' if css_class else "<table>", "<tr>"]
    out += [f"<th>{esc(h)}</th>" for h in headers]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>")
        for index, cell in enumerate(row):
            body = cell.markup if isinstance(cell, Markup) else esc(cell)
            out.append(f'<td class="n">{body}</td>' if index in right else f"<td>{body}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


class Markup(str):
    """A string that is already HTML (``table`` does not escape it)."""

    @property
    def markup(self) -> str:
        return str(self)
