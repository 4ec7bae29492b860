"""The embedded PostgreSQL 16 (with pgvector) from the `pgserver` package.

The server lives in a data directory that persists across runs and is shared by every
agentmesh process on the machine: the first one starts it, the others reuse it, and it
keeps running after they exit (so `agentmesh db url` stays useful) until
`agentmesh db stop`. It listens on a Unix socket only, with trust authentication.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import platformdirs

SOCKET_USER = "postgres"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("agentmesh", appauthor=False))


def _ensure_runtime_dir() -> None:
    # pgserver keeps its inter-process lock under XDG_RUNTIME_DIR and warns when it is unset.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(tempfile.gettempdir()) / f"agentmesh-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _server(pgdata: Path) -> Any:
    _ensure_runtime_dir()
    # Imported late: pgserver reads XDG_RUNTIME_DIR at import time.
    from pgserver.postgres_server import PostgresServer, get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver remembers the servers this process started and hands back the same handle
    # even after the server stopped: forget it, so that this call starts it again.
    resolved = pgdata.expanduser().resolve()
    if resolved in PostgresServer._instances and not _running(resolved):
        del PostgresServer._instances[resolved]
    return get_server(pgdata, cleanup_mode=None)


def pgdata_dir(data_dir: Path) -> Path:
    return data_dir / "pg16"


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server; return a URI of its `postgres` database."""
    server = _server(pgdata_dir(data_dir))
    uri: str = server.get_uri()
    return uri.replace("postgres:@", "postgres@", 1)  # no password: trust over the socket


def uri_for(server_uri: str, database: str) -> str:
    """The same server's URI for another database."""
    head, _, query = server_uri.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{query}" if query else "")


def is_running(data_dir: Path) -> bool:
    return _running(pgdata_dir(data_dir))


def _running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError, OSError):
        return False
    return True


def stop(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; return whether it did."""
    if not is_running(data_dir):
        return False
    _ensure_runtime_dir()
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # defined dynamically

    pgdata = pgdata_dir(data_dir)
    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
