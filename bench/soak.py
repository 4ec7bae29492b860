"""Soak benchmark: does a long run of small tasks leave the scheduler or a node bigger?

Runs `TASKS` echo tasks through a scheduler process and `NODES` node processes (embedded
PostgreSQL 16, as bench/dispatch.py starts them), at most `IN_FLIGHT` submitted and not yet
finished at a time, and samples the resident memory of each process at the start (after
200 warm-up tasks) and after every 10 % of the tasks. Prints the series and each process's
growth from the 10 % sample (after warm-up: pools, caches and the allocator's arenas have
settled by then) to the last, also per 10,000 tasks.

By default 20,000 tasks: about 5 minutes on the 2-core development machine while other
work loaded it (72 tasks/s); `--tasks 100000` is the full soak (23 minutes there, load 12
to 20; about 5 at the 390 tasks/s bench/dispatch.py measures on a quiet machine).
`--tasks N` runs another count; `--trace` starts the processes under tracemalloc
(bench/support/traced.py, several times slower: use fewer tasks) and prints, for each, the
allocation sites that grew most between the 10 % snapshot and the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

# gRPC's C core reads this when it loads (as `agentmesh` sets it): no fork notices.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import asyncpg
import grpc
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2  # noqa: E402

TASKS = 20_000
NODES = 2
SLOTS_PER_NODE = 16
IN_FLIGHT = 1_000
SUBMITTERS = 16
SAMPLES = 10  # after every 10 % of the tasks
TRACED = REPO / "bench/support/traced.py"
UNFINISHED = "SELECT count(*) FROM tasks WHERE state IN ('submitted', 'working')"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    rss: list[int] = field(default_factory=list)


def spawn(
    name: str, args: list[str], env: dict[str, str], work: Path, pattern: str, trace: Path | None
) -> tuple[Process, str]:
    prefix = [str(TRACED), str(trace)] if trace else ["-m", "agentmesh.cli.main"]
    popen = subprocess.Popen(
        [sys.executable, *prefix, *args],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert popen.stdout is not None
    line = popen.stdout.readline()
    match = re.search(pattern, line)
    if not match:
        popen.kill()
        raise SystemExit(f"{name} did not start: {line!r}")
    return Process(name, popen), match[1]


class Load:
    """Submits tasks while fewer than IN_FLIGHT are unfinished; counts the finished."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub, conn: asyncpg.Connection):
        self._stub = stub
        self._conn = conn
        self._claimed = 0  # by a submitter
        self._submitted = 0  # and answered: in the database
        self.finished = 0
        self._room = asyncio.Condition()

    async def run(self, count: int, prefix: str) -> None:
        target = self._claimed + count
        submitters = [
            asyncio.create_task(self._submitter(target, prefix)) for _ in range(SUBMITTERS)
        ]
        try:
            while self.finished < target:
                submitted = self._submitted
                unfinished = int(await self._conn.fetchval(UNFINISHED))
                async with self._room:
                    self.finished = submitted - unfinished
                    self._room.notify_all()
                await asyncio.sleep(0.05)
            await asyncio.gather(*submitters)
        finally:
            for submitter in submitters:
                submitter.cancel()

    async def _submitter(self, target: int, prefix: str) -> None:
        while True:
            async with self._room:
                await self._room.wait_for(lambda: self._claimed - self.finished < IN_FLIGHT)
                if self._claimed >= target:
                    return
                self._claimed += 1
                number = self._claimed
            spec = task_pb2.TaskSpec(kind="echo", prompt=f"{prefix} {number}")
            await self._stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
            self._submitted += 1


def snapshot_all(processes: list[Process], trace: Path, taken: int) -> None:
    """Ask every traced process for its snapshot number `taken`, and wait for them."""
    for process in processes:
        process.popen.send_signal(signal.SIGUSR1)
    for process in processes:
        done = trace / f"{process.popen.pid}-{taken}.done"
        while not done.exists():
            time.sleep(0.05)


def grown(trace: Path, process: Process, first: int, last: int) -> list[str]:
    """The allocation sites whose live size grew most between two snapshots."""
    pid = process.popen.pid
    before = tracemalloc.Snapshot.load(str(trace / f"{pid}-{first}.snapshot"))
    after = tracemalloc.Snapshot.load(str(trace / f"{pid}-{last}.snapshot"))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<*")]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    growing = sorted((s for s in diff if s.size_diff > 0), key=lambda s: -s.size_diff)
    total = sum(s.size_diff for s in diff)
    lines = [
        f"  {process.name}: Python's live allocations {total / 1024:+.1f} KiB from the 10 %"
        f" snapshot to the last; what grew most{'' if growing else ': nothing'}"
    ]
    for stat in growing[:5]:
        lines.append(f"    {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks, at")
        # The allocation's own frame last, and the five that led to it.
        lines += [f"    {line}" for line in stat.traceback.format(limit=6)]
    return lines


async def main(tasks: int, trace: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-soak-"))
    data = work / "data"
    snapshots = work / "snapshots" if trace else None
    if snapshots:
        snapshots.mkdir()
    server = embedded.start(data)
    await ensure_database(server, "agentmesh")
    dsn = embedded.uri_for(server, "agentmesh")
    config = work / "agent_config.json"
    config.write_text(
        json.dumps({"node": {"max_concurrency": SLOTS_PER_NODE, "heartbeat_interval_seconds": 1}})
    )
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "AGENTMESH_DATA_DIR": str(data),
        "AGENTMESH_CONFIG": str(config),
        "GEMINI_CLI_COMMAND": "/nonexistent/gemini",
    }
    processes: list[Process] = []
    try:
        scheduler, address = spawn(
            "scheduler",
            ["scheduler", "--listen", "127.0.0.1:0"],
            env,
            work,
            r"listening on (\S+)",
            snapshots,
        )
        processes.append(scheduler)
        for n in range(NODES):
            node, _ = spawn(
                f"node n{n}",
                ["node", "--listen", "127.0.0.1:0", "--name", f"n{n}", "--scheduler", address],
                env,
                work,
                r"listening on (\S+);",
                snapshots,
            )
            processes.append(node)
        conn = await asyncpg.connect(dsn)
        while await conn.fetchval("SELECT count(*) FROM agents WHERE status = 'online'") < NODES:
            await asyncio.sleep(0.1)
        handles = [psutil.Process(p.popen.pid) for p in processes]

        def sample(taken: int) -> None:
            for process, handle in zip(processes, handles, strict=True):
                process.rss.append(handle.memory_info().rss)
            if snapshots:
                snapshot_all(processes, snapshots, taken)

        async with grpc.aio.insecure_channel(address) as channel:
            load = Load(scheduler_pb2_grpc.SchedulerStub(channel), conn)
            await load.run(200, "warmup")
            sample(1)
            started = time.perf_counter()
            step = tasks // SAMPLES
            for n in range(SAMPLES):
                await load.run(step if n < SAMPLES - 1 else tasks - step * n, f"soak{n}")
                sample(n + 2)
            elapsed = time.perf_counter() - started
        failed = await conn.fetchval("SELECT count(*) FROM tasks WHERE state <> 'completed'")
        await conn.close()
        traced = (
            [line for p in processes for line in grown(snapshots, p, 2, SAMPLES + 1)]
            if snapshots
            else []
        )
    finally:
        for process in processes:
            process.popen.terminate()
        for process in processes:
            process.popen.wait(30)
        embedded.stop(data)
    shutil.rmtree(work, ignore_errors=True)

    how = "under tracemalloc, " if trace else ""
    print("Soak benchmark (one run, this machine, embedded PostgreSQL 16)")
    print(
        f"  {tasks:,} echo tasks through a scheduler and {NODES} nodes, at most {IN_FLIGHT:,}"
        f" unfinished: {how}{elapsed:.0f} s ({tasks / elapsed:.0f} tasks/s),"
        f" {'every task completed' if not failed else f'{failed} did not complete'}"
    )
    marks = " ".join(f"{10 * n:>5}%" for n in range(SAMPLES + 1))
    print(f"  resident memory (MiB) after   {marks}")
    if trace:
        print("  (under tracemalloc: the resident memory includes its records and snapshots)")
    for process in processes:
        series = " ".join(f"{rss / 2**20:6.1f}" for rss in process.rss)
        print(f"    {process.name:<26} {series}")
    for process in processes:
        growth = process.rss[-1] - process.rss[1]
        per = growth / 1024 / ((tasks - tasks // SAMPLES) / 10_000)
        print(
            f"  {process.name} grew {growth / 2**20:+.1f} MiB from 10 % to 100 %"
            f" ({per:+.0f} KiB per 10,000 tasks)"
        )
    for line in traced:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=TASKS, help=f"default {TASKS:,}")
    parser.add_argument("--trace", action="store_true", help="tracemalloc: what grew, and where")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.tasks, arguments.trace))
