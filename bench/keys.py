"""API key pool benchmark: how much of the keys' quota a burst of tasks gets, and who sees 429s.

4 keys, each limited by the Gemini API emulator (its own process) to R requests a minute per
model, as Google limits free-tier keys; N tasks submitted at once, each making one generate
request (plain mode); replies take 200 ms, about what the real API takes. Three arms, each
against a fresh emulator, in one run:
- naive round-robin: N clients each take the next key and send at once; a 429 reaches the user;
- a per-process limiter like LiteLLM's Router without Redis: 2 replicas (processes), each
  counting R a minute per key in its own memory and serving half the tasks; a task fails at
  once with a 429 when all its keys are at their local limit or cooling down;
- agentmesh: 2 scheduler replicas on one PostgreSQL (embedded), GEMINI_API_KEY_FILE with the
  4 keys, api_policy.rpm_soft_limit = R, 2 nodes whose Gemini API proxy sends to the emulator.
Figures per arm: requests per minute served over the first floor(N / 4R) minutes as a fraction
of 4R; 429s that reached a user; 429s the emulator sent; the most requests sent on one key in
any 60 s; wall time from the first submit to the last task's end.

The nodes run bench/support/light_cli.py as their Gemini CLI: one streamGenerateContent request
and stream-json output like the CLI's, without Node.js (the real CLI costs 1-2 CPU-seconds a
run, which on 2 cores would measure the CPU rather than the keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.v1 import (  # noqa: E402
    keys_pb2,
    keys_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from bench.support.api_client import MODEL, generate, session  # noqa: E402
from tests.support.gemini_quota import EmulatorStats, busiest_window, fetch_stats  # noqa: E402
from tests.support.processes import ProcessHarness  # noqa: E402

KEYS = 4
DEFAULT_RPM = 30
DEFAULT_TASKS = 300
LATENCY_SECONDS = 0.2
REPLICAS = 2
NODE_SLOTS = 16
SUBMITTERS = 16
LIGHT_CLI = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'bench/support/light_cli.py'))}"
TERMINAL_STATES = ["completed", "failed", "canceled", "rejected"]
QUOTA_ERROR = re.compile(r"429|quota|RESOURCE_EXHAUSTED|rate limit", re.I)


@dataclass(frozen=True)
class Workload:
    keys: tuple[str, ...]
    key_file: Path
    rpm: int
    tasks: int

    @property
    def minutes(self) -> int:
        """Whole minutes the keys need for the tasks at full use (at least 1)."""
        return max(1, self.tasks // (KEYS * self.rpm))


@dataclass(frozen=True)
class ArmResult:
    name: str
    completed: int
    user_429s: int
    other_failures: int
    stats: EmulatorStats
    started_at: float  # epoch seconds of the first submit
    wall_seconds: float

    def capacity_used(self, work: Workload) -> float:
        """Requests served in the first `work.minutes` minutes, as a fraction of 4R a minute."""
        end = self.started_at + 60 * work.minutes
        served = sum(1 for r in self.stats.accepted if self.started_at <= r.at < end)
        return served / (work.minutes * KEYS * work.rpm)

    def busiest_key_minute(self, work: Workload) -> int:
        """The most requests sent on one key (accepted or refused) in any 60 s."""
        return max(
            busiest_window(
                [r.at for r in self.stats.accepted if r.api_key == key]
                + [r.at for r in self.stats.rejected if r.api_key == key]
            )
            for key in work.keys
        )


@contextlib.contextmanager
def emulator(work: Workload) -> Iterator[str]:
    """A fresh emulator process limiting each key to `work.rpm`; yields its base URL."""
    limits = json.dumps({key: {"rpm": work.rpm} for key in work.keys})
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.support.gemini_emulator"),
            *("--key-limits", limits, "--latency", str(LATENCY_SECONDS)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise SystemExit(f"the Gemini API emulator did not start: {base_url!r}")
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


async def naive_arm(work: Workload) -> ArmResult:
    with emulator(work) as base_url:
        async with session() as client:
            started_at, clock = time.time(), time.perf_counter()
            statuses = await asyncio.gather(
                *(
                    generate(client, base_url, work.keys[i % KEYS], f"benchmark task {i}")
                    for i in range(work.tasks)
                ),
                return_exceptions=True,
            )
            wall = time.perf_counter() - clock
        stats = fetch_stats(base_url)
    return ArmResult(
        "naive round-robin",
        completed=statuses.count(200),
        user_429s=statuses.count(429),
        other_failures=sum(1 for s in statuses if s not in (200, 429)),
        stats=stats,
        started_at=started_at,
        wall_seconds=wall,
    )


def per_process_arm(work: Workload) -> ArmResult:
    with emulator(work) as base_url:
        replicas = []
        for replica in range(REPLICAS):
            share = work.tasks // REPLICAS + (replica < work.tasks % REPLICAS)
            first = replica * (work.tasks // REPLICAS)
            replicas.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "bench.support.per_process_limiter"),
                        *("--base-url", base_url, "--keys-file", str(work.key_file)),
                        *("--rpm", str(work.rpm), "--tasks", str(share), "--first", str(first)),
                    ],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in replicas:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit("a per-process limiter replica did not start")
        started_at, clock = time.time(), time.perf_counter()
        for process in replicas:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        counts = []
        for process in replicas:
            assert process.stdout is not None
            counts.append(json.loads(process.stdout.readline()))
        wall = time.perf_counter() - clock
        for process in replicas:
            process.wait(30)
        stats = fetch_stats(base_url)
    return ArmResult(
        f"per-process limiter ({REPLICAS} replicas)",
        completed=sum(c["completed"] for c in counts),
        user_429s=sum(c["api_429"] + c["local_429"] for c in counts),
        other_failures=sum(c["other"] for c in counts),
        stats=stats,
        started_at=started_at,
        wall_seconds=wall,
    )


async def key_pool_missing(address: str, work: Workload) -> str | None:
    """Why the agentmesh arm cannot run against this scheduler, or None."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            listed = await keys_pb2_grpc.KeyPoolStub(channel).ListKeys(
                keys_pb2.ListKeysRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "the scheduler serves no KeyPool (the key pool is not merged on this branch)"
            raise
    if len(listed.keys) != KEYS:
        return f"the scheduler lists {len(listed.keys)} keys, not the {KEYS} of its key file"
    return None


async def agentmesh_arm(work: Workload, scratch: Path) -> ArmResult | str:
    """The arm's result, or why it was skipped."""
    data = scratch / "pg"
    server = embedded.start(data)
    try:
        await ensure_database(server, "agentmesh")
        dsn = embedded.uri_for(server, "agentmesh")
        with emulator(work) as base_url:
            return await run_mesh(work, scratch / "mesh", dsn, base_url)
    finally:
        embedded.stop(data)


async def run_mesh(work: Workload, home: Path, dsn: str, base_url: str) -> ArmResult | str:
    """Start 2 schedulers and 2 nodes, run the tasks; the figures, or why it cannot run."""
    tolerance = 60.0 * (work.tasks / (KEYS * work.rpm) + 3)
    config = {
        "api_policy": {
            "rpm_soft_limit": work.rpm,
            "max_requests_per_day": 0,
            "max_tokens_per_key": 0,
            "throttle_tolerance_seconds": tolerance,
        },
        "agent_defaults": {"mode": "plain", "model": MODEL},
        "scheduler": {"heartbeat_interval_seconds": 1},
        "node": {"heartbeat_interval_seconds": 1},
    }
    home.mkdir(parents=True)
    env = {"AGENTMESH_SECRET_KEY": Fernet.generate_key().decode()}
    scheduler_env = {"GEMINI_API_KEY_FILE": str(work.key_file)}
    node_env = {"GEMINI_CLI_COMMAND": LIGHT_CLI, "GOOGLE_GEMINI_BASE_URL": base_url}
    async with ProcessHarness(home, dsn, config, env=env) as mesh:
        try:
            first = await mesh.start_scheduler(env=scheduler_env)
        except AssertionError:
            log = mesh.processes[-1].stderr_path.read_text(errors="replace").strip()
            last = log.splitlines()[-1] if log else "(nothing on stderr)"
            return f"the scheduler did not start: {last}"
        missing = await key_pool_missing(first.address, work)
        if missing is not None:
            return missing
        schedulers = [first, await mesh.start_scheduler(env=scheduler_env)]
        nodes = [
            await mesh.start_node(
                f"bench{i}", scheduler=s.address, max_concurrency=NODE_SLOTS, env=node_env
            )
            for i, s in enumerate(schedulers)
        ]
        stubs = [mesh.stub(s) for s in schedulers]
        await mesh.wait_registered(stubs[0], nodes)
        conn = await asyncpg.connect(dsn)
        try:
            started_at, clock = time.time(), time.perf_counter()
            await submit(stubs, work.tasks)
            ended = await wait_ended(conn, work.tasks, deadline=tolerance + 120)
            wall = time.perf_counter() - clock
            rows = await conn.fetch("SELECT state, error FROM tasks WHERE parent_id IS NULL")
        finally:
            await conn.close()
    failed = [row["error"] for row in rows if row["state"] != "completed"]
    quota = sum(1 for error in failed if QUOTA_ERROR.search(error or ""))
    return ArmResult(
        f"agentmesh ({REPLICAS} scheduler replicas)",
        completed=sum(1 for row in rows if row["state"] == "completed"),
        user_429s=quota,
        # Tasks still running at the deadline count as failures too.
        other_failures=len(failed) - quota + (work.tasks - ended),
        stats=fetch_stats(base_url),
        started_at=started_at,
        wall_seconds=wall,
    )


async def submit(stubs: list[scheduler_pb2_grpc.SchedulerAsyncStub], count: int) -> None:
    """Submit `count` plain gemini tasks at once, alternately to each scheduler."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def submitter() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            spec = task_pb2.TaskSpec(
                kind="gemini", prompt=f"benchmark task {i}", model=MODEL, agent_mode="plain"
            )
            await stubs[i % len(stubs)].SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


async def wait_ended(conn: asyncpg.Connection, count: int, deadline: float) -> int:
    """Until `count` tasks ended or `deadline` seconds passed; how many ended."""
    give_up = time.monotonic() + deadline
    while True:
        ended = int(
            await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE parent_id IS NULL AND state = ANY($1::text[])",
                TERMINAL_STATES,
            )
        )
        if ended >= count or time.monotonic() > give_up:
            return ended
        await asyncio.sleep(0.5)


def positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def report(work: Workload, results: list[ArmResult], skipped: str | None) -> None:
    print(
        f"API key pool benchmark (one run, this machine): {KEYS} keys x R = {work.rpm}"
        f" requests/min each (enforced by the emulator per key and model),"
        f" N = {work.tasks} plain gemini tasks submitted at once,"
        f" {LATENCY_SECONDS * 1000:.0f} ms API latency"
    )
    print(
        f"  capacity used: requests served in the first {work.minutes} min"
        f" / ({work.minutes} x 4R = {work.minutes * KEYS * work.rpm})"
    )
    header = (
        f"  {'arm':<34} {'completed':>10} {'capacity':>9} {'429s to users':>14}"
        f" {'429s sent':>10} {'busiest key-min':>16} {'wall':>8}"
    )
    print(header)
    for arm in results:
        print(
            f"  {arm.name:<34} {f'{arm.completed}/{work.tasks}':>10}"
            f" {arm.capacity_used(work):>9.2f} {arm.user_429s:>14} {len(arm.stats.rejected):>10}"
            f" {f'{arm.busiest_key_minute(work)} (R={work.rpm})':>16}"
            f" {arm.wall_seconds:>7.1f}s"
        )
        if arm.other_failures:
            print(f"    {arm.other_failures} other failures")
    if skipped is not None:
        print(f"  agentmesh: skipped: {skipped}")
        return
    mesh = results[-1]
    print(
        f"  agentmesh: capacity used {mesh.capacity_used(work):.2f} (aim >= 0.95),"
        f" {mesh.user_429s} 429s reached users (must be 0),"
        f" at most {mesh.busiest_key_minute(work)} requests on a key in any minute"
        f" (limit {work.rpm})"
    )
    for baseline in results[:-1]:
        print(
            f"  agentmesh capacity used / {baseline.name}:"
            f" {mesh.capacity_used(work) / max(baseline.capacity_used(work), 1e-9):.2f}"
        )
    print(
        "  (agentmesh nodes ran bench/support/light_cli.py as their Gemini CLI: one request and"
        " the CLI's stream-json output, without the real CLI's 1-2 CPU-seconds a run)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=positive, default=DEFAULT_RPM, help="R, per key")
    parser.add_argument("--tasks", type=positive, default=DEFAULT_TASKS, help="N")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="agentmesh-bench-keys-"))
    try:
        keys = tuple(f"bench-key-{i}-{secrets.token_hex(12)}" for i in range(KEYS))
        key_file = scratch / "keys.env"
        key_file.write_text("".join(f"bench{i}={key}\n" for i, key in enumerate(keys)))
        key_file.chmod(0o600)
        work = Workload(keys, key_file, args.rpm, args.tasks)
        print(
            f"bench/keys.py: R = {work.rpm}, N = {work.tasks}; the agentmesh arm needs about"
            f" {work.tasks / (KEYS * work.rpm):.1f} min",
            file=sys.stderr,
            flush=True,
        )
        results = [await naive_arm(work), per_process_arm(work)]
        mesh = await agentmesh_arm(work, scratch)
        skipped = mesh if isinstance(mesh, str) else None
        if not isinstance(mesh, str):
            results.append(mesh)
        report(work, results, skipped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
