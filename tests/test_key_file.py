"""GEMINI_API_KEY_FILE is the seed's `api_keys.env`: what is a key, what is its name, and
errors that say where without ever showing a key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from agentmesh.keys.pool import FileKey, fingerprint, read_key_file
from tests.seed_examples import SEED_ENV, dotenv_text
from tests.support.processes import free_port

_CLEARED = ("AGENTMESH", "POSTGRES", "GEMINI", "DATABASE_URL")


def _keys(path: Path) -> list[tuple[str, str]]:
    return [(key.name, key.value) for key in read_key_file(path).keys]


def test_dotenv_lines_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.env"
    path.write_text(
        "# keys of the household project\n"
        "\n"
        "GEMINI_KEY_1=AIzaSy-one\n"
        'export GEMINI_KEY_2="AIzaSy-two"\n'
        "GEMINI_KEY_3='AIzaSy-three' # the spare\n"
        "  GEMINI_KEY_4 = AIzaSy-four  \n"
    )
    assert _keys(path) == [
        ("GEMINI_KEY_1", "AIzaSy-one"),
        ("GEMINI_KEY_2", "AIzaSy-two"),
        ("GEMINI_KEY_3", "AIzaSy-three"),
        ("GEMINI_KEY_4", "AIzaSy-four"),
    ]
    assert read_key_file(path).source == f"file:{path}"


def test_bare_key_lines_are_named_by_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# one a line, the old way\nAIzaSy-bare-one\nNAMED=AIzaSy-named\n")
    assert _keys(path) == [
        (f"file-{fingerprint('AIzaSy-bare-one')}", "AIzaSy-bare-one"),
        ("NAMED", "AIzaSy-named"),
    ]


def test_a_key_never_shows_in_its_repr(tmp_path: Path) -> None:
    assert "AIzaSy-secret" not in repr(FileKey("K", "AIzaSy-secret"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("K1=AIzaSy-secret\nK2=\n", "line 2: K2 has no key after '='"),
        ('K1="AIzaSy secret"\n', "line 1: K1 contains whitespace"),
        ("K1=AIzaSy-secret\nAIzaSy secret two\n", "line 2: neither NAME=key nor a bare key"),
        ("K1=AIzaSy-secret\nK1=AIzaSy-secret-2\n", "line 2: K1 is already on line 1"),
        ("AIzaSy-secret\nAIzaSy-secret\n", "line 2: the key is already on line 1"),
    ],
)
def test_mistakes_name_the_line_never_the_key(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "api_keys.env"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read_key_file(path)
    assert str(caught.value) == f"GEMINI_API_KEY_FILE {path}: {problem}"
    assert "secret" not in str(caught.value)


def test_a_missing_file_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        read_key_file(Path("/path/to/api_keys.env"))
    assert str(caught.value) == (
        "GEMINI_API_KEY_FILE /path/to/api_keys.env: cannot read: No such file or directory"
    )


def test_scheduler_with_the_seed_placeholder_key_file_exits_2_before_the_database(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text(dotenv_text(SEED_ENV))  # GEMINI_API_KEY_FILE=/path/to/...
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    env["POSTGRES_PORT"] = str(free_port())  # were the database tried first: exit 1
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "scheduler", "--listen", "127.0.0.1:0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr == (
        "agentmesh: configuration error: GEMINI_API_KEY_FILE /path/to/api_keys.env: cannot"
        " read: No such file or directory\n"
    )
