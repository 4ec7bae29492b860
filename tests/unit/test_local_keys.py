"""Keys a node holds itself, used without a scheduler: in turn, cooled in memory after a 429,
set aside for good once the API refuses them; and a run's tokens against its budget."""

from __future__ import annotations

import pytest

from agentmesh.node.key_source import (
    KeySources,
    KeyUse,
    LocalKey,
    LocalKeys,
    LocalKeySource,
    NoApiKey,
    TaskRun,
)

MODEL = "gemini-2.5-flash"
RUN = TaskRun("t-1", 1, token_budget=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(clock: Clock) -> tuple[LocalKeys, LocalKey, LocalKey]:
    a, b = LocalKey.of("a", "secret-a-123"), LocalKey.of("b", "secret-b-456")
    return LocalKeys([a, b], clock=clock), a, b


async def test_keys_are_used_in_order_and_a_429_cools_one_per_model() -> None:
    clock = Clock()
    keys, a, b = pool(clock)
    source = LocalKeySource(keys)

    assert (await source.lease(RUN, MODEL, [], True)).fingerprint == a.fingerprint
    await source.report(RUN, KeyUse(a.fingerprint, MODEL, 429, True, retry_delay_seconds=26))

    assert (await source.lease(RUN, MODEL, [], True)).fingerprint == b.fingerprint
    assert (await source.lease(RUN, "gemini-2.5-pro", [], True)).fingerprint == a.fingerprint
    clock.now += 26
    assert (await source.lease(RUN, MODEL, [], True)).fingerprint == a.fingerprint


async def test_the_preferred_key_comes_first_and_excluded_ones_never() -> None:
    keys, a, b = pool(Clock())
    source = LocalKeySource(keys)
    preferring_b = TaskRun("t-2", 1, key_fingerprint=b.fingerprint)

    assert (await source.lease(preferring_b, MODEL, [], True)).fingerprint == b.fingerprint
    lease = await source.lease(preferring_b, MODEL, [b.fingerprint], True)
    assert lease.fingerprint == a.fingerprint


async def test_with_no_key_left_the_lease_says_when_and_why() -> None:
    clock = Clock()
    keys, a, b = pool(clock)
    source = LocalKeySource(keys)
    await source.report(RUN, KeyUse(a.fingerprint, MODEL, 429, True, retry_delay_seconds=40))
    await source.report(
        RUN, KeyUse(b.fingerprint, MODEL, 400, True, error_reason="API_KEY_INVALID")
    )

    lease = await source.lease(RUN, MODEL, [], True)

    assert lease.exhausted
    assert lease.retry_after_seconds == 40
    assert lease.reason == (
        f"no key has capacity for {MODEL} (2 API keys): a ({a.fingerprint}) cooling down after"
        " HTTP 429 (per-minute quota exhausted), back in 40s; b"
        f" ({b.fingerprint}) refused by the API: API_KEY_INVALID (HTTP 400); next capacity"
        " in 40s"
    )
    assert "secret" not in repr(lease)


async def test_a_refused_key_stays_refused() -> None:
    clock = Clock()
    keys, a, b = pool(clock)
    source = LocalKeySource(keys)
    await source.report(
        RUN, KeyUse(a.fingerprint, MODEL, 403, True, error_reason="PERMISSION_DENIED")
    )
    clock.now += 86400

    assert (await source.lease(RUN, MODEL, [], True)).fingerprint == b.fingerprint


async def test_only_successful_counted_requests_spend_the_budget() -> None:
    keys, a, _ = pool(Clock())
    source = LocalKeySource(keys)

    spent = await source.report(RUN, KeyUse(a.fingerprint, MODEL, 200, True, total_tokens=600))
    assert (spent.task_tokens, spent.exceeded) == (600, False)
    await source.report(RUN, KeyUse(a.fingerprint, MODEL, 200, False, total_tokens=900))
    await source.report(RUN, KeyUse(a.fingerprint, MODEL, 500, True, total_tokens=900))
    spent = await source.report(RUN, KeyUse(a.fingerprint, MODEL, 200, True, total_tokens=401))

    assert (spent.task_tokens, spent.token_budget, spent.exceeded) == (1001, 1000, True)


def test_a_run_s_key_comes_first_then_the_scheduler_then_the_node_s_keys() -> None:
    held, _, _ = pool(Clock())

    assert isinstance(KeySources(held, None).choose("given-key"), LocalKeySource)
    assert isinstance(KeySources(held, None).choose(""), LocalKeySource)
    with pytest.raises(NoApiKey, match=r"^no API key: "):
        KeySources(None, None).choose("")
