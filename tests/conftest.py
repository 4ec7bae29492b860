"""Test harness: real PostgreSQL servers, one fresh database per test.

Every database test runs against the embedded PostgreSQL 16 (pgvector) and, where a server
answers at 127.0.0.1:5432 (database `test`), against that one too. Each test gets its own
database, copied from a template that was migrated once per server and session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# pgserver reads XDG_RUNTIME_DIR at import time and warns without it.
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = Path(tempfile.gettempdir()) / f"agentmesh-runtime-{os.getuid()}"
    _runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)

pytest_plugins = ["tests.support.databases"]
