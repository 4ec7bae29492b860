"""Token forecasts for gemini tasks, learned from `token_prediction_log`, and how good they are.

The model. A Gemini CLI run makes one API request per model turn (a tool call costs at least
two), and every request re-sends the CLI's system prompt, its tool declarations and the
conversation so far: the prompt and its context, then each turn's answer and tool results.
So a task costs about

    tokens = requests * (overhead + slope * plain_rule(prompt_chars))

where `overhead` is what a request costs beyond the prompt (the system prompt, the tool
declarations, the model's output, the history re-sent on later turns) and `slope` corrects
the 4-characters-a-token rule (code and non-English text have fewer characters a token).
None of it is a constant: the system prompt changes with the CLI's version, and how many
turns a task takes depends on who asks what of which model. So it is learned:

- From the most specific group with at least MIN_HISTORY finished tasks among its HISTORY
  most recent: (user, model, agent mode), then (model, agent mode), then (agent mode). The
  window follows changes (a new CLI version) within a few dozen tasks. With no such group
  the forecast is the plain rule: 1 request (2 for an agentic task: a tool call and the
  answer) and plain_rule(prompt_chars) tokens, what the issue says to start from.
- `slope` is the Theil-Sen estimate (the median of pairwise slopes) of tokens per request
  against plain-rule tokens, over pairs of tasks whose prompts differ enough to tell; 1 when
  too few do, and kept within [0.5, 2] (8 to 2 characters a token).
- Each past task i of the group is then replayed with the new prompt: with its own turns and
  its own overhead per turn, it would have cost actual_i + requests_i * slope * (x - x_i),
  x being the plain-rule tokens of the prompt. The forecast is the median of these, and of
  requests_i. Replaying keeps each task's overhead with its own number of turns, so a long
  prompt is charged once per turn, as the CLI sends it; an overhead averaged apart from the
  turns would charge a 20-turn task's history to a one-turn task. Medians, because one
  runaway agentic task must not move the forecast, and because the figure the report scores
  (the median absolute percentage error) rewards a median-like estimate.

Forecasting reads one indexed query per group (schema 0008's partial indexes), cached for
`cache_seconds` per group, because the dispatcher forecasts every gemini task it considers.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from agentmesh.db.connect import Connection
from agentmesh.errors import InvalidArgument
from agentmesh.tasks.model import AgentMode
from agentmesh.v1 import keys_pb2

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # Google's rule of thumb
HISTORY = 50  # the most recent finished tasks a group learns from
MIN_HISTORY = 5  # fewer than this, and the next wider group is asked
SLOPE_BOUNDS = (0.5, 2.0)
# Two tasks tell something of the slope when their prompts differ by at least this share.
SLOPE_SPREAD = 0.25
MIN_SLOPE_PAIRS = 10
# Without history: an agentic run that calls a tool makes two requests.
DEFAULT_REQUESTS = {AgentMode.AGENTIC.value: 2, AgentMode.PLAIN.value: 1}
REPORT_DAYS = 30  # TokenReportRequest.days = 0
MAX_CACHED_GROUPS = 4096
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{12}$")

# The newest finished tasks of a group; each has an index of schema 0008 in this order.
_FINISHED = "actual_tokens > 0"
_NEWEST = "ORDER BY request_timestamp DESC NULLS LAST LIMIT $"
HISTORY_OF_USER = f"""
SELECT prompt_chars, actual_tokens, actual_requests FROM token_prediction_log
WHERE model = $1 AND agent_mode = $2 AND username = $3 AND {_FINISHED} {_NEWEST}4
"""
HISTORY_OF_MODEL = f"""
SELECT prompt_chars, actual_tokens, actual_requests FROM token_prediction_log
WHERE model = $1 AND agent_mode = $2 AND {_FINISHED} {_NEWEST}3
"""
HISTORY_OF_MODE = f"""
SELECT prompt_chars, actual_tokens, actual_requests FROM token_prediction_log
WHERE agent_mode = $1 AND {_FINISHED} {_NEWEST}2
"""
# A later prediction for the same task (another attempt) replaces the row, actuals and all.
LOG_PREDICTION = """
INSERT INTO token_prediction_log (task_id, api_key, username, model, agent_mode, prompt_chars,
                                  predicted_tokens, predicted_requests, request_timestamp)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() AT TIME ZONE 'UTC')
ON CONFLICT (task_id) DO UPDATE SET
    api_key = EXCLUDED.api_key,
    username = EXCLUDED.username,
    model = EXCLUDED.model,
    agent_mode = EXCLUDED.agent_mode,
    prompt_chars = EXCLUDED.prompt_chars,
    predicted_tokens = EXCLUDED.predicted_tokens,
    predicted_requests = EXCLUDED.predicted_requests,
    request_timestamp = EXCLUDED.request_timestamp,
    actual_tokens = NULL,
    actual_requests = NULL,
    delta = NULL,
    completed_at = NULL
"""
LOG_ACTUAL = """
UPDATE token_prediction_log
SET actual_tokens = $2, actual_requests = $3, delta = $2 - predicted_tokens,
    completed_at = now(), api_key = coalesce($4, api_key)
WHERE task_id = $1
RETURNING id
"""
# Absolute percentage errors of the forecast and of the plain rule (ceil(chars / 4), at
# least 1: plain_rule below) on the same finished tasks, their medians per grouping.
FORECAST_ERRORS = """
WITH scored AS (
    SELECT coalesce(k.name, l.api_key, '') AS key_name,
           coalesce(l.username, '') AS username,
           l.model,
           l.predicted_tokens::bigint AS predicted,
           l.actual_tokens::bigint AS actual,
           (abs(l.predicted_tokens - l.actual_tokens) * 100.0 / l.actual_tokens)::float8 AS ape,
           (abs(greatest(ceil(l.prompt_chars / 4.0), 1) - l.actual_tokens) * 100.0
            / l.actual_tokens)::float8 AS plain_ape
    FROM token_prediction_log l
    LEFT JOIN api_keys k ON k.fingerprint = l.api_key
    WHERE l.actual_tokens > 0 AND l.predicted_tokens IS NOT NULL
      AND l.request_timestamp >= (now() AT TIME ZONE 'UTC') - make_interval(days => $1)
)
SELECT CASE WHEN GROUPING(key_name) = 0 THEN 'key'
            WHEN GROUPING(username) = 0 THEN 'user'
            WHEN GROUPING(model) = 0 THEN 'model'
            ELSE 'overall' END AS dimension,
       coalesce(key_name, username, model, '') AS name,
       count(*) AS tasks,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ape) AS mdape,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY plain_ape) AS plain_mdape,
       coalesce(sum(predicted), 0)::bigint AS predicted_tokens,
       coalesce(sum(actual), 0)::bigint AS actual_tokens
FROM scored
GROUP BY GROUPING SETS ((), (key_name), (username), (model))
ORDER BY dimension, tasks DESC, name
"""


@dataclass(frozen=True)
class Forecast:
    """What a task is expected to cost, and what the figure rests on, in words."""

    requests: int  # >= 1
    tokens: int  # >= 1
    # "plain rule (no history)", "learned from 37 agentic tasks of alice on gemini-2.5-flash"
    basis: str

    def __post_init__(self) -> None:
        if self.requests < 1 or self.tokens < 1:
            raise ValueError(
                f"a forecast is at least 1 request and 1 token (got {self.requests} requests,"
                f" {self.tokens} tokens)"
            )


COUNT_CONTEXT = """
UPDATE token_prediction_log SET prompt_chars = prompt_chars + $2
WHERE task_id = $1 AND actual_tokens IS NULL
"""


def plain_rule(prompt_chars: int) -> int:
    """Google's rule of thumb: about 4 characters a token (at least 1)."""
    return max(1, math.ceil(prompt_chars / CHARS_PER_TOKEN))


@dataclass(frozen=True)
class _Sample:
    plain: int  # plain_rule(prompt_chars)
    requests: int
    tokens: int


@dataclass(frozen=True)
class _History:
    """A group's recent finished tasks, and the slope learned from them."""

    samples: tuple[_Sample, ...]
    slope: float

    def forecast(self, plain: int, basis: str) -> Forecast:
        replayed = [s.tokens + s.requests * self.slope * (plain - s.plain) for s in self.samples]
        requests = statistics.median(s.requests for s in self.samples)
        return Forecast(
            requests=max(1, math.floor(requests + 0.5)),
            tokens=max(1, round(statistics.median(replayed))),
            basis=basis,
        )


def _slope(samples: Sequence[_Sample]) -> float:
    """Theil-Sen: the median slope of tokens a request against plain-rule tokens, over pairs
    whose prompts differ by at least SLOPE_SPREAD; 1 (the plain rule) if too few do."""
    points = [(s.plain, s.tokens / s.requests) for s in samples]
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if abs(x2 - x1) >= SLOPE_SPREAD * max(x1, x2)
    ]
    if len(slopes) < MIN_SLOPE_PAIRS:
        return 1.0
    low, high = SLOPE_BOUNDS
    return min(high, max(low, statistics.median(slopes)))


@dataclass(frozen=True)
class _Group:
    """Tasks that share a user, model and agent mode, or a model and mode, or a mode."""

    user: str | None
    model: str | None
    agent_mode: str

    def query(self) -> tuple[str, tuple[object, ...]]:
        if self.user is not None:
            return HISTORY_OF_USER, (self.model, self.agent_mode, self.user, HISTORY)
        if self.model is not None:
            return HISTORY_OF_MODEL, (self.model, self.agent_mode, HISTORY)
        return HISTORY_OF_MODE, (self.agent_mode, HISTORY)

    def basis(self, tasks: int) -> str:
        mode = self.agent_mode or "default-mode"
        model = self.model or "the default model"
        if self.user is not None:
            return f"learned from {tasks} {mode} tasks of {self.user or 'no user'} on {model}"
        if self.model is not None:
            return f"learned from {tasks} {mode} tasks on {model}"
        return f"learned from {tasks} {mode} tasks on all models"


def _groups(user: str, model: str, agent_mode: str) -> tuple[_Group, ...]:
    """From the most specific to the widest."""
    return (
        _Group(user, model, agent_mode),
        _Group(None, model, agent_mode),
        _Group(None, None, agent_mode),
    )


class Forecaster:
    """Forecasts from the recent history in `token_prediction_log`, and writes that log."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must not be negative (got {cache_seconds})")
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[_Group, tuple[float, _History | None]] = {}

    async def forecast(
        self, *, user: str, model: str, agent_mode: str, prompt_chars: int
    ) -> Forecast:
        """The task's requests and total tokens; `prompt_chars` counts its prompt and the
        context the CLI is given with it."""
        if prompt_chars < 0:
            raise InvalidArgument("prompt_chars", f"must not be negative (got {prompt_chars})")
        plain = plain_rule(prompt_chars)
        for group in _groups(user, model, agent_mode):
            history = await self._history(group)
            if history is not None:
                return history.forecast(plain, group.basis(len(history.samples)))
        return Forecast(
            requests=DEFAULT_REQUESTS.get(agent_mode, 1),
            tokens=plain,
            basis="plain rule (no history)",
        )

    async def _history(self, group: _Group) -> _History | None:
        """The group's history if it has enough; read at most once per cache_seconds."""
        now = self._clock()
        cached = self._cache.get(group)
        if cached is not None and now < cached[0]:
            return cached[1]
        query, args = group.query()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        samples = [
            _Sample(
                plain=plain_rule(row["prompt_chars"]),
                requests=max(1, row["actual_requests"] or 0),  # NULL: an older row
                tokens=row["actual_tokens"],
            )
            for row in rows
        ]
        history = _History(tuple(samples), _slope(samples)) if len(samples) >= MIN_HISTORY else None
        if self._cache_seconds > 0:
            if len(self._cache) >= MAX_CACHED_GROUPS:
                self._cache = {g: c for g, c in self._cache.items() if now < c[0]}
            self._cache[group] = (now + self._cache_seconds, history)
        return history

    async def count_context(self, task_id: str, chars: int) -> None:
        """Add the context a task was given (chars) to its logged prompt: the history then
        relates what the model was sent to what it spent."""
        async with self._pool.acquire() as conn:
            await conn.execute(COUNT_CONTEXT, task_id, chars)

    async def log_prediction(
        self,
        conn: Connection,
        *,
        task_id: str,
        fingerprint: str,
        user: str,
        model: str,
        agent_mode: str,
        prompt_chars: int,
        forecast: Forecast,
    ) -> None:
        """The task's row: its forecast, its inputs, and the key (by fingerprint) it got;
        "" while it has none. A second call for the task replaces the row."""
        _check_fingerprint(fingerprint)
        if prompt_chars < 0:
            raise InvalidArgument("prompt_chars", f"must not be negative (got {prompt_chars})")
        await conn.execute(
            LOG_PREDICTION,
            task_id,
            fingerprint or None,
            user,
            model,
            agent_mode,
            prompt_chars,
            forecast.tokens,
            forecast.requests,
        )

    async def log_actual(
        self,
        conn: Connection,
        *,
        task_id: str,
        actual_tokens: int,
        actual_requests: int,
        fingerprint: str | None = None,
    ) -> None:
        """What the task spent in the end (delta = actual - predicted); `fingerprint`, if
        given, names the key it ended on."""
        if actual_tokens < 0:
            raise InvalidArgument("actual_tokens", f"must not be negative (got {actual_tokens})")
        if actual_requests < 0:
            raise InvalidArgument(
                "actual_requests", f"must not be negative (got {actual_requests})"
            )
        if fingerprint is not None:
            _check_fingerprint(fingerprint)
        row = await conn.fetchrow(
            LOG_ACTUAL, task_id, actual_tokens, actual_requests, fingerprint or None
        )
        if row is None:
            log.warning(
                "no token forecast was logged for the task; its actual use is not recorded",
                extra={"task_id": task_id},
            )


def _check_fingerprint(fingerprint: str) -> None:
    """Only a key's fingerprint goes into the log; the value is never echoed (it might be
    the secret itself)."""
    if fingerprint and not _FINGERPRINT.match(fingerprint):
        raise InvalidArgument("fingerprint", "is not a key fingerprint (sha256: and 12 hex digits)")


def over_limit_reason(
    forecast: Forecast, limit: int | None, *, user: str = "", spec_max_tokens: int = 0
) -> str | None:
    """Why the task is refused before any key is spent, with both figures; None if it fits.

    The limit is named as the task's max_tokens when it is that figure, else as the user's
    max_token_per_request."""
    if limit is None or forecast.tokens <= limit:
        return None
    if spec_max_tokens and limit == spec_max_tokens:
        what = "the task's max_tokens"
    else:
        what = f"{user}'s max_token_per_request" if user else "the user's max_token_per_request"
    return f"forecast {forecast.tokens:,} tokens exceeds {what} of {limit:,} ({forecast.basis})"


async def token_report(conn: Connection, days: int) -> keys_pb2.TokenReportResponse:
    """Median absolute percentage errors of the forecasts of the tasks of the last `days`
    days (0 = REPORT_DAYS) that spent tokens: overall, by key (its label, or its fingerprint
    when the key is gone), by user and by model, beside the plain rule's on the same tasks."""
    if days < 0:
        raise InvalidArgument("days", f"must not be negative (got {days})")
    reply = keys_pb2.TokenReportResponse()
    for row in await conn.fetch(FORECAST_ERRORS, days or REPORT_DAYS):
        error = keys_pb2.ForecastError(
            name=row["name"],
            tasks=row["tasks"],
            mdape=row["mdape"] or 0.0,
            plain_mdape=row["plain_mdape"] or 0.0,
            predicted_tokens=row["predicted_tokens"],
            actual_tokens=row["actual_tokens"],
        )
        dimension = row["dimension"]
        if dimension == "overall":
            reply.overall.CopyFrom(error)
        else:
            {"key": reply.by_key, "user": reply.by_user, "model": reply.by_model}[dimension].append(
                error
            )
    return reply
