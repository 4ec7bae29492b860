"""A command as the checks see it.

The parser turns source text into `Simple` commands made of `Word`s; each is checked as a
`Call` (its argv plus how it was reached) under a `Ctx` (mode, lists, programs found, work
budget).  A handler for a wrapper answers with what the wrapped code runs: an `Exec` (an argv),
a `Code` (shell source to re-parse) or an `Implied` program (`find -delete` acts like `rm`).
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agentmesh.config import PermissionMode
from agentmesh.node.permissions.errors import Refusal, show

_BUDGET: Final = 20_000  # program checks per command
_SPECULATIVE_CHARS: Final = 60_000  # characters of guessed shell code re-parsed per command


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word: its source text, its value once quotes are removed, and the commands
    its substitutions run."""

    raw: str
    value: str
    static: bool  # value is known now and the word expands to exactly that one field
    subcommands: list[Simple] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Simple:
    """One simple command: its source text, its leading `VAR=x` assignments and its words."""

    text: str
    assignments: list[Word]
    words: list[Word]


@dataclass(slots=True)
class Ctx:
    """The state of one `plan_shell_command` call: its lists, the programs found so far, and
    how many program checks it may still do."""

    mode: PermissionMode
    allowlist: frozenset[str]
    denylist: frozenset[str]
    programs: list[str] = field(default_factory=list)
    budget: int = _BUDGET
    speculative_chars: int = _SPECULATIVE_CHARS
    # speculative code already checked, as (text, posix): opaque wrappers in a row offer the
    # same joined arguments again, and each is checked once
    checked_code: set[tuple[str, bool]] = field(default_factory=set)


def fold(name: str) -> str:
    """NFKC normalisation and case folding: fullwidth `rm` and `RM` count as `rm`."""
    return unicodedata.normalize("NFKC", name).casefold()


@dataclass(frozen=True, slots=True)
class Call:
    """An argv being checked, and how it was reached (through which wrappers, in which shell)."""

    words: tuple[Word, ...]  # argv, program first
    text: str  # the simple command, for messages
    depth: int
    appended: bool = False  # more arguments are added at run time (xargs, find -exec +)
    placeholder: str | None = None  # words containing this are filled in at run time
    speculative: bool = False  # checking a guess (opaque wrappers): record nothing
    posix: bool = False  # the command runs in a POSIX sh rather than bash

    @property
    def name(self) -> str:
        return show(self.words[0].value, 40)

    @property
    def base(self) -> str:
        return fold(posixpath.basename(self.words[0].value.rstrip("/")))

    @property
    def args(self) -> tuple[Word, ...]:
        return self.words[1:]

    def is_static(self, word: Word) -> bool:
        return word.static and (self.placeholder is None or self.placeholder not in word.value)

    def require_static(self, word: Word) -> str:
        if not self.is_static(word):
            raise Refusal(
                self.text,
                "dynamic-command",
                f"`{show(word.raw, 40)}` is only known at run time, so it cannot be "
                f"determined what `{self.name}` runs",
            )
        return word.value


@dataclass(frozen=True, slots=True)
class Exec:
    """A wrapper runs this argv."""

    words: tuple[Word, ...]
    appended: bool = False
    placeholder: str | None = None
    speculative: bool = False


BASH_ONLY: Final = (False,)
ANY_SHELL: Final = (False, True)  # read as bash and as POSIX sh: either may be the shell


@dataclass(frozen=True, slots=True)
class Code:
    """A wrapper runs this shell source (`bash -c`, `eval`, `trap`)."""

    text: str
    speculative: bool = False
    dialects: tuple[bool, ...] | None = None  # posix flags to parse with; None: the caller's


@dataclass(frozen=True, slots=True)
class Implied:
    """A wrapper acts like `program` itself (`via` says how, for the message)."""

    program: str
    via: str


Inner = Exec | Code | Implied
Handler = Callable[["Call", "Ctx"], list[Inner]]
