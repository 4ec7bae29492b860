"""The node's proxy leasing keys from a scheduler's KeyPool over gRPC.

The scheduler's side of LeaseKey / ReportKeyUse is the key broker's; here a scripted KeyPool
servicer on a real grpc.aio server answers, so that what the node sends and how it follows
the answers can be checked: the request fields, a held key leased by fingerprint only, a
429 reported and the request moved, a key the node does not hold, the budget the scheduler
counts, and a scheduler that cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.keys.pool import fingerprint
from agentmesh.node.gemini_proxy import GeminiProxy
from agentmesh.node.key_source import LocalKey, LocalKeys, SchedulerKeySource, TaskRun
from agentmesh.tasks.events import Diagnostic, Payload
from agentmesh.v1 import keys_pb2, keys_pb2_grpc, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_gemini_keys import everything_seen, unkeyed
from tests.node.test_node import collect
from tests.support.gemini_emulator import GeminiEmulator, quota_exhausted, text_reply

CENTRAL = "AIzaSy-central-key-0011223344556677"
HELD = "AIzaSy-held-by-node-8899aabbccddeeff"
MODEL = "gemini-2.5-flash"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


class ScriptedKeyPool(keys_pb2_grpc.KeyPoolServicer):
    """Answers LeaseKey from a script and ReportKeyUse with the tokens reported so far."""

    def __init__(self, *leases: keys_pb2.KeyLease, token_budget: int = 0) -> None:
        self.leases = list(leases)
        self.token_budget = token_budget
        self.lease_requests: list[keys_pb2.LeaseKeyRequest] = []
        self.reports: list[keys_pb2.ReportKeyUseRequest] = []
        self.leased = asyncio.Event()

    async def LeaseKey(self, request: keys_pb2.LeaseKeyRequest, context: Any) -> keys_pb2.KeyLease:
        self.lease_requests.append(request)
        self.leased.set()
        return self.leases.pop(0)

    async def ReportKeyUse(
        self, request: keys_pb2.ReportKeyUseRequest, context: Any
    ) -> keys_pb2.ReportKeyUseResponse:
        self.reports.append(request)
        spent = sum(r.total_tokens for r in self.reports if r.counted and r.http_status == 200)
        return keys_pb2.ReportKeyUseResponse(task_tokens=spent, token_budget=self.token_budget)


def central() -> keys_pb2.KeyLease:
    return keys_pb2.KeyLease(fingerprint=fingerprint(CENTRAL), label="central", secret=CENTRAL)


def held() -> keys_pb2.KeyLease:
    # A key the node holds: the scheduler names it and sends no secret.
    return keys_pb2.KeyLease(fingerprint=fingerprint(HELD), label="held")


async def serve(pool: ScriptedKeyPool) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    keys_pb2_grpc.add_KeyPoolServicer_to_server(pool, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def proxy(emulator: GeminiEmulator) -> AsyncIterator[GeminiProxy]:
    started = await GeminiProxy.start(emulator.base_url)
    try:
        yield started
    finally:
        await started.stop()


async def through(
    proxy: GeminiProxy, address: str, events: list[Payload], budget: int = 0
) -> tuple[int, dict[str, Any] | str]:
    """One streamed request through the proxy, with keys from the KeyPool at `address`."""
    source = SchedulerKeySource.connect(
        address,
        token=None,
        tls=TlsSettings(),
        agent_id="node-7",
        held=LocalKeys([LocalKey.of("held", HELD)]),
    )
    run = proxy.register(TaskRun("t-9", 2, token_budget=budget), source, events.append)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                proxy.url + STREAM, json=BODY, headers={"x-goog-api-key": run.credential}
            ) as response,
        ):
            raw = await response.read()
    finally:
        proxy.unregister(run)
        await source.close()
    body = json.loads(raw) if response.content_type == "application/json" else raw.decode()
    return response.status, body


async def test_a_429_is_reported_and_the_request_moves_to_a_held_key(
    proxy: GeminiProxy, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.set_key_behaviour(CENTRAL, quota_exhausted("minute", retry_seconds=26))
    emulator.script(text_reply("from the held key", prompt_tokens=40, candidates_tokens=2))
    pool = ScriptedKeyPool(central(), held())
    server, address = await serve(pool)
    events: list[Payload] = []
    try:
        status, _ = await through(proxy, address, events)
    finally:
        await server.stop(None)

    assert status == 200
    assert [r.api_key for r in emulator.requests] == [CENTRAL, HELD]
    first, second = pool.lease_requests
    assert (first.task_id, first.attempt, first.agent_id, first.model) == (
        "t-9",
        2,
        "node-7",
        MODEL,
    )
    assert first.counted
    assert list(first.exclude) == []
    assert list(second.exclude) == [fingerprint(CENTRAL)]
    cooled, used = pool.reports
    assert (cooled.fingerprint, cooled.http_status, cooled.retry_delay_seconds) == (
        fingerprint(CENTRAL),
        429,
        26,
    )
    assert cooled.quota_id == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert (used.fingerprint, used.http_status, used.counted) == (fingerprint(HELD), 200, True)
    assert (used.prompt_tokens, used.output_tokens, used.total_tokens) == (40, 2, 42)
    (warning,) = events
    assert isinstance(warning, Diagnostic)
    assert "API key central (sha256:" in warning.message
    assert "the request moved to key held" in warning.message
    assert CENTRAL not in caplog.text
    assert HELD not in caplog.text


async def test_an_exhausted_lease_answers_429_with_the_scheduler_s_reason(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    reason = "all 3 keys for gemini-2.5-flash are at their per-minute limit; next capacity in 41 s"
    pool = ScriptedKeyPool(keys_pb2.KeyLease(exhausted=True, retry_after_seconds=41, reason=reason))
    server, address = await serve(pool)
    try:
        status, body = await through(proxy, address, [])
    finally:
        await server.stop(None)

    assert status == 429
    assert isinstance(body, dict)
    assert body["error"]["message"] == f"{reason}. Please retry in 41s."
    assert emulator.requests == []


async def test_a_lease_of_a_key_the_node_does_not_hold_fails_the_request(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    stranger = keys_pb2.KeyLease(fingerprint="sha256:000000000000", label="elsewhere")
    server, address = await serve(ScriptedKeyPool(stranger))
    events: list[Payload] = []
    try:
        status, body = await through(proxy, address, events)
    finally:
        await server.stop(None)

    assert status == 503
    assert isinstance(body, dict)
    assert "leased key elsewhere (sha256:000000000000)" in body["error"]["message"]
    assert emulator.requests == []


async def test_the_scheduler_s_count_of_the_task_s_tokens_stops_it(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("costly", prompt_tokens=90, candidates_tokens=20))
    pool = ScriptedKeyPool(central(), token_budget=100)
    server, address = await serve(pool)
    events: list[Payload] = []
    try:
        status, _ = await through(proxy, address, events)
    finally:
        await server.stop(None)

    assert status == 200
    assert [e.message for e in events if isinstance(e, Diagnostic)] == [
        "token budget exceeded: 110 of 100 tokens; further API requests are refused"
    ]


async def test_an_unreachable_scheduler_fails_the_request_with_a_reason(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    server, address = await serve(ScriptedKeyPool())
    await server.stop(None)  # nobody answers there any more

    status, body = await through(proxy, address, [])

    assert status == 503
    assert isinstance(body, dict)
    assert body["error"]["message"].startswith(
        "the scheduler's key pool did not answer LeaseKey: UNAVAILABLE"
    )
    assert emulator.requests == []


async def test_a_node_with_a_scheduler_leases_its_task_s_keys_there(
    start_node: StartNode,
    emulator: GeminiEmulator,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "node-keys.env"
    key_file.write_text(f"held={HELD}\n")
    emulator.script(text_reply("done"))
    pool = ScriptedKeyPool(held())
    server, address = await serve(pool)
    try:
        agent, stub = await start_node(
            env={"GEMINI_API_KEY_FILE": str(key_file)}, scheduler=address
        )
        request = unkeyed("k-9", "hello")
        request.key_fingerprint = fingerprint(HELD)
        events = await collect(stub.ExecuteTask(request))
    finally:
        await server.stop(None)

    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert [r.api_key for r in emulator.generate_requests()] == [HELD]
    (lease,) = pool.lease_requests
    assert (lease.task_id, lease.agent_id, lease.model) == ("k-9", agent.card().agent_id, MODEL)
    assert [r.http_status for r in pool.reports] == [200]
    assert HELD not in everything_seen(events, emulator, caplog)


async def test_a_lease_that_says_wait_is_waited_for(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    spaced = central()
    spaced.wait_seconds = 0.5  # the key's per-minute spacing
    server, address = await serve(ScriptedKeyPool(spaced))
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        status, _ = await through(proxy, address, [])
        took = loop.time() - started
    finally:
        await server.stop(None)

    assert status == 200
    assert took >= 0.5  # never sooner (a lower bound: not a timing race)


async def test_a_request_waiting_for_its_key_is_dropped_when_the_run_ends(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    spaced = central()
    spaced.wait_seconds = 60
    pool = ScriptedKeyPool(spaced)
    server, address = await serve(pool)
    source = SchedulerKeySource.connect(
        address, token=None, tls=TlsSettings(), agent_id="node-7", held=None
    )
    run = proxy.register(TaskRun("t-10", 1), source, lambda payload: None)
    try:
        async with aiohttp.ClientSession() as session:
            answer = asyncio.ensure_future(
                session.post(
                    proxy.url + STREAM, json=BODY, headers={"x-goog-api-key": run.credential}
                )
            )
            await asyncio.wait_for(pool.leased.wait(), 10)
            proxy.unregister(run)  # the CLI was cancelled while its request waited
            response = await asyncio.wait_for(answer, 10)
            status = response.status
            response.release()
    finally:
        await source.close()
        await server.stop(None)

    assert status == 403
    assert emulator.requests == []
    assert [r.http_status for r in pool.reports] == [0]
