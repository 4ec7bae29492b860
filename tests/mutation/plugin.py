"""A pytest plugin for `make mutate`: which tests run each line, and a mutant's tests only.

With AGENTMESH_MUTATION_RECORD set (a file), each test runs in a coverage context named by
its node id, as does every process it starts (what runs outside any test, at import, has
the empty context), and the time each test took is written to that file: the run before
the mutants learns which tests run each line of the module. With AGENTMESH_MUTATION_ONLY
set (a file of node ids, one a line), only those tests run, in that order (see first.py).
"""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

RECORD = "AGENTMESH_MUTATION_RECORD"
ONLY = "AGENTMESH_MUTATION_ONLY"
_CHILD_CONFIG = "COVERAGE_PROCESS_CONFIG"

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
    if cov is None:
        yield
        return
    cov.switch_context(item.nodeid)
    # The processes the test starts (a scheduler, a node) measure under its name too: their
    # configuration comes from this variable (coverage's patch=subprocess).
    inherited = os.environ.get(_CHILD_CONFIG)
    config = copy.copy(cov.config)
    config.context = item.nodeid
    os.environ[_CHILD_CONFIG] = config.serialize()
    try:
        yield
    finally:
        cov.switch_context("")
        if inherited is None:
            os.environ.pop(_CHILD_CONFIG, None)
        else:
            os.environ[_CHILD_CONFIG] = inherited


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get(RECORD):
        _durations[report.nodeid] += report.duration


def pytest_sessionfinish() -> None:
    record = os.environ.get(RECORD)
    if record:
        Path(record).write_text(json.dumps(_durations))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = os.environ.get(ONLY)
    if not only:
        return
    rank = {nodeid: i for i, nodeid in enumerate(Path(only).read_text().split("\n")) if nodeid}
    chosen = sorted((item for item in items if item.nodeid in rank), key=lambda i: rank[i.nodeid])
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in rank])
    items[:] = chosen
