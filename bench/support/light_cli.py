"""A stand-in for the Gemini CLI in plain mode, for benchmarks: one API request, no Node.js.

The real CLI costs 1-2 CPU-seconds a run; on a 2-core machine a benchmark of key usage would
measure the CPU instead of the keys. This client does what a plain-mode (no tools) headless
run does on the wire and on stdout, and nothing else:
- reads ``-p PROMPT -o stream-json -m MODEL`` (``--policy`` is accepted and ignored: no tools)
  and answers ``--version``;
- sends ONE ``streamGenerateContent?alt=sse`` request to ``$GOOGLE_GEMINI_BASE_URL`` with
  ``x-goog-api-key: $GEMINI_API_KEY``, with a system instruction as large as the real CLI's
  (about 6,000 tokens);
- prints stream-json lines as the CLI 0.61 does: ``init``, the user ``message``, assistant
  ``message`` deltas, and a ``result`` with ``stats``;
- on an HTTP error prints an error ``result`` with Google's message, writes ``status`` and
  ``retryDelayMs`` to stderr as the CLI does, and exits with the HTTP status mod 256 (429 ->
  173); it never retries (the CLI with ``general.maxAttempts: 1``).
Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

# The real CLI's request carries its system prompt and tool declarations: about 6,000
# prompt tokens for a short prompt (CLI 0.61 against the emulator).
SYSTEM_INSTRUCTION = "You are a helpful agent running in a headless terminal session. " * 380
VERSION = "0.61.0-bench-light"
EXIT_INPUT_ERROR = 42
EXIT_GENERAL_ERROR = 1


def emit(kind: str, **fields: Any) -> None:
    """One stream-json line."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(json.dumps({"type": kind, "timestamp": stamp, **fields}), flush=True)


def stats(usage: dict[str, Any], model: str, duration_ms: int) -> dict[str, Any]:
    """The result event's ``stats`` from a ``usageMetadata``."""
    prompt = int(usage.get("promptTokenCount", 0))
    output = int(usage.get("candidatesTokenCount", 0))
    cached = int(usage.get("cachedContentTokenCount", 0))
    total = int(usage.get("totalTokenCount", prompt + output))
    figures = {
        "total_tokens": total,
        "input_tokens": prompt,
        "output_tokens": output,
        "cached": cached,
        "input": prompt - cached,
    }
    return {**figures, "duration_ms": duration_ms, "tool_calls": 0, "models": {model: figures}}


def fail(error: dict[str, Any], status: int, model: str, started: float) -> int:
    """The CLI's ending for an API error: an error result; the status, the retry delay and
    the error body (with its QuotaFailure, whose quotaId tells a daily quota) on stderr."""
    message = str(error.get("message", ""))
    retry_ms = retry_delay_ms(error)
    emit(
        "result",
        status="error",
        error={"type": "unknown", "message": f"[API Error: {message}]"},
        stats=stats({}, model, int((time.monotonic() - started) * 1000)),
    )
    print(f"Attempt 1 failed: {message}. Max attempts reached", file=sys.stderr)
    if retry_ms is not None:
        print(f"  retryDelayMs: {retry_ms},", file=sys.stderr)
    print(f"  status: {status}", file=sys.stderr)
    print(f"  error: {json.dumps(error)}", file=sys.stderr)
    return status % 256 or EXIT_GENERAL_ERROR


def retry_delay_ms(error: dict[str, Any]) -> int | None:
    """RetryInfo.retryDelay ("26s") in milliseconds, if the error has one."""
    for detail in error.get("details") or []:
        delay = str(detail.get("retryDelay", ""))
        if detail.get("@type", "").endswith("RetryInfo") and delay.endswith("s"):
            return int(float(delay[:-1]) * 1000)
    return None


def request_body(prompt: str) -> dict[str, Any]:
    """The generate request: the prompt and a system instruction the size of the CLI's."""
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "systemInstruction": {"role": "user", "parts": [{"text": SYSTEM_INSTRUCTION}]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="light_cli")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("-o", "--output-format", choices=["stream-json"], required=True)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--policy")
    # The node asks `--version` to know whether a CLI is there.
    parser.add_argument("--version", action="version", version=VERSION)
    try:
        args = parser.parse_args()
    except SystemExit as exc:  # --version (0) or bad arguments (2, as the CLI's 42)
        return EXIT_INPUT_ERROR if exc.code else 0
    base_url = os.environ.get("GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com")
    api_key = os.environ.get("GEMINI_API_KEY", "")
    started = time.monotonic()
    emit("init", session_id=str(uuid.uuid4()), model=args.model)
    emit("message", role="user", content=args.prompt)
    body = request_body(args.prompt)
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/v1beta/models/{args.model}:streamGenerateContent?alt=sse",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "x-goog-api-key": api_key},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    usage: dict[str, Any] = {}
    try:
        with opener.open(request, timeout=300) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[len("data: ") :])
                for candidate in chunk.get("candidates") or []:
                    for part in (candidate.get("content") or {}).get("parts") or []:
                        if part.get("text"):
                            emit("message", role="assistant", content=part["text"], delta=True)
                usage = chunk.get("usageMetadata") or usage
    except urllib.error.HTTPError as exc:
        with exc:
            raw_error = exc.read()
        try:
            error = json.loads(raw_error)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": raw_error.decode(errors="replace")[:500]}
        return fail(error, exc.code, args.model, started)
    except (OSError, ValueError) as exc:
        emit("result", status="error", error={"type": "unknown", "message": str(exc)})
        print(f"Error when talking to Gemini API: {exc}", file=sys.stderr)
        return EXIT_GENERAL_ERROR
    emit(
        "result",
        status="success",
        stats=stats(usage, args.model, int((time.monotonic() - started) * 1000)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
