"""What one Gemini API response cost, read from its `usageMetadata` as the body streams by.

A streamed answer (`alt=sse`) is `data: {...}` lines, each a GenerateContentResponse; the
last `usageMetadata` among them is the request's total. A plain answer is one JSON object.
Thinking models count their thoughts apart (`thoughtsTokenCount`): they are output too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A plain (non-streamed) body larger than this is passed on but not parsed.
MAX_PARSED_BODY_BYTES = 16 << 20


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> TokenUsage:
        def count(name: str) -> int:
            value = metadata.get(name, 0)
            return int(value) if isinstance(value, int | float) else 0

        prompt = count("promptTokenCount")
        output = count("candidatesTokenCount") + count("thoughtsTokenCount")
        total = count("totalTokenCount") or prompt + output + count("toolUsePromptTokenCount")
        return cls(prompt, output, total)


class UsageReader:
    """Fed the response body chunk by chunk; `usage` is what it has seen so far."""

    def __init__(self, *, streamed: bool) -> None:
        self._streamed = streamed
        self._buffer = b""
        self._too_large = False
        self._usage: TokenUsage | None = None

    def feed(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._buffer += chunk
        if not self._streamed:
            if len(self._buffer) > MAX_PARSED_BODY_BYTES:
                self._too_large, self._buffer = True, b""
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._read_event(line)

    def finish(self) -> TokenUsage:
        """The response's usage, once its body has ended."""
        if self._streamed:
            self._read_event(self._buffer)
        else:
            self._read_document(self._buffer)
        self._buffer = b""
        return self.usage

    @property
    def usage(self) -> TokenUsage:
        return self._usage or TokenUsage()

    def _read_event(self, line: bytes) -> None:
        line = line.strip()
        if line.startswith(b"data:"):
            self._read_document(line[5:])

    def _read_document(self, data: bytes) -> None:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return
        metadata = document.get("usageMetadata") if isinstance(document, dict) else None
        if isinstance(metadata, dict):
            self._usage = TokenUsage.from_metadata(metadata)
