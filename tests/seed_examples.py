"""The seed document's example configuration (its section VI), written once as data.

`tests/test_seed_examples.py` checks this data against the seed file itself where it is
present (`../shared/seed/` beside the project), so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The seed's `agent_config.json`, verbatim.
SEED_AGENT_CONFIG: dict[str, Any] = {
    "permissions": {
        "weak": {"allowlist": ["ls", "cat", "curl"]},
        "superuser": {"denylist": ["rm", "shutdown", "reboot"]},
    },
    "api_policy": {
        "max_tokens_per_key": 240000,
        "max_requests_per_day": 60,
        "rpm_soft_limit": 2,
    },
    "agent_defaults": {"mode": "agentic", "permissions": "weak"},
}

# The seed's `.env`, verbatim (its two paths are placeholders that exist nowhere).
SEED_ENV: dict[str, str] = {
    "POSTGRES_DB": "gemini_distributed_agent",
    "POSTGRES_USER": "agent",
    "POSTGRES_PASSWORD": "supersecret",
    "GEMINI_CLI_COMMAND": "/usr/local/bin/gemini",
    "GEMINI_API_KEY_FILE": "/path/to/api_keys.env",
}

# Where the seed document lives beside the project (in CI; not in a fresh clone).
SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"


def dotenv_text(values: Mapping[str, str]) -> str:
    """`NAME=value` lines, as the seed writes its `.env`."""
    return "".join(f"{name}={value}\n" for name, value in values.items())
