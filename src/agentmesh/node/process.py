"""Child processes in their own process group, streamed chunk by chunk, stopped as a whole.

Every command a node runs starts a new session, so that cancelling a task stops everything
it started (a shell's children, the Gemini CLI's tool processes): SIGTERM to the group,
then SIGKILL after a grace period.

Output is read straight from the pipes, as the consumer asks for it: the kernel's pipe is
the only buffer. While the consumer is busy (a slow client), output gathers in the pipe
and the next read takes all of it at once, up to `CHUNK_BYTES`: fast output comes in few
large chunks, slow output as soon as it is written, and a full pipe slows the process, not
the node's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from agentmesh.node.leftovers import Ledger

log = logging.getLogger(__name__)

# The most one read takes, and what the kernel may hold in each pipe meanwhile (Linux's
# default is 64 KiB; 1 MiB is the most an unprivileged process may ask for by default,
# /proc/sys/fs/pipe-max-size). Large chunks make few events: each costs a protobuf
# message, an HTTP/2 frame and a trace row, whatever its size.
CHUNK_BYTES = 1 << 20

StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: StreamName
    data: bytes


class ProcessGroup:
    """One started child process and its process group."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        output: _Output,
        grace_seconds: float,
        ledger: Ledger | None = None,
    ) -> None:
        self._process = process
        self._output = output
        self._grace = grace_seconds
        self._ledger = ledger
        # A handle that knows the leader's start time, so that a reused pid is not taken
        # for the leader (None if it was gone before we looked).
        self._leader: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self._leader = psutil.Process(process.pid)
        self._stopping: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        grace_seconds: float,
        user: int | None = None,
        group: int | None = None,
        ledger: Ledger | None = None,
    ) -> ProcessGroup:
        """Start argv in a new session; as `user`/`group` (with no supplementary groups)
        when given, which needs root. The session is in `ledger` until it is stopped."""
        stdout, stdout_end = _pipe()
        try:
            stderr, stderr_end = _pipe()
        except OSError:  # out of file descriptors
            os.close(stdout)
            os.close(stdout_end)
            raise
        output = _Output(stdout, stderr)
        mark = ""
        if ledger is not None:
            env, mark = ledger.environment(dict(env))
        creating = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout_end,
                stderr=stderr_end,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        )
        try:
            process = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Cancelled while the command was starting (a dropped client): it may be running
            # already, and may have started others. Stop its whole group before giving up;
            # asyncio alone would kill the leader and leave the rest.
            with contextlib.suppress(Exception):
                await cls(await asyncio.shield(creating), output, grace_seconds).stop()
            output.close()
            raise
        except BaseException:
            output.close()
            raise
        finally:
            # The child has its own copies (or never started): ours would keep the pipes
            # open, and the reads from ending, after it exits.
            os.close(stdout_end)
            os.close(stderr_end)
        if ledger is not None:
            ledger.add(process.pid, mark)
        return cls(process, output, grace_seconds, ledger)

    def chunks(self) -> AsyncIterator[Chunk]:
        """stdout and stderr as they come, interleaved, until both close."""
        return self._output.chunks()

    async def wait(self) -> int:
        return await self._process.wait()

    async def stop(self) -> None:
        """Stop the process, its group and every descendant, even those in other sessions.

        The Gemini CLI runs shell commands in sessions of their own, so signalling our
        group is not enough: freeze the group (so nothing forks meanwhile), collect all
        descendants, SIGTERM each one and its group, and SIGKILL what is left after the
        grace period.

        A group id is signalled only while a process we know of is still in that group: an
        id stays reserved only as long as some process uses it, so once the leader is
        reaped and its group is empty the kernel may give it to an unrelated group.

        Stopping runs to its end even when the caller is cancelled meanwhile (a dropped
        client cancels the very task that is stopping its processes), and only once.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        group = self._process.pid
        self._signal_group(group, signal.SIGSTOP, [])  # at once, while the leader lives
        # Members that are not the leader's descendants (`(sleep 300 &)`, or anything left
        # when the leader exited) were re-parented: only the group id ties them to the task.
        members = await asyncio.to_thread(_group_members, group, self._live_leader())
        self._signal_group(group, signal.SIGSTOP, members)
        victims = self._descendants(members)
        groups = {group} | {_pgid(p) for p in victims} - {0, os.getpgrp()}
        for signum in (signal.SIGTERM, signal.SIGCONT):
            for pgid in groups:
                self._signal_group(pgid, signum, victims)
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.terminate()
                victim.resume()
        if self._process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), self._grace)
        survivors = await asyncio.to_thread(_wait_for, victims, self._grace)
        for pgid in groups:
            self._signal_group(pgid, signal.SIGKILL, survivors)
        for victim in survivors:
            with contextlib.suppress(psutil.Error):
                victim.kill()  # psutil refuses to signal a pid that was reused
        if self._process.returncode is None:
            await self._process.wait()
        if self._ledger is not None:
            self._ledger.remove(group)
        self._output.close()  # whatever is left unread: nothing will ask for it now

    def _descendants(self, members: list[psutil.Process]) -> list[psutil.Process]:
        """The group's members and everything they and the leader started, in any session."""
        found: dict[int, psutil.Process] = {p.pid: p for p in members}
        roots = list(members)
        if (leader := self._live_leader()) is not None:
            roots.append(leader)
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found.update((p.pid, p) for p in root.children(recursive=True))
        found.pop(self._process.pid, None)
        return list(found.values())

    def _live_leader(self) -> psutil.Process | None:
        """The leader while its pid is still ours: until it is reaped (a zombie keeps its
        pid), whatever psutil's start-time check says, which a pid reused within the same
        clock tick passes."""
        if self._process.returncode is not None:
            return None
        return self._leader if self._leader is not None and _is_running(self._leader) else None

    def _signal_group(self, pgid: int, signum: signal.Signals, known: list[psutil.Process]) -> None:
        """killpg, if the group still has a member we know of (the leader or one of `known`)."""
        leader = self._live_leader()
        members = [leader, *known] if leader is not None else known
        if not any(_is_running(p) and _pgid(p) == pgid for p in members):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


def _is_running(process: psutil.Process) -> bool:
    """Still the process we met (psutil compares start times, so a reused pid is not)."""
    try:
        return process.is_running()
    except psutil.Error:
        return False


def _group_members(pgid: int, leader: psutil.Process | None) -> list[psutil.Process]:
    """The processes in our group, its leader excepted; none if the id is another's now."""
    if not (leader is not None and _is_running(leader)) and psutil.pid_exists(pgid):
        return []  # the leader is gone and its pid was given to another process
    members = []
    for pid in psutil.pids():
        if pid == pgid:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pgid:
                with contextlib.suppress(psutil.Error):
                    members.append(psutil.Process(pid))
    return members


def _pgid(process: psutil.Process) -> int:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return 0


def _wait_for(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return list(alive)


def _pipe() -> tuple[int, int]:
    """A pipe for a child's output: the read end ours (non-blocking), the write end its."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    # As large as allowed: past an unprivileged user's share of pipe memory the kernel
    # refuses, and the default size does.
    with contextlib.suppress(OSError):
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, CHUNK_BYTES)
    os.set_blocking(read_end, False)
    return read_end, write_end


class _Output:
    """The read ends of a child's stdout and stderr, read when the consumer asks.

    The loop watches a pipe only while the consumer waits for it: told that it is readable,
    it stops watching (a pipe stays readable until read, which would wake the loop without
    end while the consumer is busy elsewhere)."""

    def __init__(self, stdout: int, stderr: int) -> None:
        self._open: dict[int, StreamName] = {stdout: "stdout", stderr: "stderr"}
        self._watched: set[int] = set()
        # Pipes the loop found readable, in the order it did (output of both streams is
        # read in the order it was written, as far as the kernel tells).
        self._ready: dict[int, None] = {}
        self._wakeup: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def chunks(self) -> AsyncIterator[Chunk]:
        self._loop = loop = asyncio.get_running_loop()
        try:
            while self._open:
                if not self._ready:
                    for fd in self._open.keys() - self._watched:
                        loop.add_reader(fd, self._readable, fd)
                        self._watched.add(fd)
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                fd = next(iter(self._ready))
                del self._ready[fd]
                try:
                    data = os.read(fd, CHUNK_BYTES)
                except BlockingIOError:
                    continue
                except OSError as exc:  # a broken pipe ends the stream like EOF does
                    log.debug("reading %s failed: %s", self._open[fd], exc)
                    data = b""
                if data:
                    yield Chunk(self._open[fd], data)
                else:
                    self._close(fd)
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading and close both pipes (again: nothing happens)."""
        for fd in list(self._open):
            self._close(fd)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _readable(self, fd: int) -> None:
        self._unwatch(fd)
        self._ready[fd] = None
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched and self._loop is not None:
            self._watched.discard(fd)
            self._loop.remove_reader(fd)

    def _close(self, fd: int) -> None:
        self._unwatch(fd)  # before the number can be another file's
        self._ready.pop(fd, None)
        del self._open[fd]
        os.close(fd)
