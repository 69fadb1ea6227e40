"""Service A: calls Service B and reports what came back.

Plain HTTP to a plain service name: the pod's network (a sidecar, when there is one)
decides how the request travels. httpx honours HTTP_PROXY, which is how a local mesh can
route it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

SERVICE_B_URL = os.environ.get("SERVICE_B_URL", "http://service-b-v1:8080/hello")
TIMEOUT_SECONDS = 5.0
ERROR_MAX_CHARS = 200

client: httpx.AsyncClient | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS)
    try:
        yield
    finally:
        await client.aclose()
        client = None


app = FastAPI(title="service-a", lifespan=lifespan)


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message[:ERROR_MAX_CHARS]


@app.get("/call-b")
async def call_b() -> JSONResponse:
    result: dict[str, Any] = {
        "service": "service-a",
        "upstream_status": None,
        "upstream_body": None,
        "error": None,
    }
    if client is None:  # the lifespan handler did not run
        result["error"] = "HTTP client not started"
        return JSONResponse(result, status_code=502)
    try:
        response = await client.get(SERVICE_B_URL)
    except httpx.HTTPError as exc:
        result["error"] = _short(exc)
        return JSONResponse(result, status_code=502)
    result["upstream_status"] = response.status_code
    try:
        result["upstream_body"] = response.json()
    except ValueError:
        result["upstream_body"] = response.text
    return JSONResponse(result)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
