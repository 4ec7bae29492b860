"""agentmesh's one validated settings object.

Settings come from three places, the first that has a value wins:
1. the process environment,
2. a `.env` file (path from `AGENTMESH_ENV_FILE`, default `./.env`),
3. `agent_config.json` (path from `AGENTMESH_CONFIG`, default `./agent_config.json`),
then the defaults below, which are the seed document's example values.

The JSON file holds the structured settings (permissions, API policy, node and scheduler
options); the environment holds where things are and the secrets. Anything wrong ends in
one `ConfigError` naming the file, the key and the problem; secrets never appear in it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from agentmesh.durations import DURATION_FORMS, parse_duration
from agentmesh.tasks.model import AgentMode

DEFAULT_CONFIG_FILE = "agent_config.json"
DEFAULT_ENV_FILE = ".env"

Capability = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,63}$", strip_whitespace=True)
]
ProgramName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._+-]{1,64}$")]
HostPort = Annotated[
    str, StringConstraints(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
]


class ConfigError(Exception):
    """The configuration is unusable; the message names the source, the key and the problem."""


class PermissionMode(StrEnum):
    """Ordered: weak < superuser (a node's ceiling admits its mode and every lower one)."""

    WEAK = "weak"
    SUPERUSER = "superuser"

    def exceeds(self, ceiling: PermissionMode) -> bool:
        """Whether this mode is above `ceiling`."""
        order = list(PermissionMode)
        return order.index(self) > order.index(ceiling)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# The seed's example policy: read-only inventory commands in weak mode, and in superuser
# mode everything except the programs that destroy data or take the host down.
DEFAULT_ALLOWLIST: tuple[str, ...] = (
    "cat", "date", "df", "du", "echo", "free", "grep", "head", "hostname", "id", "ip",
    "ls", "lsblk", "nproc", "ps", "pwd", "stat", "tail", "uname", "uptime", "wc", "whoami",
)  # fmt: skip
DEFAULT_DENYLIST: tuple[str, ...] = (
    "chmod", "chown", "dd", "fdisk", "halt", "kill", "killall", "mkfs", "mount", "mv",
    "parted", "pkill", "poweroff", "reboot", "rm", "rmdir", "shred", "shutdown", "truncate",
    "umount", "wipefs",
)  # fmt: skip


class WeakPermissions(_Section):
    allowlist: tuple[ProgramName, ...] = DEFAULT_ALLOWLIST
    # Whether tasks in this mode reach the network (off: a sandboxed shell task has only
    # its own loopback, a Gemini run only the node's API proxy).
    network: bool = True


class SuperuserPermissions(_Section):
    denylist: tuple[ProgramName, ...] = DEFAULT_DENYLIST
    network: bool = True


class Permissions(_Section):
    weak: WeakPermissions = WeakPermissions()
    superuser: SuperuserPermissions = SuperuserPermissions()

    def network(self, mode: PermissionMode) -> bool:
        return self.weak.network if mode is PermissionMode.WEAK else self.superuser.network


class SandboxKind(StrEnum):
    """How a node confines its tasks (see agentmesh.node.sandbox)."""

    AUTO = "auto"  # bubblewrap where it works; without it, shell and gemini tasks are refused
    BUBBLEWRAP = "bubblewrap"  # the node does not start without it
    NONE = "none"  # no sandbox, explicitly: the card and every task's trace say so


class ApiPolicy(_Section):
    """Every key's limits unless the key sets its own (`agentmesh keys update`); 0 = none.

    Counted per key and model, as Google counts them; the day ends at midnight Pacific time.
    """

    # Tokens a key may spend a day.
    max_tokens_per_key: int = Field(default=1_000_000, ge=0)
    max_requests_per_day: int = Field(default=1_500, ge=0)
    # Requests a minute: a key's requests are spaced so that this is never exceeded.
    rpm_soft_limit: int = Field(default=15, ge=0)
    # How long a task waits for a key with capacity when its user has no throttle_tolerance.
    throttle_tolerance_seconds: float = Field(default=300.0, ge=0)


class AgentDefaults(_Section):
    # The agent mode of gemini tasks that do not name one: `agentic` (the CLI works with its
    # tools under the permission mode's policy) or `plain` (an answer only, no tools).
    mode: AgentMode = AgentMode.AGENTIC
    permissions: PermissionMode = PermissionMode.WEAK
    model: str = Field(default="gemini-2.5-flash", min_length=1)
    timeout_seconds: int = Field(default=600, gt=0)
    # How many subtasks a running agent may start through its mesh tools (`delegate`); 0
    # turns delegation off (the tools then only list agents and read).
    max_delegations: int = Field(default=8, ge=0, le=1000)


class NodeSettings(_Section):
    listen: HostPort = "127.0.0.1:50051"
    name: str | None = None
    capabilities: tuple[Capability, ...] = ()
    max_concurrency: int = Field(default=4, gt=0, le=1024)
    models: tuple[str, ...] = ("gemini-2.5-flash", "gemini-2.5-pro")
    scheduler: HostPort | None = None
    # The address the scheduler should dial; default: the listen address.
    advertise: HostPort | None = None
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Where tasks run; unset = a fresh temporary directory per task.
    workdir: Path | None = None
    cancel_grace_seconds: float = Field(default=3.0, ge=0)
    sandbox: SandboxKind = SandboxKind.AUTO
    # The highest permission mode this node runs: a task asking for more is rejected before
    # anything runs (and the scheduler places it only on nodes whose ceiling admits it).
    max_permission_mode: PermissionMode = PermissionMode.WEAK
    # A task's stdout and stderr together: past this, the node stops forwarding output,
    # stops the task's processes and fails it (a `cat /dev/urandom` must end).
    max_output_bytes: int = Field(default=16 << 20, ge=1024)
    # How long the permission checker may take over one command (in a worker process, off
    # the node's event loop); a command that takes longer is refused as too complex.
    command_check_seconds: float = Field(default=5.0, gt=0)


class SchedulerSettings(_Section):
    listen: HostPort = "127.0.0.1:50050"
    # How often nodes heartbeat: the scheduler tells every node (each node uses its own
    # `node.heartbeat_interval_seconds` only until the scheduler first answers), and an
    # agent is offline after `heartbeat_ttl_intervals` of these without a heartbeat.
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0)
    heartbeat_ttl_intervals: int = Field(default=3, gt=0)
    max_attempts: int = Field(default=3, gt=0, le=100)
    lease_seconds: float = Field(default=30.0, gt=0)
    max_subtask_depth: int = Field(default=4, gt=0, le=32)
    # The most a task's trace may grow by in one attempt, in characters of text (each event
    # counts at least 256); past it the scheduler stops storing, stops the attempt, fails it.
    max_trace_chars: int = Field(default=32 << 20, ge=64 << 10)
    # Retention: when set ("90d", "12h"), the scheduler deletes every hour the task trees
    # that ended longer ago than this, with their traces (as `agentmesh db prune
    # --older-than` does); unset, it keeps them all.
    retention: timedelta | None = None

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_duration(value)
        if value is not None:
            raise ValueError(f"{value!r} is not a duration: use {DURATION_FORMS}")
        return value


class TlsSettings(_Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    # When set, clients must present a certificate signed by this CA.
    client_ca_file: Path | None = None
    # Clients: the CA that signed the servers' certificates.
    ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class FileSettings(_Section):
    """The structure of `agent_config.json`."""

    permissions: Permissions = Permissions()
    api_policy: ApiPolicy = ApiPolicy()
    agent_defaults: AgentDefaults = AgentDefaults()
    node: NodeSettings = NodeSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    tls: TlsSettings = TlsSettings()


class EnvSettings(_Section):
    """What the environment (and `.env`) sets, by the seed's variable names.

    `load_settings` leaves empty variables out: `POSTGRES_HOST=` is unset, not "".
    """

    POSTGRES_DB: str = "agentmesh"
    POSTGRES_USER: str = "agentmesh"
    POSTGRES_PASSWORD: SecretStr = SecretStr("")
    POSTGRES_HOST: str = "localhost"
    POSTGRES_PORT: int = Field(default=5432, gt=0, lt=65536)
    DATABASE_URL: SecretStr | None = None
    GEMINI_CLI_COMMAND: str = "gemini"
    GEMINI_API_KEY_FILE: Path | None = None
    # The user credential: submit, watch, cancel, list, manage keys.
    AGENTMESH_TOKEN: SecretStr | None = None
    # A node's own credential (`agentmesh nodes enroll`): heartbeat and lease keys.
    AGENTMESH_NODE_TOKEN: SecretStr | None = None
    # The Fernet key that encrypts API keys at rest; unset = one generated into the data
    # directory (secret.key, mode 0600).
    AGENTMESH_SECRET_KEY: SecretStr | None = None
    # Where a node's Gemini API proxy sends the API requests of its tasks.
    GOOGLE_GEMINI_BASE_URL: str = "https://generativelanguage.googleapis.com"
    AGENTMESH_DATA_DIR: Path | None = None
    # Where the command line reaches the scheduler; default: scheduler.listen (the local one).
    AGENTMESH_SCHEDULER: HostPort | None = None

    @field_validator("DATABASE_URL")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ValueError("the port is not a number") from None
        return value


_ENV_NAMES = frozenset(EnvSettings.model_fields)

# Keys of agent_config.json that are read and validated but not acted on yet, by the
# service that will act on them: a service configured with these says so when it starts,
# so that nothing is silently ignored. Today every key is in use.
Service = Literal["scheduler", "node"]
NOT_ENFORCED_YET: dict[Service, tuple[str, ...]] = {"scheduler": (), "node": ()}
# Any of these set means a PostgreSQL server; with none, agentmesh runs its embedded one.
DATABASE_VARIABLES = frozenset(
    {"DATABASE_URL", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER",
     "POSTGRES_PASSWORD"}
)  # fmt: skip
_SECRET_ENV_NAMES = frozenset(
    {
        "POSTGRES_PASSWORD",
        "DATABASE_URL",
        "AGENTMESH_TOKEN",
        "AGENTMESH_NODE_TOKEN",
        "AGENTMESH_SECRET_KEY",
    }
)


@dataclass(frozen=True)
class Settings:
    """Everything agentmesh is configured with. Secrets are `SecretStr` and print as `***`."""

    file: FileSettings
    env: EnvSettings
    config_path: Path | None
    # The `.env` file read, if any (it may hold secrets: the sandbox hides it from tasks).
    env_path: Path | None = None

    @property
    def permissions(self) -> Permissions:
        return self.file.permissions

    @property
    def api_policy(self) -> ApiPolicy:
        return self.file.api_policy

    @property
    def agent_defaults(self) -> AgentDefaults:
        return self.file.agent_defaults

    @property
    def node(self) -> NodeSettings:
        return self.file.node

    @property
    def scheduler(self) -> SchedulerSettings:
        return self.file.scheduler

    @property
    def tls(self) -> TlsSettings:
        return self.file.tls

    def not_enforced_keys(self, service: Service) -> tuple[str, ...]:
        """The keys the configuration file sets that `service` does not act on yet."""
        configured = set(_keys_set(self.file))
        return tuple(key for key in NOT_ENFORCED_YET[service] if key in configured)

    def not_enforced_warning(self, service: Service) -> str | None:
        """The one line a starting `service` logs about those keys, if there are any."""
        keys = self.not_enforced_keys(service)
        if not keys:
            return None
        return f"{self.config_path} sets {', '.join(keys)}: read and validated, not enforced yet"

    @property
    def token(self) -> str | None:
        return self.env.AGENTMESH_TOKEN.get_secret_value() if self.env.AGENTMESH_TOKEN else None

    @property
    def node_token(self) -> str | None:
        """This node's credential (AGENTMESH_NODE_TOKEN), if it has one."""
        secret = self.env.AGENTMESH_NODE_TOKEN
        return secret.get_secret_value() if secret else None

    def with_node_token(self, token: str) -> Settings:
        """These settings for a node that presents `token` (a mesh started in one process)."""
        env = self.env.model_copy(update={"AGENTMESH_NODE_TOKEN": SecretStr(token)})
        return dataclasses.replace(self, env=env)

    @property
    def uses_embedded_database(self) -> bool:
        """True when no database variable is set (DATABASE_URL or any POSTGRES_*)."""
        return not (self.env.model_fields_set & DATABASE_VARIABLES)

    def database_dsn(self) -> str | None:
        """The DSN of the configured server (with its password), or None for the embedded one.

        Like libpq, POSTGRES_HOST defaults to localhost and POSTGRES_PORT to 5432."""
        if self.env.DATABASE_URL is not None:
            return self.env.DATABASE_URL.get_secret_value()
        if self.uses_embedded_database:
            return None
        password = self.env.POSTGRES_PASSWORD.get_secret_value()
        auth = quote(self.env.POSTGRES_USER, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        host, port = self.env.POSTGRES_HOST, self.env.POSTGRES_PORT
        db = quote(self.env.POSTGRES_DB, safe="")
        if host.startswith("/"):  # a Unix socket directory, as libpq allows
            return f"postgresql://{auth}@/{db}?host={quote(host, safe='/')}&port={port}"
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return f"postgresql://{auth}@{host}:{port}/{db}"


def _keys_set(section: BaseModel, prefix: str = "") -> list[str]:
    """The dotted keys that were given explicitly (not left at their defaults)."""
    keys = []
    for name in sorted(section.model_fields_set):
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            keys += _keys_set(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def load_settings(environ: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming what is wrong."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    env_path = cwd / environ.get("AGENTMESH_ENV_FILE", DEFAULT_ENV_FILE)
    merged = {**_read_env_file(environ, cwd), **environ}
    config_path = _config_path(merged, cwd)
    file_settings = _read_config_file(config_path, explicit="AGENTMESH_CONFIG" in merged)
    # An empty variable (`POSTGRES_HOST=`) counts as unset.
    env_values = {name: merged[name] for name in _ENV_NAMES if merged.get(name)}
    try:
        env_settings = EnvSettings.model_validate(env_values)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source="environment", secret_keys=_SECRET_ENV_NAMES)
        ) from None
    exists = config_path is not None and config_path.exists()
    return Settings(
        file=file_settings,
        env=env_settings,
        config_path=config_path if exists else None,
        env_path=env_path if env_path.exists() else None,
    )


def _read_env_file(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    explicit = environ.get("AGENTMESH_ENV_FILE")
    path = cwd / (explicit or DEFAULT_ENV_FILE)
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: file not found (named by AGENTMESH_ENV_FILE)")
        return {}
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    return {key: value for key, value in values.items() if value is not None}


def _config_path(merged: Mapping[str, str], cwd: Path) -> Path:
    return cwd / merged.get("AGENTMESH_CONFIG", DEFAULT_CONFIG_FILE)


def _read_config_file(path: Path, *, explicit: bool) -> FileSettings:
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: file not found (named by AGENTMESH_CONFIG)")
        return FileSettings()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    try:
        return FileSettings.model_validate(raw, strict=False)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source=str(path), secret_keys=frozenset())
        ) from None


def describe_validation_error(
    exc: ValidationError, *, source: str, secret_keys: frozenset[str] = frozenset()
) -> str:
    """One line per problem: `SOURCE: dotted.key: what is wrong (got VALUE)`."""
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
            continue
        message = error["msg"]
        secret = any(str(part) in secret_keys for part in error["loc"])
        shown = "" if secret or error["type"] == "missing" else f" (got {error['input']!r})"
        lines.append(f"{source}: {key}: {message}{shown}")
    return "\n".join(lines)
