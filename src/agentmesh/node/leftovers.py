"""What a node's tasks leave running when the node itself dies, and how it is stopped.

A node stops a task's processes when the task ends, is cancelled or its client goes; a node
killed outright (`kill -9`, the OOM killer, a crash) does none of that, and without the
sandbox (bubblewrap's `--die-with-parent`) its tasks' processes would run on while the
scheduler retries the task elsewhere: the same work twice, side effects and all. So every
task's session is written down while it runs (`Ledger`: one file per session, named by its
id, holding its leader's start time), and two things stop what a dead node left:

- a watchdog process, started with the node, that waits for the node's end (its pipe from
  the node closes, however the node ended) and then stops every session still listed;
- the node's next start, which does the same before it takes work (for when the watchdog
  died with it, as under `kill -9` of the whole process group).

Each running node has a ledger of its own (a directory under the node's `sessions/`, locked
with `flock` while the node lives): a node starting beside another of the same name and
data directory stops only what dead nodes left, never a live one's tasks.

A session is found again by its id: every process a task starts is in it unless it made a
session of its own (those escape, as they escape a cancel once re-parented). The id is safe
to act on: the kernel gives a session's id to no other process while the session has a
member; once it has none and the id went to a new process, that leader's start time differs
from the one written down, and nothing is signalled.

`python -m agentmesh.node.leftovers DIR` is the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path

LOCK = ".lock"


def _stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in clock ticks after boot) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything: the fields follow the last ).
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[3]), int(fields[19])


def start_time(pid: int) -> int | None:
    found = _stat(pid)
    return found[1] if found is not None else None


class Ledger:
    """The sessions of a node's running tasks, one file each in `directory`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self._lock: int | None = None

    @classmethod
    def claim(cls, root: Path) -> tuple[Ledger, int]:
        """A new ledger under `root` for this process, locked while it lives; first, every
        session in the ledgers of processes that are gone is stopped. Returns the ledger
        and how many processes were killed."""
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        killed = 0
        for directory in root.iterdir():
            if not directory.name.startswith(".") and _abandoned(directory):
                killed += cls(directory).stop_all()
                shutil.rmtree(directory, ignore_errors=True)
        # Made under a hidden name and renamed once locked: no other node ever sees it
        # unlocked, and so taken for abandoned.
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        making = root / f".{name}"
        making.mkdir(mode=0o700)
        lock = os.open(making / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        making.rename(root / name)
        ledger = cls(root / name)
        ledger._lock = lock
        return ledger, killed

    def close(self) -> None:
        """Forget the ledger (its node stopped its tasks)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def add(self, pid: int) -> None:
        """Write down the session `pid` leads (called right after it started)."""
        started = start_time(pid)
        if started is not None:  # gone already: nothing of it to stop later
            (self.directory / str(pid)).write_text(f"{started}\n")

    def remove(self, pid: int) -> None:
        """The session's processes were stopped or are over: forget it."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def stop_all(self) -> int:
        """SIGKILL every process of every session written down; how many were killed."""
        listed: dict[int, int] = {}
        for entry in self.directory.iterdir():
            with contextlib.suppress(ValueError, OSError):
                listed[int(entry.name)] = int(entry.read_text())
        if not listed:
            return 0
        # A listed session whose leader is alive but younger than written down is another's.
        ours = {
            sid
            for sid, started in listed.items()
            if (now := start_time(sid)) is None or now == started
        }
        killed = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            found = _stat(int(name))
            if found is not None and found[0] in ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(name), signal.SIGKILL)
                    killed += 1
        for sid in listed:
            self.remove(sid)
        return killed


def _abandoned(directory: Path) -> bool:
    """Whether the ledger's node is gone: nobody holds its lock (the kernel drops a flock
    with its holder)."""
    try:
        lock = os.open(directory / LOCK, os.O_RDWR)
    except FileNotFoundError:  # one being made right now, or emptied by its watchdog
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(lock)
    return True


async def start_watchdog(ledger: Ledger) -> asyncio.subprocess.Process:
    """Start the process that stops the ledger's sessions once this process has ended.

    Its stdin is a pipe whose other end only this process holds (task processes inherit no
    descriptors of ours), so it reads end-of-file exactly when this process is gone.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        str(ledger.directory),
        stdin=asyncio.subprocess.PIPE,
        start_new_session=True,  # not stopped with the node by a terminal's Ctrl-C
    )


async def stop_watchdog(watchdog: asyncio.subprocess.Process) -> None:
    """Let the watchdog go (its node stopped its tasks itself: it finds nothing listed)."""
    assert watchdog.stdin is not None
    watchdog.stdin.close()
    await watchdog.wait()


def _watch(directory: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # until the node's end of the pipe closes
    if directory.is_dir():
        Ledger(directory).stop_all()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    _watch(Path(sys.argv[1]))
