"""One Gemini API generate request, as the baselines of bench/keys.py send it (aiohttp)."""

from __future__ import annotations

import aiohttp

from bench.support.light_cli import request_body

MODEL = "gemini-2.5-flash"


def key_file_keys(text: str) -> list[str]:
    """The keys of a dotenv key file (``NAME=key`` lines), in order."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line.partition("=")[2].strip() if "=" in line else line)
    return keys


async def generate(session: aiohttp.ClientSession, base_url: str, key: str, prompt: str) -> int:
    """Send one streamGenerateContent request with ``key``, read the reply; its HTTP status."""
    url = f"{base_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    async with session.post(
        url, json=request_body(prompt), headers={"x-goog-api-key": key}
    ) as response:
        await response.read()
        return response.status


def session() -> aiohttp.ClientSession:
    """A client session with no connection limit: every request goes at once."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=300),
    )
