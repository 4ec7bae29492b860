"""Dispatch under faults: throughput while nodes are killed, and every task ending once.

Prints, from one run on this machine (embedded PostgreSQL 16, a scheduler process and 4
node processes on loopback, each phase on a fresh database):
- the throughput of N `echo` tasks with no faults (the baseline), from the first submit
  until all are recorded ended;
- the same with one node, chosen round-robin, killed with SIGKILL every 10 s and restarted
  at once with the same name, port and configuration (it re-registers under the same agent
  id); both throughputs and their ratio (the aim: >= 0.8);
- what each kill cost: the attempts lost with the node and how long the scheduler took to
  hand them back, the dials refused while it was down, and how long until it ran work again;
- from the database, that every task ended exactly once: completed, one `result` event in
  its trace, its attempts within max_attempts, nothing left queued or running; and how many
  tasks were retried after a kill, or ran on a node more than once.
Exits non-zero, saying which task broke which invariant, if any does.

Echo tasks, not shell ones: the benchmark is about dispatch (the aim is stated for echo), and
a shell task spawns a sandbox and a shell per run (30 ms or more of CPU each): on 2 cores,
300 `sleep 0.2` tasks a second would measure process creation instead. Echo tasks are open
on their node for milliseconds only, yet with the 4 x 16 slots always full about half the
kills find attempts open there (0 to 16 a kill, 20 to 75 a run: the per-kill lines say
"lost"); every kill also meets the attempts placed on the node before the scheduler knows it
is gone ("dials refused"). tests/scheduler/test_recovery.py kills nodes under `sleep` tasks.

Kills are sequential: the next one waits for the last node to be back, so when a restart
takes longer than 10 s (a loaded machine) kills come that much less often, and one node in
four is down or restarting nearly all the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg
import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2  # noqa: E402
from bench.support.mesh import UNENDED  # noqa: E402

# About 40 s of work, 4 kills, at the ~600 tasks/s the scheduler reaches with its Work
# streams on an idle machine (12,000 tasks saw one kill or two).
TASKS = 24_000
WARMUP = 50
NODES = 4
SLOTS_PER_NODE = 16
KILL_EVERY_SECONDS = 10.0
SUBMITTERS = 32
# No task ended for this long: something is stuck (a lease is 30 s by default).
STALL_SECONDS = 120.0
# The scheduler's default (scheduler.max_attempts): a task's counted attempts.
MAX_ATTEMPTS = 3


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Process:
    """An agentmesh process: its command line, its log and what its ready line said."""

    args: list[str]
    log: Path
    popen: subprocess.Popen[str] | None = None
    ready: str = ""


@dataclass(frozen=True)
class Kill:
    node: str
    agent_id: str
    # Wall-clock seconds (the database runs on this host: its now() is comparable).
    killed_at: float
    restarted_at: float


@dataclass
class Mesh:
    """A scheduler and its nodes as processes, on one database; nodes can be killed."""

    work: Path
    env: dict[str, str]
    scheduler: Process | None = None
    nodes: dict[str, Process] = field(default_factory=dict)
    agent_ids: dict[str, str] = field(default_factory=dict)
    address: str = ""

    def start(self) -> None:
        self.scheduler = Process(
            ["scheduler", "--listen", "127.0.0.1:0"], self.work / "scheduler.log"
        )
        self.address = self._spawn(self.scheduler, r"listening on (\S+)")
        for n in range(NODES):
            name = f"n{n}"
            # A fixed port: a restarted node comes back where it was, as a restarted
            # service does (the scheduler's channel to it is the same one).
            self.nodes[name] = Process(
                [
                    "node",
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                    "--name",
                    name,
                    "--scheduler",
                    self.address,
                ],
                self.work / f"{name}.log",
            )
            self._spawn(self.nodes[name], r"listening on (\S+);")
            found = re.search(r"\(([^)]+)\)", self.nodes[name].ready)
            assert found is not None
            self.agent_ids[name] = found[1]

    def _spawn(self, process: Process, pattern: str) -> str:
        with process.log.open("a") as log:
            process.popen = subprocess.Popen(
                [sys.executable, "-m", "agentmesh.cli.main", *process.args],
                env=self.env,
                cwd=self.work,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        stdout: IO[str] | None = process.popen.stdout
        assert stdout is not None
        process.ready = stdout.readline()
        match = re.search(pattern, process.ready)
        if not match:
            process.popen.kill()
            raise SystemExit(
                f"{process.args[0]} did not start: {process.ready!r}; see {process.log}"
            )
        return match[1]

    async def kill_and_restart(self, name: str) -> Kill:
        """SIGKILL the node (its whole process group), then start it again at once."""
        process = self.nodes[name]
        assert process.popen is not None
        killed_at = time.time()
        os.killpg(process.popen.pid, signal.SIGKILL)
        await asyncio.to_thread(process.popen.wait)
        await asyncio.to_thread(self._spawn, process, r"listening on (\S+);")
        return Kill(name, self.agent_ids[name], killed_at, time.time())

    def stop(self) -> None:
        processes = [p.popen for p in (self.scheduler, *self.nodes.values()) if p and p.popen]
        for popen in processes:
            if popen.poll() is None:
                popen.terminate()
        for popen in processes:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


@dataclass(frozen=True)
class Phase:
    name: str
    dsn: str
    throughput: float
    seconds: float
    kills: list[Kill]


async def submit_all(stub: scheduler_pb2_grpc.SchedulerAsyncStub, count: int, prefix: str) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def submitter() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            spec = task_pb2.TaskSpec(kind="echo", prompt=f"{prefix} {i}")
            await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=60)

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


async def wait_ended(conn: asyncpg.Connection, target: int) -> None:
    """Until all `target` tasks submitted so far have ended; fails loudly when none ends
    for STALL_SECONDS. The poll reads only the tasks still in flight (an index range on
    their states): a count of every ended task read the whole history 20 times a second,
    load on PostgreSQL beside the mesh it measured."""
    last, last_change = -1, time.monotonic()
    while True:
        unended = int(
            await conn.fetchval("SELECT count(*) FROM tasks WHERE state = ANY($1)", UNENDED)
        )
        if not unended:
            return
        if unended != last:
            last, last_change = unended, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            states = await conn.fetch("SELECT state, count(*) FROM tasks GROUP BY state")
            raise SystemExit(
                f"FAIL: no task ended for {STALL_SECONDS:.0f} s ({target - unended} of"
                f" {target} ended): {dict((r[0], r[1]) for r in states)}"
            )
        await asyncio.sleep(0.05)


async def keep_killing(mesh: Mesh, begin: float, kills: list[Kill], stop: asyncio.Event) -> None:
    """Every KILL_EVERY_SECONDS from `begin`, kill the next node and restart it, until
    `stop` (a restart under way is finished, and its kill recorded)."""
    for number in range(1_000_000):
        delay = begin + (number + 1) * KILL_EVERY_SECONDS - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(delay, 0.0))
        if stop.is_set():
            return
        kills.append(await mesh.kill_and_restart(f"n{number % NODES}"))


async def run_phase(
    server: str, work: Path, base_env: dict[str, str], name: str, faults: bool
) -> Phase:
    await ensure_database(server, f"faults_{name}")
    dsn = embedded.uri_for(server, f"faults_{name}")
    phase_dir = work / name
    phase_dir.mkdir()
    mesh = Mesh(phase_dir, {**base_env, "DATABASE_URL": dsn})
    kills: list[Kill] = []
    try:
        await asyncio.to_thread(mesh.start)
        conn = await asyncpg.connect(dsn)
        while await conn.fetchval("SELECT count(*) FROM agents WHERE status = 'online'") < NODES:
            await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await submit_all(stub, WARMUP, "warmup")
            await wait_ended(conn, WARMUP)
            started = time.monotonic()
            stop = asyncio.Event()
            killer = (
                asyncio.create_task(keep_killing(mesh, started, kills, stop)) if faults else None
            )
            try:
                await submit_all(stub, TASKS, name)
                await wait_ended(conn, WARMUP + TASKS)
                seconds = time.monotonic() - started
            finally:
                stop.set()
                if killer is not None:
                    await killer
        await conn.close()
    finally:
        await asyncio.to_thread(mesh.stop)
    return Phase(name, dsn, TASKS / seconds, seconds, kills)


# Per task: its row and what its trace says about its attempts.
TASK_TRACES = """
SELECT t.id, t.state, t.attempt, t.max_attempts, t.output, t.spec->>'prompt' AS prompt,
       count(e.seq) FILTER (WHERE e.kind = 'result') AS results,
       max(e.attempt) FILTER (WHERE e.kind = 'result') AS result_attempt,
       count(e.seq) FILTER (
           WHERE e.kind = 'status' AND e.agent_id IS NOT NULL
             AND e.payload->>'message' LIKE 'running on %') AS runs,
       count(e.seq) FILTER (
           WHERE e.kind = 'status' AND e.agent_id IS NULL
             AND e.payload->>'message' LIKE 'attempt % lost%') AS lost,
       count(e.seq) FILTER (
           WHERE e.kind = 'status' AND e.agent_id IS NULL
             AND e.payload->>'message' LIKE 'not started:%') AS given_back
FROM tasks t LEFT JOIN task_events e ON e.task_id = t.id
GROUP BY t.id
"""


@dataclass
class Verdict:
    tasks: int = 0
    problems: list[str] = field(default_factory=list)
    retried: int = 0  # an attempt was lost (counted) and the task ran again
    given_back: int = 0  # an attempt was handed back before it started (not counted)
    ran_twice: int = 0  # the node reported running it more than once
    lease_expired: int = 0
    # Why attempts were lost or handed back, node names and numbers left out: how many.
    reasons: dict[str, int] = field(default_factory=dict)

    def broken(self, what: str, rows: list[str]) -> None:
        if rows:
            self.problems.append(f"{len(rows)} tasks {what}: {', '.join(rows[:5])}")


async def verify(dsn: str) -> Verdict:
    """Every task ended exactly once, from the database."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(TASK_TRACES)
        queued = await conn.fetchval("SELECT count(*) FROM task_queue")
        lease_expired = await conn.fetchval(
            "SELECT count(*) FROM task_events WHERE kind = 'status' AND agent_id IS NULL"
            " AND payload->>'message' LIKE '%lease of scheduler % expired%'"
        )
        messages = await conn.fetch(
            "SELECT payload->>'message' FROM task_events WHERE kind = 'status'"
            " AND agent_id IS NULL AND (payload->>'message' LIKE 'attempt % lost%'"
            " OR payload->>'message' LIKE 'not started:%')"
        )
    finally:
        await conn.close()
    verdict = Verdict(tasks=len(rows), lease_expired=int(lease_expired))
    for (message,) in messages:
        reason = re.sub(r"\bn\d+\b", "nX", message)
        reason = re.sub(r"(127\.0\.0\.1:)\d+", r"\1P", reason)
        reason = re.sub(r"\d+", "N", reason)[:150]
        verdict.reasons[reason] = verdict.reasons.get(reason, 0) + 1
    verdict.broken(
        "not completed", [f"{r['id']} {r['state']}" for r in rows if r["state"] != "completed"]
    )
    verdict.broken(
        "without exactly one result event",
        [f"{r['id']} ({r['results']})" for r in rows if r["results"] != 1],
    )
    verdict.broken(
        "whose result is not their last attempt's",
        [f"{r['id']}" for r in rows if r["results"] and r["result_attempt"] != r["attempt"]],
    )
    verdict.broken(
        "above max_attempts",
        [
            f"{r['id']} ({r['attempt']}/{r['max_attempts']})"
            for r in rows
            if r["attempt"] > r["max_attempts"]
        ],
    )
    verdict.broken(
        f"with more than {MAX_ATTEMPTS} counted attempts",
        [f"{r['id']} ({r['lost']} lost)" for r in rows if r["lost"] >= MAX_ATTEMPTS],
    )
    verdict.broken(
        "whose output is not their prompt",
        [r["id"] for r in rows if r["state"] == "completed" and r["output"] != r["prompt"]],
    )
    if queued:
        verdict.problems.append(f"{queued} rows left in task_queue")
    verdict.retried = sum(1 for r in rows if r["lost"])
    verdict.given_back = sum(1 for r in rows if r["given_back"])
    verdict.ran_twice = sum(1 for r in rows if r["runs"] > 1)
    return verdict


@dataclass(frozen=True)
class KillCost:
    kill: Kill
    lost: list[float]  # seconds from the kill to each lost attempt's hand-back
    refused: int  # dials refused while it was down (handed back, not counted)
    back_at_work: float | None  # seconds from the kill to its next run


async def kill_costs(dsn: str, kills: list[Kill]) -> list[KillCost]:
    conn = await asyncpg.connect(dsn)
    costs = []
    try:
        for kill in kills:
            window = (kill.killed_at, kill.killed_at + KILL_EVERY_SECONDS)
            lost = await conn.fetch(
                "SELECT extract(epoch FROM created_at)::float8 - $1 FROM task_events"
                " WHERE kind = 'status' AND agent_id IS NULL"
                "   AND created_at >= to_timestamp($1) AND created_at < to_timestamp($2)"
                "   AND payload->>'message' LIKE 'attempt % lost: connection to ' || $3 || ' %'",
                *window,
                kill.node,
            )
            refused = await conn.fetchval(
                "SELECT count(*) FROM task_events"
                " WHERE kind = 'status' AND agent_id IS NULL"
                "   AND created_at >= to_timestamp($1) AND created_at < to_timestamp($2)"
                "   AND payload->>'message' LIKE 'not started: ' || $3 || ' %'",
                *window,
                kill.node,
            )
            back = await conn.fetchval(
                "SELECT min(extract(epoch FROM created_at)::float8) - $1 FROM task_events"
                " WHERE kind = 'status' AND agent_id = $3 AND created_at > to_timestamp($2)"
                "   AND payload->>'message' LIKE 'running on %'",
                kill.killed_at,
                kill.restarted_at,
                kill.agent_id,
            )
            costs.append(KillCost(kill, [row[0] for row in lost], int(refused), back))
    finally:
        await conn.close()
    return costs


async def stray_losses(dsn: str, kills: list[Kill]) -> list[str]:
    """Lost attempts and refused dials that no kill explains (not on the node killed last,
    or more than KILL_EVERY_SECONDS after it): each with its time since the last kill."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM created_at)::float8 AS at, task_id,"
            "       payload->>'message' AS message"
            " FROM task_events WHERE kind = 'status' AND agent_id IS NULL"
            "   AND (payload->>'message' LIKE 'attempt % lost%'"
            "        OR payload->>'message' LIKE 'not started:%')"
            " ORDER BY created_at"
        )
    finally:
        await conn.close()
    strays = []
    for row in rows:
        before = [k for k in kills if k.killed_at <= row["at"]]
        last = before[-1] if before else None
        explained = (
            last is not None
            and row["at"] - last.killed_at < KILL_EVERY_SECONDS
            and re.search(rf"\b{last.node}\b", row["message"]) is not None
        )
        if not explained:
            since = (
                f"{row['at'] - last.killed_at:.1f} s after killing {last.node}"
                if last
                else "before any kill"
            )
            strays.append(f"{since}: {row['task_id']}: {row['message'][:160]}")
    return strays


def report_kills(costs: list[KillCost]) -> None:
    for cost in costs:
        kill = cost.kill
        up = kill.restarted_at - kill.killed_at
        lost = (
            f"{len(cost.lost)} attempts lost, handed back"
            f" {min(cost.lost) * 1000:.0f}-{max(cost.lost) * 1000:.0f} ms after the kill"
            if cost.lost
            else "no attempt lost"
        )
        back = (
            f"{cost.back_at_work - up:.1f} s later"
            if cost.back_at_work is not None
            else "never again"
        )
        print(
            f"    kill {kill.node}: {lost}; {cost.refused} dials refused while down;"
            f" up again {up:.1f} s after the kill, running tasks {back}"
        )
    delays = sorted(delay for cost in costs for delay in cost.lost)
    if delays:
        print(
            f"    a lost attempt was handed back {delays[len(delays) // 2] * 1000:.0f} ms"
            f" (median), {delays[-1] * 1000:.0f} ms (max) after its node was killed"
        )
    rejoin = sorted(
        c.back_at_work - (c.kill.restarted_at - c.kill.killed_at)
        for c in costs
        if c.back_at_work is not None
    )
    if rejoin:
        print(
            f"    a restarted node ran tasks again {rejoin[len(rejoin) // 2]:.1f} s (median),"
            f" {rejoin[-1]:.1f} s (max) after it was up"
        )


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-faults-"))
    data = work / "data"
    server = embedded.start(data)
    config = work / "agent_config.json"
    config.write_text(
        json.dumps({"node": {"max_concurrency": SLOTS_PER_NODE, "heartbeat_interval_seconds": 1}})
    )
    env = {
        **os.environ,
        "AGENTMESH_DATA_DIR": str(data),
        "AGENTMESH_CONFIG": str(config),
        "GEMINI_CLI_COMMAND": "/nonexistent/gemini",
    }
    try:
        baseline = await run_phase(server, work, env, "baseline", faults=False)
        faulted = await run_phase(server, work, env, "faults", faults=True)
        verdicts = {phase.name: await verify(phase.dsn) for phase in (baseline, faulted)}
        costs = await kill_costs(faulted.dsn, faulted.kills)
        strays = await stray_losses(faulted.dsn, faulted.kills)
    finally:
        embedded.stop(data)

    print("Dispatch under faults (one run, this machine, embedded PostgreSQL 16)")
    print(
        f"  {TASKS} echo tasks, {NODES} nodes: {baseline.throughput:.0f} tasks/s without"
        f" faults, {faulted.throughput:.0f} tasks/s with a node killed every"
        f" {KILL_EVERY_SECONDS:.0f} s ({len(faulted.kills)} kills);"
        f" ratio {faulted.throughput / baseline.throughput:.2f} (aim: >= 0.80)"
    )
    report_kills(costs)
    if strays:
        print(f"    {len(strays)} lost or refused attempts that no kill explains, such as:")
        for stray in strays[:8]:
            print(f"      {stray}")
    failed = False
    for name, verdict in verdicts.items():
        print(
            f"  {name}: {verdict.tasks} tasks; retried after a lost attempt: {verdict.retried};"
            f" handed back unstarted: {verdict.given_back}; ran on a node twice or more:"
            f" {verdict.ran_twice}; reaped by lease expiry: {verdict.lease_expired}"
        )
        for reason, count in sorted(verdict.reasons.items(), key=lambda item: -item[1]):
            print(f"    {count} x {reason}")
        for problem in verdict.problems:
            print(f"  FAIL ({name}): {problem}")
            failed = True
    if not verdicts[faulted.name].retried:
        print("  note: no kill caught an attempt open on its node; nothing was retried")
    if failed:
        print(f"  logs kept in {work}")
        return 1
    print("  every task ended exactly once (completed, one result event, within its attempts)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
