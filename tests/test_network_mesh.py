"""The mesh across real network addresses: each process on a host of its own.

Four network namespaces on one bridge stand for four machines (tests/support/netns.py): the
scheduler runs in one, a node in each of the others, all as `agentmesh` processes with
AGENTMESH_TOKEN (and each node with a node credential of its own, enrolled by the harness)
and TLS with client certificates, each host presenting a certificate for its own address.
Two nodes listen on their namespace's address and advertise it; the third listens on
0.0.0.0 without --advertise and advertises its address on the route to the
scheduler. The test process reaches them all through the bridge's address in the root
namespace.

The scheduler reaches PostgreSQL from inside its namespace because the embedded server
listens on a Unix socket: a namespace isolates the network, not the file system. (The
system server's 127.0.0.1:5432 is another namespace's loopback, so it is not used here.)

Without root or `ip` the test skips, saying why. The namespaces, links and bridge are
removed when the test ends, whether it passed or not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import (
    agent_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from tests.support.databases import Server
from tests.support.netns import Host, NetnsUnavailable, VirtualNetwork, unavailable_reason
from tests.support.pki import make_pki
from tests.support.processes import MeshProcess, ProcessHarness
from tests.support.sandboxed import gate as host_gate

pytestmark = [
    pytest.mark.slow,
    # Checked again when the namespaces are created (a container may refuse them to root).
    pytest.mark.skipif(
        unavailable_reason() is not None,
        reason=f"cannot simulate hosts with network namespaces: {unavailable_reason()}",
    ),
]

TOKEN = "network-mesh-token-5e1d07c2"
SCHEDULER = "scheduler"
NODES = ("north", "south", "east")
# Every host has ports of its own: the usual ones serve on every host.
SCHEDULER_PORT = 50050
NODE_PORT = 50051
# This node listens on every address of its host and finds the one to advertise itself.
LISTENS_EVERYWHERE = "east"
COMPLETED = task_pb2.TASK_STATE_COMPLETED
RUN_TIMEOUT = 60.0
# What a node's command prints: its host's address, and the connections to its gRPC port
# (the scheduler's ExecuteTask stream among them) as "Recv-Q Send-Q LOCAL PEER".
PROBE = f"ip -4 -o addr show dev eth0; ss -Htn state established sport = :{NODE_PORT}"


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The embedded server: its Unix socket is reachable from every namespace."""
    return embedded_server


@pytest.fixture
def network() -> Iterator[VirtualNetwork]:
    try:
        created = VirtualNetwork([SCHEDULER, *NODES]).__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot simulate hosts with network namespaces: {exc}")
    try:
        yield created
    finally:
        created.remove()
    assert created.leftovers() == []


def client_tls(pki: Path) -> TlsSettings:
    return TlsSettings(
        ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
    )


@pytest.fixture
def pki(tmp_path: Path, network: VirtualNetwork) -> Path:
    """A CA, a certificate per host for that host's address, and one for the test client."""
    addresses = {name: [host.address] for name, host in network.hosts.items()}
    return make_pki(tmp_path / "pki", *network.hosts, "client", addresses=addresses)


def host_config(host: Host, pki: Path, workdir: Path) -> dict[str, Any]:
    """A host's agent_config.json: its own certificate, the mesh's CA, short timings."""
    return {
        # The tree runs superuser tasks: every node admits them.
        "node": {
            "heartbeat_interval_seconds": 0.3,
            "workdir": str(workdir),
            "max_permission_mode": "superuser",
        },
        "scheduler": {"lease_seconds": 3},
        "tls": {
            "cert_file": str(pki / f"{host.name}.crt"),
            "key_file": str(pki / f"{host.name}.key"),
            "client_ca_file": str(pki / "ca.crt"),
            "ca_file": str(pki / "ca.crt"),
        },
    }


class NetworkMesh:
    """The scheduler and nodes started on their hosts, and a client of the scheduler."""

    def __init__(self, harness: ProcessHarness, network: VirtualNetwork, pki: Path) -> None:
        self.harness = harness
        self.network = network
        self.pki = pki
        self.processes: dict[str, MeshProcess] = {}

    def environment(self, host: Host) -> dict[str, str]:
        workdir = self.harness.tmp_path / "work" / host.name
        workdir.mkdir(parents=True, exist_ok=True)
        path = self.harness.tmp_path / f"{host.name}.json"
        path.write_text(json.dumps(host_config(host, self.pki, workdir), indent=2))
        return {"AGENTMESH_CONFIG": str(path)}

    @property
    def scheduler_address(self) -> str:
        return f"{self.network.hosts[SCHEDULER].address}:{SCHEDULER_PORT}"

    async def start(self) -> None:
        host = self.network.hosts[SCHEDULER]
        self.processes[SCHEDULER] = await self.harness.start_scheduler(
            self.scheduler_address, launcher=host.launcher, env=self.environment(host)
        )
        for name in NODES:
            host = self.network.hosts[name]
            everywhere = name == LISTENS_EVERYWHERE
            self.processes[name] = await self.harness.start_node(
                name,
                scheduler=self.scheduler_address,
                listen=f"{'0.0.0.0' if everywhere else host.address}:{NODE_PORT}",
                advertise=None if everywhere else self.endpoint(name),
                launcher=host.launcher,
                env=self.environment(host),
            )

    def endpoint(self, name: str) -> str:
        """Where node `name` serves: the address it advertises."""
        return f"{self.network.hosts[name].address}:{NODE_PORT}"

    async def capabilities(self, name: str) -> agent_pb2.AgentCard:
        """The node's card as it tells it itself, dialled at its advertised endpoint."""
        async with self.channel(self.endpoint(name)) as channel:
            stub = node_pb2_grpc.AgentNodeStub(channel)
            return await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest(), timeout=10)

    def assert_probed_on(self, name: str, output: str) -> None:
        """A probe's output shows node `name`'s host address and the scheduler's stream."""
        assert f"inet {self.network.hosts[name].address}/" in output, output
        scheduler_host = self.network.hosts[SCHEDULER].address
        assert (self.endpoint(name), scheduler_host) in connections(output), output

    def channel(self, target: str) -> grpc.aio.Channel:
        """A client channel to a host of the mesh, with the token and a client certificate."""
        return open_channel(target, token=TOKEN, tls=client_tls(self.pki))


@pytest.fixture
async def mesh(
    tmp_path: Path, database_uri: str, network: VirtualNetwork, pki: Path
) -> AsyncIterator[NetworkMesh]:
    # Each process is given its own host's configuration file (NetworkMesh.environment).
    default = host_config(network.hosts[SCHEDULER], pki, tmp_path)
    env = {"AGENTMESH_TOKEN": TOKEN}
    async with ProcessHarness(tmp_path, database_uri, default, env=env) as harness:
        yield NetworkMesh(harness, network, pki)
    print(harness.describe())  # pytest shows it when the test fails


async def watch(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str
) -> list[task_pb2.TaskEvent]:
    async def collect() -> list[task_pb2.TaskEvent]:
        request = scheduler_pb2.WatchTaskRequest(task_id=task_id)
        return [event async for event in stub.WatchTask(request)]

    return await asyncio.wait_for(collect(), RUN_TIMEOUT)


def probe_on(name: str) -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        kind="shell",
        command=PROBE,
        permission_mode="superuser",
        target_host=name,
        description=f"probe {name}",
    )


def connections(output: str) -> set[tuple[str, str]]:
    """(local HOST:PORT, peer host) of each connection `ss` listed in a probe's output.

    gRPC serves IPv4 on a dual-stack socket: `ss` shows [::ffff:10.77.0.3]:50051.
    """

    def split(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        return host.strip("[]").removeprefix("::ffff:"), port

    found = set()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit():
            local, port = split(fields[2])
            found.add((f"{local}:{port}", split(fields[3])[0]))
    return found


async def check_cards(mesh: NetworkMesh, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
    """Each card, as the scheduler lists it and as the node itself tells it, shows the
    node's own host: the endpoint it advertised, and no other host's address."""
    hosts = mesh.network.hosts
    every_address = {host.address for host in hosts.values()} | {mesh.network.gateway}
    listed = await stub.ListAgents(scheduler_pb2.ListAgentsRequest(), timeout=10)
    cards = {agent.card.name: agent.card for agent in listed.agents}
    for name in NODES:
        node = mesh.processes[name]
        for card in (cards[name], await mesh.capabilities(name)):
            assert card.agent_id == node.identity
            assert card.endpoint == mesh.endpoint(name) == node.address
            assert set(card.ip_addresses) & every_address == {hosts[name].address}, card


async def run_tree(mesh: NetworkMesh, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
    """A delegated tree, one probe per node, two of them a level further down: each runs
    on its host, streamed to the scheduler over a connection from the scheduler's address
    to the address its node advertised."""
    tree = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                description="inventory across hosts",
                subtasks=[
                    probe_on("north"),
                    task_pb2.TaskSpec(
                        description="branch", subtasks=[probe_on("south"), probe_on("east")]
                    ),
                ],
            )
        )
    )
    events = await watch(stub, tree.id)
    assert events[-1].result.state == COMPLETED, events[-1]
    probes: dict[str, task_pb2.Task] = {}
    parents = [tree.id]
    while parents:
        children = await stub.ListTasks(
            scheduler_pb2.ListTasksRequest(parent_id=parents.pop()), timeout=10
        )
        for child in children.tasks:
            assert child.state == COMPLETED, child.error
            if child.spec.target_host:
                probes[child.spec.target_host] = child
            else:
                parents.append(child.id)
    assert set(probes) == set(NODES)
    for name, probe in probes.items():
        assert probe.assigned_agent == mesh.processes[name].identity
        mesh.assert_probed_on(name, probe.output)


async def kill_mid_task(mesh: NetworkMesh, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
    """A task for any node; the node it starts on is killed (kill -9) mid-task, and the
    task completes on another host. The command waits for a gate file, opened once that
    node is dead, so only a later attempt can finish."""
    nodes = {name: mesh.processes[name] for name in NODES}
    with host_gate() as opened:
        await _kill_mid_task(mesh, stub, nodes, opened)


async def _kill_mid_task(
    mesh: NetworkMesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    nodes: dict[str, Any],
    gate: Path,
) -> None:
    task = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(
            spec=task_pb2.TaskSpec(
                kind="shell",
                command=f"until [ -e {gate} ]; do sleep 0.05; done; {PROBE}",
                permission_mode="superuser",
                description="moves",
            )
        )
    )
    events: list[task_pb2.TaskEvent] = []
    killed: str | None = None
    async with asyncio.timeout(RUN_TIMEOUT):
        async for event in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id)):
            events.append(event)
            if killed is None and event.agent_id:  # the first event from a node
                (killed,) = [name for name in NODES if nodes[name].identity == event.agent_id]
                nodes[killed].kill()
                gate.touch()
    assert killed is not None

    moved = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id))
    assert moved.state == COMPLETED, f"{moved.error}\n{mesh.harness.describe()}"
    assert moved.attempt == 2
    (ran_on,) = [name for name in NODES if nodes[name].identity == moved.assigned_agent]
    assert ran_on != killed
    mesh.assert_probed_on(ran_on, moved.output)
    by_attempt = {
        attempt: {e.agent_id for e in events if e.attempt == attempt and e.agent_id}
        for attempt in (1, 2)
    }
    assert by_attempt == {1: {nodes[killed].identity}, 2: {nodes[ran_on].identity}}
    statuses = [e.status.message for e in events if e.WhichOneof("payload") == "status"]
    assert len([m for m in statuses if m.startswith("attempt 1 lost")]) == 1, statuses
    everyone = await stub.ListAgents(
        scheduler_pb2.ListAgentsRequest(include_offline=True), timeout=10
    )
    assert {a.card.name: a.status for a in everyone.agents}[killed] == "offline"


async def test_a_delegated_tree_runs_across_hosts_and_a_killed_node_s_work_moves(
    mesh: NetworkMesh,
) -> None:
    await mesh.start()
    async with mesh.channel(mesh.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await mesh.harness.wait_registered(stub, [mesh.processes[name] for name in NODES])

        await check_cards(mesh, stub)
        await run_tree(mesh, stub)
        await kill_mid_task(mesh, stub)

        # Every task of the run ended once: completed, with exactly one result in its trace.
        every_task = await stub.ListTasks(scheduler_pb2.ListTasksRequest(page_size=1000))
        assert len(every_task.tasks) == 6  # the tree's 5 and the one that moved
        traces = await asyncio.gather(*(watch(stub, task.id) for task in every_task.tasks))
    for task, trace in zip(every_task.tasks, traces, strict=True):
        assert task.state == COMPLETED, (task.spec.description, task.error)
        results = [e for e in trace if e.WhichOneof("payload") == "result"]
        assert len(results) == 1, (task.spec.description, results)
