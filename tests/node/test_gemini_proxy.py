"""The node's Gemini API proxy, with local keys, against the loopback API emulator.

An aiohttp client stands in for the Gemini CLI here (it sends what the CLI sends: a POST with
the run's credential in x-goog-api-key), so that the chunks of a streamed answer can be
watched one by one; tests/node/test_gemini_keys.py runs the real CLI through a node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from agentmesh.node.gemini_proxy import GeminiProxy, ProxyRun
from agentmesh.node.key_source import LocalKey, LocalKeys, LocalKeySource, TaskRun
from agentmesh.tasks.events import Diagnostic, Payload
from tests.support.gemini_emulator import (
    ErrorReply,
    GeminiEmulator,
    error_body,
    invalid_api_key,
    quota_exhausted,
    slow_reply,
    text_reply,
)

KEY_A = "AIzaSy-proxy-key-A-0123456789abcdef"
KEY_B = "AIzaSy-proxy-key-B-fedcba9876543210"
MODEL = "gemini-2.5-flash"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


class Served:
    """A run registered with the proxy, and the events it added to its task's stream."""

    def __init__(self, proxy: GeminiProxy, *keys: tuple[str, str], budget: int = 0) -> None:
        self.events: list[Payload] = []
        self.keys = LocalKeys(LocalKey.of(label, secret) for label, secret in keys)
        self.run: ProxyRun = proxy.register(
            TaskRun("t-proxy", 1, token_budget=budget),
            LocalKeySource(self.keys),
            self.events.append,
        )
        self.url = proxy.url

    def warnings(self) -> list[str]:
        return [e.message for e in self.events if isinstance(e, Diagnostic)]

    async def post(
        self, path: str = STREAM, *, credential: str | None = None, body: object = BODY
    ) -> tuple[int, bytes]:
        key = self.run.credential if credential is None else credential
        headers = {"x-goog-api-key": key} if key else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + path, json=body, headers=headers) as response,
        ):
            return response.status, await response.read()


@pytest.fixture
async def proxy(emulator: GeminiEmulator) -> AsyncIterator[GeminiProxy]:
    started = await GeminiProxy.start(emulator.base_url)
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
def no_secret_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert KEY_A not in caplog.text
    assert KEY_B not in caplog.text


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:")]


def answer_text(raw: bytes) -> str:
    return "".join(
        part.get("text", "")
        for event in sse_events(raw)
        for part in event["candidates"][0]["content"]["parts"]
    )


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        assert KEY_A not in str(text)
        assert KEY_B not in str(text)


async def test_a_streamed_answer_reaches_the_client_chunk_by_chunk(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    # The second chunk comes 60 s after the first: a buffering proxy would hold the first.
    emulator.script(slow_reply("slow answer", chunks=2, delay=60))
    served = Served(proxy, ("a", KEY_A))

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            served.url + STREAM, json=BODY, headers={"x-goog-api-key": served.run.credential}
        ) as response,
    ):
        first = await asyncio.wait_for(response.content.readline(), 20)
        emulator.stop()  # ends the slow answer

    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert json.loads(first[5:])["candidates"][0]["content"]["parts"][0]["text"] == "slow "


async def test_the_real_key_goes_upstream_and_the_credential_does_not(
    proxy: GeminiProxy, emulator: GeminiEmulator, no_secret_logged: None
) -> None:
    served = Served(proxy, ("a", KEY_A))
    # The CLI may also send the key as ?key=.
    status, raw = await served.post(f"{STREAM}&key={served.run.credential}", credential="")

    assert status == 200
    (request,) = emulator.requests
    assert request.api_key == KEY_A
    assert "key" not in request.query
    assert request.query["alt"] == "sse"
    assert served.run.credential not in json.dumps(request.headers)
    assert_no_secret(raw)


@pytest.mark.parametrize("path", [STREAM, GENERATE])
async def test_usage_is_counted_from_usage_metadata(
    proxy: GeminiProxy, emulator: GeminiEmulator, path: str
) -> None:
    emulator.script(
        text_reply("one", prompt_tokens=1000, candidates_tokens=20),
        text_reply("two", prompt_tokens=1100, candidates_tokens=30),
    )
    served = Served(proxy, ("a", KEY_A))
    await served.post(path)
    await served.post(path)
    # countTokens is not a generate request: not counted.
    await served.post(f"/v1beta/models/{MODEL}:countTokens")

    assert served.run.tokens == 1020 + 1130


async def test_a_429_moves_the_request_to_another_key(
    proxy: GeminiProxy, emulator: GeminiEmulator, no_secret_logged: None
) -> None:
    emulator.set_key_behaviour(KEY_A, quota_exhausted("minute", retry_seconds=26))
    emulator.script(text_reply("served by B"), text_reply("B again"))
    served = Served(proxy, ("key-a", KEY_A), ("key-b", KEY_B))

    status, raw = await served.post()
    assert (status, answer_text(raw)) == (200, "served by B")
    assert [r.api_key for r in emulator.requests] == [KEY_A, KEY_B]
    (warning,) = served.warnings()
    a = served.keys.keys[0]
    assert f"API key key-a ({a.fingerprint}) cooled down for {MODEL} for 26s" in warning
    assert "GenerateRequestsPerMinutePerProjectPerModel-FreeTier" in warning
    assert "the request moved to key key-b" in warning
    assert all(e.severity == "warning" for e in served.events)  # type: ignore[union-attr]

    # The cooled key is left alone for the next request.
    emulator.clear_requests()
    status, raw = await served.post()
    assert (status, answer_text(raw)) == (200, "B again")
    assert [r.api_key for r in emulator.requests] == [KEY_B]
    assert_no_secret(served.events, raw)


async def test_a_daily_quota_cools_the_key_until_the_reset(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    emulator.set_key_behaviour(KEY_A, quota_exhausted("day", retry_seconds=26))
    served = Served(proxy, ("key-a", KEY_A), ("key-b", KEY_B))

    status, _ = await served.post()

    assert status == 200
    (warning,) = served.warnings()
    assert "until the daily reset (midnight Pacific, in " in warning


async def test_a_refused_key_is_disabled_and_the_request_moves_on(
    proxy: GeminiProxy, emulator: GeminiEmulator, no_secret_logged: None
) -> None:
    emulator.set_key_behaviour(KEY_A, invalid_api_key())
    emulator.script(text_reply("served by B"))
    served = Served(proxy, ("key-a", KEY_A), ("key-b", KEY_B))

    status, raw = await served.post()

    assert (status, answer_text(raw)) == (200, "served by B")
    assert [r.api_key for r in emulator.requests] == [KEY_A, KEY_B]
    (warning,) = served.warnings()
    assert "API key key-a (sha256:" in warning
    assert "disabled: the API refused it (API_KEY_INVALID, HTTP 400)" in warning
    assert "the request moved to key key-b" in warning
    # Disabled for good: even when the emulator accepts it again.
    emulator.set_key_behaviour(KEY_A, None)
    emulator.clear_requests()
    await served.post()
    assert [r.api_key for r in emulator.requests] == [KEY_B]


async def test_with_every_key_exhausted_the_client_gets_a_429_with_the_delay(
    proxy: GeminiProxy, emulator: GeminiEmulator, no_secret_logged: None
) -> None:
    emulator.set_key_behaviour(KEY_A, quota_exhausted("minute", retry_seconds=40))
    emulator.set_key_behaviour(KEY_B, quota_exhausted("minute", retry_seconds=26))
    served = Served(proxy, ("key-a", KEY_A), ("key-b", KEY_B))

    status, raw = await served.post()

    assert status == 429
    error = json.loads(raw)["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    # The delay until the first key has capacity again.
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"} in error[
        "details"
    ]
    assert error["message"].startswith(f"no key has capacity for {MODEL} (2 API keys): key-b")
    assert error["message"].endswith("Please retry in 26s.")
    first, second = served.warnings()
    assert "key-a" in first
    assert "the request moved to key key-b" in first
    assert "key-b" in second
    assert "no other key has capacity" in second
    assert_no_secret(raw, served.events)


@pytest.mark.parametrize(
    ("credential", "status", "google_status"),
    [("", 401, "UNAUTHENTICATED"), ("not-a-running-task", 403, "PERMISSION_DENIED")],
)
async def test_an_unknown_credential_is_refused(
    proxy: GeminiProxy, emulator: GeminiEmulator, credential: str, status: int, google_status: str
) -> None:
    served = Served(proxy, ("a", KEY_A))

    answer = await served.post(credential=credential)

    assert answer[0] == status
    assert json.loads(answer[1])["error"]["status"] == google_status
    assert emulator.requests == []


async def test_a_finished_run_s_credential_is_refused(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    served = Served(proxy, ("a", KEY_A))
    proxy.unregister(served.run)

    status, _ = await served.post()

    assert status == 403
    assert emulator.requests == []


async def test_a_task_over_its_token_budget_gets_no_more_requests(
    proxy: GeminiProxy, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("expensive", prompt_tokens=5000, candidates_tokens=200))
    served = Served(proxy, ("a", KEY_A), budget=5000)

    status, raw = await served.post()
    assert (status, answer_text(raw)) == (200, "expensive")  # the current answer finishes
    assert served.run.stopped == "token budget exceeded: 5200 of 5000 tokens"

    status, raw = await served.post()
    assert status == 429
    assert json.loads(raw)["error"]["message"] == "token budget exceeded: 5200 of 5000 tokens"
    assert len(emulator.requests) == 1
    assert any("token budget exceeded: 5200 of 5000" in m for m in served.warnings())


async def test_a_server_error_passes_through_without_penalty_and_scrubbed(
    proxy: GeminiProxy, emulator: GeminiEmulator, no_secret_logged: None
) -> None:
    echoing = ErrorReply(500, error_body(500, "INTERNAL", f"backend failed for key {KEY_A}"))
    emulator.script(echoing, text_reply("fine now"))
    served = Served(proxy, ("key-a", KEY_A), ("key-b", KEY_B))

    status, raw = await served.post()
    assert status == 500
    assert json.loads(raw)["error"]["message"] == "backend failed for key ***"

    status, raw = await served.post()
    assert (status, answer_text(raw)) == (200, "fine now")
    assert [r.api_key for r in emulator.requests] == [KEY_A, KEY_A]
    assert served.events == []
