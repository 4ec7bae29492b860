"""A pytest plugin for `make mutate`: which tests run a line, and those tests first.

With AGENTMESH_MUTATION_RECORD set (a file), each test runs in a coverage context named by
its node id, and the time each test took is written to that file: the run before the
mutants learns which tests reach each line of the module. With AGENTMESH_MUTATION_FIRST set
(a file of node ids, one a line), those tests run first, in that order: a mutant's tests
begin with the ones that reach the lines it changed, so with `-x` a mutant some test kills
costs that test, not the whole list. Every selected test still runs when none fails.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

RECORD = "AGENTMESH_MUTATION_RECORD"
FIRST = "AGENTMESH_MUTATION_FIRST"

_durations: defaultdict[str, float] = defaultdict(float)


def _coverage():  # type: ignore[no-untyped-def]
    try:
        import coverage
    except ImportError:
        return None
    return coverage.Coverage.current()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    cov = _coverage() if os.environ.get(RECORD) else None
    if cov is not None:
        cov.switch_context(item.nodeid)
    yield
    if cov is not None:
        cov.switch_context("")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get(RECORD):
        _durations[report.nodeid] += report.duration


def pytest_sessionfinish() -> None:
    record = os.environ.get(RECORD)
    if record:
        Path(record).write_text(json.dumps(_durations))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = os.environ.get(FIRST)
    if not first:
        return
    rank = {nodeid: i for i, nodeid in enumerate(Path(first).read_text().split("\n")) if nodeid}
    ahead = sorted((item for item in items if item.nodeid in rank), key=lambda i: rank[i.nodeid])
    items[:] = ahead + [item for item in items if item.nodeid not in rank]
