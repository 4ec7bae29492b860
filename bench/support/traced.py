"""`agentmesh ARGS` with tracemalloc on, for finding what a long run keeps (bench/soak.py).

    python bench/support/traced.py SNAPSHOT_DIR scheduler --listen ...

Each SIGUSR1 collects garbage and writes a tracemalloc snapshot to
SNAPSHOT_DIR/<pid>-<n>.snapshot (n from 1), then SNAPSHOT_DIR/<pid>-<n>.done, so that the
one asking knows it is whole. Allocations keep `FRAMES` frames of their traceback.
"""

from __future__ import annotations

import gc
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12


def main() -> None:
    directory = Path(sys.argv[1])
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        gc.collect()
        path = directory / f"{os.getpid()}-{taken}.snapshot"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".done").touch()

    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, snapshot)
    sys.argv = ["agentmesh", *sys.argv[2:]]
    runpy.run_module("agentmesh.cli.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
