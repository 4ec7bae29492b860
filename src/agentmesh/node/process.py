"""Child processes in their own process group, streamed chunk by chunk, stopped as a whole.

Every command a node runs starts a new session, so that cancelling a task stops everything
it started (a shell's children, the Gemini CLI's tool processes): SIGTERM to the group,
then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 << 10

StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: StreamName
    data: bytes


class ProcessGroup:
    """One started child process and its process group."""

    def __init__(self, process: asyncio.subprocess.Process, grace_seconds: float) -> None:
        self._process = process
        self._grace = grace_seconds
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
    ) -> ProcessGroup:
        """Start argv in a new session; as `user`/`group` (with no supplementary groups)
        when given, which needs root."""
        creating = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                limit=CHUNK_BYTES,
            )
        )
        try:
            process = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Cancelled while the command was starting (a dropped client): it may be running
            # already, and may have started others. Stop its whole group before giving up;
            # asyncio alone would kill the leader and leave the rest.
            with contextlib.suppress(Exception):
                await cls(await asyncio.shield(creating), grace_seconds).stop()
            raise
        return cls(process, grace_seconds)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """stdout and stderr as they come, interleaved, until both close."""
        # A short queue: a slow client slows the process, not the node's memory.
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=4)
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        readers = [
            asyncio.create_task(_pump(self._process.stdout, "stdout", queue)),
            asyncio.create_task(_pump(self._process.stderr, "stderr", queue)),
        ]
        open_streams = len(readers)
        try:
            while open_streams:
                chunk = await queue.get()
                if chunk is None:
                    open_streams -= 1
                else:
                    yield chunk
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

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


async def _pump(
    stream: asyncio.StreamReader, name: StreamName, queue: asyncio.Queue[Chunk | None]
) -> None:
    try:
        while data := await stream.read(CHUNK_BYTES):
            await queue.put(Chunk(name, data))
    except (OSError, ValueError) as exc:  # a broken pipe ends the stream like EOF does
        log.debug("reading %s failed: %s", name, exc)
    await queue.put(None)
