"""Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from tests.cli.conftest import Cli
from tests.support.processes import free_port


async def test_bad_input_is_one_line_and_a_non_zero_exit(cli: Cli) -> None:
    unknown = await cli("watch", "t-0000000000000000nope")
    unknown.assert_one_error_line("no task t-0000000000000000nope")
    assert unknown.returncode == 1
    (await cli("task", "t-nothing")).assert_one_error_line("no task t-nothing")
    (await cli("cancel", "t-nothing")).assert_one_error_line("no task t-nothing")

    port = free_port()
    unreachable = await cli("--scheduler", f"127.0.0.1:{port}", "tasks")
    unreachable.assert_one_error_line(
        f"cannot reach the scheduler at 127.0.0.1:{port}: connection refused"
    )
    assert unreachable.returncode == 1

    wrong = await cli("agents", env={"AGENTMESH_TOKEN": "not-the-token"})
    wrong.assert_one_error_line("the scheduler refused the token (AGENTMESH_TOKEN)")
    assert "not-the-token" not in wrong.stderr
    missing = await cli("agents", env={"AGENTMESH_TOKEN": ""})
    missing.assert_one_error_line("needs a token: set AGENTMESH_TOKEN")

    (cli.cwd / "bad.yaml").write_text("kind: shell\ncomand: uname\n")
    bad_field = await cli("run", "-f", "bad.yaml")
    bad_field.assert_one_error_line("bad.yaml: not a TaskSpec: ")
    assert "comand" in bad_field.stderr
    assert bad_field.returncode == 2
    bad_json = await cli("submit", "-f", "-", stdin='{"kind": "shell",')
    bad_json.assert_one_error_line("standard input: invalid JSON at line 1 column")
    (await cli("submit", "-f", "absent.json")).assert_one_error_line("absent.json: cannot read")
    # The scheduler's own check names the field.
    invalid = await cli("run", "--kind", "shell", "--prompt", "no command")
    invalid.assert_one_error_line(
        "invalid request: spec.command: must not be empty for a shell task"
    )
    assert invalid.returncode == 2
    usage = await cli("run", "--mode", "root")
    usage.assert_one_error_line("Invalid value for '--mode'")
    assert usage.returncode == 2
    (await cli("tasks", "--since", "yesterday")).assert_one_error_line("--since 'yesterday'")

    traced = await cli("--debug", "task", "t-nothing")
    assert traced.returncode == 1
    assert "Traceback" in traced.stderr
