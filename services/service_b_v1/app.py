"""Service B v1: answers /hello and says who called, as its sidecar reported it.

Over mutual TLS, Istio's server sidecar adds the X-Forwarded-Client-Cert header (XFCC)
with the client's SPIFFE identity; over plaintext there is none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header

app = FastAPI(title="service-b-v1")


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes (backslash escapes inside quotes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in value:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        value = "".join(out)
    return value


def parse_xfcc(header: str) -> list[dict[str, str]]:
    """XFCC elements, in order. Each element is ``Key=value;Key=value``; elements are
    separated by commas (one per proxy hop, with APPEND_FORWARD); values may be quoted."""
    elements = []
    for raw in _split(header, ","):
        element: dict[str, str] = {}
        for pair in _split(raw, ";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                element.setdefault(key.strip(), _unquote(value))
        if element:
            elements.append(element)
    return elements


def caller_identity(header: str | None) -> str | None:
    """The client's URI SAN as added by this service's own sidecar: the last element."""
    if not header:
        return None
    elements = parse_xfcc(header)
    return (elements[-1].get("URI") or None) if elements else None


@app.get("/hello")
async def hello(
    x_forwarded_client_cert: Annotated[str | None, Header()] = None,
) -> dict[str, str | None]:
    return {
        "service": "service-b-v1",
        "version": "v1",
        "message": "Hello from Service B v1",
        "caller": caller_identity(x_forwarded_client_cert),
        "xfcc": x_forwarded_client_cert,
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
