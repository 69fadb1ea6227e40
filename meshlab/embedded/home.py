"""The state folder of one embedded cluster (``MESHLAB_HOME``, default ``.meshlab``).

```
.meshlab/            0700
  run/               daemon.pid, control.sock (or socket-path when the path is too long)
  ca/                root certificate and key (0600)
  state/objects.json the applied objects (a daemon that died restores them)
  pods/NS/POD/       app.log, istio-proxy.log, envoy/ (bootstrap, lds/, cds/, sds/)
  daemon.log
```
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

MAX_SOCKET_PATH = 100


def default_home() -> Path:
    env = os.environ.get("MESHLAB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / ".meshlab").resolve()


def prepare(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    (home / "run").mkdir(mode=0o700, exist_ok=True)
    return home


def pid_file(home: Path) -> Path:
    return home / "run" / "daemon.pid"


def log_file(home: Path) -> Path:
    return home / "daemon.log"


def socket_path(home: Path) -> Path:
    """Where the control socket lives; a short path under the temp folder if needed."""
    direct = home / "run" / "control.sock"
    if len(str(direct)) <= MAX_SOCKET_PATH:
        return direct
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"meshlab-sock-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder / f"{digest}.sock"


def read_pid(home: Path) -> int | None:
    try:
        return int(pid_file(home).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")
