"""The services' start-up objects leave the collector's reach; start-up's garbage does not
stay behind with them."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agentmesh.collector import freeze_startup


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_what_lives_is_frozen_and_what_is_garbage_is_collected_first() -> None:
    kept = [{"n": n} for n in range(10_000)]
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the collector frees
    cycle = weakref.ref(a)
    del a, b

    frozen = freeze_startup()

    assert cycle() is None, "start-up's garbage was frozen with the rest"
    assert frozen >= len(kept)
    assert frozen == gc.get_freeze_count()
    # A full collection now walks only what was made since.
    assert all(len(gc.get_objects(generation)) < len(kept) for generation in range(3))
