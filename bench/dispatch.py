"""Scheduler benchmark: the durable queue and the gRPC hop against raw PostgreSQL.

Prints, from one run on this machine (embedded PostgreSQL 16, a scheduler process and 4
node processes on loopback):
- throughput of 5,000 `echo` tasks from the first submit until all are recorded complete,
  submitted one a call (SubmitTask, 32 callers at once), then 100 a call (SubmitTasks, 4
  callers at once);
- a raw asyncpg baseline on the same server right after them, the mesh idle: insert the
  same number of rows, claim each with FOR UPDATE SKIP LOCKED and complete it with 8
  workers; and each phase's ratio to it. The three run as a round, 5 rounds in turn, and
  each round's ratios are to its own baseline: on a shared machine the speed drifts within
  a run, and a ratio of figures measured minutes apart measures the drift;
- CPU time per task of the scheduler, the nodes and PostgreSQL in each phase: the steadier
  measure of what a change bought (wall-clock figures swing with whatever else runs);
- submit-to-start latency p50/p99 at a steady 200 tasks/s (from the database's own
  `created_at` and `started_at`; a task its submit stored started has none, so how many
  were is said too, and the whole trip, submit to end from `finished_at`, beside it, which
  includes the dial of the node and the end's commit), on fresh tables and again after
  the rounds, with what
  PostgreSQL did in the background meanwhile (from its log): the tables autovacuum worked
  on, in any database (right after a burst it vacuums and analyzes the tasks and their
  events; on a new cluster, the system catalogs of every database), and any checkpoint
  under way (its writes share the cores too, and after it begins, the first change to each
  page writes the whole page to the WAL);
- the scheduler's resident memory before and after.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import grpc
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2  # noqa: E402
from bench.support import server_log  # noqa: E402
from bench.support.mesh import (  # noqa: E402
    BATCH,
    SUBMITTERS,
    UNENDED,
    spawn,
    submit_all,
    submit_batched,
)

TASKS = 5_000
# The throughput phases and the baseline run this many times, interleaved: the machine's
# speed drifts within a run (the baseline alone has swung by a third from one minute to
# the next), and each round's ratio is to a baseline measured beside it.
ROUNDS = 5
WARMUP = 50
NODES = 4
SLOTS_PER_NODE = 16
STEADY_RATE = 200
STEADY_TASKS = 1_000
BASELINE_WORKERS = 8
CLIENT = "client (this process)"
DATABASE = "agentmesh"


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """User and system CPU time of each of these processes still running, by pid."""
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def postgres_processes(data: Path) -> list[psutil.Process]:
    """The embedded server and its backends."""
    pid = int((embedded.pgdata_dir(data) / "postmaster.pid").read_text().split("\n", 1)[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


async def commits(conn: asyncpg.Connection) -> int:
    """Transactions committed in the database so far (statistics flush within a second)."""
    await asyncio.sleep(1.5)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def phase_start(conn: asyncpg.Connection) -> datetime:
    """The database's clock before a phase submits: its tasks are created after it."""
    started: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return started


async def wait_completed(conn: asyncpg.Connection, since: datetime, count: int) -> None:
    """Wait until the `count` tasks created since `since` have ended; all must be completed.

    The poll reads only the tasks still in flight (an index range on their states): a count
    of every completed task read the whole history 20 times a second, up to half a core of
    PostgreSQL's time late in a run, beside the mesh it measured."""
    while await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE state = ANY($1) AND created_at >= $2", UNENDED, since
    ):
        await asyncio.sleep(0.05)
    completed = await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE state = 'completed' AND created_at >= $1", since
    )
    if completed != count:
        raise SystemExit(f"{count} tasks submitted, {completed} completed")


async def baseline(dsn: str) -> float:
    """Raw asyncpg: insert, claim with SKIP LOCKED, complete; the same number of rows."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "DROP TABLE IF EXISTS bench_jobs;"
        "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, payload text NOT NULL,"
        " state text NOT NULL DEFAULT 'queued', claimed_by int, done_at timestamptz);"
        "CREATE INDEX ON bench_jobs (id) WHERE state = 'queued'"
    )
    pool = await asyncpg.create_pool(dsn, min_size=BASELINE_WORKERS, max_size=BASELINE_WORKERS)
    assert pool is not None
    started = time.perf_counter()
    await conn.executemany(
        "INSERT INTO bench_jobs (payload) VALUES ($1)", [(f"job {i}",) for i in range(TASKS)]
    )

    async def worker(number: int) -> None:
        async with pool.acquire() as c:
            while True:
                async with c.transaction():
                    job = await c.fetchval(
                        "WITH next AS (SELECT id FROM bench_jobs WHERE state = 'queued'"
                        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                        " UPDATE bench_jobs j SET state = 'running', claimed_by = $1"
                        " FROM next WHERE j.id = next.id RETURNING j.id",
                        number,
                    )
                if job is None:
                    return
                await c.execute(
                    "UPDATE bench_jobs SET state = 'done', done_at = now() WHERE id = $1", job
                )

    await asyncio.gather(*(worker(n) for n in range(BASELINE_WORKERS)))
    elapsed = time.perf_counter() - started
    await conn.execute("DROP TABLE bench_jobs")
    await pool.close()
    await conn.close()
    return TASKS / elapsed


def cpu_figures(per_task: dict[str, float]) -> str:
    """The mesh's processes, their sum, then the benchmark's own client."""
    mesh = {name: ms for name, ms in per_task.items() if name != CLIENT}
    return (
        ", ".join(f"{name} {ms:.2f} ms" for name, ms in mesh.items())
        + f"; all {sum(mesh.values()):.2f} ms; {CLIENT} {per_task[CLIENT]:.2f} ms"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Round:
    """One round of the throughput phases and the baseline measured right after them."""

    one_a_call: float  # tasks/s
    one_a_call_cpu: dict[str, float]  # ms per task, by process group
    one_a_call_at_once: int  # tasks their submit stored started (see Dispatcher.place_new)
    batched: float
    batched_cpu: dict[str, float]
    # Tasks that took more than one attempt, one a call and batched: none in a run without
    # faults, where each is an attempt lost (a round that took far longer than its
    # neighbours, with one, waited for a lease to run out).
    retried: tuple[int, int]
    baseline: float  # jobs/s
    # The CPU seconds the scheduler and nodes used while they stood idle beside the baseline.
    idle_mesh_cpu: float

    @property
    def ratio(self) -> float:
        return self.one_a_call / self.baseline

    @property
    def batched_ratio(self) -> float:
        return self.batched / self.baseline


class Mesh:
    """The running mesh's processes, grouped as the CPU figures show them."""

    def __init__(self, scheduler: psutil.Process, nodes: list[psutil.Process], data: Path) -> None:
        self._groups: dict[str, Callable[[], list[psutil.Process]]] = {
            "scheduler": lambda: [scheduler],
            "nodes": lambda: nodes,
            # Listed anew each time: the pools open backends as the load asks.
            "PostgreSQL": lambda: postgres_processes(data),
            # The submitters and the completion polls: shown apart from the mesh's sum.
            CLIENT: lambda: [psutil.Process()],
        }

    def cpu(self) -> dict[str, dict[int, float]]:
        return {name: cpu_seconds(processes()) for name, processes in self._groups.items()}

    def cpu_per_task(self, before: dict[str, dict[int, float]], tasks: int) -> dict[str, float]:
        """Milliseconds of CPU per task of each group since `before`, counting processes
        that started meanwhile. Those that ended meanwhile took their time with them: read
        it as soon as the phase ends."""
        return {
            name: sum(seconds - before[name].get(pid, 0.0) for pid, seconds in now.items())
            / tasks
            * 1000
            for name, now in self.cpu().items()
        }

    async def timed(
        self, conn: asyncpg.Connection, submit: Awaitable[None]
    ) -> tuple[float, dict[str, float], int, int]:
        """Run a phase of TASKS tasks: its tasks/s until all are recorded complete, the CPU
        per task, how many tasks their submit stored started, and how many took more than
        one attempt."""
        since = await phase_start(conn)
        before = self.cpu()
        started = time.perf_counter()
        await submit
        await wait_completed(conn, since, TASKS)
        throughput = TASKS / (time.perf_counter() - started)
        cpu = self.cpu_per_task(before, TASKS)
        counts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE started_at = created_at), count(*) FILTER"
            " (WHERE attempt > 1) FROM tasks WHERE created_at >= $1",
            since,
        )
        assert counts is not None
        return throughput, cpu, counts[0], counts[1]


async def measure_round(
    mesh: Mesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    conn: asyncpg.Connection,
    dsn: str,
    number: int,
) -> Round:
    one_a_call, one_a_call_cpu, at_once, retried = await mesh.timed(
        conn, submit_all(stub, TASKS, f"round {number}")
    )
    batched, batched_cpu, _, batched_retried = await mesh.timed(
        conn, submit_batched(stub, TASKS, f"batched {number}")
    )
    before = mesh.cpu()
    raw = await baseline(dsn)
    spent = mesh.cpu_per_task(before, 1)  # milliseconds in all
    idle = (spent["scheduler"] + spent["nodes"]) / 1000
    return Round(
        one_a_call,
        one_a_call_cpu,
        at_once,
        batched,
        batched_cpu,
        (retried, batched_retried),
        raw,
        idle,
    )


@dataclass
class Steady:
    """Submit-to-start latencies at STEADY_RATE, and what the phase cost."""

    latencies: list[float]  # seconds
    trips: list[float]  # submit to end, seconds
    at_once: int  # tasks their submit stored started (see Dispatcher.place_new)
    cpu: dict[str, float]  # ms per task, by process group
    transactions: float  # per task
    # What PostgreSQL did in the background while the phase ran: autovacuum's work and
    # checkpoints share the cores, and after a checkpoint begins, the first change to each
    # page puts the whole page in the WAL.
    background: list[server_log.Work]
    began: datetime  # the database's clock when the phase began


async def measure_steady(
    mesh: Mesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    conn: asyncpg.Connection,
    log: Path,
    label: str,
) -> Steady:
    """STEADY_TASKS tasks submitted at STEADY_RATE, one a call, each without waiting for the
    last; latency from the database's own `created_at` and `started_at`."""
    cpu = mesh.cpu()
    commits_before = await commits(conn)
    since = await phase_start(conn)
    interval = 1 / STEADY_RATE
    begin = time.perf_counter()
    pending = []
    for i in range(STEADY_TASKS):
        spec = task_pb2.TaskSpec(kind="echo", prompt=f"steady {label} {i}")
        pending.append(
            asyncio.ensure_future(stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)))
        )
        delay = begin + (i + 1) * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*pending)
    until = await conn.fetchval("SELECT clock_timestamp()")
    vacuuming = await server_log.under_way(conn, until)
    await wait_completed(conn, since, STEADY_TASKS)
    per_task = mesh.cpu_per_task(cpu, STEADY_TASKS)
    transactions = (await commits(conn) - commits_before) / STEADY_TASKS
    rows = await conn.fetch(
        "SELECT extract(epoch FROM started_at - created_at) AS start,"
        " extract(epoch FROM finished_at - created_at) AS trip"
        " FROM tasks WHERE created_at >= $1",
        since,
    )
    zone = await conn.fetchval("SHOW log_timezone")
    logged = [w for w in server_log.read(log, zone) if w.overlaps(since, until)]
    return Steady(
        [float(row["start"]) for row in rows],
        [float(row["trip"]) for row in rows],
        sum(row["start"] == 0 for row in rows),
        per_task,
        transactions,
        server_log.merge(logged, vacuuming),
        since,
    )


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-dispatch-"))
    data = work / "data"
    server = embedded.start(data)
    await ensure_database(server, DATABASE)
    dsn = embedded.uri_for(server, DATABASE)
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
    processes: list[subprocess.Popen[str]] = []
    rounds: list[Round] = []
    try:
        scheduler, address = spawn(
            ["scheduler", "--listen", "127.0.0.1:0"], env, work, r"listening on (\S+)"
        )
        processes.append(scheduler)
        for n in range(NODES):
            node, _ = spawn(
                ["node", "--listen", "127.0.0.1:0", "--name", f"n{n}", "--scheduler", address],
                env,
                work,
                r"listening on (\S+);",
            )
            processes.append(node)
        conn = await asyncpg.connect(dsn)
        await server_log.log_every_autovacuum(conn)
        while await conn.fetchval("SELECT count(*) FROM agents WHERE status = 'online'") < NODES:
            await asyncio.sleep(0.1)
        memory = psutil.Process(scheduler.pid)
        mesh = Mesh(memory, [psutil.Process(p.pid) for p in processes[1:]], data)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            since = await phase_start(conn)
            await submit_all(stub, WARMUP, "warmup")
            await wait_completed(conn, since, WARMUP)
            rss_before = memory.memory_info().rss
            log = embedded.pgdata_dir(data) / "log"
            fresh = await measure_steady(mesh, stub, conn, log, "fresh")
            for number in range(ROUNDS):
                rounds.append(await measure_round(mesh, stub, conn, dsn, number))
            rss_after = memory.memory_info().rss
            after_rounds = await measure_steady(mesh, stub, conn, log, "after")
            rss_end = memory.memory_info().rss
        await conn.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    embedded.stop(data)
    shutil.rmtree(work, ignore_errors=True)
    report(rounds, (fresh, after_rounds), (rss_before, rss_after, rss_end))


def report(rounds: list[Round], steady: tuple[Steady, Steady], rss: tuple[int, int, int]) -> None:
    typical = median_round(rounds, lambda r: r.ratio)
    typical_batched = median_round(rounds, lambda r: r.batched_ratio)
    print(
        "Scheduler benchmark (one run, this machine, embedded PostgreSQL 16;"
        f" {len(rounds)} rounds, each: one a call, {BATCH} a call, then the baseline)"
    )
    print(
        f"  {TASKS} echo tasks through the scheduler to {NODES} nodes, one a SubmitTask call"
        f" ({SUBMITTERS} callers): {figures(r.one_a_call for r in rounds)} tasks/s"
    )
    print(
        f"  raw asyncpg baseline (insert + SKIP LOCKED claim + complete, {BASELINE_WORKERS}"
        f" workers; the idle mesh beside it used {max(r.idle_mesh_cpu for r in rounds):.2f} s of"
        f" CPU at most): {figures(r.baseline for r in rounds)} jobs/s"
    )
    print(
        f"  ratio, each round to its own baseline: {ratios(r.ratio for r in rounds)};"
        f" median {typical.ratio:.2f}"
    )
    print(
        f"  CPU per task (the median round): {cpu_figures(typical.one_a_call_cpu)};"
        f" stored started by their submit: {figures(r.one_a_call_at_once for r in rounds)}"
    )
    print(
        f"  the same, {BATCH} tasks a SubmitTasks call: {figures(r.batched for r in rounds)}"
        f" tasks/s; ratio {ratios(r.batched_ratio for r in rounds)}; median"
        f" {typical_batched.batched_ratio:.2f}; CPU per task (the median round):"
        f" {cpu_figures(typical_batched.batched_cpu)}"
    )
    fresh, after = steady
    for phase, when in (
        (fresh, "on fresh tables"),
        (after, f"after the rounds' {2 * ROUNDS * TASKS:,} tasks"),
    ):
        background = server_log.describe(phase.background, DATABASE, phase.began)
        print(
            f"  submit-to-start at {STEADY_RATE} tasks/s ({STEADY_TASKS} tasks), {when}:"
            f" p50 {percentile(phase.latencies, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(phase.latencies, 0.99) * 1000:.1f} ms ({phase.at_once:,}"
            " stored started by their submit); submit to end:"
            f" p50 {percentile(phase.trips, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(phase.trips, 0.99) * 1000:.1f} ms; CPU per task:"
            f" {cpu_figures(phase.cpu)}; {phase.transactions:.1f} transactions per task;"
            f" PostgreSQL in the background meanwhile: {background}"
        )
    print(
        "  tasks that took more than one attempt (none without faults), one a call:"
        f" {figures(r.retried[0] for r in rounds)}; {BATCH} a call:"
        f" {figures(r.retried[1] for r in rounds)}"
    )
    rss_before, rss_after, rss_end = rss
    print(
        f"  scheduler resident memory: {rss_before / 2**20:.0f} MiB before,"
        f" {rss_after / 2**20:.0f} MiB after {STEADY_TASKS + 2 * ROUNDS * TASKS:,} tasks,"
        f" {rss_end / 2**20:.0f} MiB after {2 * STEADY_TASKS + 2 * ROUNDS * TASKS:,}"
    )


def median_round(rounds: list[Round], key: Callable[[Round], float]) -> Round:
    """The round whose `key` is the median (the lower middle of an even count)."""
    return sorted(rounds, key=key)[(len(rounds) - 1) // 2]


def figures(values: Iterable[float]) -> str:
    return ", ".join(f"{value:,.0f}" for value in values)


def ratios(values: Iterable[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    asyncio.run(main())
