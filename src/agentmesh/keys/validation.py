"""What the key pool accepts: labels, secrets, users, priorities, limits and reasons.

Each check raises InvalidArgument naming the field; none repeats a secret, and a secret
given where a label belongs (recognised by its shape or by a stored fingerprint) is
refused as such.
"""

from __future__ import annotations

import re

from agentmesh.errors import InvalidArgument
from agentmesh.keys.model import Limits

LABEL = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LABEL_RULE = "must be 1-64 characters of letters, digits and . _ : -"
FINGERPRINT = re.compile(r"(?:sha256:)?[0-9a-f]{12}")
# A Gemini API key, as Google issues them: refused where a label or a reference belongs.
GEMINI_KEY = re.compile(r"AIza[0-9A-Za-z_-]{35}")
MAX_USER_CHARS = 1024
MAX_REASON_CHARS = 500
MAX_SECRET_CHARS = 4096
INT32_MAX = 2**31 - 1
KEY_GIVEN_AS_LABEL = (
    "is an API key's secret: a label names a key, the secret goes in separately"
    " (agentmesh keys add reads it from standard input or --secret-file)"
)


def looks_like_a_key(text: str) -> bool:
    """A Gemini API key's shape."""
    return GEMINI_KEY.fullmatch(text) is not None


def check_label(name: str, label: str, *, is_stored_secret: bool) -> None:
    if looks_like_a_key(label) or is_stored_secret:
        raise InvalidArgument(name, KEY_GIVEN_AS_LABEL)
    if not LABEL.fullmatch(label):
        raise InvalidArgument(name, LABEL_RULE)
    if FINGERPRINT.fullmatch(label):
        raise InvalidArgument(name, "must not look like a fingerprint (sha256:... or 12 hex)")


def check_secret(secret: str) -> None:
    if not secret:
        raise InvalidArgument("secret", "is required")
    if any(c.isspace() for c in secret):
        raise InvalidArgument("secret", "must not contain whitespace")
    if any(not c.isprintable() for c in secret):
        raise InvalidArgument("secret", "must hold printable characters only")
    if len(secret) > MAX_SECRET_CHARS:
        raise InvalidArgument("secret", f"is longer than {MAX_SECRET_CHARS} characters")


def check_user(name: str, user: str) -> None:
    if len(user) > MAX_USER_CHARS:
        raise InvalidArgument(name, f"is longer than {MAX_USER_CHARS} characters")
    if user != user.strip() or any(not c.isprintable() for c in user):
        raise InvalidArgument(name, "must be printable, without leading or trailing spaces")


def check_priority(name: str, priority: int) -> None:
    if not -INT32_MAX - 1 <= priority <= INT32_MAX:
        raise InvalidArgument(name, "must fit in 32 bits")


def check_limits(limits: Limits) -> None:
    for name in ("requests_per_minute", "requests_per_day", "tokens_per_day"):
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise InvalidArgument(name, "must not be negative (0 = api_policy's)")


def check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument("reason", f"is longer than {MAX_REASON_CHARS} characters")
    if any(not c.isprintable() for c in reason):
        raise InvalidArgument("reason", "must be one line of printable characters")
