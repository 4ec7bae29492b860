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
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agentmesh.node.executors.gemini import SETTINGS
from agentmesh.node.executors.gemini_errors import classify_api_error
from tests.support.gemini_emulator import (
    STATS_PATH,
    GeminiEmulator,
    count_tokens,
    invalid_api_key,
    quota_exhausted,
    shell_call,
    slow_reply,
    text_reply,
)
from tests.support.gemini_quota import KeyLimits, busiest_window, fetch_stats

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


# ----------------------------------------------------------------------------- quotas


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# 2025-01-15 12:00 in Los Angeles (PST, UTC-8).
NOON_PACIFIC = datetime(2025, 1, 15, 20, 0, tzinfo=UTC).timestamp()


def generate(emu: GeminiEmulator, key: str, model: str = MODEL) -> tuple[int, dict[str, Any]]:
    """One streamGenerateContent request with ``key``; (status, error object or {})."""
    status, raw = post(stream_url(emu, model), generate_body("hi"), {"x-goog-api-key": key})
    return status, (json.loads(raw)["error"] if status != 200 else {})


def violation(error: dict[str, Any]) -> dict[str, Any]:
    """The QuotaFailure violation of a 429 error object."""
    failure = next(d for d in error["details"] if d["@type"].endswith("QuotaFailure"))
    result: dict[str, Any] = failure["violations"][0]
    return result


def retry_delay(error: dict[str, Any]) -> str:
    """RetryInfo.retryDelay of a 429 error object."""
    return str(next(d for d in error["details"] if d["@type"].endswith("RetryInfo"))["retryDelay"])


def test_rpm_is_a_sliding_window_with_the_retry_delay_of_its_oldest_request() -> None:
    t0 = NOON_PACIFIC
    clock = FakeClock(t0)
    with GeminiEmulator(key_limits={"k": KeyLimits(rpm=2)}, clock=clock) as emu:
        statuses = []
        errors = []
        for at in (0, 10, 30.5, 60, 65, 70.5):
            clock.now = t0 + at
            status, error = generate(emu, "k")
            statuses.append(status)
            if error:
                errors.append(error)
        stats = emu.stats()

    # t0 leaves the window at t0+60; the refusal at t0+30.5 never counted, so at t0+70.5
    # only t0+60 is in the window.
    assert statuses == [200, 200, 429, 200, 429, 200]
    first, second = errors
    assert first["status"] == "RESOURCE_EXHAUSTED"
    assert violation(first)["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert violation(first)["quotaValue"] == "2"
    assert violation(first)["quotaDimensions"]["model"] == MODEL
    assert first["message"].endswith("Please retry in 30s.")  # t0 + 60 - (t0 + 30.5), rounded up
    assert retry_delay(first) == "30s"
    assert second["message"].endswith("Please retry in 5s.")  # (t0 + 10) + 60 - (t0 + 65)
    assert stats.accepted_times("k") == [t0, t0 + 10, t0 + 60, t0 + 70.5]
    assert [(r.at, r.quota, r.limit, r.retry_seconds) for r in stats.rejected] == [
        (t0 + 30.5, "rpm", 2, 30),
        (t0 + 65, "rpm", 2, 5),
    ]
    assert stats.rejections() == {"k": 2}
    assert stats.busiest_minute("k") == 2


def test_limits_count_per_key_and_model() -> None:
    clock = FakeClock(NOON_PACIFIC)
    with GeminiEmulator(clock=clock) as emu:
        emu.set_key_limits("a", rpm=1)
        results = [
            generate(emu, "a")[0],
            generate(emu, "a", "gemini-2.5-pro")[0],
            generate(emu, "a")[0],
            generate(emu, "b")[0],
            generate(emu, "b")[0],
        ]
        emu.set_key_limits("b", rpm=2)  # b's two requests so far count
        b_limited = generate(emu, "b")[0]
        emu.set_key_limits("a")  # no limits any more
        a_free = generate(emu, "a")[0]
        rejections = emu.rejections()

    assert results == [200, 200, 429, 200, 200]
    assert (b_limited, a_free) == (429, 200)
    assert rejections == {"a": 1, "b": 1}


def test_requests_per_day_end_until_midnight_pacific() -> None:
    eleven_pm = datetime(2025, 1, 15, 23, 0, tzinfo=ZoneInfo("America/Los_Angeles")).timestamp()
    clock = FakeClock(eleven_pm)
    with GeminiEmulator(key_limits={"k": KeyLimits(rpd=2)}, clock=clock) as emu:
        statuses = [generate(emu, "k")[0] for _ in range(2)]
        clock.now += 120
        day_status, day_error = generate(emu, "k")
        other_model = generate(emu, "k", "gemini-2.5-pro")[0]
        clock.now = eleven_pm + 3600 + 1  # 00:00:01 the next day
        next_day = generate(emu, "k")[0]

    assert statuses == [200, 200]
    assert day_status == 429
    assert violation(day_error)["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert violation(day_error)["quotaValue"] == "2"
    assert retry_delay(day_error) == f"{3600 - 120}s"
    assert (other_model, next_day) == (200, 200)


def test_tokens_per_day_count_the_usage_the_emulator_reported() -> None:
    with GeminiEmulator(key_limits={"k": KeyLimits(tpd=150)}) as emu:
        emu.script(
            text_reply("first", prompt_tokens=60, candidates_tokens=40),
            text_reply("second", prompt_tokens=60, candidates_tokens=40),
        )
        first, second = generate(emu, "k")[0], generate(emu, "k")[0]
        status, error = generate(emu, "k")
        tokens = emu.stats().tokens

    # The second reply is served (100 < 150 when it arrived) and crosses the limit.
    assert (first, second, status) == (200, 200, 429)
    assert violation(error)["quotaId"] == "GenerateContentInputTokensPerModelPerDay-FreeTier"
    assert violation(error)["quotaValue"] == "150"
    assert tokens == {"k": {MODEL: 200}}


def test_concurrent_requests_never_pass_the_limit_together() -> None:
    with GeminiEmulator(key_limits={"k": KeyLimits(rpm=3)}, latency=0.2) as emu:
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: generate(emu, "k")[0], range(12)))
        stats = emu.stats()

    assert sorted(statuses) == [200] * 3 + [429] * 9
    assert len(stats.accepted) == 3
    assert stats.rejections() == {"k": 9}
    assert all(1 <= r.retry_seconds <= 60 for r in stats.rejected)


def test_latency_delays_every_generate_reply() -> None:
    with GeminiEmulator(latency=0.3, key_limits={"k": KeyLimits(rpm=1)}) as emu:
        timings = []
        for _ in range(2):
            started = time.monotonic()
            status, _ = generate(emu, "k")
            timings.append((status, time.monotonic() - started))

    assert [status for status, _ in timings] == [200, 429]
    assert all(seconds >= 0.3 for _, seconds in timings)
    with pytest.raises(ValueError, match="latency must be a finite number of seconds >= 0"):
        GeminiEmulator(latency=-1)


def test_stats_endpoint_serves_the_stats_as_json() -> None:
    with GeminiEmulator(key_limits={"k": KeyLimits(rpm=1)}) as emu:
        generate(emu, "k")
        generate(emu, "k")
        generate(emu, "other", "gemini-2.5-pro")
        with _OPENER.open(f"{emu.base_url}{STATS_PATH}", timeout=10) as response:
            body = json.loads(response.read())
        fetched = fetch_stats(emu.base_url)
        local = emu.stats()
        recorded = [r.path for r in emu.requests]

    assert fetched == local
    assert body == local.to_json()
    assert body["rejections"] == {"k": 1}
    assert [(a["key"], a["model"]) for a in body["accepted"]] == [
        ("k", MODEL),
        ("other", "gemini-2.5-pro"),
    ]
    assert [(r["key"], r["quota"], r["limit"]) for r in body["rejected"]] == [("k", "rpm", 1)]
    assert STATS_PATH not in recorded


def test_busiest_window_counts_a_half_open_minute() -> None:
    assert busiest_window([]) == 0
    assert busiest_window([0, 10, 59.9, 60, 119.9]) == 3
    assert busiest_window([0, 60, 120]) == 1
    assert busiest_window([5, 5, 5, 64.9]) == 4


def emulator_process(*args: str) -> subprocess.Popen[str]:
    """``python -m tests.support.gemini_emulator ARGS`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.gemini_emulator", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_emulator_runs_as_a_process_and_reports_its_stats() -> None:
    limits = json.dumps({"k": {"rpm": 1}})
    with emulator_process("--port", "0", "--key-limits", limits, "--latency", "0.05") as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:"), base_url
            url = f"{base_url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
            statuses = [
                post(url, generate_body("hi"), {"x-goog-api-key": "k"})[0] for _ in range(2)
            ]
            stats = fetch_stats(base_url)
        finally:
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=30)

    assert statuses == [200, 429]
    assert len(stats.accepted_times("k")) == 1
    assert stats.rejections() == {"k": 1}
    assert stats.rejected[0].retry_seconds == 60
    assert returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--key-limits", '{"secret-key-1": {"rpm": 0}}'], "key #1: rpm must be a positive"),
        (["--key-limits", '{"secret-key-1": {"rps": 5}}'], "key #1: unknown limit rps"),
        (["--key-limits", '{"secret-key-1": 5}'], 'key #1: expected an object like {"rpm": 30}'),
        (["--key-limits", "rpm=5"], "--key-limits: not JSON"),
        (["--latency", "-1"], "latency must be a finite number of seconds >= 0"),
        (["--port", "70000"], "expected a port number 0-65535"),
    ],
)
def test_emulator_process_names_bad_arguments(args: list[str], expected: str) -> None:
    with emulator_process(*args) as proc:
        _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 2
    assert expected in stderr
    assert "secret-key-1" not in stderr


def test_cli_gets_the_enforced_429_and_agentmesh_reads_it(tmp_path: Path) -> None:
    with GeminiEmulator(key_limits={"key-limited": KeyLimits(rpm=1)}) as emu:
        first = run_cli(emu, tmp_path / "first", "say hello", api_key="key-limited")
        second = run_cli(emu, tmp_path / "second", "say hello", api_key="key-limited")
        rejections = emu.rejections()

    assert first.returncode == 0, first.stderr
    assert second.returncode == 429 % 256
    message = error_message(second)
    assert "Please retry in" in message
    api_error = classify_api_error(f"{message}\n{second.stderr}")
    assert api_error is not None
    assert api_error.quota_scope == "per_minute"
    assert 0 < api_error.retry_delay_seconds <= 60
    assert rejections == {"key-limited": 1}
