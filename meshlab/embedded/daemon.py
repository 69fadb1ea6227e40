"""The embedded cluster's daemon: one per state folder, serving a control API.

Started by ``meshlab up`` (or the first command that needs it) as
``python -m meshlab.embedded.daemon --home DIR``. It owns every process of the cluster and
answers JSON requests, one per line, on a unix socket that only its owner can reach (the
socket is 0600 inside a 0700 folder). When started for a notebook kernel it records the
kernel as an *owner* and exits once every owner is gone, so a killed kernel leaves nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import sys
import time
import traceback
import types
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshlab.embedded import home as homes
from meshlab.embedded.addresses import acquire_block
from meshlab.embedded.calls import send
from meshlab.embedded.cluster import Cluster
from meshlab.embedded.model import MeshConfig
from meshlab.embedded.relay import recording_to_json
from meshlab.errors import MeshlabError, NotFoundError, ResourceError

log = logging.getLogger("meshlab.daemon")
MAX_REQUEST = 64 * 1024 * 1024


class Daemon:
    def __init__(self, cluster: Cluster, socket_path: Path, owners: set[int]) -> None:
        self.cluster = cluster
        self.socket_path = socket_path
        self.owners = owners
        self.stopping = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(
                self._client, path=str(self.socket_path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        watchers = [
            asyncio.create_task(self._watch_owners()),
            asyncio.create_task(self.cluster.push_loop()),
        ]
        (self.cluster.home / "run" / "ready").write_text(str(os.getpid()))
        log.info("daemon ready on %s", self.socket_path)
        await self.stopping.wait()
        log.info("shutting down")
        self.server.close()
        for task in watchers:
            task.cancel()
        await self.cluster.shutdown()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _watch_owners(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.owners and not any(homes.pid_alive(pid) for pid in self.owners):
                log.info("every owner process is gone: stopping")
                self.stopping.set()
                return

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
            except ValueError:  # the line is longer than the stream's limit
                response = _refusal(f"request larger than {MAX_REQUEST >> 20} MiB")
            else:
                if not line:
                    return
                response = await self._handle(line)
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # whatever a client sends, the daemon keeps serving the others
            log.error("control connection failed:\n%s", traceback.format_exc())
        finally:
            writer.close()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return _refusal("not a JSON document")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _refusal('expected a JSON object with a string "op"')
        op = request.pop("op")
        return await self._dispatch(op, request)

    async def _dispatch(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown operation {op[:80]!r}", "type": "DaemonError"}
        problem = _argument_problem(handler, args)
        if problem:
            return _refusal(problem, f"bad arguments for {op}")
        try:
            return {"ok": True, "result": await handler(**args)}
        except ResourceError as err:
            return {
                "ok": False,
                "error": str(err),
                "type": "ResourceError",
                "problems": err.problems,
            }
        except MeshlabError as err:
            return {"ok": False, "error": str(err), "type": type(err).__name__}
        except TypeError as err:
            return {"ok": False, "error": f"bad arguments for {op}: {err}", "type": "DaemonError"}
        except Exception as err:  # the daemon must survive anything a request does
            log.error("operation %s failed:\n%s", op, traceback.format_exc())
            return {"ok": False, "error": f"internal error in {op}: {err}", "type": "DaemonError"}

    # ---- operations -------------------------------------------------------------------------
    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "home": str(self.cluster.home)}

    async def op_attach(self, pid: int) -> dict[str, Any]:
        if self.owners and homes.pid_alive(pid):
            self.owners.add(pid)
        return {"owners": sorted(self.owners)}

    async def op_status(self) -> dict[str, Any]:
        c = self.cluster
        return {
            "pods": c.pod_status(),
            "details": {
                "home": str(c.home),
                "pid": os.getpid(),
                "address_block": f"{c.block.prefix}.0.0/16",
                "auto_mtls": c.mesh.auto_mtls,
                "tls_max_version": c.mesh.tls_max_version,
                "cert_ttl_s": c.cert_ttl.total_seconds(),
                "owners": sorted(self.owners),
                "uptime_s": round(time.time() - c.started, 1),
                "pushes": c.push_count,
            },
        }

    async def op_apply(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.cluster.apply(documents)

    async def op_delete(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.cluster.delete(documents)

    async def op_get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        c = self.cluster
        if kind == "Pod":
            pods = c.pod_status()
            out = [
                p for p in pods if namespace in (None, p["namespace"]) and name in (None, p["name"])
            ]
        else:
            out = [
                body
                for (k, ns, n), body in sorted(c.objects.items(), key=lambda kv: str(kv[0]))
                if k == kind
                and (namespace is None or ns in (None, namespace))
                and name in (None, n)
            ]
        if name is not None and not out:
            where = f" in namespace {namespace}" if namespace else ""
            raise NotFoundError(f'{kind.lower()} "{name}" not found{where}')
        return out

    async def op_call(
        self,
        workload: str,
        namespace: str,
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        call_timeout: float = 5.0,
    ) -> dict[str, Any]:
        runtime = self.cluster.find_pod(workload, namespace)
        result = await send(
            runtime.pod.inner_ip,
            namespace,
            self.cluster.snapshot().services,
            url,
            method=method,
            headers=headers,
            body=body,
            timeout=call_timeout,
        )
        result["source"] = f"{runtime.pod.namespace}/{runtime.pod.name}"
        return result

    async def op_capture_start(self, workload: str, namespace: str, port: int) -> dict[str, Any]:
        runtime = self.cluster.find_pod(workload, namespace)
        relay = next((r for r in runtime.relays if r.address[1] == port), None)
        if relay is None:
            ports = ", ".join(str(r.address[1]) for r in runtime.relays) or "none"
            raise NotFoundError(
                f"pod {namespace}/{runtime.pod.name} has no container port {port} "
                f"(its ports: {ports})"
            )
        rec = relay.start_recording()
        capture_id = f"{rec.id}"
        meta = {
            "workload": workload,
            "namespace": namespace,
            "pod": runtime.pod.name,
            "address": f"{runtime.pod.ip}:{port}",
            "port": port,
            "sidecar": runtime.pod.sidecar,
        }
        self.cluster.captures[capture_id] = (relay, rec, meta)
        return {"id": capture_id, **meta}

    async def op_capture_stop(self, id: str) -> dict[str, Any]:
        entry = self.cluster.captures.pop(str(id), None)
        if entry is None:
            raise NotFoundError(f"no active capture {id}")
        relay, rec, meta = entry
        await asyncio.sleep(0.02)  # let closing packets of the last exchange land
        relay.stop_recording(rec)
        return {**meta, **recording_to_json(rec)}

    async def op_capture_peek(self, id: str) -> dict[str, Any]:
        entry = self.cluster.captures.get(str(id))
        if entry is None:
            raise NotFoundError(f"no active capture {id}")
        flows = entry[1].flows.values()
        return {"flows": len(flows), "closed": sum(1 for f in flows if f.end is not None)}

    async def op_rollout_restart(self, deployment: str, namespace: str) -> list[str]:
        return await self.cluster.rollout_restart(deployment, namespace)

    async def op_certificate(self, workload: str, namespace: str) -> dict[str, Any]:
        runtime = self.cluster.find_pod(workload, namespace)
        if runtime.cert is None:
            raise NotFoundError(
                f"pod {namespace}/{runtime.pod.name} has no sidecar, so it has no workload "
                "certificate"
            )
        cert = runtime.cert
        return {
            "pod": runtime.pod.name,
            "cert_pem": cert.cert_pem.decode(),
            "root_pem": self.cluster.ca.root_pem.decode(),
        }

    async def op_sidecar_config(self, workload: str, namespace: str, resource: str = "") -> Any:
        runtime = self.cluster.find_pod(workload, namespace)
        if runtime.sidecar is None:
            raise NotFoundError(f"pod {namespace}/{runtime.pod.name} has no sidecar")
        return await runtime.sidecar.config_dump(resource)

    async def op_mesh_config(self, **changes: Any) -> dict[str, Any]:
        return await self.cluster.configure_mesh(changes)

    async def op_snapshot(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self.cluster.snapshot())

    async def op_shutdown(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.05, self.stopping.set)
        return {"stopping": True}

    async def op_logs(self, workload: str, namespace: str, container: str = "app") -> str:
        runtime = self.cluster.find_pod(workload, namespace)
        name = "istio-proxy.log" if container == "istio-proxy" else "app.log"
        path = runtime.folder / name
        try:
            return path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object", type(None): "null"}  # fmt: skip


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """``str | None`` -> (str, NoneType); ``dict[str, str]`` -> (dict,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(typing.get_origin(h) or h for h in typing.get_args(hint))
    return (typing.get_origin(hint) or hint,)


def _argument_problem(handler: Any, args: dict[str, Any]) -> str | None:
    """Check a request's arguments against the operation's signature and type hints, so a
    wrong request is refused with a clear message before it reaches the cluster."""
    signature = inspect.signature(handler)
    try:
        signature.bind(**args)
    except TypeError as err:
        return str(err)
    hints = typing.get_type_hints(handler)
    for name, value in args.items():
        parameter = signature.parameters.get(name)
        if parameter is None or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        allowed = _alternatives(hints.get(name, Any))
        if Any in allowed or type(value) in allowed or (float in allowed and type(value) is int):
            continue
        wanted = " or ".join(_JSON_NAMES.get(t, getattr(t, "__name__", str(t))) for t in allowed)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        return f"{name} must be {wanted}, got {got}"
    return None


def _refusal(why: str, what: str = "malformed request") -> dict[str, Any]:
    return {"ok": False, "error": f"{what}: {why}", "type": "DaemonError"}


def parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if text and text[-1] in units:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    return timedelta(seconds=float(text))


async def _run(args: argparse.Namespace) -> int:
    home = homes.prepare(Path(args.home).resolve())
    block = acquire_block(home)
    mesh = MeshConfig(auto_mtls=args.auto_mtls, tls_max_version=args.tls_max_version)
    cluster = Cluster(home, block, mesh, cert_ttl=parse_duration(args.cert_ttl))
    owners = {int(p) for p in args.owner or [] if homes.pid_alive(int(p))}
    daemon = Daemon(cluster, homes.socket_path(home), owners)
    homes.pid_file(home).write_text(f"{os.getpid()}\n")
    (home / "run" / "socket-path").write_text(str(daemon.socket_path))
    try:
        await cluster.restore()
    except MeshlabError as err:
        log.error("could not restore the previous state: %s", err)
    try:
        await daemon.serve()
    finally:
        cluster.kill_now()
        block.release()
        for name in ("daemon.pid", "ready", "socket-path"):
            with contextlib.suppress(FileNotFoundError):
                (home / "run" / name).unlink()
    return 0


def _loop_factory() -> Any:
    """uvloop when installed (it cuts the relays' CPU per request by about a third), else
    asyncio's own loop; ``MESHLAB_EVENT_LOOP=asyncio`` forces the latter."""
    if os.environ.get("MESHLAB_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshlab-daemon")
    parser.add_argument("--home", required=True)
    parser.add_argument("--auto-mtls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tls-max-version", default="TLSv1_3", choices=["TLSv1_2", "TLSv1_3"])
    parser.add_argument("--cert-ttl", default="24h")
    parser.add_argument("--owner", action="append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(args))
    except MeshlabError as err:
        print(f"meshlab daemon: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
