"""How agentmesh log lines look: the message, then its fields as key=value, never a secret.

Log calls carry ids as `extra=` fields (`task_id`, `attempt`, `agent`, the `key`
fingerprint); the standard format would drop them, so "attempt lost" would not say which.
Secrets never belong in a log line: the code logs fingerprints, not keys. This formatter is
the net under that rule: a field named like a secret is masked, and every value given to
`redact` (the mesh token, the database password, each API key the process handles) is
masked wherever it appears in a line, tracebacks included.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
# Shorter values would mask ordinary words.
MIN_SECRET_LENGTH = 4

# What every LogRecord has: anything else on a record came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}
)
_SECRET_FIELD = re.compile(
    r"token|password|passwd|secret|credential|authorization|api_?key|key_value|dsn|database_url",
    re.IGNORECASE,
)
_NEEDS_QUOTES = re.compile(r'[\s"=]')

_secrets: set[str] = set()
# The same, longest first (a longer secret may hold a shorter): replaced whole on each
# `redact`, so that every line reads it without the lock.
_masked_in_order: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def redact(*values: str | None) -> None:
    """Mask these values in every log line this process writes from now on."""
    global _masked_in_order
    with _secrets_lock:
        _secrets.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)
        _masked_in_order = tuple(sorted(_secrets, key=len, reverse=True))


def scrub(text: str) -> str:
    """The text with every registered secret masked."""
    for secret in _masked_in_order:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


@functools.lru_cache(maxsize=1024)
def _masked_field(name: str) -> bool:
    """Whether an `extra` field of this name is masked (asked once per name: a node logs
    two lines per task)."""
    return _SECRET_FIELD.search(name) is not None


def fields_of(record: logging.LogRecord) -> str:
    """The record's `extra` fields as `key=value` pairs, in the order they were given."""
    pairs = []
    for name, value in record.__dict__.items():
        if name in _STANDARD_ATTRIBUTES or name.startswith("_"):
            continue
        text = MASK if _masked_field(name) else str(value)
        if not text or _NEEDS_QUOTES.search(text):
            text = json.dumps(text, ensure_ascii=False)
        pairs.append(f"{name}={text}")
    return " ".join(pairs)


class FieldsFormatter(logging.Formatter):
    """The message, its `extra` fields as key=value, then any traceback; secrets masked."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = fields_of(record)
        return f"{line} {fields}" if fields else line

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def install(level: int, *, secrets: Iterable[str | None] = ()) -> None:
    """Log to stderr in this format, at `level`, masking `secrets` (the command line's)."""
    redact(*secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
