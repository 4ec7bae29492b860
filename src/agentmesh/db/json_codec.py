"""How JSON values cross to PostgreSQL: orjson where it is exact, the standard library where
it is not.

Every statement of the scheduler's round carries JSON (specs, events, usage, cards), and the
standard library's encoder and decoder were a twentieth of the scheduler's time under load.
orjson is several times faster, but it reads an integer past 64 bits as a float and refuses
to write one: those values take the standard library's way, so nothing changes but speed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Values orjson would write where the standard library refuses: refused here too.
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# A number that may not fit 64 bits (a digit run inside a string sends it this way too).
_LONG_NUMBER = re.compile(r"\d{19}")


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_STRICT).decode()
    except TypeError:
        # Integers past 64 bits, keys that are not strings, or a value JSON cannot hold
        # (which the standard library refuses as before).
        return json.dumps(value)


def loads(text: str) -> Any:
    if _LONG_NUMBER.search(text):
        return json.loads(text)  # integers past 64 bits stay exact
    return orjson.loads(text)
