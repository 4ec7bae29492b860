"""AgentNode benchmark: what the node adds over running the same work directly.

Prints, from one run on this machine:
- gemini: median wall time of 20 runs through the node vs 20 runs of the same CLI command
  started directly (both against the loopback Gemini API emulator), and their ratio;
- echo: round-trip latency p50/p99 over a real gRPC connection;
- shell streaming: MB/s of a large output through the node vs the same command read
  directly from a pipe, and their ratio;
- the node's resident memory when idle and with 8 tasks streaming at once;
- the sandbox's cost: a shell task (weak and superuser) and a gemini task, median of 20,
  through a node with `node.sandbox: auto` (bubblewrap) and one with `none`;
- delegation: the round trip of a running agent's `mcp_mesh_delegate` call for an echo
  child (tool call to tool result, from the node's own timestamps of the two events in the
  parent's trace), median of 20 calls in one gemini task, vs the same echo task submitted to
  the scheduler directly and watched to its end, median of 20, and their ratio (a scheduler
  process on the embedded PostgreSQL 16, and a node registered with it).

The node runs as its own process (`agentmesh node`), as in production. `--only SECTION`
(repeatable) runs some of them: gemini, echo, stream, memory, sandbox, delegation.
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
from pathlib import Path

import grpc
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import ensure_database  # noqa: E402
from agentmesh.node.executors.gemini import SETTINGS  # noqa: E402
from agentmesh.node.process import CHUNK_BYTES  # noqa: E402
from agentmesh.v1 import (  # noqa: E402
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from tests.support.gemini_emulator import (  # noqa: E402
    GeminiEmulator,
    function_call_reply,
    text_reply,
)

GEMINI_CLI = os.environ.get(
    "AGENTMESH_GEMINI_CLI", str(REPO / ".cache/gemini-cli/node_modules/.bin/gemini")
)
API_KEY = "bench-key-0123456789"
MODEL = "gemini-2.5-flash"
GEMINI_RUNS = 20
ECHO_CALLS = 1000
STREAM_BYTES = 200 << 20
SANDBOX_RUNS = 20
DELEGATIONS = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn(
    args: list[str], env: dict[str, str], work: Path, pattern: str, log: Path | None = None
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Start `agentmesh ARGS`; return it and the match of `pattern` in its first line."""
    with open(log or os.devnull, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli.main", *args],
            env=env,
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(pattern, line)
    if not match:
        process.kill()
        raise SystemExit(f"{args[0]} did not start: {line!r}")
    return process, match


def start_node(
    work: Path, base_url: str, sandbox: str = "auto"
) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "AGENTMESH_DATA_DIR": str(work / "data"),
        "GEMINI_CLI_COMMAND": GEMINI_CLI,
        "GOOGLE_GEMINI_BASE_URL": base_url,
    }
    config = work / f"agent_config.{sandbox}.json"
    # The streaming figure needs more output than a task may print by default.
    node = {
        "max_concurrency": 16,
        "workdir": str(work),
        "sandbox": sandbox,
        "max_output_bytes": 2 * STREAM_BYTES,
        "max_permission_mode": "superuser",  # the superuser shell case
    }
    config.write_text(json.dumps({"node": node}))
    env["AGENTMESH_CONFIG"] = str(config)
    process, match = spawn(
        ["node", "--listen", "127.0.0.1:0"], env, work, r"listening on (\S+);.* sandbox: (\w+)"
    )
    if sandbox == "auto" and match[2] != "bubblewrap":
        print(f"  (no working sandbox here: {match.string.strip()})")
    return process, match[1]


async def run_task(stub: node_pb2_grpc.AgentNodeStub, task_id: str, **spec: object) -> int:
    request = node_pb2.ExecuteTaskRequest(
        task_id=task_id,
        attempt=1,
        api_key=API_KEY,
        spec=task_pb2.TaskSpec(**spec),  # type: ignore[arg-type]
    )
    received = 0
    async for event in stub.ExecuteTask(request):
        if event.WhichOneof("payload") in ("stdout", "text"):
            received += len(event.stdout.text or event.text.text)
        is_result = event.WhichOneof("payload") == "result"
        if is_result and event.result.state != task_pb2.TASK_STATE_COMPLETED:
            raise SystemExit(f"task {task_id} failed: {event.result.error}")
    return received


def read_pipe(argv: list[str]) -> int:
    """Read a command's output from a pipe in the node's chunk size, as a direct consumer."""
    total = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        while chunk := process.stdout.read1(CHUNK_BYTES):
            total += len(chunk)
    return total


def gemini_direct(work: Path, base_url: str, index: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="bench-gemini-home-"))
    (home / ".gemini").mkdir()
    (home / "tmp").mkdir()
    (home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
    env = {
        **os.environ,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_CLI_HOME": str(home),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GEMINI_CLI_NO_RELAUNCH": "true",
        "GOOGLE_GEMINI_BASE_URL": base_url,
    }
    started = time.perf_counter()
    subprocess.run(
        [GEMINI_CLI, "-p", f"benchmark prompt {index}", "-o", "stream-json", "-m", MODEL],
        env=env,
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(home, ignore_errors=True)
    return elapsed


async def median_ms(stub: node_pb2_grpc.AgentNodeStub, name: str, **spec: object) -> float:
    times = []
    for i in range(SANDBOX_RUNS):
        started = time.perf_counter()
        await run_task(stub, f"{name}-{i}", **spec)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def sandbox_costs(
    work: Path, base_url: str, sandboxed_stub: node_pb2_grpc.AgentNodeStub
) -> list[str]:
    """The same tasks through the sandboxed node and through an unsandboxed one."""
    plain, address = start_node(work, base_url, sandbox="none")
    lines = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stubs = {"bubblewrap": sandboxed_stub, "none": node_pb2_grpc.AgentNodeStub(channel)}
            await run_task(stubs["none"], "warmup", kind="echo", prompt="warm")
            cases = {
                "shell, weak (`uname -r`)": {"kind": "shell", "command": "uname -r"},
                "shell, superuser (`echo hi | wc -c`)": {
                    "kind": "shell", "command": "echo hi | wc -c", "permission_mode": "superuser"
                },
                "gemini (emulator)": {"kind": "gemini", "prompt": "bench", "model": MODEL},
            }  # fmt: skip
            for label, spec in cases.items():
                medians = {
                    name: await median_ms(stub, f"sb-{name}-{spec['kind']}", **spec)
                    for name, stub in stubs.items()
                }
                boxed, bare = medians["bubblewrap"], medians["none"]
                lines.append(
                    f"  sandbox cost, {label}, median of {SANDBOX_RUNS}: sandboxed"
                    f" {boxed:.1f} ms, unsandboxed {bare:.1f} ms, cost {boxed - bare:+.1f} ms"
                    f" (ratio {boxed / bare:.2f})"
                )
    finally:
        plain.terminate()
        plain.wait(30)
    return lines


async def watch_to_end(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, **spec: object
) -> tuple[task_pb2.Task, list[task_pb2.TaskEvent]]:
    """Submit a task to the scheduler and watch it to its end: the task and its trace."""
    request = scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(**spec))  # type: ignore[arg-type]
    submitted = await stub.SubmitTask(request)
    watch = scheduler_pb2.WatchTaskRequest(task_id=submitted.id)
    events = [event async for event in stub.WatchTask(watch)]
    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=submitted.id))
    if task.state != task_pb2.TASK_STATE_COMPLETED:
        raise SystemExit(f"task {task.id} ({task.spec.kind}) did not complete: {task.error}")
    return task, events


def round_trips(events: list[task_pb2.TaskEvent]) -> list[float]:
    """Seconds from each tool_use event to the tool_result of the same tool_id."""
    called: dict[str, float] = {}
    trips: list[float] = []
    for event in events:
        kind = event.WhichOneof("payload")
        at = event.time.ToNanoseconds() / 1e9
        if kind == "tool_use":
            called[event.tool_use.tool_id] = at
        elif kind == "tool_result":
            if event.tool_result.status != "success":
                raise SystemExit(f"a delegation failed: {event.tool_result.error_message}")
            trips.append(at - called.pop(event.tool_result.tool_id))
    return trips


async def delegation_costs(work: Path, emulator: GeminiEmulator) -> str:
    """An agent's delegation of an echo child against the same echo submitted directly."""
    mesh = work / "mesh"
    data = mesh / "data"
    mesh.mkdir()
    server = embedded.start(data)
    await ensure_database(server, "agentmesh")
    keys = mesh / "keys.txt"
    keys.write_text(f"{API_KEY}\n")
    config = mesh / "agent_config.json"
    config.write_text(
        json.dumps(
            {
                "agent_defaults": {"max_delegations": DELEGATIONS},
                # The parent asks the model DELEGATIONS + 1 times in a row: the default
                # 15 requests a minute per key would space its turns out.
                "api_policy": {"rpm_soft_limit": 0},
                "node": {"heartbeat_interval_seconds": 1, "workdir": str(mesh)},
            }
        )
    )
    env = {
        **os.environ,
        "DATABASE_URL": embedded.uri_for(server, "agentmesh"),
        "AGENTMESH_DATA_DIR": str(data),
        "AGENTMESH_CONFIG": str(config),
        "GEMINI_CLI_COMMAND": GEMINI_CLI,
        "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
    }
    processes: list[subprocess.Popen[str]] = []
    try:
        scheduler, match = spawn(
            ["scheduler", "--listen", "127.0.0.1:0"],
            {**env, "GEMINI_API_KEY_FILE": str(keys)},  # the scheduler leases the key
            mesh,
            r"listening on (\S+)",
            mesh / "scheduler.log",
        )
        processes.append(scheduler)
        address = match[1]
        node, _ = spawn(
            ["node", "--listen", "127.0.0.1:0", "--name", "bench", "--scheduler", address],
            env,
            mesh,
            r"listening on (\S+);",
            mesh / "node.log",
        )
        processes.append(node)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while not (await stub.ListAgents(scheduler_pb2.ListAgentsRequest())).agents:
                await asyncio.sleep(0.1)
            await watch_to_end(stub, kind="echo", prompt="warm")

            direct: list[float] = []
            for i in range(DELEGATIONS):
                started = time.perf_counter()
                await watch_to_end(stub, kind="echo", prompt=f"ping {i}", description=f"echo {i}")
                direct.append(time.perf_counter() - started)

            emulator.script(
                *(
                    function_call_reply(
                        "mcp_mesh_delegate",
                        {"description": f"echo {i}", "prompt": f"ping {i}", "kind": "echo"},
                    )
                    for i in range(DELEGATIONS)
                ),
                text_reply("All the machines answered."),
            )
            prompt = f"Ping a machine of the mesh {DELEGATIONS} times."
            parent, events = await watch_to_end(stub, kind="gemini", prompt=prompt, model=MODEL)
            trips = round_trips(events)
            if len(trips) != DELEGATIONS or len(parent.child_ids) != DELEGATIONS:
                raise SystemExit(
                    f"the agent delegated {len(parent.child_ids)} times, {len(trips)} results"
                )
    except SystemExit as failure:
        raise SystemExit(f"{failure} (the scheduler's and the node's logs: {mesh})") from None
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        embedded.stop(data)
    trip = statistics.median(trips) * 1000
    submitted = statistics.median(direct) * 1000
    return (
        f"  delegation of an echo child, median of {DELEGATIONS}: tool call to tool result"
        f" {trip:.1f} ms, the same echo submitted to the scheduler {submitted:.1f} ms,"
        f" ratio {trip / submitted:.2f} ({trip - submitted:+.1f} ms)"
    )


SECTIONS = ("gemini", "echo", "stream", "memory", "sandbox", "delegation")


async def main(sections: frozenset[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-node-"))
    big = work / "big.txt"
    line = "agentmesh streams shell output as it comes, chunk by chunk\n"
    if sections & {"stream", "memory"}:
        big.write_text(line * (STREAM_BYTES // len(line)))
    lines = ["AgentNode benchmark (one run, this machine)"]
    with GeminiEmulator() as emulator:
        node, address = start_node(work, emulator.base_url)
        rss = psutil.Process(node.pid)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = node_pb2_grpc.AgentNodeStub(channel)
                await run_task(stub, "warmup", kind="echo", prompt="warm")
                idle_rss = rss.memory_info().rss
                if "gemini" in sections:
                    lines.append(await gemini_costs(work, emulator.base_url, stub))
                if "echo" in sections:
                    lines.append(await echo_latency(stub))
                if "stream" in sections:
                    lines.append(await streaming_rate(stub, big))
                if "memory" in sections:
                    lines.append(await streaming_memory(stub, big, rss, idle_rss))
                if "sandbox" in sections:
                    lines += await sandbox_costs(work, emulator.base_url, stub)
        finally:
            node.terminate()
            node.wait(30)
        if "delegation" in sections:
            lines.append(await delegation_costs(work, emulator))
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


async def gemini_costs(work: Path, base_url: str, stub: node_pb2_grpc.AgentNodeStub) -> str:
    direct = [gemini_direct(work, base_url, i) for i in range(GEMINI_RUNS)]
    through: list[float] = []
    for i in range(GEMINI_RUNS):
        started = time.perf_counter()
        await run_task(stub, f"g-{i}", kind="gemini", prompt=f"bench {i}", model=MODEL)
        through.append(time.perf_counter() - started)
    direct_median = statistics.median(direct)
    node_median = statistics.median(through)
    return (
        f"  gemini run, median of {GEMINI_RUNS}: direct {direct_median * 1000:.0f} ms,"
        f" through the node {node_median * 1000:.0f} ms,"
        f" ratio {node_median / direct_median:.2f}"
        f" ({(node_median - direct_median) * 1000:+.0f} ms)"
    )


async def echo_latency(stub: node_pb2_grpc.AgentNodeStub) -> str:
    latencies = []
    for i in range(ECHO_CALLS):
        started = time.perf_counter()
        await run_task(stub, f"e-{i}", kind="echo", prompt="ping")
        latencies.append(time.perf_counter() - started)
    p50 = percentile(latencies, 0.5) * 1000
    return (
        f"  echo round trip over {ECHO_CALLS} calls: p50 {p50:.2f} ms,"
        f" p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
    )


async def streaming_rate(stub: node_pb2_grpc.AgentNodeStub, big: Path) -> str:
    size = big.stat().st_size
    started = time.perf_counter()
    direct_bytes = read_pipe(["cat", str(big)])
    direct_seconds = time.perf_counter() - started
    assert direct_bytes == size
    started = time.perf_counter()
    received = await run_task(stub, "stream", kind="shell", command=f"cat {big}")
    node_seconds = time.perf_counter() - started
    assert received == size, (received, size)
    direct_rate = size / 1e6 / direct_seconds
    node_rate = size / 1e6 / node_seconds
    return (
        f"  shell streaming of {size / 1e6:.0f} MB: direct pipe {direct_rate:.0f} MB/s,"
        f" through the node {node_rate:.0f} MB/s, ratio {node_rate / direct_rate:.2f}"
    )


async def streaming_memory(
    stub: node_pb2_grpc.AgentNodeStub, big: Path, rss: psutil.Process, idle_rss: int
) -> str:
    peak = 0
    tasks = [
        asyncio.create_task(run_task(stub, f"many-{i}", kind="shell", command=f"cat {big}"))
        for i in range(8)
    ]
    while not all(t.done() for t in tasks):
        peak = max(peak, rss.memory_info().rss)
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return (
        f"  node resident memory: idle {idle_rss / 2**20:.0f} MiB,"
        f" 8 tasks streaming {peak / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run this section only (repeatable); default: every section",
    )
    arguments = parser.parse_args()
    asyncio.run(main(frozenset(arguments.only or SECTIONS)))
