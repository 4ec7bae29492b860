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
    ) -> ProcessGroup:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            limit=CHUNK_BYTES,
        )
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
        """
        self._signal_group(self._process.pid, signal.SIGSTOP)
        victims = self._descendants()
        groups = {self._process.pid} | {_pgid(p) for p in victims} - {0, os.getpgrp()}
        for group in groups:
            self._signal_group(group, signal.SIGTERM)
            self._signal_group(group, signal.SIGCONT)
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.terminate()
                victim.resume()
        if self._process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), self._grace)
        survivors = await asyncio.to_thread(_wait_for, victims, self._grace)
        for group in groups:
            self._signal_group(group, signal.SIGKILL)
        for victim in survivors:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        if self._process.returncode is None:
            await self._process.wait()

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._process.pid).children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


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
