"""Finding, on the host, a process a sandboxed task started.

A sandboxed task has a pid namespace of its own: the pid it prints (`echo $$`) is its pid
there, not the host's. The kernel lists both in /proc/PID/status (`NSpid: HOST ... NS`);
this finds the host pid by the namespace pid and the task's working directory.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil


def host_pid(printed: int, workdir: Path) -> int:
    """The host pid of the process that printed `printed` as its pid while working in
    `workdir` (the same number when the task was not sandboxed)."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if Path(process.cwd()) != workdir:
                continue
            status = Path(f"/proc/{process.pid}/status").read_text()
            pids = next(
                line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")
            )
            if int(pids[-1]) == printed:
                return process.pid
    raise LookupError(f"no process with pid {printed} in its namespace works in {workdir}")


@contextlib.contextmanager
def gate() -> Iterator[Path]:
    """A path every task on this host can see, for a test to create when tasks may go on.

    Not under /tmp, which a sandboxed task has to itself: under /run (or the data home when
    /run is not writable), removed when the block ends."""
    directory = Path("/run") if os.access("/run", os.W_OK) else Path.home()
    path = directory / f"agentmesh-test-gate-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
