"""One replica of a per-process key router like LiteLLM's, the baseline of bench/keys.py.

It behaves as LiteLLM's ``Router`` does without Redis (deployments with ``rpm``,
``enable_pre_call_checks=True``, ``routing_strategy="simple-shuffle"``, ``num_retries=0``):
- each process counts the requests it sent on each key in the last 60 s, in its own memory;
- a request goes to a random key under that local limit and not cooling down; when there is
  none it fails at once with a 429 ("No deployments available"), it does not wait;
- a 429 from the API cools that key for ``cooldown_time`` (LiteLLM's default: 5 s) and
  reaches the user (no retries).
Replicas know nothing of each other: two of them may send twice the limit on a key.

Run as ``python -m bench.support.per_process_limiter --base-url URL --keys-file FILE --rpm R
--tasks N --first I`` from the repository root. It prints ``ready``, waits for a line on stdin
(so that every replica starts at once), runs its N tasks at once and prints one JSON line:
``{"completed": n, "api_429": n, "local_429": n, "other": n}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import deque
from pathlib import Path

import aiohttp

from bench.support.api_client import generate, key_file_keys, session

COOLDOWN_SECONDS = 5.0
WINDOW_SECONDS = 60.0


class LocalLimiter:
    """Per-key requests in the last 60 s and cooldowns, in this process only."""

    def __init__(self, keys: list[str], rpm: int) -> None:
        self._sent: dict[str, deque[float]] = {key: deque() for key in keys}
        self._cooling_until: dict[str, float] = dict.fromkeys(keys, 0.0)
        self._rpm = rpm

    def pick(self) -> str | None:
        """A random key under its limit and not cooling, counted as used; None if none."""
        now = time.monotonic()
        free = []
        for key, sent in self._sent.items():
            while sent and sent[0] <= now - WINDOW_SECONDS:
                sent.popleft()
            if len(sent) < self._rpm and self._cooling_until[key] <= now:
                free.append(key)
        if not free:
            return None
        key = random.choice(free)  # load balancing, not security
        self._sent[key].append(now)
        return key

    def cool(self, key: str) -> None:
        """The API refused ``key``: skip it for the cooldown."""
        self._cooling_until[key] = time.monotonic() + COOLDOWN_SECONDS


async def run(base_url: str, keys: list[str], rpm: int, tasks: int, first: int) -> dict[str, int]:
    limiter = LocalLimiter(keys, rpm)
    counts = {"completed": 0, "api_429": 0, "local_429": 0, "other": 0}

    async def task(client: aiohttp.ClientSession, number: int) -> None:
        key = limiter.pick()
        if key is None:
            counts["local_429"] += 1
            return
        try:
            status = await generate(client, base_url, key, f"benchmark task {number}")
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            counts["completed"] += 1
        elif status == 429:
            limiter.cool(key)
            counts["api_429"] += 1
        else:
            counts["other"] += 1

    async with session() as client:
        await asyncio.gather(*(task(client, first + i) for i in range(tasks)))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(prog="per_process_limiter")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--keys-file", type=Path, required=True)
    parser.add_argument("--rpm", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    keys = key_file_keys(args.keys_file.read_text())
    print("ready", flush=True)
    sys.stdin.readline()
    counts = asyncio.run(run(args.base_url, keys, args.rpm, args.tasks, args.first))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
