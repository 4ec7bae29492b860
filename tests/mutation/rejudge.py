"""`python -m tests.mutation.rejudge NAME SESSION [PYTEST ARGS...]`: a run's survivors,
judged again by tests written since.

A run of a slow module (dispatch: hours) ends with survivors; tests written for them
afterwards should count without running every mutant again. This applies each mutant of
SESSION that survived (a copy of the run's `session.sqlite`, which `make mutate` deletes
with its scratch directory; equivalent ones too: a test may show one was not) to a
scratch copy of today's `src/` and `tests/`, runs the given pytest arguments against it
(the module's new tests), and records the mutants that fail them as killed in SESSION.
The tests must pass unmutated first, and each mutated line must still be what the run
mutated (one that changed since is reported, and stays a survivor). Then it prints the
module's score over SESSION.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cosmic_ray.mutating import apply_mutation
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome, WorkResult

from tests.mutation.__main__ import score, scratch_copy
from tests.mutation.targets import TARGETS


def survivors(session: Path) -> list[tuple[str, str, list[MutationSpec]]]:
    """(job id, diff, mutations) of each mutant that survived."""
    with use_db(str(session), WorkDB.Mode.open) as db:
        return [
            (item.job_id, outcome.diff or "", list(item.mutations))
            for item, outcome in db.completed_work_items
            if outcome.test_outcome is TestOutcome.SURVIVED
        ]


def mutate(copy: Path, diff: str, mutations: list[MutationSpec]) -> str:
    """Apply the mutant to the module in `copy` as cosmic-ray does; "" when done, else why
    not (the line it changed is not what the run mutated: the module changed since)."""
    removed = [
        line[1:].strip()
        for line in diff.splitlines()
        if line.startswith("-") and not line.startswith("---")
    ]
    for mutation in mutations:
        path = copy / mutation.module_path
        line = path.read_text().splitlines()[mutation.start_pos[0] - 1].strip()
        if removed and line not in removed:
            return f"line {mutation.start_pos[0]} is now {line!r}"
        operator = get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
        _, mutated = apply_mutation(path, operator, mutation.occurrence)
        if mutated is None:
            return f"no occurrence {mutation.occurrence} of {mutation.operator_name}"
    return ""


def killed(session: Path, job_id: str, diff: str, output: str) -> None:
    with use_db(str(session), WorkDB.Mode.open) as db:
        db.set_result(
            job_id,
            WorkResult(
                worker_outcome=WorkerOutcome.NORMAL,
                output=f"rejudged: {output}",
                test_outcome=TestOutcome.KILLED,
                diff=diff,
            ),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.rejudge", description=__doc__)
    parser.add_argument("name", choices=list(TARGETS))
    parser.add_argument("session", type=Path)
    parser.add_argument("pytest", nargs=argparse.REMAINDER, help="pytest arguments: the tests")
    args = parser.parse_args(argv)
    if not args.session.is_file():
        parser.error(f"session: no such file {str(args.session)!r} (a saved session.sqlite)")
    module = TARGETS[args.name].path
    with tempfile.TemporaryDirectory(prefix=f"agentmesh-rejudge-{args.name}-") as scratch:
        copy = scratch_copy(Path(scratch))
        pristine = Path(scratch) / "pristine.py"
        shutil.copy2(copy / module, pristine)
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [
            sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            f"--basetemp={scratch}/pytest", *args.pytest,
        ]  # fmt: skip
        unmutated = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
        if unmutated.returncode != 0:
            print(
                f"the tests fail unmutated:\n{unmutated.stdout[-3000:]}{unmutated.stderr[-2000:]}"
            )
            return 2
        for job_id, diff, mutations in survivors(args.session):
            try:
                if problem := mutate(copy, diff, mutations):
                    print(f"{job_id}: the mutant no longer applies: {problem}")
                    continue
                run = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
                last = (run.stdout.strip().splitlines() or [""])[-1]
                changed = " ".join(
                    line for line in diff.splitlines() if line.startswith("+") and "+++" not in line
                )
                if run.returncode not in (0, 5):
                    killed(args.session, job_id, diff, last)
                    print(f"killed: {changed.strip()}  ({last})")
                else:
                    print(f"survives: {changed.strip()}")
            finally:
                shutil.copy2(pristine, copy / module)
        result = score(args.name, args.session, pristine)
    print(
        f"\n{result.module}: {result.killed} killed, {len(result.survivors)} survived,"
        f" {len(result.equivalent)} equivalent, {result.skipped} skipped:"
        f" {result.share:.1%}" + (f" ({result.pending} not run)" if result.pending else "")
    )
    for entry in result.survivors:
        print(f"  SURVIVED: {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
