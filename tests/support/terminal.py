"""Run a command in a pseudo-terminal, as a person at a terminal would, and read what it
drew (colours, spinners, live views): the code paths that piped output never takes."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Screen:
    returncode: int
    raw: str  # with its escape sequences

    @property
    def text(self) -> str:
        """What it drew, escape sequences and carriage returns removed."""
        return _ESCAPE.sub("", self.raw).replace("\r", "")


def run_in_terminal(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    answers: Sequence[tuple[str, str]] = (),
) -> Screen:
    """Run `argv` with stdin, stdout and stderr on one pseudo-terminal until it exits.

    `answers` are typed in order, each once the screen shows its prompt: (prompt, text)."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    chunks = []
    pending = list(answers)
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
            if pending and pending[0][0] in b"".join(chunks).decode(errors="replace"):
                os.write(master, pending.pop(0)[1].encode())
        returncode = process.wait(timeout)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
        os.close(master)
    return Screen(returncode, b"".join(chunks).decode(errors="replace"))
