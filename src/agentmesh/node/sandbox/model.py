"""What a run asks of the sandbox, and what every sandbox answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentmesh.config import PermissionMode


class SandboxUnavailable(Exception):
    """This node cannot confine the run, so it does not start it."""


@dataclass(frozen=True)
class Confinement:
    """What one run may touch."""

    mode: PermissionMode
    workdir: Path
    # Writable besides the working directory (a Gemini run's CLI home).
    writable: tuple[Path, ...] = ()
    # Read-only even inside what is writable (the confined shell a Gemini run's tools use).
    read_only: tuple[Path, ...] = ()
    network: bool = True
    # The only programs the run may execute (names looked up on PATH, or paths); None: any
    # program the mode's denylist does not mask.
    executables: tuple[str, ...] | None = None
    # With the network off, TCP ports the run may still connect to on the node's own
    # network (a Gemini run's API proxy).
    connect_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Launch:
    """How to start a confined argv: the command, and the uid/gid to start it as (None:
    the node's own)."""

    argv: tuple[str, ...]
    user: int | None = None
    group: int | None = None


class Sandbox(Protocol):
    """Turns an argv and a confinement into the command that runs it confined."""

    # "bubblewrap", "none" or "unavailable"; `describe()` says more, for the card and logs.
    name: str

    def describe(self) -> str: ...

    def launch(self, argv: Sequence[str], confinement: Confinement) -> Launch:
        """Raises SandboxUnavailable when the run cannot be confined as asked."""
        ...

    def give(self, path: Path) -> None:
        """Make a directory the run writes in its own (owned by the sandbox's uid)."""
        ...

    def confined_shell(self, directory: Path, executables: Sequence[str]) -> Path | None:
        """Write a `bash` into `directory` that can execute only `executables` (for a
        Gemini run's shell tool in weak mode); None where this sandbox cannot."""
        ...


class NoSandbox:
    """`node.sandbox: none`: runs are not confined, by the configuration's choice."""

    name = "none"

    def describe(self) -> str:
        return "none (node.sandbox is none: tasks run unconfined, as the node's user)"

    def launch(self, argv: Sequence[str], confinement: Confinement) -> Launch:
        return Launch(tuple(argv))

    def give(self, path: Path) -> None:
        return None

    def confined_shell(self, directory: Path, executables: Sequence[str]) -> Path | None:
        return None


class UnavailableSandbox:
    """`auto` on a host where no sandbox works: shell and gemini tasks are refused."""

    name = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> str:
        return f"unavailable ({self.reason}); shell and gemini tasks are refused"

    def launch(self, argv: Sequence[str], confinement: Confinement) -> Launch:
        raise SandboxUnavailable(
            f"this node has no working sandbox ({self.reason}), so it runs no"
            f" {confinement.mode}-mode tasks; install bubblewrap, or set node.sandbox to"
            " 'none' to run them unconfined"
        )

    def give(self, path: Path) -> None:
        return None

    def confined_shell(self, directory: Path, executables: Sequence[str]) -> Path | None:
        return None
