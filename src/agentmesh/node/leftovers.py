"""What a node's tasks leave running when the node itself dies, and how it is stopped.

A node stops a task's processes when the task ends, is cancelled or its client goes; a node
killed outright (`kill -9`, the OOM killer, a crash) does none of that, and without the
sandbox (bubblewrap's `--die-with-parent`) its tasks' processes would run on while the
scheduler retries the task elsewhere: the same work twice, side effects and all. So every
task's session is written down while it runs (`Ledger`: one file per session, named by its
id, holding its leader's start time and a random mark that the task's environment carries),
and two things stop what a dead node left:

- a watchdog process, started with the node, that waits for the node's end (its pipe from
  the node closes, however the node ended) and then stops every session still listed;
- the node's next start, which does the same before it takes work (for when the watchdog
  died with it, as under `kill -9` of the whole process group).

Each running node has a ledger of its own (a directory under the node's `sessions/`, locked
with `flock` while the node lives): a node starting beside another of the same name and
data directory stops only what dead nodes left, never a live one's tasks.

A session is found again by its id, and only acted on when it is provably the task's: its
leader still runs with the start time written down, or (the leader gone) one of its
processes carries the session's mark in its environment. The kernel gives a session's id to
no other process while the session has a member, but once it has none the id may lead an
unrelated session, whose leader's start time differs and whose processes lack the mark. A
ledger written before the machine booted (or in another PID namespace) is dropped unread.
What a session's processes started in sessions of their own (as the Gemini CLI does for its
tools) is stopped with it while it is still their child; a process re-parented away from
the task escapes, as it escapes a cancel.

`python -m agentmesh.node.leftovers DIR` is the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The environment variable that carries a session's mark into its processes.
MARK = "AGENTMESH_SESSION_MARK"
LOCK = ".lock"
ORIGIN = ".origin"  # the boot and PID namespace the ledger's ids belong to
KILL_ROUNDS = 20  # passes over /proc while the listed sessions still fork


@dataclass(frozen=True, slots=True)
class _Process:
    pid: int
    ppid: int
    session: int
    started: int  # clock ticks after boot
    zombie: bool


def _read(pid: int) -> _Process | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything: the fields follow the last ).
    fields = text[text.rindex(")") + 2 :].split()
    return _Process(pid, int(fields[1]), int(fields[3]), int(fields[19]), fields[0] == "Z")


def _processes() -> list[_Process]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (process := _read(int(name))) is not None:
            found.append(process)
    return found


def start_time(pid: int) -> int | None:
    found = _read(pid)
    return found.started if found is not None else None


def _marked(pid: int, mark: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's
        return False
    return f"{MARK}={mark}".encode() in environ.split(b"\0")


def _origin() -> str:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot} {os.readlink('/proc/self/ns/pid')}"


class Ledger:
    """The sessions of a node's running tasks, one file each in `directory`."""

    def __init__(self, directory: Path) -> None:
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
            if directory.name.startswith(".") or not _abandoned(directory):
                continue
            try:
                killed += cls(directory).stop_all()
            except OSError as exc:  # one bad ledger must not keep the node from starting
                log.warning("could not stop what %s lists: %s", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
        # Made under a hidden name and renamed once locked: no other node ever sees it
        # unlocked, and so taken for abandoned.
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        making = root / f".{name}"
        making.mkdir(mode=0o700)
        (making / ORIGIN).write_text(_origin() + "\n")
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

    def environment(self, env: dict[str, str]) -> tuple[dict[str, str], str]:
        """`env` with a new session mark, and the mark (see `add`)."""
        mark = uuid.uuid4().hex
        return {**env, MARK: mark}, mark

    def add(self, pid: int, mark: str) -> None:
        """Write down the session `pid` leads, whose environment carries `mark` (called
        right after it started). Never fails: a session not written down is only one the
        watchdog cannot stop."""
        started = start_time(pid) or 0  # 0: gone already, its children may not be
        entry = self.directory / str(pid)
        making = entry.with_name(f".{pid}")
        try:
            making.write_text(f"{started} {mark}\n")
            making.replace(entry)  # whole or not at all, whenever the node dies
        except OSError as exc:
            log.warning("could not write down the session of process %d: %s", pid, exc)

    def remove(self, pid: int) -> None:
        """The session's processes were stopped or are over: forget it."""
        with contextlib.suppress(OSError):
            (self.directory / str(pid)).unlink()

    def stop_all(self) -> int:
        """SIGKILL every process of every session written down that is provably the task's,
        and what they started in other sessions; how many processes were killed."""
        listed = self._listed()
        killed: set[int] = set()
        if listed:
            for _ in range(KILL_ROUNDS):
                victims = _victims(listed, _processes()) - {os.getpid()}
                if not victims:
                    break
                for pid in victims:  # stopped first, so that none forks while we go on
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGSTOP)
                for pid in victims:
                    with contextlib.suppress(OSError):  # gone, or another user's now
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
        for sid in listed:
            self.remove(sid)
        return len(killed)

    def _listed(self) -> dict[int, tuple[int, str]]:
        """Each listed session's id: its leader's start time and its mark. Nothing when the
        ledger was written in another boot or PID namespace (none of it can run now)."""
        try:
            if (self.directory / ORIGIN).read_text().strip() != _origin():
                return {}
            entries = [e for e in self.directory.iterdir() if not e.name.startswith(".")]
        except OSError:
            return {}
        listed = {}
        for entry in entries:
            with contextlib.suppress(ValueError, OSError):
                started, mark = entry.read_text().split()
                listed[int(entry.name)] = (int(started), mark)
        return listed


def _victims(listed: dict[int, tuple[int, str]], processes: list[_Process]) -> set[int]:
    """The live processes of the listed sessions that are provably ours, and their
    descendants in other sessions."""
    by_pid = {p.pid: p for p in processes}
    members: dict[int, list[_Process]] = {}
    for process in processes:
        if process.session in listed:
            members.setdefault(process.session, []).append(process)
    ours: list[_Process] = []
    for sid, (started, mark) in listed.items():
        leader = by_pid.get(sid)
        if leader is not None and leader.started != started:
            continue  # the id leads another session now
        found = members.get(sid, [])
        if leader is None and not any(_marked(p.pid, mark) for p in found):
            continue  # no proof it is the task's
        ours += found
    children: dict[int, list[_Process]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    victims: set[int] = set()
    stack = list(ours)
    while stack:
        process = stack.pop()
        if process.pid in victims:
            continue
        if not process.zombie:
            victims.add(process.pid)
        stack += children.get(process.pid, [])
    return victims


def _abandoned(directory: Path) -> bool:
    """Whether the ledger's node is gone: nobody holds its lock (the kernel drops a flock
    with its holder)."""
    try:
        lock = os.open(directory / LOCK, os.O_RDWR)
    except OSError:  # one being emptied by its watchdog, or no ledger at all
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
        cwd="/",  # `-m` imports from the working directory first: not from a task's
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
