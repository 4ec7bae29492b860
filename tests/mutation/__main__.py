"""`python -m tests.mutation [MODULE ...]`: mutation testing with cosmic-ray, module by module.

Each module is mutated in a scratch copy of `src/` and `tests/` (the checkout is never
touched; the installed package is found there through PYTHONPATH), and each mutant runs only
the tests that guard its module (tests/mutation/targets.py). The score of a module is the
share of its non-equivalent mutants that some test killed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
from coverage import CoverageData

from tests.mutation.plugin import RECORD
from tests.mutation.targets import DEFAULT, EQUIVALENT, TARGETS, Target

REPOSITORY = Path(__file__).resolve().parents[2]
COSMIC_RAY = str(Path(sys.executable).with_name("cosmic-ray"))
GOAL = 0.8


@dataclass
class Score:
    module: str
    killed: int = 0
    skipped: int = 0
    pending: int = 0  # not run: the module's time was up
    equivalent: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def judged(self) -> int:
        return self.killed + len(self.survivors)

    @property
    def share(self) -> float:
        if self.error:
            return 0.0
        return self.killed / self.judged if self.judged else 1.0


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's annotations are, as ((line, col), (end line, end col)) spans.

    Signature annotations are never evaluated (`from __future__ import annotations`); class
    attribute annotations are, where pydantic reads them, so those count only without it.
    """
    tree = ast.parse(source)
    evaluates_fields = "pydantic" in source
    nodes: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            nodes += [a.annotation for a in every if a.annotation is not None]
            if node.returns is not None:
                nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign) and not evaluates_fields:
            nodes.append(node.annotation)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes
    ]


def skip_annotations(session: Path, module: Path) -> int:
    """Mark the mutants inside annotations as skipped; how many there were."""
    spans = annotation_spans(module.read_text())
    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.work_items:
            if all(
                any(start <= tuple(m.start_pos) < end for start, end in spans)
                for m in item.mutations
            ):
                db.set_result(
                    item.job_id,
                    WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="annotation"),
                )
                skipped += 1
    return skipped


def score(name: str, session: Path, module: Path) -> Score:
    lines = module.read_text().splitlines()
    known = {(e.operator, e.line, e.after): e.reason for e in EQUIVALENT.get(name, ())}
    result = Score(name)
    with use_db(str(session), WorkDB.Mode.open) as db:
        result.pending = db.num_work_items - db.num_results
        for item, outcome in db.completed_work_items:
            if outcome.worker_outcome is WorkerOutcome.SKIPPED:
                result.skipped += 1
                continue
            if outcome.test_outcome is not TestOutcome.SURVIVED:
                result.killed += 1
                continue
            mutation = item.mutations[0]
            number = mutation.start_pos[0]
            line = lines[number - 1].strip()
            before = lines[number - 2].strip() if number > 1 else ""
            where = f"line {number}: {mutation.operator_name}: {line}"
            reason = known.get((mutation.operator_name, line, "")) or known.get(
                (mutation.operator_name, line, before)
            )
            if reason is not None:
                result.equivalent.append(f"{where}\n      equivalent: {reason}")
                continue
            changed = [
                text
                for text in (outcome.diff or "").splitlines()
                if text.startswith("+") and not text.startswith("+++")
            ]
            result.survivors.append(f"{where}\n      mutant: {' '.join(changed).strip()}")
    return result


# PID 1 of the namespace: runs the command and reaps every process orphaned inside (as
# init would), so that a test waiting for a killed process to go sees it go; leaving ends
# the namespace, and every process the tests left behind with it. Its pids start above 256,
# as on a host: CPython shares the int objects up to 256, where `is` would pass for `==`.
_REAPER = """
import os, subprocess, sys
with open("/proc/sys/kernel/ns_last_pid", "w") as last_pid:
    last_pid.write("1000")
command = subprocess.Popen(sys.argv[1:])
while True:
    pid, status = os.wait()
    if pid == command.pid:
        sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def isolation() -> list[str]:
    """The command prefix that runs a command in a PID namespace of its own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("needs unshare (util-linux) to run its tests in a PID namespace")
    prefix = [unshare, "--pid", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    prefix += [sys.executable, "-c", _REAPER]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"cannot make a PID namespace: {probe.stderr.strip()}")
    return prefix


def record_reach(tests: list[str], copy: Path, env: dict[str, str], module: str) -> Path:
    """Run the module's tests once, unmutated, under coverage: which tests reach each line.

    Writes `reached.json` beside the copy and returns its path: "lines", line number -> node
    ids of the tests that ran it, quickest first, and "" if it ran at import, outside any
    test; "seconds", node id -> how long the test took. Raises RuntimeError with the output
    if a test fails.
    """
    data = copy.parent / "coverage.sqlite"
    durations = copy.parent / "durations.json"
    # Processes the tests start are measured too (their lines count as run outside tests).
    rcfile = copy.parent / "coveragerc"
    rcfile.write_text(
        f"[run]\ndata_file = {data}\ninclude = {copy / module}\n"
        "parallel = true\npatch = subprocess\n"
    )
    # The coverage command goes after any isolation prefix, in place of `python`.
    at = next(i for i in range(len(tests)) if tests[i : i + 3] == [sys.executable, "-m", "pytest"])
    covered = [
        *tests[:at], sys.executable, "-m", "coverage", "run", f"--rcfile={rcfile}",
        *tests[at + 1 :],
    ]  # fmt: skip
    run = subprocess.run(
        covered, cwd=copy, env={**env, RECORD: str(durations)}, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-2000:])
    took = json.loads(durations.read_text())
    subprocess.run(
        [sys.executable, "-m", "coverage", "combine", f"--rcfile={rcfile}"],
        cwd=copy, env=env, check=True, capture_output=True,
    )  # fmt: skip
    coverage_data = CoverageData(basename=str(data))
    coverage_data.read()
    by_line = coverage_data.contexts_by_lineno(str(copy / module))
    reached = {
        str(line): sorted(contexts, key=lambda c: took.get(c, 0.0))
        for line, contexts in by_line.items()
    }
    path = copy.parent / "reached.json"
    path.write_text(json.dumps({"lines": reached, "seconds": took}))
    return path


def execute(config: Path, session: Path, copy: Path, env: dict[str, str], minutes: float) -> None:
    """Run the mutants; past `minutes`, stop (the mutants run so far keep their results).

    cosmic-ray runs a module's mutants in random order, so a run stopped for time has judged
    a random sample of them.
    """
    run = subprocess.Popen(
        [COSMIC_RAY, "exec", str(config), str(session)], cwd=copy, env=env, start_new_session=True
    )
    try:
        code = run.wait(timeout=minutes * 60 if minutes else None)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # cosmic-ray, the mutant's tests and their servers
        run.wait()
        return
    except BaseException:
        os.killpg(run.pid, signal.SIGKILL)
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, run.args)


def scratch_copy(scratch: Path) -> Path:
    """A copy of the checkout's `src/`, `tests/` and top-level files in `scratch`/repo, for
    mutants to be written into (the checkout is never touched)."""
    copy = scratch / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache")
    for part in ("src", "tests"):
        shutil.copytree(REPOSITORY / part, copy / part, ignore=ignore)
    for top in REPOSITORY.iterdir():  # pyproject.toml, agent_config.example.json, ...
        if top.is_file():
            shutil.copy2(top, copy / top.name)
    return copy


def run_module(name: str, target: Target, timeout: float, minutes: float = 0.0) -> Score:
    with tempfile.TemporaryDirectory(prefix=f"agentmesh-mutate-{name}-") as scratch:
        copy = scratch_copy(Path(scratch))
        env = {
            **os.environ,
            "PYTHONPATH": str(copy / "src"),
            # A mutant of the same size written in the same second must not load a stale .pyc.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        tests = [
            sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "-p", "tests.mutation.plugin",
            f"--basetemp={scratch}/pytest", f"--timeout={target.test_timeout:g}", *target.tests,
        ]  # fmt: skip
        if target.isolated:
            try:
                tests = [*isolation(), *tests]
            except RuntimeError as exc:
                print(f"{name}: {exc}")
                return Score(name, error=str(exc))
        try:
            reached = record_reach(tests, copy, env, target.path)
        except RuntimeError as exc:
            print(f"{name}: the tests fail before any mutation:\n{exc}")
            return Score(name, error="the tests fail before any mutation")
        pristine = Path(scratch) / "pristine.py"
        shutil.copy2(copy / target.path, pristine)
        command = [
            sys.executable, "-m", "tests.mutation.first",
            *(["--budget", f"{target.budget:g}"] if target.budget else []),
            str(pristine), target.path, str(reached), "--", *tests,
        ]  # fmt: skip
        config = copy / "cosmic-ray.toml"
        config.write_text(
            "[cosmic-ray]\n"
            f'module-path = "{target.path}"\n'
            f"timeout = {timeout}\n"
            "excluded-modules = []\n"
            f"test-command = {json.dumps(shlex.join(command))}\n"
            "\n[cosmic-ray.distributor]\n"
            'name = "local"\n'
        )
        session = copy / "session.sqlite"
        subprocess.run(
            [COSMIC_RAY, "init", str(config), str(session)], cwd=copy, env=env, check=True
        )
        skip_annotations(session, copy / target.path)
        execute(config, session, copy, env, minutes)
        # the pristine text: a run stopped for time leaves its last mutant in the copy
        return score(name, session, pristine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("modules", nargs="*", choices=[*TARGETS, "all"], default=list(DEFAULT))
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds per mutant at most (a backstop:"
        " a mutant whose tests take 3 times as long as unmutated, plus 30 s, is killed by time)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="stop each module's run after this many minutes and score the mutants run so far"
        " (a random sample: cosmic-ray runs them in random order); 0: no limit",
    )
    args = parser.parse_args(argv)
    names = list(TARGETS) if "all" in args.modules else args.modules
    scores = []
    for name in names:
        print(f"== {name}: {TARGETS[name].path}", flush=True)
        result = run_module(name, TARGETS[name], args.timeout, args.minutes)
        scores.append(result)
        for kind, entries in (("equivalent", result.equivalent), ("SURVIVED", result.survivors)):
            for entry in entries:
                print(f"  {kind}: {entry}")
    print("\nmodule            killed  survived  equivalent  skipped  score")
    for s in scores:
        print(
            f"{s.module:<17} {s.killed:>6}  {len(s.survivors):>8}  {len(s.equivalent):>10}"
            f"  {s.skipped:>7}  {s.share:6.1%}  {s.error}"
            + (f"  (stopped for time: {s.pending} mutants not run)" if s.pending else "")
        )
    return 0 if all(s.share >= GOAL for s in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
