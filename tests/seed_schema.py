"""The seed document's tables, written once as data, and a reader for the seed file itself.

`SEED_TABLES` is what the migrations must build (tests/test_schema.py checks the database
against it on both servers); `parse_seed_schema` reads the same facts out of the seed's
`CREATE TABLE` and `ALTER TABLE ... ADD COLUMN` statements, so that a test can check that
the two never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Where the seed lives beside the project in CI (`../shared/seed/`); absent on a fresh clone.
SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed"


@dataclass(frozen=True)
class SeedColumn:
    """A column as the seed declares it, in PostgreSQL's own spelling (`format_type`)."""

    type: str
    default: str | None = None  # normalized (see `normalize_default`); None: no default
    primary_key: bool = False
    unique: bool = False
    references: str | None = None  # "table(column)"


def _serial() -> SeedColumn:
    return SeedColumn("integer", default="nextval", primary_key=True)


TS = "timestamp without time zone"

SEED_TABLES: dict[str, dict[str, SeedColumn]] = {
    "user_profile": {
        "id": _serial(),
        "username": SeedColumn("text", unique=True),
        "default_permissions": SeedColumn("text"),
        "throttle_tolerance": SeedColumn("integer"),
        "max_token_per_request": SeedColumn("integer"),
        "timezone": SeedColumn("text"),
        "preferred_format": SeedColumn("text"),
    },
    "home_network": {
        "id": _serial(),
        "host_name": SeedColumn("text"),
        "ip_address": SeedColumn("text"),
        "service": SeedColumn("text"),
        "notes": SeedColumn("text"),
        "tags": SeedColumn("text[]"),
        "last_seen": SeedColumn(TS),
    },
    "permissions_profile": {
        "id": _serial(),
        "user_id": SeedColumn("text"),
        "command": SeedColumn("text"),
        "last_used": SeedColumn(TS),
        "allow_by_default": SeedColumn("boolean"),
        "notes": SeedColumn("text"),
    },
    "custom_knowledge": {
        "id": _serial(),
        "task_id": SeedColumn("text", references="tasks(id)"),
        "label": SeedColumn("text"),
        "value": SeedColumn("text"),
        "source": SeedColumn("text"),
        "tags": SeedColumn("text[]"),
        "visibility": SeedColumn("text", default="'private'"),
        "inserted_at": SeedColumn(TS, default="now()"),
    },
    # The seed adds these four to a table it does not define.
    "api_keys": {
        "priority": SeedColumn("integer", default="0"),
        "assigned_user": SeedColumn("text"),
        "rotating": SeedColumn("boolean", default="true"),
        "source": SeedColumn("text"),
    },
    "token_prediction_log": {
        "id": _serial(),
        "task_id": SeedColumn("text"),
        "api_key": SeedColumn("text"),
        "predicted_tokens": SeedColumn("integer"),
        "actual_tokens": SeedColumn("integer"),
        "delta": SeedColumn("integer"),
        "request_timestamp": SeedColumn(TS, default="now()"),
    },
    # `embedding` is VECTOR(768) where pgvector is installed, REAL[] where it is not.
    "vector_knowledge": {
        "id": _serial(),
        "embedding": SeedColumn("vector(768)"),
        "source": SeedColumn("text"),
        "metadata": SeedColumn("jsonb"),
    },
    "subtasks": {
        "id": _serial(),
        "parent_task_id": SeedColumn("text", references="tasks(id)"),
        "child_task_id": SeedColumn("text"),
        "description": SeedColumn("text"),
        "status": SeedColumn("text", default="'pending'"),
        "assigned_host": SeedColumn("text"),
        "agent_mode": SeedColumn("text"),
        "created_at": SeedColumn(TS, default="now()"),
        "started_at": SeedColumn(TS),
        "completed_at": SeedColumn(TS),
    },
    "agents": {
        "id": SeedColumn("text", primary_key=True),
        "hostname": SeedColumn("text"),
        "ip_address": SeedColumn("text"),
        "last_heartbeat": SeedColumn(TS),
        "capabilities": SeedColumn("text[]"),
        "current_task_id": SeedColumn("text"),
        "status": SeedColumn("text"),
    },
    "task_queue": {
        "id": _serial(),
        "target_host": SeedColumn("text"),
        "payload": SeedColumn("jsonb"),
        "created_at": SeedColumn(TS, default="now()"),
        "claimed": SeedColumn("boolean", default="false"),
        "claimed_by": SeedColumn("text"),
        "claimed_at": SeedColumn(TS),
    },
}

# ------------------------------------------------------------------ normalizing

_SEED_TYPES = {
    "serial": "integer",
    "int": "integer",
    "integer": "integer",
    "text": "text",
    "text[]": "text[]",
    "timestamp": TS,
    "boolean": "boolean",
    "jsonb": "jsonb",
}


def normalize_type(seed_type: str) -> str:
    """The seed's spelling of a type (`INT`, `TIMESTAMP`, `VECTOR(768)`) as format_type's."""
    spelled = seed_type.strip().lower()
    return _SEED_TYPES.get(spelled, spelled)


def normalize_default(expression: str | None) -> str | None:
    """A default as the seed writes it or as pg_get_expr prints it, in one spelling.

    `'private'::text` and `'private'` are the same default; `NOW()` and `now()` too; a
    sequence default of any name is `nextval`.
    """
    if expression is None:
        return None
    text = expression.strip()
    if text.lower().startswith("nextval("):
        return "nextval"
    text = re.sub(r"::[a-z ]+(\[\])?$", "", text)  # a trailing cast
    if not text.startswith("'"):
        text = text.lower()
    return text


# ------------------------------------------------------------------ reading the seed

_SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
_CREATE = re.compile(r"CREATE TABLE (\w+)\s*\((.*?)\);", re.DOTALL | re.IGNORECASE)
_ALTER = re.compile(r"ALTER TABLE (\w+)\s+(ADD COLUMN .*?);", re.DOTALL | re.IGNORECASE)
_KEYWORDS = ("PRIMARY KEY", "UNIQUE", "DEFAULT", "REFERENCES", "NOT NULL")


def seed_file() -> Path | None:
    """The seed document, when `../shared/seed/` is beside the project."""
    found = sorted(SEED_DIR.glob("*.txt")) if SEED_DIR.is_dir() else []
    return found[0] if found else None


def parse_seed_schema(text: str) -> dict[str, dict[str, SeedColumn]]:
    """Every table and column the seed's SQL blocks create or add, as `SeedColumn`s."""
    tables: dict[str, dict[str, SeedColumn]] = {}
    for block in _SQL_BLOCK.findall(text):
        for name, body in _CREATE.findall(block):
            columns = tables.setdefault(name, {})
            for definition in _split_top_level(body):
                column, parsed = _parse_column(definition)
                columns[column] = parsed
        for name, body in _ALTER.findall(block):
            columns = tables.setdefault(name, {})
            for definition in _split_top_level(body):
                column, parsed = _parse_column(re.sub(r"(?i)^ADD COLUMN\s+", "", definition))
                columns[column] = parsed
    return tables


def _split_top_level(body: str) -> list[str]:
    """Split on commas outside parentheses (`VECTOR(768)` keeps its own)."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += (char == "(") - (char == ")")
        current.append(char)
    parts.append("".join(current))
    return [" ".join(part.split()) for part in parts if part.strip()]


def _parse_column(definition: str) -> tuple[str, SeedColumn]:
    name, rest = definition.split(" ", 1)
    upper = rest.upper()
    cut = min([upper.find(k) for k in _KEYWORDS if k in upper] or [len(rest)])
    seed_type = rest[:cut].strip()
    default = None
    match = re.search(r"(?i)DEFAULT\s+(.+?)(?:\s+(?:PRIMARY|UNIQUE|REFERENCES|NOT)\b|$)", rest)
    if match:
        default = match.group(1)
    if seed_type.upper() == "SERIAL":
        default = "nextval"
    references = re.search(r"(?i)REFERENCES\s+(\w+)\s*\((\w+)\)", rest)
    return name, SeedColumn(
        type=normalize_type(seed_type),
        default=normalize_default(default),
        primary_key="PRIMARY KEY" in upper,
        unique="UNIQUE" in upper,
        references=f"{references[1]}({references[2]})" if references else None,
    )
