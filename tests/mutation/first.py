"""One mutant's tests: `python -m tests.mutation.first [--budget S] PRISTINE MODULE LINES --
COMMAND...`.

Cosmic-ray runs this as the test command, with the mutant written over MODULE. It finds the
lines the mutant changed (against PRISTINE, the module as it was) and looks them up in LINES
(from the unmutated run under coverage: line number -> the node ids of the tests that ran
it, quickest first, and "" if it ran outside any test: at import, or in a process a test
started). A mutant can change only what runs its code: when every changed line ran inside
tests only, COMMAND runs those tests alone (see plugin.py); when a line ran outside them (a
default value, a constant) it runs all of them; when no test ran any of them, none can tell
the mutant apart, and it survives without a run. A mutant whose tests take far longer than
they took unmutated (a lost wake-up, a lock never released) is killed by time: after 3
times as long, plus 30 s to start.

With --budget, a mutant runs only some of those tests, as many as took at most S seconds
unmutated (at least one), chosen to run as much of the module between them as they can
(see within_budget): for a module whose every line runs in most of its slow tests (the
dispatcher: each test starts a scheduler and nodes), the price of judging it at all.
Its lines count as run by the tests that ran them whenever some did (not also as run
outside them), and a mutant of a line run only outside tests runs the tests that ran the
module first. A mutant that survives those might still die in another test: the score is
a lower bound.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.mutation.plugin import ONLY


def changed_lines(before: list[str], after: list[str]) -> set[int]:
    """The lines of `before` (numbered from 1) that `after` changes or deletes, and the
    line before an insertion."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            changed.update(range(i1 + 1, i2 + 1) if i2 > i1 else (max(i1, 1),))
    return changed


def statement_lines(source: str) -> dict[int, int]:
    """Each line of a statement -> the line it starts on (its innermost statement's)."""
    starts: dict[int, int] = {}
    for node in sorted(
        (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)),
        key=lambda n: n.lineno,
    ):
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            starts[line] = node.lineno  # a later start is an inner statement's
    return starts


def selected(
    lines: set[int],
    reached_by: dict[str, list[str]],
    starts: dict[int, int],
    *,
    inside_first: bool = False,
) -> list[str] | None:
    """The tests that ran the changed lines, each once: none if no test ran any of them
    (nothing can tell the mutant apart), None for every test (a line run outside tests).

    With `inside_first`, a line that also ran inside tests counts as theirs alone (what ran
    outside them was code a test left running past its end): None only for a line that
    ran outside tests and never inside one."""
    chosen: list[str] = []
    for line in sorted(lines):
        # A line with no code of its own (inside a longer statement) ran if its statement did.
        tests = reached_by.get(str(line)) or reached_by.get(str(starts.get(line, line)), [])
        inside = [t for t in tests if t]
        if "" in tests and not (inside_first and inside):
            return None
        chosen += [t for t in inside if t not in chosen]
    return chosen


def time_limit(tests: list[str] | None, seconds: dict[str, float]) -> float:
    """How long the mutant's tests may take: 3 times as long as unmutated, plus 30 s."""
    took = sum(seconds.values()) if tests is None else sum(seconds.get(t, 0.0) for t in tests)
    return 30.0 + 3 * took


def within_budget(
    tests: list[str] | None,
    seconds: dict[str, float],
    budget: float,
    reached_by: dict[str, list[str]] | None = None,
) -> list[str] | None:
    """With a budget, as many of `tests` (None: every test) as fit in `budget` seconds as
    they took unmutated (at least one), chosen for how much of the module they run between
    them (`reached_by`): each next the one that adds the most lines not run yet per second.
    Tests that run the same lines as others are likely to judge a mutant the same way; ones
    that run other paths, other outcomes. Quickest first. All of them with no budget (0)."""
    if not budget:
        return tests
    runs: dict[str, set[str]] = {}
    for line, every in (reached_by or {}).items():
        for test in every:
            runs.setdefault(test, set()).add(line)
    left = sorted(seconds if tests is None else tests, key=lambda t: seconds.get(t, 0.0))
    run: set[str] = set()
    chosen: list[str] = []
    spent = 0.0
    while left:
        best = max(
            left,
            key=lambda t: len(runs.get(t, set()) - run) / max(seconds.get(t, 0.0), 0.05),
        )  # the first of equals: the quickest
        left.remove(best)
        took = seconds.get(best, 0.0)
        if chosen and spent + took > budget:
            continue  # a quicker one may still fit
        chosen.append(best)
        spent += took
        run |= runs.get(best, set())
    return sorted(chosen, key=lambda t: seconds.get(t, 0.0))


def main(argv: list[str]) -> int:
    budget = 0.0
    if argv and argv[0] == "--budget":
        budget, argv = float(argv[1]), argv[2:]
    pristine, module, reached, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit(__doc__)
    source = Path(pristine).read_text()
    lines = changed_lines(source.splitlines(), Path(module).read_text().splitlines())
    recorded = json.loads(Path(reached).read_text())
    tests = selected(lines, recorded["lines"], statement_lines(source), inside_first=bool(budget))
    if tests == []:
        print(f"survived: no test runs line {', '.join(map(str, sorted(lines)))}", flush=True)
        return 0
    tests = within_budget(tests, recorded["seconds"], budget, recorded["lines"])
    env = dict(os.environ)
    if tests is not None:
        listed = Path(reached).with_name("selected.txt")  # mutants run one at a time
        listed.write_text("\n".join(tests))
        env[ONLY] = str(listed)
    limit = time_limit(tests, recorded["seconds"])
    run = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        return run.wait(limit)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        print(f"killed by time: the tests ran past {limit:.0f} s", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
