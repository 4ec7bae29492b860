"""Quotas held in PostgreSQL: keys reserved for tasks, leased per API request, cooled, refused.

Google limits a key per model: requests a minute, requests a day and tokens a day (the day
ends at midnight Pacific time). The pool counts the same way, in `api_key_usage` (per key,
model and day) and `api_key_models` (per key and model: the cooldown after a 429 and the
earliest time the next request may go). Every decision that spends capacity locks the rows
it reads (FOR UPDATE, rechecked after the lock), so any number of scheduler replicas,
deciding at once, never spend together more than a key allows.

- A gemini task *reserves* its forecast (requests and tokens) on one key before it is
  dispatched, and books that key's next request slot: one statement. A key whose next slot
  is further than `HORIZON_SECONDS` away is at its per-minute limit now.
- Each API request of the task *leases* a key (its booked slot first), and the node's proxy
  *reports* what it cost: the exact figures replace the reservation as they come.
- A 429 cools the key for that model (until the next reset for a daily quota); a refused key
  is disabled with the reason. Neither uses an attempt of the task.

Limits come from `api_policy`, overridden per key; 0 means no limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from agentmesh.config import ApiPolicy
from agentmesh.db.connect import Connection
from agentmesh.keys.day import PACIFIC_TODAY_SQL
from agentmesh.node.executors.gemini_errors import seconds_until_daily_reset

PACIFIC_TODAY = PACIFIC_TODAY_SQL
# A key whose next request slot is at most this far away has capacity now: the task's CLI
# starts meanwhile, and its proxy waits out the rest.
HORIZON_SECONDS = 3.0
# Requests are spaced 60 s / rpm apart, and 3.5 % more: a request reaches Google a little
# after its slot (a late booked slot, the proxy's wake-up, the network); R requests spaced
# so may be late by 2.1 s together before an R + 1st could fit in a minute.
SPACING_FACTOR = 1.035
# A booked slot used later than this is given up for a new one (see TAKE_BOOKED_SLOT); the
# rest of the 2.1 s is for the way from the proxy to Google.
LATE_SLOT_SECONDS = 1.4
# A task's first request comes when its CLI has started: its booked slot is at least this
# far ahead, so that a CLI that starts in time meets it.
FIRST_SLOT_LEAD_SECONDS = 1.0
# A quota that comes back later than this is treated as daily (Gemini CLI's own rule).
DAILY_DELAY_SECONDS = 300.0


@dataclass(frozen=True)
class Limits:
    """api_policy's limits, 0 = none; a key's own columns override them."""

    requests_per_minute: int
    requests_per_day: int
    tokens_per_day: int

    @classmethod
    def of(cls, policy: ApiPolicy) -> Limits:
        return cls(policy.rpm_soft_limit, policy.max_requests_per_day, policy.max_tokens_per_key)

    @property
    def args(self) -> tuple[int, int, int]:
        return (self.requests_per_minute, self.requests_per_day, self.tokens_per_day)


@dataclass(frozen=True)
class KeyChoice:
    """A key the pool gave out: never its secret in the clear (`sealed` is the stored form)."""

    key_id: int
    label: str
    fingerprint: str
    node_id: str | None
    sealed: str | None
    # When the request may go (reservations: the booked slot; leases: this request's slot).
    slot: datetime
    # Seconds from now to the slot, by the database's clock (leases only).
    wait: float = 0.0


@dataclass(frozen=True)
class Shortage:
    """Why no key has capacity, in words, and when some may come back (None: not by time
    alone, e.g. every key is disabled)."""

    reason: str
    retry_at: datetime | None


# The limits of key `k` in force, from the policy's $N, $N+1, $N+2: NULL = no limit.
def _limits(first: int) -> str:
    return f"""CROSS JOIN LATERAL (
        SELECT NULLIF(coalesce(k.requests_per_minute, ${first}), 0) AS rpm,
               NULLIF(coalesce(k.requests_per_day, ${first + 1}), 0) AS rpd,
               NULLIF(coalesce(k.tokens_per_day, ${first + 2}), 0) AS tpd) lim"""


_SPACING = (
    "CASE WHEN lim.rpm IS NULL THEN interval '0'"
    f" ELSE make_interval(secs => 60.0 / lim.rpm * {SPACING_FACTOR}) END"
)
# Rows for every enabled key and this model: the pick below locks existing rows only.
ENSURE_ROWS = f"""
WITH k AS (SELECT id FROM api_keys WHERE enabled AND provider = 'gemini'),
m AS (INSERT INTO api_key_models (key_id, model) SELECT id, $1 FROM k ON CONFLICT DO NOTHING)
INSERT INTO api_key_usage (key_id, model, day)
SELECT id, $1, {PACIFIC_TODAY} FROM k ON CONFLICT DO NOTHING
"""
# Which keys a task may use: enabled, not cooling down for the model, its user's or
# anyone's, central or held by one of the nodes it may run on.
_USABLE = """
    k.enabled AND k.provider = 'gemini'
    AND (k.assigned_user IS NULL OR k.assigned_user = $2)
    AND (k.node_id IS NULL OR k.node_id = ANY($3::text[]))
    AND (m.cooling_until IS NULL OR m.cooling_until <= now())
"""
# The pool's order: the user's own keys, then priority; among equals, a non-rotating key is
# used until it runs out, rotating keys take turns (least recently used first).
_ORDER = """
    (k.assigned_user IS NOT NULL) DESC, coalesce(k.priority, 0) DESC,
    coalesce(k.rotating, true), CASE WHEN coalesce(k.rotating, true) THEN k.last_used_at END
    NULLS FIRST, k.id
"""
# $1 task, $2 user, $3 nodes, $4 model, $5 requests, $6 tokens, $7 budget, $8 horizon,
# $9-$11 limits. Locks the chosen key's usage and model rows (rechecked after the lock), so
# the reservation is exact whatever other replicas do at the same time.
RESERVE = f"""
WITH pick AS (
    SELECT k.id, k.name, k.fingerprint, k.node_id, k.key_value,
           greatest(m.next_request_at,
                    now() + make_interval(secs => {FIRST_SLOT_LEAD_SECONDS})) AS slot,
           {_SPACING} AS spacing
    FROM api_keys k {_limits(9)}
    JOIN api_key_usage u ON u.key_id = k.id AND u.model = $4 AND u.day = {PACIFIC_TODAY}
    JOIN api_key_models m ON m.key_id = k.id AND m.model = $4
    WHERE {_USABLE}
      AND m.next_request_at <= now() + make_interval(secs => $8)
      AND (lim.rpd IS NULL OR u.requests + u.reserved_requests + $5 <= lim.rpd)
      AND (lim.tpd IS NULL OR u.tokens + u.reserved_tokens + $6 <= lim.tpd)
    ORDER BY {_ORDER}
    LIMIT 1
    FOR UPDATE OF u, m
), held AS (
    UPDATE api_key_usage u
    SET reserved_requests = u.reserved_requests + $5, reserved_tokens = u.reserved_tokens + $6
    FROM pick WHERE u.key_id = pick.id AND u.model = $4 AND u.day = {PACIFIC_TODAY}
), booked AS (
    UPDATE api_key_models m SET next_request_at = pick.slot + pick.spacing
    FROM pick WHERE m.key_id = pick.id AND m.model = $4
), used AS (
    UPDATE api_keys SET last_used_at = now() FROM pick WHERE api_keys.id = pick.id
), reserved AS (
    INSERT INTO key_reservations AS r (task_id, key_id, model, day, requests, tokens,
        first_slot, predicted_requests, predicted_tokens, budget)
    SELECT $1, pick.id, $4, {PACIFIC_TODAY}, $5, $6, pick.slot,
           $5, $6, $7
    FROM pick
    ON CONFLICT (task_id) DO UPDATE SET
        key_id = EXCLUDED.key_id, model = EXCLUDED.model, day = EXCLUDED.day,
        requests = EXCLUDED.requests, tokens = EXCLUDED.tokens, first_slot = EXCLUDED.first_slot,
        predicted_requests = EXCLUDED.predicted_requests,
        predicted_tokens = EXCLUDED.predicted_tokens, budget = EXCLUDED.budget
)
SELECT id, name, fingerprint, node_id, key_value, slot FROM pick
"""
# Give back what a task's reservation still holds before it reserves again (the trigger on
# tasks does this when an attempt ends).
RELEASE = """
WITH r AS (
    SELECT task_id, key_id, model, day, requests, tokens FROM key_reservations
    WHERE task_id = ANY($1::text[]) AND (requests > 0 OR tokens > 0 OR first_slot IS NOT NULL)
    FOR UPDATE
), u AS (
    UPDATE api_key_usage u
    SET reserved_requests = greatest(u.reserved_requests - r.requests, 0),
        reserved_tokens = greatest(u.reserved_tokens - r.tokens, 0)
    FROM r WHERE u.key_id = r.key_id AND u.model = r.model AND u.day = r.day
)
UPDATE key_reservations k SET requests = 0, tokens = 0, first_slot = NULL
FROM r WHERE k.task_id = r.task_id
"""
# A request's key: the slot the task's reservation booked, if its key is still usable. A
# request sent later than its slot comes closer to the requests booked after it: up to
# LATE_SLOT_SECONDS late it may go (the spacing's margin covers that), later only if no
# request was booked on the key after it (then the next slot moves on from now); otherwise
# it takes a new slot. $1 task, $2 user, $3 nodes, $4 model, $5 exclude, $6-$8 limits.
TAKE_BOOKED_SLOT = f"""
WITH r AS (
    SELECT r.task_id, r.key_id, r.first_slot, {_SPACING} AS spacing
    FROM key_reservations r
    JOIN api_keys k ON k.id = r.key_id {_limits(6)}
    LEFT JOIN api_key_models m ON m.key_id = k.id AND m.model = r.model
    WHERE r.task_id = $1 AND r.model = $4 AND r.first_slot IS NOT NULL
      AND NOT k.fingerprint = ANY($5::text[]) AND {_USABLE}
      AND (r.first_slot >= now() - make_interval(secs => {LATE_SLOT_SECONDS})
           OR m.next_request_at <= r.first_slot + {_SPACING} + interval '1 ms')
    FOR UPDATE OF r
), taken AS (
    UPDATE key_reservations k SET first_slot = NULL, used_requests = k.used_requests + 1,
        requests = greatest(k.requests - 1, 0)
    FROM r WHERE k.task_id = r.task_id
), held AS (
    UPDATE api_key_usage u SET requests = u.requests + 1,
        reserved_requests = greatest(u.reserved_requests - 1, 0)
    FROM r, key_reservations kr
    WHERE kr.task_id = r.task_id AND u.key_id = kr.key_id AND u.model = kr.model
      AND u.day = kr.day
), moved_on AS (
    UPDATE api_key_models m SET next_request_at = greatest(m.next_request_at, now() + r.spacing)
    FROM r WHERE m.key_id = r.key_id AND m.model = $4
)
SELECT k.id, k.name, k.fingerprint, k.node_id, k.key_value, r.first_slot AS slot,
       extract(epoch FROM r.first_slot - clock_timestamp())::float8 AS wait
FROM r JOIN api_keys k ON k.id = r.key_id
"""
# Any other key for one request: one with a slot now before one that must be waited for,
# the task's own key before others. $1 task, $2 user, $3 nodes, $4 model, $5 exclude,
# $6 counted, $7 longest wait, $8-$10 limits.
LEASE = f"""
WITH own AS (
    SELECT key_id, day, requests, tokens FROM key_reservations
    WHERE task_id = $1 AND model = $4
    FOR UPDATE
), pick AS (
    SELECT k.id, k.name, k.fingerprint, k.node_id, k.key_value,
           greatest(m.next_request_at, now()) AS slot, {_SPACING} AS spacing,
           (own.key_id IS NOT NULL AND own.requests > 0 AND own.day = u.day) AS from_own
    FROM api_keys k {_limits(8)}
    JOIN api_key_usage u ON u.key_id = k.id AND u.model = $4 AND u.day = {PACIFIC_TODAY}
    JOIN api_key_models m ON m.key_id = k.id AND m.model = $4
    LEFT JOIN own ON own.key_id = k.id
    WHERE {_USABLE}
      AND NOT k.fingerprint = ANY($5::text[])
      AND (NOT $6 OR m.next_request_at <= now() + make_interval(secs => $7))
      AND (NOT $6 OR lim.rpd IS NULL OR u.requests + u.reserved_requests
           - CASE WHEN own.day = u.day THEN own.requests ELSE 0 END + 1 <= lim.rpd)
      AND (lim.tpd IS NULL OR u.tokens + u.reserved_tokens
           - CASE WHEN own.day = u.day THEN own.tokens ELSE 0 END < lim.tpd)
    ORDER BY (NOT $6 OR m.next_request_at <= now() + interval '0.5 s') DESC,
             (own.key_id IS NOT NULL) DESC, {_ORDER}
    LIMIT 1
    FOR UPDATE OF u, m
), counted AS (
    UPDATE api_key_usage u SET requests = u.requests + 1,
        reserved_requests = u.reserved_requests - CASE WHEN pick.from_own THEN 1 ELSE 0 END
    FROM pick WHERE $6 AND u.key_id = pick.id AND u.model = $4 AND u.day = {PACIFIC_TODAY}
), booked AS (
    UPDATE api_key_models m SET next_request_at = pick.slot + pick.spacing
    FROM pick WHERE $6 AND m.key_id = pick.id AND m.model = $4
), taken AS (
    UPDATE key_reservations r SET used_requests = r.used_requests + 1,
        requests = r.requests - CASE WHEN pick.from_own THEN 1 ELSE 0 END
    FROM pick WHERE $6 AND r.task_id = $1
), used AS (
    UPDATE api_keys SET last_used_at = now() FROM pick WHERE $6 AND api_keys.id = pick.id
)
SELECT id, name, fingerprint, node_id, key_value, slot,
       extract(epoch FROM slot - clock_timestamp())::float8 AS wait FROM pick
"""
# The exact figures of a request replace what the task's reservation held for them.
LOCK_RESERVATION = (
    "SELECT key_id, model, day, tokens FROM key_reservations WHERE task_id = $1 FOR UPDATE"
)
ADD_TOKENS = f"""
INSERT INTO api_key_usage AS u (key_id, model, day, tokens) VALUES ($1, $2, {PACIFIC_TODAY}, $3)
ON CONFLICT (key_id, model, day) DO UPDATE SET tokens = u.tokens + EXCLUDED.tokens
"""
FREE_RESERVED_TOKENS = """
UPDATE api_key_usage SET reserved_tokens = greatest(reserved_tokens - $4, 0)
WHERE key_id = $1 AND model = $2 AND day = $3
"""
SPENT_BY_TASK = """
UPDATE key_reservations SET used_tokens = used_tokens + $2, tokens = tokens - $3
WHERE task_id = $1 RETURNING used_tokens, budget
"""
# A request that was not answered with success was not spent (Google counts what it serves).
UNCOUNT_REQUEST = f"""
WITH u AS (
    UPDATE api_key_usage SET requests = greatest(requests - 1, 0)
    WHERE key_id = $2 AND model = $3 AND day = {PACIFIC_TODAY}
)
UPDATE key_reservations SET used_requests = greatest(used_requests - 1, 0) WHERE task_id = $1
"""
COOL = """
INSERT INTO api_key_models AS m (key_id, model, cooling_until, cooling_reason)
VALUES ($1, $2, now() + make_interval(secs => $3), $4)
ON CONFLICT (key_id, model) DO UPDATE
SET cooling_until = greatest(coalesce(m.cooling_until, now()), EXCLUDED.cooling_until),
    cooling_reason = EXCLUDED.cooling_reason
"""
DISABLE = "UPDATE api_keys SET enabled = false, disabled_reason = $2 WHERE id = $1"
KEY_BY_FINGERPRINT = "SELECT id, name FROM api_keys WHERE fingerprint = $1"
TASK_SPENT = "SELECT used_tokens, used_requests, budget FROM key_reservations WHERE task_id = $1"
# The state of every key a task could use, for the reason it waits and when to look again.
KEY_STATES = f"""
SELECT k.enabled, k.node_id IS NOT NULL AND NOT k.node_id = ANY($2::text[]) AS elsewhere,
       coalesce(m.cooling_until > now(), false) AS cooling, m.cooling_until,
       m.next_request_at,
       coalesce(m.next_request_at > now() + make_interval(secs => $4), false) AS at_rpm,
       (lim.rpd IS NOT NULL AND coalesce(u.requests + u.reserved_requests, 0) + $5 > lim.rpd)
       OR (lim.tpd IS NOT NULL AND coalesce(u.tokens + u.reserved_tokens, 0) + $6 > lim.tpd)
       AS out_today,
       (lim.rpd IS NOT NULL AND coalesce(u.requests, 0) + $5 > lim.rpd)
       OR (lim.tpd IS NOT NULL AND coalesce(u.tokens, 0) + $6 > lim.tpd) AS spent_today
FROM api_keys k {_limits(7)}
LEFT JOIN api_key_usage u ON u.key_id = k.id AND u.model = $3 AND u.day = {PACIFIC_TODAY}
LEFT JOIN api_key_models m ON m.key_id = k.id AND m.model = $3
WHERE k.provider = 'gemini' AND (k.assigned_user IS NULL OR k.assigned_user = $1)
"""


# What may let waiting tasks find a key, beyond time (a waiting task comes back by itself
# when the pool said capacity returns): a new or re-enabled key, a changed cooldown or
# assignment. Quota given back when a task ends is announced by its dispatcher instead.
KEY_SIGNATURE = """
SELECT k.id, k.enabled, k.node_id, k.assigned_user, k.priority, m.model, m.cooling_until
FROM api_keys k LEFT JOIN api_key_models m ON m.key_id = k.id
WHERE k.provider = 'gemini'
"""


def _choice(row: asyncpg.Record) -> KeyChoice:
    return KeyChoice(
        key_id=row["id"],
        label=row["name"],
        fingerprint=row["fingerprint"],
        node_id=row["node_id"],
        sealed=row["key_value"],
        slot=row["slot"],
        wait=row.get("wait", 0.0),
    )


async def ensure_rows(conn: Connection, model: str) -> None:
    await conn.execute(ENSURE_ROWS, model)


async def reserve(
    conn: Connection,
    *,
    task_id: str,
    user: str,
    nodes: list[str],
    model: str,
    requests: int,
    tokens: int,
    budget: int,
    limits: Limits,
) -> KeyChoice | None:
    """Hold a task's forecast on the best key with capacity for it, and book that key's next
    request slot; None when no key has capacity (see `shortage`). Call `ensure_rows` for the
    model first. What the task held before is given back first."""
    await conn.execute(RELEASE, [task_id])
    row = await conn.fetchrow(
        RESERVE,
        task_id,
        user,
        nodes,
        model,
        requests,
        tokens,
        budget,
        HORIZON_SECONDS,
        *limits.args,
    )
    return None if row is None else _choice(row)


async def release(conn: Connection, task_ids: list[str]) -> None:
    if task_ids:
        await conn.execute(RELEASE, task_ids)


async def lease(
    conn: Connection,
    *,
    task_id: str,
    user: str,
    agent_id: str,
    model: str,
    exclude: list[str],
    counted: bool,
    longest_wait_seconds: float,
    limits: Limits,
) -> KeyChoice | None:
    """A key for one API request of a running task: the slot its reservation booked, else
    the best key with capacity (counted: one request spent on it, its next slot booked)."""
    async with conn.transaction():
        await ensure_rows(conn, model)
        if counted:
            row = await conn.fetchrow(
                TAKE_BOOKED_SLOT, task_id, user, [agent_id], model, exclude, *limits.args
            )
            if row is not None:
                return _choice(row)
        row = await conn.fetchrow(
            LEASE,
            task_id,
            user,
            [agent_id],
            model,
            exclude,
            counted,
            longest_wait_seconds,
            *limits.args,
        )
        return None if row is None else _choice(row)


async def spend_tokens(
    conn: Connection, *, task_id: str, key_id: int, model: str, tokens: int
) -> tuple[int, int]:
    """Count a request's tokens on its key; returns (the task's tokens so far, its budget)."""
    async with conn.transaction():
        held = await conn.fetchrow(LOCK_RESERVATION, task_id)
        await conn.execute(ADD_TOKENS, key_id, model, tokens)
        freed = 0
        if held is not None and held["key_id"] == key_id and held["model"] == model:
            freed = min(held["tokens"], tokens)
            await conn.execute(FREE_RESERVED_TOKENS, key_id, model, held["day"], freed)
        row = await conn.fetchrow(SPENT_BY_TASK, task_id, tokens, freed)
    if row is None:  # a direct run: no reservation, no budget kept here
        return tokens, 0
    return int(row["used_tokens"]), int(row["budget"])


async def uncount_request(conn: Connection, *, task_id: str, key_id: int, model: str) -> None:
    await conn.execute(UNCOUNT_REQUEST, task_id, key_id, model)


def cooldown_seconds(retry_delay: float, quota_id: str, now: datetime | None = None) -> float:
    """How long a 429 cools a key: a daily quota (its id says PerDay, or it comes back later
    than Gemini CLI would wait) until the next reset; otherwise the retry delay (1 s at least)."""
    if "PerDay" in quota_id or retry_delay > DAILY_DELAY_SECONDS:
        return max(retry_delay, seconds_until_daily_reset(now or datetime.now(UTC)))
    return max(retry_delay, 1.0)


async def cool(conn: Connection, key_id: int, model: str, seconds: float, reason: str) -> None:
    await conn.execute(COOL, key_id, model, float(seconds), reason)


async def disable(conn: Connection, key_id: int, reason: str) -> None:
    await conn.execute(DISABLE, key_id, reason)


async def shortage(
    conn: Connection,
    *,
    user: str,
    nodes: list[str],
    model: str,
    requests: int,
    tokens: int,
    limits: Limits,
) -> Shortage:
    """Why no key has capacity for a task's forecast now, and when to look again."""
    rows = await conn.fetch(
        KEY_STATES, user, nodes, model, HORIZON_SECONDS, requests, tokens, *limits.args
    )
    whose = f" of user {user} or anyone" if user else ""
    if not rows:
        return Shortage(
            f"no API key: none in api_keys{whose} (add one to GEMINI_API_KEY_FILE or with"
            " `agentmesh keys add`)",
            None,
        )
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    times: list[datetime] = []
    for row in rows:
        if not row["enabled"]:
            kind = "disabled"
        elif row["elsewhere"]:
            kind = "held by a node that is busy, offline or cannot run it"
        elif row["cooling"]:
            kind = "cooling down after a 429"
            times.append(row["cooling_until"])
        elif row["out_today"]:
            kind = "without enough daily quota left for its forecast"
            if row["spent_today"]:
                times.append(now + timedelta(seconds=seconds_until_daily_reset(now)))
        elif row["at_rpm"]:
            kind = "at the per-minute limit"
            times.append(row["next_request_at"] - timedelta(seconds=HORIZON_SECONDS))
        else:
            continue  # it has capacity now (someone else's reservation just went)
        counts[kind] = counts.get(kind, 0) + 1
    retry_at = min(times) if times else None
    total = len(rows)
    if len(counts) == 1 and next(iter(counts.values())) == total:
        kind = next(iter(counts))
        what = "the key" if total == 1 else f"all {total} keys"
        reason = f"no API key has capacity: {what} for {model}{whose} {_verb(total)} {kind}"
    else:
        parts = [f"{n} {kind}" for kind, n in counts.items()]
        reason = f"no API key has capacity for {model}{whose}: " + ", ".join(parts)
    if retry_at is not None:
        wait = max(math.ceil((retry_at - now).total_seconds()), 0)
        reason += f"; next capacity in {_duration(wait)}"
    return Shortage(reason, retry_at)


def _verb(n: int) -> str:
    return "is" if n == 1 else "are"


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


async def key_signature(conn: Connection) -> frozenset[tuple[object, ...]]:
    return frozenset(tuple(row) for row in await conn.fetch(KEY_SIGNATURE))


async def task_spent(conn: Connection, task_id: str) -> tuple[int, int] | None:
    """(tokens, requests) a task spent on its keys in all, if it ever held a key."""
    row = await conn.fetchrow(TASK_SPENT, task_id)
    return None if row is None else (int(row["used_tokens"]), int(row["used_requests"]))
