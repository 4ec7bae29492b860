"""Scale benchmark: does dispatch stay as fast when the tables hold a long history?

Prints, from one run on this machine (embedded PostgreSQL 16, a scheduler process and 4
node processes on loopback):
- throughput of 3,000 `echo` tasks from the first submit until all are recorded complete,
  on near-empty tables (median of 3 rounds, after a first one that warms the caches);
- how long filling the tables took: 1,000,000 ended tasks (trees of subtasks among them)
  with 10,000,000 events and their rows in the other tables (bench/support/fill.py), then
  VACUUM ANALYZE (as autovacuum would have by then); then 10,000 queued tasks that wait for
  a capability no node has, until the scheduler parked them, and ANALYZE;
- the same throughput again, and the ratio to the first (the aim: at least 0.90);
- replay of one ended task with a 10,000-event trace: from the call to the last event
  received, median of 5 (the aim: under 100 ms), on the near-empty and the full tables, with
  `WatchTaskEvents` (several events to a message) and with `WatchTask` (one to a message),
  and grpcio's own floor for the latter: the same number of prebuilt messages from a bare
  server process (bench/support/bare_stream.py);
With `--explain`, also EXPLAIN (ANALYZE) of every hot query of the dispatch path (median of
3, each inside a transaction that is rolled back): its time and what it scans, on the
near-empty tables, and on the full ones (after the mesh stopped) without and with the
indexes of schema/0013_scale_indexes.sql (dropped inside that transaction), with the scans
of the generic plan (the one the scheduler's sessions run) where they differ; `--plans`
prints whole plans too. `--finished` and `--tasks` make a quick, smaller run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded, notify  # noqa: E402
from agentmesh.db.connect import GENERIC_PLANS, ensure_database  # noqa: E402
from agentmesh.scheduler import agents as agent_queries  # noqa: E402
from agentmesh.scheduler import queries as q  # noqa: E402
from agentmesh.scheduler import retention_queries as rq  # noqa: E402
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from bench.support.bare_stream import replay_floor_ms  # noqa: E402
from bench.support.fill import (  # noqa: E402
    fill_history,
    fill_long_trace,
    fill_waiting,
)
from bench.support.mesh import spawn, submit_all  # noqa: E402

TASKS = 3_000
NODES = 4
SLOTS_PER_NODE = 16
FINISHED = 1_000_000
WAITING = 10_000
TRACE_EVENTS = 10_000
REPLAYS = 5
ROUNDS = 3
MAIN_TABLES = ("tasks", "task_events")
LONG_TRACE_TASK = "t-longtrace0000000000"
NEW_INDEXES = REPO / "schema" / "0013_scale_indexes.sql"


async def completed_since(conn: asyncpg.Connection, since: datetime) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE state = 'completed' AND created_at >= $1", since
        )
    )


async def throughput(
    conn: asyncpg.Connection, stub: scheduler_pb2_grpc.SchedulerAsyncStub, prefix: str
) -> float:
    """Tasks per second for TASKS echo tasks, from the first submit to the last ending."""
    since = await conn.fetchval("SELECT now()")
    started = time.perf_counter()
    await submit_all(stub, TASKS, prefix)
    while await completed_since(conn, since) < TASKS:
        await asyncio.sleep(0.05)
    return TASKS / (time.perf_counter() - started)


async def replay_ms(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> tuple[float, float]:
    """Median time of REPLAYS full replays of the long trace, in ms: with WatchTaskEvents
    (several events to a message, what the command line uses) and with WatchTask (one)."""
    request = scheduler_pb2.WatchTaskRequest(task_id=LONG_TRACE_TASK)

    async def batched() -> int:
        return sum([len(batch.events) async for batch in stub.WatchTaskEvents(request)])

    async def one_by_one() -> int:
        return len([event async for event in stub.WatchTask(request)])

    medians = []
    for replay in (batched, one_by_one):
        times = []
        for _ in range(REPLAYS):
            started = time.perf_counter()
            received = await replay()
            times.append((time.perf_counter() - started) * 1000)
            assert received == TRACE_EVENTS, received
        medians.append(statistics.median(times))
    return medians[0], medians[1]


async def wait_parked(conn: asyncpg.Connection, count: int) -> None:
    while (
        await conn.fetchval(
            "SELECT count(*) FROM task_queue WHERE claimed AND claimed_by = $1",
            q.PARKED_FOR_AGENT,
        )
        < count
    ):
        await asyncio.sleep(0.2)


# ----------------------------------------------------------------- EXPLAIN


@dataclass(frozen=True)
class Plan:
    name: str
    ms: float
    scans: list[str]
    tree: list[str]
    # What the scheduler runs (its sessions keep generic plans): the scans of the plan made
    # without the arguments' values (EXPLAIN (GENERIC_PLAN), PostgreSQL 16).
    generic: list[str]

    @property
    def scans_history(self) -> bool:
        """Whether it reads a history table (or the queue) whole, or sorts."""
        return any(
            scan.startswith(("Seq Scan tasks", "Seq Scan task_events", "Seq Scan task_queue"))
            or scan.startswith("Sort")
            for scan in self.scans
        )


def _render(node: dict[str, Any], depth: int, lines: list[str]) -> None:
    target = node.get("Index Name") or node.get("Relation Name") or ""
    rows = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
    took = node.get("Actual Total Time", 0.0)
    lines.append(f"{'  ' * depth}{node['Node Type']} {target} rows={rows:.0f} {took:.2f} ms")
    for child in node.get("Plans", []):
        _render(child, depth + 1, lines)


def _scans(node: dict[str, Any], found: list[str], counted: bool = True) -> None:
    kind = node["Node Type"]
    rows = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
    counts = f" ({rows:.0f} rows)" if counted else ""
    if kind in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        target = node.get("Index Name") or node.get("Relation Name", "")
        if kind == "Seq Scan":
            target = node.get("Relation Name", "")
        found.append(f"{kind} {target}{counts}")
    elif kind == "Sort":
        found.append(f"Sort{counts}")
    for child in node.get("Plans", []):
        _scans(child, found, counted)


GENERIC_PLAN_FUNCTION = """
CREATE FUNCTION pg_temp.generic_plan(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE plan text;
BEGIN
    EXECUTE 'EXPLAIN (GENERIC_PLAN, FORMAT JSON) ' || statement INTO plan;
    RETURN plan;
END $$
"""


async def explain(conn: asyncpg.Connection, name: str, sql: str, *args: object) -> Plan:
    rows = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    document = json.loads(rows) if isinstance(rows, str) else rows
    found: list[str] = []
    _scans(document[0]["Plan"], found)
    tree: list[str] = []
    _render(document[0]["Plan"], 0, tree)
    generic: list[str] = []
    if args:
        # With its arguments bound, EXPLAIN plans for their values: the placeholders must
        # stay unbound (EXECUTE without USING, inside the server).
        rows = await conn.fetchval("SELECT pg_temp.generic_plan($1)", sql)
        made = json.loads(rows) if isinstance(rows, str) else rows
        _scans(made[0]["Plan"], generic, counted=False)
    return Plan(name, float(document[0]["Execution Time"]), found, tree, generic)


async def explain_list(
    conn: asyncpg.Connection, name: str, *, user: str | None = None, state: str | None = None
) -> Plan:
    sql, arguments = q.list_tasks(limit=51, user=user, state=state)
    return await explain(conn, name, sql, *arguments)


async def hot_queries(conn: asyncpg.Connection) -> list[Plan]:
    """EXPLAIN (ANALYZE) the dispatch path's queries, in the order one task meets them:
    a submit, the round's reads, the claim and start, its events, its end; then parking,
    the registry, leases, a watch's replay and the prune's candidates. Run inside the
    caller's transaction, which is rolled back."""
    agent = await conn.fetchrow("SELECT * FROM agents ORDER BY id LIMIT 1")
    assert agent is not None
    owner = "bench-explain"
    task = "t-explain00000000000"
    spec = {"kind": "echo", "prompt": "explain", "user": "ana", "required_capabilities": []}
    status = {"state": "submitted", "message": "submitted"}
    parked = [
        r["task_id"]
        for r in await conn.fetch(
            "SELECT task_id FROM task_queue WHERE claimed_by = $1 LIMIT 256", q.PARKED_FOR_AGENT
        )
    ]
    plans = [
        await explain(
            conn,
            "submit (SUBMIT_LEAVES)",
            q.SUBMIT_LEAVES,
            [task],
            ["echo"],
            [spec],
            ["ana"],
            [0],
            [3],
            status,
            [None],
        ),
        await explain(conn, "running per agent (WORKING_PER_AGENT)", q.WORKING_PER_AGENT),
        await explain(
            conn,
            "registry: online agents (SELECT_ONLINE)",
            agent_queries.SELECT_ONLINE,
            30.0,
            False,
        ),
        await explain(conn, "key signature (quota.KEY_SIGNATURE)", KEY_SIGNATURE),
        await explain(conn, "ready window (SELECT_READY)", q.SELECT_READY, 288, None, None),
        await explain(conn, "ready window, next page (SELECT_READY)", q.SELECT_READY, 288, 0, 1),
        await explain(
            conn,
            "claim and start (CLAIM_AND_START)",
            q.CLAIM_AND_START,
            [task],
            [agent["id"]],
            owner,
            30.0,
        ),
        await explain(conn, "claim (CLAIM)", q.CLAIM, [task], owner),
        await explain(
            conn,
            "start attempts (START_ATTEMPTS)",
            q.START_ATTEMPTS,
            [task],
            [agent["id"]],
            owner,
            30.0,
            [None],
        ),
        await explain(
            conn,
            "approvals for an attempt (SELECT_APPROVALS_FOR)",
            q.SELECT_APPROVALS_FOR,
            task,
            "ana",
        ),
        await explain(
            conn,
            "append events (APPEND_EVENTS)",
            q.APPEND_EVENTS,
            task,
            1,
            owner,
            agent["id"],
            ["stdout"] * 8,
            [{"text": "x\n"}] * 8,
            2,
        ),
        await explain(
            conn, "renew leases (RENEW_LEASES)", q.RENEW_LEASES, owner, 30.0, [task], [1]
        ),
        await explain(
            conn, "stale attempts (STALE_ATTEMPTS)", q.STALE_ATTEMPTS, owner, [task], [1]
        ),
        await explain(conn, "expired leases (EXPIRED_LEASES)", q.EXPIRED_LEASES, 100),
        await explain(
            conn,
            "finish (FINISH_ROOT_ATTEMPTS)",
            q.FINISH_ROOT_ATTEMPTS,
            owner,
            [task],
            [1],
            [agent["id"]],
            [{"state": "completed"}],
            ["completed"],
            ["explain"],
            [""],
            [0],
            [{}],
            [{"events": []}],
            [None],
        ),
        await explain_list(conn, "list: a user's tasks (list_tasks)", user="ana"),
        await explain_list(conn, "list: working tasks (list_tasks)", state="working"),
        await explain(conn, "lock tree (LOCK_TREE)", q.LOCK_TREE, task),
        await explain(conn, "watch: state (SELECT_STATE)", q.SELECT_STATE, LONG_TRACE_TASK),
        await explain(
            conn,
            "watch replay page (SELECT_EVENTS_AFTER)",
            q.SELECT_EVENTS_AFTER,
            LONG_TRACE_TASK,
            0,
            500,
        ),
        await explain(
            conn,
            "watch replay last page (SELECT_EVENTS_AFTER)",
            q.SELECT_EVENTS_AFTER,
            LONG_TRACE_TASK,
            TRACE_EVENTS - 500,
            500,
        ),
        await explain(conn, "unpark due (UNPARK_DUE)", q.UNPARK_DUE, [q.PARKED_FOR_KEY]),
        await explain(conn, "unpark (UNPARK)", q.UNPARK, [q.PARKED_FOR_AGENT]),
        await explain(
            conn,
            "park 256 (PARK)",
            q.PARK,
            parked,
            ["no agent fits"] * len(parked),
            q.PARKED_FOR_AGENT,
            [None] * len(parked),
        ),
        await explain(
            conn, "registry: registered (SELECT_REGISTERED)", agent_queries.SELECT_REGISTERED, False
        ),
        await explain(
            conn,
            "registry: unreachable (SELECT_UNREACHABLE)",
            agent_queries.SELECT_UNREACHABLE,
            30.0,
            False,
        ),
        await explain(
            conn,
            "registry: heartbeat (UPSERT_AGENT)",
            agent_queries.UPSERT_AGENT,
            agent["id"],
            agent["hostname"],
            agent["ip_address"],
            agent["endpoint"],
            agent["capabilities"],
            agent["card"],
            None,
            0,
            agent["max_concurrency"],
            "online",
            [],
            None,
        ),
        await explain(
            conn,
            "registry: stale agents (MARK_STALE_OFFLINE)",
            agent_queries.MARK_STALE_OFFLINE,
            30.0,
        ),
        await explain(
            conn,
            "prune: one batch of 500 trees (PRUNE_BATCH)",
            rq.PRUNE_BATCH,
            await conn.fetchval("SELECT now() - interval '30 days'"),
            500,
            "completed",
            datetime.min.replace(tzinfo=UTC),
            "",
        ),
    ]
    return plans


KEY_SIGNATURE = """
SELECT k.id, k.enabled, k.node_id, k.assigned_user, k.priority, m.model, m.cooling_until
FROM api_keys k LEFT JOIN api_key_models m ON m.key_id = k.id
WHERE k.provider = 'gemini'
"""


def new_index_names() -> list[str]:
    return re.findall(r"CREATE INDEX (\w+)", NEW_INDEXES.read_text())


PASSES = 3


async def explain_variant(dsn: str, drop_new_indexes: bool) -> list[Plan]:
    """The hot queries' plans, PASSES times in rolled-back transactions (with 0013's indexes
    dropped in them, or not); per query, the pass of median time."""
    # Costed as the scheduler's sessions cost them (their random_page_cost).
    settings = {k: v for k, v in GENERIC_PLANS.items() if k != "plan_cache_mode"}
    conn = await asyncpg.connect(dsn, server_settings=settings)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.execute(GENERIC_PLAN_FUNCTION)
    passes = []
    try:
        for _ in range(PASSES):
            tx = conn.transaction()
            await tx.start()
            try:
                if drop_new_indexes:
                    for name in new_index_names():
                        await conn.execute(f"DROP INDEX {name}")
                passes.append(await hot_queries(conn))
            finally:
                await tx.rollback()
    finally:
        await conn.close()
    return [
        sorted(runs, key=lambda plan: plan.ms)[len(runs) // 2] for runs in zip(*passes, strict=True)
    ]


def _uncounted(scan: str) -> str:
    return re.sub(r" \(\d+ rows\)$", "", scan)


def print_plans(empty: list[Plan], before: list[Plan], after: list[Plan], verbose: bool) -> None:
    say(
        f"  EXPLAIN (ANALYZE), median of {PASSES}: near-empty tables; full tables without"
        f" {NEW_INDEXES.name}; full tables with it"
    )
    for small, old, new in zip(empty, before, after, strict=True):
        say(f"    {old.name}: {small.ms:.2f} ms; {old.ms:.2f} ms; {new.ms:.2f} ms")
        if old.scans != new.scans:
            say(f"      without: {'; '.join(old.scans) or '(no scan)'}")
            say(f"      with:    {'; '.join(new.scans) or '(no scan)'}")
        else:
            say(f"      scans: {'; '.join(new.scans) or '(no scan)'}")
        if new.generic and new.generic != [_uncounted(scan) for scan in new.scans]:
            say(f"      generic plan (the scheduler's): {'; '.join(new.generic)}")
        if verbose and (old.scans_history or new.scans_history or old.scans != new.scans):
            for label, plan in (("without", old), ("with", new)):
                say(f"      plan {label}:")
                for line in plan.tree:
                    say(f"        {line}")


# ----------------------------------------------------------------- the run


def say(line: str) -> None:
    print(line, flush=True)


async def rounds(
    conn: asyncpg.Connection, stub: scheduler_pb2_grpc.SchedulerAsyncStub, prefix: str
) -> list[float]:
    """ROUNDS throughput measurements, one after the other."""
    return [await throughput(conn, stub, f"{prefix} {n}") for n in range(ROUNDS)]


def spread(values: list[float]) -> str:
    return f"median of {len(values)}, {min(values):.0f}-{max(values):.0f}"


async def run(dsn: str, address: str, with_explain: bool, finished: int) -> list[Plan]:
    """The measurements, printed as they come, against a running mesh; the hot queries'
    plans on the near-empty tables (with_explain)."""
    conn = await asyncpg.connect(dsn)
    while await conn.fetchval("SELECT count(*) FROM agents WHERE status = 'online'") < NODES:
        await asyncio.sleep(0.1)
    await fill_long_trace(conn, LONG_TRACE_TASK, TRACE_EVENTS)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await submit_all(stub, 50, "warmup")
        await throughput(conn, stub, "warmup")  # a first pass for the caches
        empty = await rounds(conn, stub, "empty")
        say(
            f"  {TASKS} echo tasks through the scheduler to {NODES} nodes, near-empty tables:"
            f" {statistics.median(empty):.0f} tasks/s ({spread(empty)})"
        )
        replay_empty = await replay_ms(stub)
        empty_plans = await explain_variant(dsn, False) if with_explain else []

        started = time.perf_counter()
        rows = await fill_history(conn, finished)
        others = ", ".join(f"{n:,} {t}" for t, n in rows.items() if t not in MAIN_TABLES)
        say(
            f"  fill: {rows['tasks']:,} ended tasks, {rows['task_events']:,} events ({others}):"
            f" {time.perf_counter() - started:.0f} s"
        )
        started = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE)")
        sizes = await conn.fetch(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size FROM pg_class"
            " WHERE relname IN ('tasks', 'task_events') ORDER BY relname"
        )
        tables = ", ".join(f"{r['relname']} {r['size']}" for r in sizes)
        say(f"  VACUUM (ANALYZE): {time.perf_counter() - started:.0f} s; {tables} with indexes")
        started = time.perf_counter()
        await fill_waiting(conn, WAITING)
        await conn.execute(notify.WAKE_QUEUE)
        await wait_parked(conn, WAITING)
        await conn.execute("ANALYZE")
        say(
            f"  {WAITING:,} tasks waiting for a capability no node has, queued and parked,"
            f" ANALYZE: {time.perf_counter() - started:.0f} s"
        )
        await throughput(conn, stub, "rewarm")
        full = await rounds(conn, stub, "full")
        ratio = statistics.median(full) / statistics.median(empty)
        say(
            f"  the same on the full tables: {statistics.median(full):.0f} tasks/s"
            f" ({spread(full)}); ratio {ratio:.2f} (aim: at least 0.90)"
        )
        replay_full = await replay_ms(stub)
        for (rpc, empty_ms), full_ms in zip(
            (("WatchTaskEvents", replay_empty[0]), ("WatchTask", replay_empty[1])),
            replay_full,
            strict=True,
        ):
            say(
                f"  {rpc} replay of a {TRACE_EVENTS:,}-event trace, median of {REPLAYS}:"
                f" {empty_ms:.0f} ms on near-empty tables, {full_ms:.0f} ms on the full ones"
                " (aim: under 100 ms)"
            )
        floor = await replay_floor_ms(TRACE_EVENTS, REPLAYS)
        say(
            f"  grpcio's floor for WatchTask: {TRACE_EVENTS:,} prebuilt one-event messages from a"
            f" bare server process (no database, no conversion), median of {REPLAYS}:"
            f" {floor:.0f} ms"
        )
    await conn.close()
    return empty_plans


async def main(with_explain: bool, verbose: bool, finished: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-scale-"))
    data = work / "data"
    say("Scale benchmark (one run, this machine, embedded PostgreSQL 16)")
    try:
        server = embedded.start(data)
        await ensure_database(server, "agentmesh")
        dsn = embedded.uri_for(server, "agentmesh")
        config = work / "agent_config.json"
        config.write_text(
            json.dumps(
                {"node": {"max_concurrency": SLOTS_PER_NODE, "heartbeat_interval_seconds": 1}}
            )
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
            empty_plans = await run(dsn, address, with_explain, finished)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
        try:
            if with_explain:  # the mesh stopped: dropping an index waits for nobody
                before = await explain_variant(dsn, True)
                print_plans(empty_plans, before, await explain_variant(dsn, False), verbose)
        finally:
            embedded.stop(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/scale.py")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN the hot queries too")
    parser.add_argument(
        "--plans",
        action="store_true",
        help="with --explain: the whole plan of each query that"
        " scans a history table, or sorts, or whose plan the indexes change",
    )
    parser.add_argument("--tasks", type=int, default=TASKS, help="tasks per throughput round")
    parser.add_argument("--finished", type=int, default=FINISHED, help="ended tasks to fill")
    args = parser.parse_args()
    TASKS = args.tasks
    asyncio.run(main(args.explain or args.plans, args.plans, args.finished))
