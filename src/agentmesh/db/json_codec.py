"""How JSON values cross to PostgreSQL: orjson where it is exact, the standard library where
it is not.

Every statement of the scheduler's round carries JSON (specs, events, usage, cards), and the
standard library's encoder and decoder were a twentieth of the scheduler's time under load.
orjson is several times faster, but it reads an integer past 64 bits as a float and refuses
to write one: those values take the standard library's way, so nothing changes but speed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Values orjson would write where the standard library refuses: refused here too.
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# A number that may not fit 64 bits: a run of 19 digits (one inside a string sends the text
# the standard library's way too). Looked for in the text's bytes with every digit made "0"
# and everything else " ": a regular expression took longer than orjson's whole parse.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 19


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_STRICT).decode()
    except TypeError:
        # Integers past 64 bits, keys that are not strings, or a value JSON cannot hold
        # (which the standard library refuses as before).
        return json.dumps(value)


def loads(text: str) -> Any:
    if _LONG_NUMBER in text.encode("utf-8", "surrogatepass").translate(_DIGITS_ONLY):
        return json.loads(text)  # integers past 64 bits stay exact
    return orjson.loads(text)
