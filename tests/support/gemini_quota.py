"""Per-key quotas of the Gemini API emulator, counted the way Google counts them.

Google applies a key's limits per project and model, so every count here is per (key, model):
- requests per minute (RPM): a sliding 60-second window over the arrival times of accepted
  generate requests; a request arriving at ``t`` is refused when ``rpm`` accepted requests
  arrived in ``(t - 60, t]``, and told to retry when the oldest of them leaves the window;
- requests per day (RPD) and tokens per day (TPD): counted per Pacific calendar day, since
  Google resets daily quotas at midnight Pacific; tokens are the ``totalTokenCount`` the
  emulator reported. A request is refused once the day's tokens reached ``tpd`` (the reply
  that crosses the limit is served, as its size is known only afterwards).
A refused request counts against nothing. Stdlib only, like the emulator.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from typing import Literal, TypeAlias, cast, get_args
from zoneinfo import ZoneInfo

__all__ = [
    "WINDOW_SECONDS",
    "AcceptedRequest",
    "EmulatorStats",
    "KeyLimits",
    "QuotaBook",
    "QuotaName",
    "Rejection",
    "busiest_window",
    "fetch_stats",
    "seconds_until_pacific_midnight",
]

WINDOW_SECONDS = 60.0
PACIFIC = ZoneInfo("America/Los_Angeles")
QuotaName: TypeAlias = Literal["rpm", "rpd", "tpd"]
JSONObject: TypeAlias = dict[str, object]


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits for each model; None means no limit."""

    rpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None

    def __post_init__(self) -> None:
        for name in get_args(QuotaName):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @classmethod
    def from_json(cls, value: object) -> KeyLimits:
        """From ``{"rpm": 30, "rpd": 1000, "tpd": 100000}`` (any subset); ValueError names
        what is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f'expected an object like {{"rpm": 30}}, got {value!r}')
        unknown = sorted(set(value) - set(get_args(QuotaName)))
        if unknown:
            raise ValueError(f"unknown limit {', '.join(unknown)} (known: rpm, rpd, tpd)")
        return cls(**value)

    def to_json(self) -> JSONObject:
        """The limits that are set, as ``from_json`` reads them."""
        return {n: getattr(self, n) for n in get_args(QuotaName) if getattr(self, n) is not None}


@dataclass(frozen=True)
class AcceptedRequest:
    """A generate request that passed its key's quotas; ``at`` is its arrival (clock seconds)."""

    api_key: str
    model: str
    at: float


@dataclass(frozen=True)
class Rejection:
    """A generate request refused with a 429 because ``quota`` (whose value is ``limit``)
    was exhausted."""

    api_key: str
    model: str
    at: float
    quota: QuotaName
    limit: int
    retry_seconds: int


def busiest_window(times: Iterable[float], seconds: float = WINDOW_SECONDS) -> int:
    """The most of ``times`` inside any half-open window ``[t, t + seconds)``."""
    ordered = sorted(times)
    best = 0
    for end, at in enumerate(ordered):
        # The window ending at `at`: (at - seconds, at]; one exactly `seconds` earlier is out.
        start = bisect_right(ordered, at - seconds, hi=end)
        best = max(best, end - start + 1)
    return best


def seconds_until_pacific_midnight(now: float) -> float:
    """Seconds from ``now`` (epoch seconds) to the next midnight in America/Los_Angeles."""
    local = datetime.fromtimestamp(now, PACIFIC)
    midnight = datetime.combine(local.date() + timedelta(days=1), time_of_day(0), tzinfo=PACIFIC)
    return midnight.astimezone(UTC).timestamp() - now


def _pacific_day(now: float) -> date:
    return datetime.fromtimestamp(now, PACIFIC).date()


@dataclass(frozen=True)
class EmulatorStats:
    """What the emulator accepted and refused, in arrival order; JSON-able for other processes."""

    accepted: tuple[AcceptedRequest, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    # api key -> model -> tokens reported (all days).
    tokens: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def rejections(self) -> dict[str, int]:
        """API key -> how many 429s its quotas caused."""
        counts: dict[str, int] = {}
        for rejection in self.rejected:
            counts[rejection.api_key] = counts.get(rejection.api_key, 0) + 1
        return counts

    def accepted_times(self, api_key: str, model: str | None = None) -> list[float]:
        """Arrival times of the accepted requests of ``api_key`` (for ``model``, or all)."""
        return [
            r.at
            for r in self.accepted
            if r.api_key == api_key and (model is None or r.model == model)
        ]

    def busiest_minute(self, api_key: str, model: str | None = None) -> int:
        """The most accepted requests of ``api_key`` (and ``model``) in any 60 s window."""
        return busiest_window(self.accepted_times(api_key, model))

    def to_json(self) -> JSONObject:
        """``{"accepted": [...], "rejected": [...], "tokens": {...}, "rejections": {...}}``."""
        return {
            "accepted": [{"key": r.api_key, "model": r.model, "at": r.at} for r in self.accepted],
            "rejected": [
                {
                    "key": r.api_key,
                    "model": r.model,
                    "at": r.at,
                    "quota": r.quota,
                    "limit": r.limit,
                    "retry_seconds": r.retry_seconds,
                }
                for r in self.rejected
            ],
            "tokens": {key: dict(models) for key, models in self.tokens.items()},
            "rejections": self.rejections(),
        }

    @classmethod
    def from_json(cls, value: object) -> EmulatorStats:
        """The stats a ``to_json`` produced (``GET /emulator/stats``)."""
        body = cast(JSONObject, value)
        accepted = cast(list[JSONObject], body["accepted"])
        rejected = cast(list[JSONObject], body["rejected"])
        tokens = cast(dict[str, dict[str, int]], body["tokens"])
        return cls(
            accepted=tuple(
                AcceptedRequest(str(r["key"]), str(r["model"]), float(cast(float, r["at"])))
                for r in accepted
            ),
            rejected=tuple(
                Rejection(
                    str(r["key"]),
                    str(r["model"]),
                    float(cast(float, r["at"])),
                    cast(QuotaName, r["quota"]),
                    int(cast(int, r["limit"])),
                    int(cast(int, r["retry_seconds"])),
                )
                for r in rejected
            ),
            tokens=tokens,
        )


def fetch_stats(base_url: str, timeout: float = 30.0) -> EmulatorStats:
    """The stats of an emulator running elsewhere (``GET {base_url}/emulator/stats``)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{base_url}/emulator/stats", timeout=timeout) as response:
        return EmulatorStats.from_json(json.loads(response.read()))


@dataclass
class _Counter:
    """The counts of one (key, model)."""

    window: deque[float] = field(default_factory=deque)
    day: date | None = None
    requests_today: int = 0
    tokens_today: int = 0


class QuotaBook:
    """Limits and counts per (key, model). Not thread-safe: the emulator calls it under its
    lock, so a check and its count are one step."""

    def __init__(
        self, limits: Mapping[str, KeyLimits] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._limits: dict[str, KeyLimits] = dict(limits or {})
        self._clock = clock
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._accepted: list[AcceptedRequest] = []
        self._rejected: list[Rejection] = []
        self._tokens: dict[str, dict[str, int]] = {}

    def set_limits(self, api_key: str, limits: KeyLimits | None) -> None:
        """Set (None: remove) the limits of ``api_key``; counts so far are kept."""
        if limits is None:
            self._limits.pop(api_key, None)
        else:
            self._limits[api_key] = limits

    def limits(self, api_key: str) -> KeyLimits | None:
        """The limits of ``api_key``, if any."""
        return self._limits.get(api_key)

    def admit(self, api_key: str, model: str) -> Rejection | None:
        """Count a generate request arriving now, or return why it is refused (and record it)."""
        now = self._clock()
        counter = self._counter(api_key, model, now)
        limits = self._limits.get(api_key, KeyLimits())
        while counter.window and counter.window[0] <= now - WINDOW_SECONDS:
            counter.window.popleft()
        refused: tuple[QuotaName, int, float] | None = None
        if limits.rpd is not None and counter.requests_today >= limits.rpd:
            refused = ("rpd", limits.rpd, seconds_until_pacific_midnight(now))
        elif limits.tpd is not None and counter.tokens_today >= limits.tpd:
            refused = ("tpd", limits.tpd, seconds_until_pacific_midnight(now))
        elif limits.rpm is not None and len(counter.window) >= limits.rpm:
            # Room comes back when the arrival `rpm` places from the newest leaves the window.
            wait = counter.window[-limits.rpm] + WINDOW_SECONDS - now
            refused = ("rpm", limits.rpm, wait)
        if refused is not None:
            quota, limit, wait = refused
            rejection = Rejection(api_key, model, now, quota, limit, max(1, math.ceil(wait)))
            self._rejected.append(rejection)
            return rejection
        counter.window.append(now)
        counter.requests_today += 1
        self._accepted.append(AcceptedRequest(api_key, model, now))
        return None

    def add_tokens(self, api_key: str, model: str, tokens: int) -> None:
        """Count the tokens a reply reported."""
        now = self._clock()
        self._counter(api_key, model, now).tokens_today += tokens
        per_model = self._tokens.setdefault(api_key, {})
        per_model[model] = per_model.get(model, 0) + tokens

    def stats(self) -> EmulatorStats:
        """A snapshot of everything accepted and refused so far."""
        return EmulatorStats(
            accepted=tuple(self._accepted),
            rejected=tuple(self._rejected),
            tokens={key: dict(models) for key, models in self._tokens.items()},
        )

    def clear(self) -> None:
        """Forget every count (limits stay)."""
        self._counters.clear()
        self._accepted.clear()
        self._rejected.clear()
        self._tokens.clear()

    def _counter(self, api_key: str, model: str, now: float) -> _Counter:
        counter = self._counters.setdefault((api_key, model), _Counter())
        today = _pacific_day(now)
        if counter.day != today:
            counter.day, counter.requests_today, counter.tokens_today = today, 0, 0
        return counter
