"""`agentmesh run` and `watch`: a task live as a terminal shows it, the same again from its
trace, and the exit code of its final state."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from tests.cli.conftest import Cli, cli_environment
from tests.scheduler.conftest import Mesh
from tests.support.gemini_emulator import GeminiEmulator, shell_call, text_reply
from tests.support.terminal import run_in_terminal

EVENT_FIELDS = {"task_id", "seq", "time", "attempt", "agent_id", "type", "payload"}


async def test_run_streams_a_shell_task_and_watch_replays_it_identically(cli: Cli) -> None:
    command = "echo first line; echo to stderr >&2; echo second line"

    run = await cli("run", "--mode", "superuser", "--command", command)

    assert run.returncode == 0, run
    assert run.stdout == "first line\nsecond line\n"
    task_id = run.task_id()
    assert "to stderr" in run.stderr
    assert "placed on alpha" in run.stderr  # the node by name, not by agent id
    assert run.stderr.rstrip().splitlines()[-1].startswith("● completed in ")
    assert run.stderr.rstrip().endswith(" on alpha")

    watch = await cli("watch", task_id)
    assert (watch.returncode, watch.stdout, watch.stderr) == (0, run.stdout, run.stderr)

    as_json = await cli("watch", task_id, "--json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert all(set(event) == EVENT_FIELDS for event in events), events[0]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert {event["task_id"] for event in events} == {task_id}
    assert "".join(e["payload"]["text"] for e in events if e["type"] == "stdout") == run.stdout
    assert events[-1]["type"] == "result"
    assert events[-1]["payload"]["state"] == "completed"
    assert as_json.returncode == 0


async def test_exit_codes_say_failed_rejected_and_canceled(cli: Cli) -> None:
    failed = await cli("run", "--mode", "superuser", "--command", "echo no; exit 7")
    assert failed.returncode == 3, failed
    assert "● failed" in failed.stderr
    assert "(exit 7)" in failed.stderr

    # Weak mode allows only inventory commands: `rm` is refused and never runs.
    scratch = cli.cwd / "keep-me"
    scratch.write_text("still here")
    rejected = await cli("run", "--command", f"rm -f {scratch}")
    assert rejected.returncode == 5, rejected
    assert f"✗ refused `rm -f {scratch}` (not-in-allowlist, weak mode)" in rejected.stderr
    assert scratch.read_text() == "still here"

    waiting = await cli("submit", "--command", "uname", "--capability", "gpu")
    assert waiting.returncode == 0, waiting
    task_id = waiting.stdout.strip()
    canceled = await cli("cancel", task_id, "--reason", "not today")
    assert canceled.stdout == f"{task_id} canceled\n", canceled
    watched = await cli("watch", task_id)
    assert watched.returncode == 4, watched
    assert watched.stderr.endswith("● canceled: not today\n")  # it never ran: no time


async def test_run_streams_a_gemini_task_with_its_tool_calls(
    mesh: Mesh, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys.env"
    key_file.write_text("GEMINI_KEY_1=AIzaSy-cli-test-key-000111\n")
    mesh.configure(AGENTMESH_TOKEN="gemini-cli-token", GEMINI_API_KEY_FILE=str(key_file))
    await mesh.start_scheduler()
    await mesh.start_node("llm")
    emulator.script(
        shell_call("echo made by the tool"),
        text_reply("The tool said: made by the tool.", prompt_tokens=30, candidates_tokens=8),
    )
    work = tmp_path / "cli"
    work.mkdir()
    cli = Cli(
        work,
        cli_environment(
            AGENTMESH_SCHEDULER=mesh.schedulers[0].address, AGENTMESH_TOKEN="gemini-cli-token"
        ),
    )

    run = await cli(
        "run", "--prompt", "run the tool", "--model", "gemini-2.5-flash", "--mode", "superuser"
    )

    assert run.returncode == 0, run
    assert run.stdout == "The tool said: made by the tool.\n"
    assert '⚙ run_shell_command {"command": "echo made by the tool"' in run.stderr
    assert "  ✓ run_shell_command: made by the tool" in run.stderr
    assert "tokens" in run.stderr.splitlines()[-1]
    watch = await cli("watch", run.task_id())
    assert (watch.stdout, watch.stderr) == (run.stdout, run.stderr)


async def test_ctrl_c_stops_following_and_the_task_goes_on(cli: Cli) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli.main", "run", "--command", "uname",
        "--capability", "gpu",
        cwd=cli.cwd, env=cli.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        # As from a terminal: a test run started in the background (`pytest &` in a script)
        # ignores SIGINT, and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stderr is not None
    first = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    task_id = first.removeprefix("task ").strip()
    # It waits for an agent with that capability; the reason shows, then Ctrl-C.
    waiting = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    while "waiting:" not in waiting:
        waiting = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    assert waiting == "… waiting: no online agent has capability gpu\n"
    process.send_signal(signal.SIGINT)
    _, rest = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 130
    assert rest.decode() == (
        f"agentmesh: stopped following {task_id}; it goes on"
        f" (agentmesh watch {task_id}, agentmesh cancel {task_id})\n"
    )
    shown = json.loads((await cli("task", task_id, "--json")).stdout)
    assert shown["state"] == "submitted"
    assert shown["waiting_reason"] == "no online agent has capability gpu"


async def test_run_on_a_terminal_draws_colours_a_spinner_and_the_same_words(cli: Cli) -> None:
    argv = [sys.executable, "-m", "agentmesh.cli.main", "run", "--mode", "superuser"]
    screen = await asyncio.to_thread(
        run_in_terminal,
        [*argv, "--command", "sleep 1.5; echo done"],
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
    )

    assert screen.returncode == 0, screen.text
    assert "\x1b[" in screen.raw  # styles, where piped output has none
    assert "working" in screen.text  # the spinner's words while the command sleeps
    assert "\ndone\n" in screen.text
    assert "● completed in " in screen.text


async def test_a_waiting_subtask_says_why_and_a_canceled_tree_exits_4(cli: Cli) -> None:
    spec = '{"description": "tree", "subtasks": [{"kind": "shell", "command": "uname",'
    spec += ' "required_capabilities": ["gpu"], "description": "needs a gpu"}]}'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli.main", "run", "-f", "-",
        cwd=cli.cwd, env=cli.env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stderr is not None
    process.stdin.write(spec.encode())
    process.stdin.close()
    root_id = (await asyncio.wait_for(process.stderr.readline(), 30)).decode().split()[1]
    line = ""
    while "waiting:" not in line:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    assert line == "[needs a gpu] … waiting: no online agent has capability gpu\n"

    assert (await cli("cancel", root_id)).returncode == 0
    _, rest = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 4, rest.decode()
    ends = sorted(rest.decode().splitlines())
    assert ends[0] == "[needs a gpu] ● canceled: canceled by request"  # it never ran
    assert re.fullmatch(r"\[tree\] ● canceled in [0-9.]+s: canceled by request", ends[1])
