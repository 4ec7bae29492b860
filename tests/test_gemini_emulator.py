"""The Gemini API emulator, alone over HTTP and under the real Gemini CLI (headless, stream-json).

The CLI tests run the binary named by ``AGENTMESH_GEMINI_CLI`` (default: the copy npm installs
under ``.cache/gemini-cli``); a missing binary fails them with the command that installs it.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentmesh.node.executors.gemini import SETTINGS
from tests.support.gemini_emulator import (
    GeminiEmulator,
    count_tokens,
    invalid_api_key,
    quota_exhausted,
    shell_call,
    slow_reply,
    text_reply,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GEMINI_CLI = REPO / ".cache/gemini-cli/node_modules/.bin/gemini"
INSTALL_HINT = (
    "npm install --prefix .cache/gemini-cli --no-audit --no-fund @google/gemini-cli@0.61.0"
)
MODEL = "gemini-2.5-flash"
CLI_SETTINGS = SETTINGS  # exactly what the node's gemini executor writes

# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class CliRun:
    """One finished headless CLI run."""

    returncode: int
    events: list[dict[str, object]]
    stdout: str
    stderr: str
    seconds: float

    def of_type(self, kind: str) -> list[dict[str, object]]:
        """The stream-json events whose ``type`` is ``kind``."""
        return [e for e in self.events if e.get("type") == kind]

    @property
    def result(self) -> dict[str, object]:
        """The single ``result`` event."""
        results = self.of_type("result")
        assert len(results) == 1, f"expected one result event:\n{self.stdout}\n{self.stderr}"
        return results[0]


def gemini_cli() -> Path:
    """The CLI binary; a missing one fails the test (never skips)."""
    path = Path(os.environ.get("AGENTMESH_GEMINI_CLI") or DEFAULT_GEMINI_CLI)
    if not path.exists():
        pytest.fail(
            f"Gemini CLI not found at {path}: set AGENTMESH_GEMINI_CLI or run {INSTALL_HINT}"
        )
    return path


def parse_stream_json(stdout: str) -> list[dict[str, object]]:
    """The JSON objects of a stream-json output; other lines (warnings) are skipped."""
    events: list[dict[str, object]] = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def run_cli(emu: GeminiEmulator, tmp_path: Path, prompt: str, *, api_key: str = "key-ok") -> CliRun:
    """Run ``gemini -p PROMPT -o stream-json -m MODEL`` against ``emu`` in a fresh CLI home."""
    cli = gemini_cli()
    home, work, tmp = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
    for directory in (home / ".gemini", work, tmp):
        directory.mkdir(parents=True, exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(CLI_SETTINGS))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GEMINI_CLI_HOME": str(home),
        "TMPDIR": str(tmp),
        "GEMINI_API_KEY": api_key,
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GOOGLE_GEMINI_BASE_URL": emu.base_url,
    }
    command = [str(cli), "-p", prompt, "-o", "stream-json", "-m", MODEL]
    started = time.monotonic()
    with subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"gemini CLI did not finish in 60 s:\n{stdout}\n{stderr}")
    seconds = time.monotonic() - started
    return CliRun(proc.returncode, parse_stream_json(stdout), stdout, stderr, seconds)


def error_message(run: CliRun) -> str:
    """The ``result.error.message`` of a failed run."""
    assert run.result["status"] == "error", run.stdout
    error = run.result["error"]
    assert isinstance(error, dict)
    return str(error["message"])


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST JSON; returns (status, body) for successes and HTTP errors alike."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def sse_events(raw: bytes) -> list[Any]:
    """The JSON payloads of an SSE body made of ``data: {...}\\r\\n\\r\\n`` blocks."""
    events: list[Any] = []
    for block in raw.decode().split("\r\n\r\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(json.loads(block[len("data: ") :]))
    return events


def generate_body(text: str) -> dict[str, object]:
    """A minimal generate request body with one user text."""
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def stream_url(emu: GeminiEmulator, model: str = MODEL) -> str:
    """The streamGenerateContent URL the CLI uses."""
    return f"{emu.base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse"


# ----------------------------------------------------------------------------- real CLI


def test_cli_text_reply_reports_the_emulator_usage(tmp_path: Path) -> None:
    with GeminiEmulator() as emu:
        emu.script(
            text_reply(
                "Hello from the emulator, in several pieces.",
                prompt_tokens=1234,
                candidates_tokens=56,
                cached_tokens=200,
            )
        )
        run = run_cli(emu, tmp_path, "say hello", api_key="key-a")
        requests = emu.generate_requests()

    assert run.returncode == 0, run.stderr
    init = run.of_type("init")
    assert len(init) == 1
    assert init[0]["model"] == MODEL
    deltas = [e for e in run.of_type("message") if e.get("role") == "assistant"]
    assert len(deltas) >= 2
    assert all(e.get("delta") is True for e in deltas)
    assert (
        "".join(str(e["content"]) for e in deltas) == "Hello from the emulator, in several pieces."
    )
    result = run.result
    assert result["status"] == "success"
    stats = result["stats"]
    assert isinstance(stats, dict)
    assert stats["input_tokens"] == 1234
    assert stats["output_tokens"] == 56
    assert stats["total_tokens"] == 1290
    assert stats["cached"] == 200
    assert stats["input"] == 1234 - 200
    assert stats["tool_calls"] == 0
    models = stats["models"]
    assert isinstance(models, dict)
    assert models[MODEL]["total_tokens"] == 1290

    assert len(requests) == 1
    assert requests[0].action == "streamGenerateContent"
    assert requests[0].query.get("alt") == "sse"
    assert requests[0].model == MODEL
    assert requests[0].api_key == "key-a"
    assert requests[0].user_text == "say hello"


@pytest.mark.parametrize("per", ["minute", "day"])
def test_cli_quota_exhausted_fails_fast(tmp_path: Path, per: str) -> None:
    with GeminiEmulator() as emu:
        emu.script(quota_exhausted("minute" if per == "minute" else "day", retry_seconds=26))
        run = run_cli(emu, tmp_path, "say hello")
        attempts = len(emu.generate_requests())

    assert run.returncode != 0
    assert run.returncode == 429 % 256  # the CLI exits with the HTTP status, truncated to a byte
    assert attempts == 1  # general.maxAttempts = 1: no retry
    assert run.seconds < 30
    message = error_message(run)
    if per == "minute":
        assert "Please retry in 26s." in message
        assert "retryDelayMs: 26000" in run.stderr
    else:
        # A PerDay quotaId is terminal: the CLI replaces Google's message with its own.
        assert "exhausted your daily quota" in message
        assert "Please retry in 26s." in run.stderr
    assert "status: 429" in run.stderr


def test_cli_invalid_api_key_fails(tmp_path: Path) -> None:
    with GeminiEmulator(key_behaviours={"key-bad": invalid_api_key()}) as emu:
        run = run_cli(emu, tmp_path, "say hello", api_key="key-bad")
        requests = emu.generate_requests()

    assert run.returncode != 0
    assert run.returncode == 400 % 256
    message = error_message(run)
    assert "API key not valid. Please pass a valid API key." in message
    assert "API_KEY_INVALID" in message
    assert [r.api_key for r in requests] == ["key-bad"]


# ----------------------------------------------------------------------------- plain HTTP


def test_quota_error_body_matches_google() -> None:
    with GeminiEmulator() as emu:
        emu.script(quota_exhausted("minute", retry_seconds=26), quota_exhausted("day"))
        status, raw = post(stream_url(emu), generate_body("hi"), {"x-goog-api-key": "k"})
        day_status, day_raw = post(stream_url(emu), generate_body("hi"), {"x-goog-api-key": "k"})

    assert status == 429
    error = json.loads(raw)["error"]
    assert error["code"] == 429
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"].endswith("Please retry in 26s.")
    by_type = {d["@type"]: d for d in error["details"]}
    quota = by_type["type.googleapis.com/google.rpc.QuotaFailure"]
    assert quota["violations"][0]["quotaId"] == (
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    )
    assert quota["violations"][0]["quotaDimensions"]["model"] == MODEL
    assert by_type["type.googleapis.com/google.rpc.RetryInfo"]["retryDelay"] == "26s"

    assert day_status == 429
    day = json.loads(day_raw)["error"]
    violation = next(d for d in day["details"] if d["@type"].endswith("QuotaFailure"))[
        "violations"
    ][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


def test_key_behaviours_apply_to_header_and_query_keys() -> None:
    with GeminiEmulator() as emu:
        emu.set_key_behaviour("bad", invalid_api_key())
        emu.set_key_behaviour("spent", quota_exhausted("day"))
        bad_status, bad_raw = post(stream_url(emu) + "&key=bad", generate_body("hi"))
        spent_status, _ = post(stream_url(emu), generate_body("hi"), {"x-goog-api-key": "spent"})
        ok_status, _ = post(stream_url(emu), generate_body("hi"), {"x-goog-api-key": "good"})
        emu.set_key_behaviour("bad", None)
        cleared_status, _ = post(stream_url(emu), generate_body("hi"), {"x-goog-api-key": "bad"})
        keys = [r.api_key for r in emu.requests]

    assert (bad_status, spent_status, ok_status, cleared_status) == (400, 429, 200, 200)
    error = json.loads(bad_raw)["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"] == "API key not valid. Please pass a valid API key."
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    assert keys == ["bad", "spent", "good", "bad"]


def test_stream_text_reply_chunks_and_usage() -> None:
    with GeminiEmulator() as emu:
        emu.script(text_reply("one two three four five six", prompt_tokens=7, candidates_tokens=5))
        status, raw = post(stream_url(emu), generate_body("count"), {"x-goog-api-key": "k"})
        record = emu.requests[0]

    assert status == 200
    chunks = sse_events(raw)
    assert len(chunks) == 3
    texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    assert "".join(texts) == "one two three four five six"
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {
        "promptTokenCount": 7,
        "candidatesTokenCount": 5,
        "totalTokenCount": 12,
        "cachedContentTokenCount": 0,
    }
    assert "usageMetadata" not in chunks[0]
    assert record.body == generate_body("count")
    assert record.api_key == "k"


def test_default_reply_echoes_and_function_call_shape() -> None:
    with GeminiEmulator() as emu:
        emu.script(shell_call("touch /tmp/never"))
        _, call_raw = post(stream_url(emu), generate_body("run it"))
        _, echo_raw = post(stream_url(emu), generate_body("what now?"))
        plain_status, plain_raw = post(
            f"{emu.base_url}/v1beta/models/{MODEL}:generateContent", generate_body("once")
        )
        left = emu.pending

    call = sse_events(call_raw)[-1]["candidates"][0]["content"]["parts"][0]
    assert call == {
        "functionCall": {"name": "run_shell_command", "args": {"command": "touch /tmp/never"}}
    }
    echo = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in sse_events(echo_raw))
    assert echo == "emulated reply to: what now?"
    assert plain_status == 200
    plain = json.loads(plain_raw)
    assert plain["candidates"][0]["content"]["parts"] == [{"text": "emulated reply to: once"}]
    assert plain["usageMetadata"]["totalTokenCount"] > 0
    assert left == 0


def test_count_tokens_and_embed_content() -> None:
    text = "x" * 40
    with GeminiEmulator() as emu:
        base = f"{emu.base_url}/v1beta/models"
        _, counted = post(f"{base}/{MODEL}:countTokens", generate_body(text))
        content = {"parts": [{"text": "hello world"}]}
        url = f"{base}/gemini-embedding-001:embedContent"
        _, default_raw = post(url, {"content": content})
        _, small_raw = post(url, {"content": content, "outputDimensionality": 256})
        _, again_raw = post(url, {"content": content, "outputDimensionality": 256})
        _, other_raw = post(url, {"content": {"parts": [{"text": "bye"}]}})

    assert json.loads(counted) == {"totalTokens": 10}
    assert count_tokens(text) == 10
    default = json.loads(default_raw)["embedding"]["values"]
    small = json.loads(small_raw)["embedding"]["values"]
    assert len(default) == 768
    assert len(small) == 256
    assert small == json.loads(again_raw)["embedding"]["values"]
    assert default != json.loads(other_raw)["embedding"]["values"]
    assert math.isclose(sum(v * v for v in default), 1.0, rel_tol=1e-9)


def test_unknown_path_is_a_google_404() -> None:
    with GeminiEmulator() as emu:
        status, raw = post(f"{emu.base_url}/v1beta/nothing/here", {})
        verb_status, _ = post(f"{emu.base_url}/v1beta/models/{MODEL}:frobnicate", {})

    assert (status, verb_status) == (404, 404)
    error = json.loads(raw)["error"]
    assert error["code"] == 404
    assert error["status"] == "NOT_FOUND"


def test_exit_interrupts_a_slow_reply() -> None:
    with GeminiEmulator() as emu:
        emu.script(slow_reply(chunks=100, delay=0.5))
        host, port = emu.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request(
                "POST",
                f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
                body=json.dumps(generate_body("slowly")),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            first = response.readline()
            started = time.monotonic()
            emu.stop()
            stopped = time.monotonic() - started
            rest = response.read()
        finally:
            connection.close()

    assert first.startswith(b"data: ")
    assert stopped < 5  # far less than the 50 s the reply would take
    assert rest.count(b"data: ") < 10
