"""bench/support/light_cli.py, the benchmarks' stand-in for the Gemini CLI, reads like the real
one: the node's parser gets the same answer, usage and API errors from both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.node.executors.base import Exit
from agentmesh.node.executors.gemini import StreamJsonParser
from agentmesh.tasks.events import ApiError, Payload, Result
from tests.support.gemini_emulator import GeminiEmulator, Reply, quota_exhausted, text_reply
from tests.test_gemini_emulator import MODEL, REPO, CliRun, parse_stream_json, run_cli

LIGHT_CLI = REPO / "bench/support/light_cli.py"


def run_light_cli(emu: GeminiEmulator, prompt: str, *, api_key: str) -> CliRun:
    """The stand-in with the node's arguments and the variables the CLI reads."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GEMINI_API_KEY": api_key,
        "GOOGLE_GEMINI_BASE_URL": emu.base_url,
    }
    argv = [sys.executable, str(LIGHT_CLI), "-p", prompt, "-o", "stream-json", "-m", MODEL]
    done = subprocess.run(
        [*argv, "--policy", "/nonexistent.toml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return CliRun(done.returncode, parse_stream_json(done.stdout), done.stdout, done.stderr, 0.0)


def parsed(run: CliRun) -> list[Payload]:
    """What the node's gemini executor makes of a run."""
    parser = StreamJsonParser(MODEL)
    for line in run.stdout.splitlines():
        parser.feed_line(line)
    return parser.finish(Exit(run.returncode, "exited"), run.stderr)


def outcome(run: CliRun) -> tuple[object, ...]:
    """The facts a task keeps: state, exit code, answer, tokens, and the API error's kind."""
    payloads = parsed(run)
    result = next(p for p in payloads if isinstance(p, Result))
    error = next((p for p in payloads if isinstance(p, ApiError)), None)
    usage = (result.usage.input_tokens, result.usage.output_tokens, result.usage.total_tokens)
    retry = round(error.retry_delay_seconds) if error and error.quota_scope != "per_day" else 0
    return (
        result.state,
        result.exit_code,
        result.output,
        usage,
        (error.kind, error.quota_scope, retry) if error else None,
    )


@pytest.mark.parametrize(
    "reply",
    [
        text_reply("The answer, in a few pieces.", prompt_tokens=1200, candidates_tokens=30),
        quota_exhausted("minute", retry_seconds=26),
        quota_exhausted("day", retry_seconds=26),
    ],
    ids=["answer", "per-minute-429", "per-day-429"],
)
def test_light_cli_reads_like_the_real_cli(tmp_path: Path, reply: Reply) -> None:
    with GeminiEmulator() as emu:
        emu.script(reply, reply)
        real = run_cli(emu, tmp_path, "a question", api_key="key-a")
        light = run_light_cli(emu, "a question", api_key="key-a")
        requests = emu.generate_requests()

    assert outcome(light) == outcome(real), (light.stdout, light.stderr)
    assert [r.api_key for r in requests] == ["key-a", "key-a"]
    assert requests[1].user_text == requests[0].user_text == "a question"
