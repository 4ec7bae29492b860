"""Configuration: defaults, sources and their precedence, and one clear message per mistake."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError

from agentmesh import config
from agentmesh.config import (
    DEFAULT_ALLOWLIST,
    DEFAULT_DENYLIST,
    ConfigError,
    EnvSettings,
    FileSettings,
    PermissionMode,
    load_settings,
)
from agentmesh.tasks.model import AgentMode
from tests.seed_examples import SEED_AGENT_CONFIG, SEED_ENV, dotenv_text
from tests.support.processes import free_port


def _write_config(directory: Path, content: object) -> Path:
    path = directory / "agent_config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_defaults_are_the_seed_values(tmp_path: Path) -> None:
    settings = load_settings({}, cwd=tmp_path)

    assert settings.permissions.weak.allowlist == DEFAULT_ALLOWLIST
    assert settings.permissions.superuser.denylist == DEFAULT_DENYLIST
    assert settings.api_policy.max_tokens_per_key == 1_000_000
    assert settings.api_policy.max_requests_per_day == 1_500
    assert settings.api_policy.rpm_soft_limit == 15
    assert settings.agent_defaults.mode is AgentMode.AGENTIC
    assert settings.agent_defaults.permissions is PermissionMode.WEAK
    assert settings.env.GEMINI_CLI_COMMAND == "gemini"
    assert settings.uses_embedded_database
    assert settings.config_path is None


def test_config_file_values_are_read(tmp_path: Path) -> None:
    _write_config(
        tmp_path,
        {
            "permissions": {"weak": {"allowlist": ["ls", "uname"]}},
            "api_policy": {"rpm_soft_limit": 5},
            "agent_defaults": {"permissions": "superuser"},
            "node": {"capabilities": ["gpu", "inventory"], "max_concurrency": 2},
        },
    )
    settings = load_settings({}, cwd=tmp_path)

    assert settings.permissions.weak.allowlist == ("ls", "uname")
    assert settings.permissions.superuser.denylist == DEFAULT_DENYLIST
    assert settings.api_policy.rpm_soft_limit == 5
    assert settings.agent_defaults.permissions is PermissionMode.SUPERUSER
    assert settings.node.capabilities == ("gpu", "inventory")
    assert settings.config_path == tmp_path / "agent_config.json"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_HOST=db.from.dotenv\nPOSTGRES_DB=fromdotenv\n")
    settings = load_settings({"POSTGRES_HOST": "db.from.env"}, cwd=tmp_path)

    assert settings.env.POSTGRES_HOST == "db.from.env"
    assert settings.env.POSTGRES_DB == "fromdotenv"
    assert not settings.uses_embedded_database


def test_database_url_wins_over_the_parts(tmp_path: Path) -> None:
    settings = load_settings(
        {"DATABASE_URL": "postgresql://u:pw@h:5/d", "POSTGRES_HOST": "other"}, cwd=tmp_path
    )
    assert settings.database_dsn() == "postgresql://u:pw@h:5/d"


@pytest.mark.parametrize(
    ("variable", "value", "dsn"),
    [
        ("POSTGRES_DB", "inventory", "postgresql://agentmesh@localhost:5432/inventory"),
        ("POSTGRES_USER", "agent", "postgresql://agent@localhost:5432/agentmesh"),
        ("POSTGRES_PASSWORD", "pw", "postgresql://agentmesh:pw@localhost:5432/agentmesh"),
        ("POSTGRES_PORT", "6543", "postgresql://agentmesh@localhost:6543/agentmesh"),
        ("POSTGRES_HOST", "db.lan", "postgresql://agentmesh@db.lan:5432/agentmesh"),
        ("POSTGRES_HOST", "::1", "postgresql://agentmesh@[::1]:5432/agentmesh"),
        (
            "POSTGRES_HOST",
            "/var/run/postgresql",
            "postgresql://agentmesh@/agentmesh?host=/var/run/postgresql&port=5432",
        ),
        ("DATABASE_URL", "postgresql://u@h/d", "postgresql://u@h/d"),
    ],
)
def test_any_database_variable_means_a_server(
    tmp_path: Path, variable: str, value: str, dsn: str
) -> None:
    settings = load_settings({variable: value}, cwd=tmp_path)

    assert not settings.uses_embedded_database
    assert settings.database_dsn() == dsn


def test_empty_database_variables_leave_the_embedded_server(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=\nPOSTGRES_HOST=\n")
    settings = load_settings({"DATABASE_URL": ""}, cwd=tmp_path)

    assert settings.uses_embedded_database
    assert settings.database_dsn() is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:s3cr3t@h/d", "must be a postgresql:// URL"),
        ("postgresql://u:s3cr3t@h:port/d", "the port is not a number"),
    ],
)
def test_bad_database_url_is_named_without_its_password(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": url}, cwd=tmp_path)
    assert str(caught.value) == f"environment: DATABASE_URL: Value error, {problem}"


def test_dsn_from_parts_quotes_the_password(tmp_path: Path) -> None:
    settings = load_settings(
        {"POSTGRES_HOST": "h", "POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p@ss/word"},
        cwd=tmp_path,
    )
    assert settings.database_dsn() == "postgresql://u:p%40ss%2Fword@h:5432/agentmesh"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            '{"api_policy": {',
            "{path}: invalid JSON at line 1 column 17: Expecting property name enclosed in"
            " double quotes",
            id="invalid-json",
        ),
        pytest.param("[1, 2]", "{path}: the top level must be a JSON object", id="not-an-object"),
        pytest.param(
            {"api_policy": {"max_tokens_per_key": "lots"}},
            "{path}: api_policy.max_tokens_per_key: Input should be a valid integer, unable to"
            " parse string as an integer (got 'lots')",
            id="wrong-type",
        ),
        pytest.param(
            {"api_policy": {"max_token_per_key": 5}},
            "{path}: api_policy.max_token_per_key: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            {"api_policy": {"rpm_soft_limit": -1}},
            "{path}: api_policy.rpm_soft_limit: Input should be greater than or equal to 0"
            " (got -1)",
            id="negative-limit",
        ),
        pytest.param(
            {"agent_defaults": {"permissions": "root"}},
            "{path}: agent_defaults.permissions: Input should be 'weak' or 'superuser'"
            " (got 'root')",
            id="bad-mode",
        ),
        pytest.param(
            {"agent_defaults": {"mode": "headless"}},
            "{path}: agent_defaults.mode: Input should be 'agentic' or 'plain' (got 'headless')",
            id="bad-agent-mode",
        ),
        pytest.param(
            {"permissions": {"weak": {"allowlist": "ls"}}},
            "{path}: permissions.weak.allowlist: Input should be a valid tuple (got 'ls')",
            id="list-expected",
        ),
    ],
)
def test_bad_config_file_is_named_with_key_and_problem(
    tmp_path: Path, content: object, message: str
) -> None:
    path = _write_config(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_settings({}, cwd=tmp_path)
    assert str(caught.value) == message.format(path=path)


def test_missing_file_named_explicitly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"AGENTMESH_CONFIG": "nope.json"}, cwd=tmp_path)
    assert (
        str(caught.value) == f"{tmp_path / 'nope.json'}: file not found (named by AGENTMESH_CONFIG)"
    )


def test_bad_environment_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"POSTGRES_PORT": "eighty"}, cwd=tmp_path)
    assert str(caught.value) == (
        "environment: POSTGRES_PORT: Input should be a valid integer, unable to parse string as"
        " an integer (got 'eighty')"
    )


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "POSTGRES_PASSWORD": "hunter2-password",
            "DATABASE_URL": "postgresql://u:hunter2-url@h/d",
            "AGENTMESH_TOKEN": "hunter2-token",
        },
        cwd=tmp_path,
    )
    text = repr(settings) + str(settings) + repr(settings.env) + str(settings.env.model_dump())
    assert "hunter2" not in text
    assert settings.token == "hunter2-token"


def _run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH", "POSTGRES"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exits_2_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"api_policy": {"max_requests_per_day": -5}})
    result = _run_cli(tmp_path, {}, "db", "status")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"agentmesh: configuration error: {path}: api_policy.max_requests_per_day: Input should"
        " be greater than or equal to 0 (got -5)\n"
    )


def test_cli_error_never_shows_the_database_password(tmp_path: Path) -> None:
    result = _run_cli(
        tmp_path,
        {"DATABASE_URL": f"postgresql://agentmesh:s3cr3t-pw@127.0.0.1:{free_port()}/agentmesh"},
        "db",
        "status",
    )
    assert result.returncode == 1
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert "cannot connect to PostgreSQL at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["db", "status"], ["scheduler"], ["demo"]])
def test_a_server_that_does_not_answer_is_one_line_from_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    # The seed's .env names a server (database, user, password) but no host: localhost:5432,
    # here moved to a port nobody listens on.
    (tmp_path / "keys.env").write_text("GEMINI_KEY_1=AIzaSy-unused\n")
    env_file = {**SEED_ENV, "GEMINI_API_KEY_FILE": str(tmp_path / "keys.env")}
    (tmp_path / ".env").write_text(dotenv_text(env_file))
    port = free_port()
    # A vault key of its own: the scheduler would otherwise make one (saying so) in the
    # default data directory on a machine where none was made yet.
    vault_key = Fernet.generate_key().decode()

    result = _run_cli(
        tmp_path, {"POSTGRES_PORT": str(port), "AGENTMESH_SECRET_KEY": vault_key}, *command
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"agentmesh: cannot connect to PostgreSQL at localhost:{port}, database"
        " gemini_distributed_agent: connection refused (is the server running and listening"
        " there?)\n"
    )
    assert SEED_ENV["POSTGRES_PASSWORD"] not in result.stderr


def test_example_config_file_is_valid_and_equals_the_defaults(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "agent_config.example.json"
    settings = load_settings({"AGENTMESH_CONFIG": str(example)}, cwd=tmp_path)
    assert settings.file == load_settings({}, cwd=tmp_path).file


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _model_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _json_keys(value: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for name, item in value.items():
        if isinstance(item, dict):
            keys |= _json_keys(item, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_config_file_names_every_key() -> None:
    # With the test above: every key agent_config.json may hold, each at its default.
    example = Path(__file__).resolve().parent.parent / "agent_config.example.json"
    assert _json_keys(json.loads(example.read_text())) == _model_keys(FileSettings)


@pytest.mark.parametrize("config", [{}, {"api_policy": {"rpm_soft_limit": 2}}, SEED_AGENT_CONFIG])
def test_every_key_of_the_seeds_config_is_enforced(
    tmp_path: Path, config: dict[str, object]
) -> None:
    # The key pool enforces api_policy: a scheduler warns about nothing it would ignore.
    _write_config(tmp_path, config)
    settings = load_settings({}, cwd=tmp_path)

    assert settings.not_enforced_keys("scheduler") == ()
    assert settings.not_enforced_warning("scheduler") is None


def test_a_service_names_each_key_the_file_sets_that_it_does_not_enforce_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is unenforced today; a key read before the code acting on it lands is named
    # by its dotted path, and only if the file sets it.
    unenforced = ("scheduler.lease_seconds", "scheduler.max_attempts", "api_policy.rpm_soft_limit")
    monkeypatch.setitem(config.NOT_ENFORCED_YET, "scheduler", unenforced)
    path = _write_config(
        tmp_path, {"scheduler": {"lease_seconds": 30}, "api_policy": {"rpm_soft_limit": 2}}
    )
    settings = load_settings({}, cwd=tmp_path)

    assert settings.not_enforced_keys("scheduler") == (
        "scheduler.lease_seconds",
        "api_policy.rpm_soft_limit",
    )
    assert settings.not_enforced_warning("scheduler") == (
        f"{settings.config_path} sets scheduler.lease_seconds, api_policy.rpm_soft_limit:"
        " read and validated, not enforced yet"
    )
    assert settings.config_path == path
    assert settings.not_enforced_warning("node") is None


def test_env_example_lists_every_variable_agentmesh_reads() -> None:
    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    # The last section holds docker compose's own variables, which agentmesh never reads.
    ours, _, _ = text.partition("# --- docker compose only")
    listed = re.findall(r"^# ([A-Z][A-Z0-9_]*)=", ours, re.MULTILINE)

    assert sorted(listed) == sorted(
        {*EnvSettings.model_fields, "AGENTMESH_CONFIG", "AGENTMESH_ENV_FILE"}
    )
    # The seed's .env values are its examples.
    for name, value in SEED_ENV.items():
        assert f"# {name}={value}\n" in text
    assert dotenv_values(stream=io.StringIO(text)) == {}  # nothing is set by copying it


def test_env_example_says_what_each_variable_is() -> None:
    lines = (Path(__file__).resolve().parent.parent / ".env.example").read_text().splitlines()
    variable = re.compile(r"^# [A-Z][A-Z0-9_]*=")
    for above, line in itertools.pairwise(lines):
        if variable.match(line):
            # A line of prose right above it (not another variable, not a blank line).
            assert above.startswith("# "), line
            assert not variable.match(above), line


def test_every_problem_of_a_config_file_is_reported_at_once(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {
            "api_policy": {"max_token_per_key": 5, "rpm_soft_limit": -1},
            "node": {"max_concurrency": 0, "nmae": "node-1"},
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({}, cwd=tmp_path)

    assert str(caught.value).splitlines() == [
        f"{path}: api_policy.rpm_soft_limit: Input should be greater than or equal to 0 (got -1)",
        f"{path}: api_policy.max_token_per_key: unknown key",
        f"{path}: node.max_concurrency: Input should be greater than 0 (got 0)",
        f"{path}: node.nmae: unknown key",
    ]


def test_every_problem_of_the_environment_is_reported_without_the_secrets(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "DATABASE_URL": "mysql://agentmesh:hunter2-url@db/agentmesh",
                "POSTGRES_PASSWORD": "hunter2-password",
                "AGENTMESH_TOKEN": "hunter2-token",
                "POSTGRES_PORT": "eighty",
            },
            cwd=tmp_path,
        )

    assert str(caught.value).splitlines() == [
        "environment: POSTGRES_PORT: Input should be a valid integer, unable to parse string as"
        " an integer (got 'eighty')",
        "environment: DATABASE_URL: Value error, must be a postgresql:// URL",
    ]
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("name", ["agent_config.json", "elsewhere.json"])
def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b'{"node": {"name": "caf\xe9"}}')
    environ = {} if name == "agent_config.json" else {"AGENTMESH_CONFIG": name}

    with pytest.raises(ConfigError) as caught:
        load_settings(environ, cwd=tmp_path)

    assert str(caught.value) == f"{tmp_path / name}: cannot read: UnicodeDecodeError"


def test_a_config_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()

    with pytest.raises(ConfigError) as caught:
        load_settings({"AGENTMESH_CONFIG": "configs"}, cwd=tmp_path)

    assert str(caught.value) == f"{tmp_path / 'configs'}: cannot read: IsADirectoryError"


def test_an_env_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"POSTGRES_PASSWORD=caf\xe9\n")

    with pytest.raises(ConfigError) as caught:
        load_settings({}, cwd=tmp_path)

    assert str(caught.value) == f"{tmp_path / '.env'}: cannot read: UnicodeDecodeError"


# A file that exists but cannot be read, for root too (a chmod 000 file root still reads):
# reading /proc/self/mem from its start fails with EIO.
UNREADABLE = Path("/proc/self/mem")


@pytest.mark.skipif(not UNREADABLE.exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("variable", ["AGENTMESH_ENV_FILE", "AGENTMESH_CONFIG"])
def test_a_file_that_cannot_be_read_is_named(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: str(UNREADABLE)}, cwd=tmp_path)

    assert str(caught.value) == f"{UNREADABLE}: cannot read: OSError"


def test_whitespace_around_capabilities_is_dropped(tmp_path: Path) -> None:
    _write_config(tmp_path, {"node": {"capabilities": [" gpu ", "inventory\n", "\tlinux"]}})

    assert load_settings({}, cwd=tmp_path).node.capabilities == ("gpu", "inventory", "linux")


def test_scheduler_and_tls_sections_are_read(tmp_path: Path) -> None:
    _write_config(
        tmp_path,
        {
            "scheduler": {"max_attempts": 7, "lease_seconds": 12.5},
            "tls": {"cert_file": "mesh.crt", "key_file": "mesh.key"},
        },
    )
    settings = load_settings({}, cwd=tmp_path)

    assert settings.scheduler.max_attempts == 7
    assert settings.scheduler.lease_seconds == 12.5
    assert settings.tls.cert_file == Path("mesh.crt")
    assert settings.tls.enabled is True


@pytest.mark.parametrize(
    "tls", [{}, {"ca_file": "ca.crt"}, {"client_ca_file": "ca.crt", "key_file": "mesh.key"}]
)
def test_tls_is_enabled_only_by_a_certificate(tmp_path: Path, tls: dict[str, str]) -> None:
    _write_config(tmp_path, {"tls": tls})

    assert load_settings({}, cwd=tmp_path).tls.enabled is False


@pytest.mark.parametrize(
    ("value", "token"), [(None, None), ("", None), ("mesh-t0ken", "mesh-t0ken")]
)
def test_the_mesh_token(tmp_path: Path, value: str | None, token: str | None) -> None:
    environ = {} if value is None else {"AGENTMESH_TOKEN": value}

    assert load_settings(environ, cwd=tmp_path).token == token


def test_path_variables_are_read_and_empty_ones_are_unset(tmp_path: Path) -> None:
    settings = load_settings(
        {"GEMINI_API_KEY_FILE": "keys.env", "AGENTMESH_DATA_DIR": "/var/lib/agentmesh"},
        cwd=tmp_path,
    )
    empty = load_settings({"GEMINI_API_KEY_FILE": "", "AGENTMESH_DATA_DIR": ""}, cwd=tmp_path)

    paths = (settings.env.GEMINI_API_KEY_FILE, settings.env.AGENTMESH_DATA_DIR)
    assert paths == (Path("keys.env"), Path("/var/lib/agentmesh"))
    assert empty.env.GEMINI_API_KEY_FILE is None
    assert empty.env.AGENTMESH_DATA_DIR is None


def test_an_empty_postgres_host_is_localhost(tmp_path: Path) -> None:
    settings = load_settings({"POSTGRES_HOST": "", "POSTGRES_DB": "inventory"}, cwd=tmp_path)

    assert settings.database_dsn() == "postgresql://agentmesh@localhost:5432/inventory"


def test_the_settings_cannot_be_changed_after_validation(tmp_path: Path) -> None:
    # Assignment is not validated: a settable field would let a bad value past the checks.
    settings = load_settings({}, cwd=tmp_path)

    with pytest.raises(ValidationError, match="frozen"):
        settings.node.max_concurrency = 0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.env.POSTGRES_PORT = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.file = FileSettings()  # type: ignore[misc]
    assert settings.node.max_concurrency == 4


def test_a_nodes_ceiling_admits_its_mode_and_every_lower_one() -> None:
    weak, superuser = PermissionMode.WEAK, PermissionMode.SUPERUSER

    assert superuser.exceeds(weak)
    assert not weak.exceeds(superuser)
    assert not weak.exceeds(weak)
    assert not superuser.exceeds(superuser)


@pytest.mark.parametrize(("weak", "superuser"), [(False, True), (True, False)])
def test_each_mode_reaches_the_network_as_its_own_section_says(
    tmp_path: Path, weak: bool, superuser: bool
) -> None:
    _write_config(
        tmp_path,
        {"permissions": {"weak": {"network": weak}, "superuser": {"network": superuser}}},
    )
    permissions = load_settings({}, cwd=tmp_path).permissions

    assert permissions.network(PermissionMode.WEAK) is weak
    assert permissions.network(PermissionMode.SUPERUSER) is superuser


def test_the_node_token_is_read_kept_out_of_reprs_and_can_be_given(tmp_path: Path) -> None:
    assert load_settings({}, cwd=tmp_path).node_token is None
    assert load_settings({"AGENTMESH_NODE_TOKEN": ""}, cwd=tmp_path).node_token is None
    settings = load_settings({"AGENTMESH_NODE_TOKEN": "hunter2-node"}, cwd=tmp_path)

    assert settings.node_token == "hunter2-node"
    assert "hunter2" not in repr(settings) + str(settings.env.model_dump())
    given = load_settings({}, cwd=tmp_path).with_node_token("amn_given")
    assert given.node_token == "amn_given"
    assert given.token is None


def test_the_env_file_read_is_named_for_the_sandbox_to_hide(tmp_path: Path) -> None:
    assert load_settings({}, cwd=tmp_path).env_path is None
    (tmp_path / ".env").write_text("POSTGRES_DB=fromdotenv\n")
    assert load_settings({}, cwd=tmp_path).env_path == tmp_path / ".env"
    (tmp_path / "other.env").write_text("POSTGRES_DB=fromother\n")
    named = load_settings({"AGENTMESH_ENV_FILE": "other.env"}, cwd=tmp_path)
    assert named.env_path == tmp_path / "other.env"
