"""A response's cost, read from its usageMetadata however the body is cut into chunks."""

from __future__ import annotations

import json

import pytest

from agentmesh.node.gemini_usage import TokenUsage, UsageReader


def event(usage: dict[str, int] | None) -> bytes:
    body: dict[str, object] = {"candidates": [{"content": {"parts": [{"text": "x"}]}}]}
    if usage is not None:
        body["usageMetadata"] = usage
    return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_the_last_usage_of_a_stream_is_its_total(size: int) -> None:
    stream = (
        event(None)
        + event({"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11})
        + event({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                 "totalTokenCount": 18})
    )  # fmt: skip
    reader = UsageReader(streamed=True)
    for start in range(0, len(stream), size):
        reader.feed(stream[start : start + size])

    assert reader.finish() == TokenUsage(prompt_tokens=10, output_tokens=8, total_tokens=18)


def test_a_plain_answer_is_one_document() -> None:
    body = json.dumps({"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2}})
    reader = UsageReader(streamed=False)
    reader.feed(body[:5].encode())
    reader.feed(body[5:].encode())

    assert reader.finish() == TokenUsage(7, 2, 9)


def test_an_answer_without_usage_costs_nothing_known() -> None:
    reader = UsageReader(streamed=True)
    reader.feed(b"data: not json\n\n" + event(None))

    assert reader.finish() == TokenUsage()
