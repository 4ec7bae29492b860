"""Test harness: real PostgreSQL servers, one fresh database per test.

Every database test runs against the embedded PostgreSQL 16 (pgvector) and, where a server
answers at 127.0.0.1:5432 (database `test`), against that one too. Each test gets its own
database, copied from a template that was migrated once per server and session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gemini_emulator import GeminiEmulator

# pgserver reads XDG_RUNTIME_DIR at import time and warns without it.
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = Path(tempfile.gettempdir()) / f"agentmesh-runtime-{os.getuid()}"
    _runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)

pytest_plugins = ["tests.support.databases"]

_OWN_BASETEMP = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Give each session a temporary directory of its own.

    pytest's default numbered directories are pruned by the next sessions: two test runs at
    once on one machine (two checkouts, a developer and CI) would delete each other's
    embedded PostgreSQL mid-run. An explicit --basetemp is kept as given.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="agentmesh-pytest-")
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A passing session leaves nothing behind; a failing one keeps its files to look at.
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        session.config.add_cleanup(lambda: shutil.rmtree(own, ignore_errors=True))


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    """A loopback Gemini API emulator, where this test's Gemini CLI runs send their requests."""
    with GeminiEmulator() as running:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", running.base_url)
        yield running
