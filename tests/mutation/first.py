"""`python -m tests.mutation.first PRISTINE MODULE LINES -- COMMAND...`: one mutant's tests.

Cosmic-ray runs this as the test command, with the mutant written over MODULE. It finds the
lines the mutant changed (against PRISTINE, the module as it was), looks up in LINES (from
the run before the mutants: line number -> node ids of the tests that reach it, quickest
first) the tests that reach them, and runs COMMAND with those tests first (see plugin.py).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path

from tests.mutation.plugin import FIRST


def changed_lines(before: list[str], after: list[str]) -> set[int]:
    """The lines of `before` (numbered from 1) that `after` changes or deletes, and the
    line before an insertion."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            changed.update(range(i1 + 1, i2 + 1) if i2 > i1 else (max(i1, 1),))
    return changed


def reaching(lines: set[int], reached_by: dict[str, list[str]]) -> list[str]:
    ordered: list[str] = []
    for line in sorted(lines):
        ordered += [t for t in reached_by.get(str(line), ()) if t not in ordered]
    return ordered


def main(argv: list[str]) -> int:
    pristine, module, reached, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit(__doc__)
    lines = changed_lines(
        Path(pristine).read_text().splitlines(), Path(module).read_text().splitlines()
    )
    first = reaching(lines, json.loads(Path(reached).read_text()))
    listed = Path(reached).with_name("first.txt")  # mutants run one at a time
    listed.write_text("\n".join(first))
    os.environ[FIRST] = str(listed)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
