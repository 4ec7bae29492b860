"""Where the command line writes: rich on a terminal, plain text when piped, JSON on request.

What a command produces (a task's output, a table, an id) goes to stdout; what it says about
it (progress, states, tool calls, a task's stderr) goes to stderr, so `agentmesh run ... >
out.txt` captures what the task printed and nothing else. Piped output never carries colour
codes: rich only styles a stream that is a terminal (and honours NO_COLOR).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


def _console(*, stderr: bool) -> Console:
    # soft_wrap: never break long lines (a command's output is copied, not read in columns).
    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False, markup=False)


@dataclass
class Output:
    """The two streams of one command, and whether it speaks JSON."""

    json: bool = False
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))

    @property
    def out_is_terminal(self) -> bool:
        return self.out.is_terminal

    @property
    def err_is_terminal(self) -> bool:
        return self.err.is_terminal

    def data(self, value: Any) -> None:
        """One JSON document (or one JSON line of a stream) on stdout."""
        sys.stdout.write(json.dumps(value, ensure_ascii=False, sort_keys=False) + "\n")
        sys.stdout.flush()

    def line(self, text: str | Text = "", *, style: str | None = None) -> None:
        """A line of stdout."""
        self.out.print(text, style=style)

    def note(self, text: str | Text, *, style: str | None = None) -> None:
        """A line about what is happening, on stderr."""
        self.err.print(text, style=style)

    def write(self, text: str, *, stderr: bool = False, style: str | None = None) -> None:
        """Raw text as it came (no newline added): a task's stdout or stderr."""
        console = self.err if stderr else self.out
        if style and console.is_terminal:
            console.print(Text(text, style=style), end="")
        else:
            stream = sys.stderr if stderr else sys.stdout
            stream.write(text)
            stream.flush()

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        """A table: rich on a terminal; aligned plain columns, never cut, when piped."""
        if self.out.is_terminal:
            table = Table(box=None, pad_edge=False, header_style="bold")
            for header in headers:
                table.add_column(header, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.out.print(table)
            return
        plain = [[str(cell) for cell in row] for row in rows]
        widths = [max([len(h), *(len(r[i]) for r in plain)]) for i, h in enumerate(headers)]
        for row in [list(headers), *plain]:
            cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
            sys.stdout.write("  ".join(cells).rstrip() + "\n")
        sys.stdout.flush()
