"""Child processes of the daemon, supervised the way a kubelet supervises containers.

Every child gets ``PR_SET_PDEATHSIG(SIGKILL)``: if the daemon dies, even by SIGKILL, its
pods die with it. Every child carries ``MESHLAB_MEMBER_OF=<state folder>`` in its
environment, so leftovers of a cluster can be found (and tests can prove there are none)
by scanning ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
MEMBER_ENV = "MESHLAB_MEMBER_OF"
BACKOFF_START = 0.5
BACKOFF_MAX = 20.0
CRASHLOOP_AFTER = 3  # quick failures in a row before we call it CrashLoopBackOff
QUICK_FAILURE_S = 10.0

_libc: ctypes.CDLL | None = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)


# Load libc in the parent so the child never has to import anything after fork.
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)


def tail(path: Path, lines: int = 12) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


class ManagedProcess:
    """One container-like process: started, watched and restarted with backoff."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        on_restart: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.on_restart = on_restart
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.state = "Pending"  # Pending | Running | CrashLoopBackOff | Terminated
        self.last_exit: int | None = None
        self.started_at = 0.0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._quick_failures: deque[float] = deque(maxlen=CRASHLOOP_AFTER)
        self.exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                cwd=str(self.cwd) if self.cwd else None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.started_at = time.monotonic()
        self.exited.clear()
        self.state = "Running"

    async def _supervise(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            self.last_exit = code
            self.exited.set()
            if self._stopping:
                break
            lived = time.monotonic() - self.started_at
            if lived < QUICK_FAILURE_S:
                self._quick_failures.append(time.monotonic())
            else:
                self._quick_failures.clear()
                backoff = BACKOFF_START
            if len(self._quick_failures) >= CRASHLOOP_AFTER:
                self.state = "CrashLoopBackOff"
            else:
                self.state = "Restarting"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            if self._stopping:
                break
            self.restarts += 1
            with contextlib.suppress(OSError):
                with self.log_path.open("ab") as log:
                    log.write(f"--- meshlab: restart #{self.restarts} (exit {code}) ---\n".encode())
                await self._spawn()
                if self.on_restart is not None:
                    self.on_restart(self)
        self.state = "Terminated"

    async def stop(self, grace: float = 2.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        self.state = "Terminated"

    def kill_now(self) -> None:
        """Synchronous last resort (daemon shutting down hard)."""
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def find_processes(home: Path) -> list[int]:
    """PIDs of live (non-zombie) processes that belong to the cluster in ``home``."""
    marker = f"{MEMBER_ENV}={Path(home).resolve()}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        if marker + b"\0" not in env + b"\0":
            continue
        state = stat.rsplit(b")", 1)[-1].split()[0]
        if state in (b"Z", b"X"):
            continue
        found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
