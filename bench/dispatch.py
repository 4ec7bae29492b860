"""Scheduler benchmark: the durable queue and the gRPC hop against raw PostgreSQL.

Prints, from one run on this machine (embedded PostgreSQL 16, a scheduler process and 4
node processes on loopback):
- throughput of 5,000 `echo` tasks from the first submit until all are recorded complete,
  submitted one a call (SubmitTask, 32 callers at once), then 100 a call (SubmitTasks, 4
  callers at once);
- submit-to-start latency p50/p99 at a steady 200 tasks/s (from the database's own
  `created_at` and `started_at`);
- the scheduler's resident memory before and after;
- a raw asyncpg baseline in the same run, on the same server: insert the same number of
  rows, claim each with FOR UPDATE SKIP LOCKED and complete it with 8 workers; and the ratio;
- CPU time per task of the scheduler, the nodes and PostgreSQL over the throughput run: on
  a shared machine the steadier measure of what a change bought (wall-clock figures swing
  with whatever else runs).
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
from pathlib import Path

import asyncpg
import grpc
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2  # noqa: E402
from bench.support.mesh import BATCH, spawn, submit_all, submit_batched  # noqa: E402

TASKS = 5_000
NODES = 4
SLOTS_PER_NODE = 16
STEADY_RATE = 200
STEADY_TASKS = 1_000
BASELINE_WORKERS = 8
CLIENT = "client (this process)"


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU time of these processes (gone ones count nothing)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


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


async def count_completed(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE state = 'completed'"))


async def wait_completed(conn: asyncpg.Connection, target: int) -> None:
    while await count_completed(conn) < target:
        await asyncio.sleep(0.05)


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


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-dispatch-"))
    data = work / "data"
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
    processes: list[subprocess.Popen[str]] = []
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
        while await conn.fetchval("SELECT count(*) FROM agents WHERE status = 'online'") < NODES:
            await asyncio.sleep(0.1)
        memory = psutil.Process(scheduler.pid)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await submit_all(stub, 50, "warmup")
            await wait_completed(conn, 50)
            rss_before = memory.memory_info().rss

            groups = {
                "scheduler": [memory],
                "nodes": [psutil.Process(p.pid) for p in processes[1:]],
                "PostgreSQL": postgres_processes(data),
                # The submitters and the completion polls: shown apart from the mesh's sum.
                CLIENT: [psutil.Process()],
            }
            cpu_before = {name: cpu_seconds(group) for name, group in groups.items()}
            started = time.perf_counter()
            await submit_all(stub, TASKS, "bench")
            await wait_completed(conn, 50 + TASKS)
            throughput = TASKS / (time.perf_counter() - started)
            # Backends that ended during the run took their time with them: read it now.
            cpu_per_task = {
                name: (cpu_seconds(group) - cpu_before[name]) / TASKS * 1000
                for name, group in groups.items()
            }
            rss_after = memory.memory_info().rss

            cpu_before = {name: cpu_seconds(group) for name, group in groups.items()}
            started = time.perf_counter()
            await submit_batched(stub, TASKS, "batched")
            await wait_completed(conn, 50 + 2 * TASKS)
            batched = TASKS / (time.perf_counter() - started)
            batched_cpu = {
                name: (cpu_seconds(group) - cpu_before[name]) / TASKS * 1000
                for name, group in groups.items()
            }

            steady_cpu = {name: cpu_seconds(group) for name, group in groups.items()}
            steady_commits = await commits(conn)
            steady_start = await conn.fetchval("SELECT now()")
            interval = 1 / STEADY_RATE
            begin = time.perf_counter()
            pending = []
            for i in range(STEADY_TASKS):
                spec = task_pb2.TaskSpec(kind="echo", prompt=f"steady {i}")
                pending.append(
                    asyncio.ensure_future(
                        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
                    )
                )
                delay = begin + (i + 1) * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*pending)
            await wait_completed(conn, 50 + 2 * TASKS + STEADY_TASKS)
            steady_cpu = {
                name: (cpu_seconds(group) - steady_cpu[name]) / STEADY_TASKS * 1000
                for name, group in groups.items()
            }
            steady_commits = (await commits(conn) - steady_commits) / STEADY_TASKS
            latencies = [
                row[0]
                for row in await conn.fetch(
                    "SELECT extract(epoch FROM started_at - created_at) FROM tasks"
                    " WHERE created_at >= $1",
                    steady_start,
                )
            ]
            rss_end = memory.memory_info().rss
        await conn.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    raw = await baseline(dsn)
    embedded.stop(data)
    shutil.rmtree(work, ignore_errors=True)

    print("Scheduler benchmark (one run, this machine, embedded PostgreSQL 16)")
    print(f"  {TASKS} echo tasks through the scheduler to {NODES} nodes: {throughput:.0f} tasks/s")
    print(
        f"  raw asyncpg baseline (insert + SKIP LOCKED claim + complete, {BASELINE_WORKERS}"
        f" workers): {raw:.0f} jobs/s; ratio {throughput / raw:.2f}"
    )
    print(f"  CPU per task: {cpu_figures(cpu_per_task)}")
    print(
        f"  the same, {BATCH} tasks a SubmitTasks call: {batched:.0f} tasks/s;"
        f" ratio {batched / raw:.2f}; CPU per task: {cpu_figures(batched_cpu)}"
    )
    print(
        f"  submit-to-start at {STEADY_RATE} tasks/s ({STEADY_TASKS} tasks):"
        f" p50 {percentile(latencies, 0.5) * 1000:.1f} ms,"
        f" p99 {percentile(latencies, 0.99) * 1000:.1f} ms; CPU per task:"
        f" {cpu_figures(steady_cpu)}; {steady_commits:.1f} transactions per task"
    )
    print(
        f"  scheduler resident memory: {rss_before / 2**20:.0f} MiB before,"
        f" {rss_after / 2**20:.0f} MiB after {TASKS} tasks,"
        f" {rss_end / 2**20:.0f} MiB after {2 * TASKS + STEADY_TASKS}"
    )


if __name__ == "__main__":
    asyncio.run(main())
