"""The OS sandbox, judged by effects: what a task could do if the parser were wrong.

Each test runs real commands through a real node (or, where the point is the kernel's own
answer, through the sandbox directly, past the parser) and looks at the host afterwards: a
canary file still there, a file that did not appear, a secret that was not printed, a
process that did not survive. They need bubblewrap (which `make test` installs as root)
and skip, saying so, without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from agentmesh.config import NodeSettings, PermissionMode, Permissions, SandboxKind, load_settings
from agentmesh.node.sandbox import Confinement, choose_sandbox
from agentmesh.node.sandbox.model import NoSandbox, UnavailableSandbox
from agentmesh.node.service import AgentNode
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode, node_settings
from tests.node.test_gemini import gemini, payloads
from tests.node.test_node import collect, execute, stdout_of
from tests.support.gemini_emulator import GeminiEmulator, shell_call, text_reply

COMPLETED = task_pb2.TASK_STATE_COMPLETED
REJECTED = task_pb2.TASK_STATE_REJECTED

SANDBOX = choose_sandbox(SandboxKind.AUTO, Permissions(), hidden=[], shown=[])
pytestmark = pytest.mark.skipif(
    isinstance(SANDBOX, UnavailableSandbox),
    reason=f"no OS sandbox on this host: {SANDBOX.describe()}",
)


def canary(directory: Path, name: str = "canary.txt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("canary")
    return path


def intact(path: Path) -> bool:
    return path.exists() and path.read_text() == "canary"


def run_confined(argv: list[str], confinement: Confinement, sandbox: object = None) -> int:
    """Run argv in the sandbox directly, past the parser: only the kernel says no."""
    chosen = sandbox or choose_sandbox(
        SandboxKind.AUTO, Permissions(), hidden=[confinement.workdir.parent / "hidden"], shown=[]
    )
    chosen.give(confinement.workdir)  # type: ignore[attr-defined]
    launch = chosen.launch(argv, confinement)  # type: ignore[attr-defined]
    done = subprocess.run(
        launch.argv, cwd=confinement.workdir, env={"PATH": os.environ["PATH"]}, check=False
    )
    return done.returncode


# --- weak mode: only the allowlist's programs can be executed at all ----------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["ip", "vrf", "exec", "default", "rm", "canary.txt"],
        ["ip", "netns", "exec", "x", "rm", "canary.txt"],
        ["env", "rm", "canary.txt"],
        ["timeout", "5", "rm", "canary.txt"],
        ["xargs", "-a", "/dev/null", "-r", "rm", "canary.txt"],
        ["bash", "-c", "rm canary.txt"],
        ["/usr/bin/rm", "canary.txt"],
        ["find", ".", "-name", "canary.txt", "-exec", "rm", "{}", ";"],
    ],
)
def test_weak_mode_cannot_execute_what_the_allowlist_does_not_name(
    argv: list[str], tmp_path: Path
) -> None:
    # Past the parser, with wrappers on the allowlist: the kernel still refuses `rm`.
    workdir = tmp_path / "work"
    target = canary(workdir)
    allow = ("cat", "echo", "ip", "env", "timeout", "xargs", "bash", "find", "ls")
    confinement = Confinement(PermissionMode.WEAK, workdir, executables=allow)

    run_confined(argv, confinement)

    assert intact(target)


def test_weak_mode_curl_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    # Past the parser (which refuses `-o` in weak mode): the host is read-only to the task.
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    workdir = tmp_path / "work"
    workdir.mkdir()
    outside = Path("/run") / f"agentmesh-test-{uuid.uuid4().hex}"  # read-only to the task
    target = canary(outside)
    try:
        confinement = Confinement(PermissionMode.WEAK, workdir, executables=("curl",))
        run_confined(["curl", "-s", "-o", str(target), "file:///etc/hostname"], confinement)
        run_confined(["curl", "-s", "-o", "copy.txt", "file:///etc/hostname"], confinement)

        assert intact(target)
        assert (workdir / "copy.txt").read_text() == Path("/etc/hostname").read_text()
    finally:
        shutil.rmtree(outside)


def test_weak_mode_runs_what_the_allowlist_names(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    canary(workdir)
    confinement = Confinement(PermissionMode.WEAK, workdir, executables=("ls",))

    assert run_confined(["ls", "canary.txt"], confinement) == 0
    assert run_confined(["cat", "canary.txt"], confinement) != 0  # not named


async def test_ip_vrf_exec_rm_through_a_real_node_leaves_the_canary(
    start_node: StartNode, tmp_path: Path
) -> None:
    # The review's case: the default allowlist has `ip`, and `ip` runs programs.
    _, stub = await start_node()
    target = canary(tmp_path)

    events = await collect(
        stub.ExecuteTask(
            execute("vrf-1", kind="shell", command="ip vrf exec default rm canary.txt")
        )
    )

    assert events[-1].WhichOneof("payload") == "result"
    assert intact(target)


@pytest.mark.parametrize(
    "command",
    [
        "ip vrf exec default rm canary.txt",
        "env rm canary.txt",
        # The CLI itself must execute Node.js; the commands of its shell tool must not.
        "env node -e \"require('fs').unlinkSync('canary.txt')\"",
        "env bash -c 'rm canary.txt'",
    ],
)
async def test_a_gemini_tool_that_runs_rm_in_weak_mode_leaves_the_canary(
    command: str, start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    # The CLI's own policy allows the `ip` and `env` prefixes (a user added `env` to the
    # allowlist); the sandbox stops what they run.
    config = tmp_path / "agent_config.json"
    allowlist = [*Permissions().weak.allowlist, "env"]
    config.write_text(json.dumps({"permissions": {"weak": {"allowlist": allowlist}}}))
    emulator.script(shell_call(command), text_reply("done"))
    _, stub = await start_node(env={"AGENTMESH_CONFIG": str(config)})
    target = canary(tmp_path)

    events = await collect(stub.ExecuteTask(gemini("g-rm", "clean up", permission_mode="weak")))

    assert events[-1].result.state == COMPLETED
    assert payloads(events, "tool_use"), "the CLI never tried the command"
    assert intact(target)


async def test_a_gemini_tool_runs_what_the_allowlist_names_in_weak_mode(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    # The other side of the confined shell: what the allowlist names does run.
    emulator.script(shell_call("ls"), text_reply("listed"))
    _, stub = await start_node()
    canary(tmp_path)

    events = await collect(stub.ExecuteTask(gemini("g-ls", "list", permission_mode="weak")))

    (result,) = payloads(events, "tool_result")
    assert result.status == "success", result  # type: ignore[attr-defined]
    assert "canary.txt" in result.output  # type: ignore[attr-defined]


# --- what a task can see --------------------------------------------------------------


async def test_a_task_never_sees_the_nodes_environment(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTMESH_TEST_NODE_SECRET", "node-only-value-42")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pg-password-43")
    _, stub = await start_node()

    events = await collect(
        stub.ExecuteTask(
            execute(
                "env-1",
                kind="shell",
                command="env; cat /proc/1/environ",
                permission_mode="superuser",
            )
        )
    )
    printed = stdout_of(events) + "".join(e.stderr.text for e in events)

    assert "HOME=" in printed
    assert "node-only-value-42" not in printed
    assert "pg-password-43" not in printed


async def test_a_task_cannot_read_another_tasks_directory_or_the_nodes_data(
    start_node: StartNode, tmp_path: Path
) -> None:
    # Fresh working directories (the default), as people deploy nodes.
    _, stub = await start_node(workdir=None)
    data_dir = tmp_path / "data"
    secret = "secret-of-task-a-" + uuid.uuid4().hex
    writer = stub.ExecuteTask(
        execute(
            "dir-a",
            kind="shell",
            command=f"echo {secret} > note.txt; pwd; sleep 30",
            permission_mode="superuser",
        )
    )
    first = await writer.read()
    while first.WhichOneof("payload") != "stdout":
        first = await writer.read()
    other_dir = first.stdout.text.strip()
    assert (Path(other_dir) / "note.txt").read_text().strip() == secret  # on the host

    events = await collect(
        stub.ExecuteTask(
            execute(
                "dir-b",
                kind="shell",
                command=f"cat {other_dir}/note.txt; ls -R {data_dir}",
                permission_mode="superuser",
            )
        )
    )
    writer.cancel()

    assert secret not in stdout_of(events)
    assert "agent_id" not in stdout_of(events)  # the node's data directory is hidden


async def test_a_task_writes_only_its_own_directory(start_node: StartNode, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"outside-{uuid.uuid4().hex}"
    target = canary(outside)
    _, stub = await start_node()

    command = (
        f"echo x > {outside}/pwned.txt; echo x > {target}; echo x > /etc/agentmesh-pwned;"
        " echo ok > inside.txt"
    )
    events = await collect(
        stub.ExecuteTask(execute("w-1", kind="shell", command=command, permission_mode="superuser"))
    )

    assert events[-1].WhichOneof("payload") == "result"
    assert intact(target)
    assert not (outside / "pwned.txt").exists()
    assert not Path("/etc/agentmesh-pwned").exists()
    assert (tmp_path / "inside.txt").read_text() == "ok\n"
    shutil.rmtree(outside)


# --- superuser mode: the denylist by every path, and no power over the host -----------------


@pytest.mark.parametrize(
    "command",
    [
        "rm canary.txt",
        "/bin/rm canary.txt",
        "/usr/bin/rm canary.txt",
        "unlink canary.txt",
        "cp /usr/bin/rm ./r; ./r canary.txt",
        "ln -s /usr/bin/rm ./r; ./r canary.txt",
        "truncate -s0 canary.txt",
    ],
)
def test_superuser_cannot_run_a_denylisted_program_by_any_path(
    command: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    target = canary(workdir)
    confinement = Confinement(PermissionMode.SUPERUSER, workdir)

    run_confined(["bash", "-c", command], confinement)

    assert intact(target)


def test_reboot_does_nothing_to_the_host(tmp_path: Path) -> None:
    # In a pid namespace of the test's own, so that a failing sandbox cannot take the
    # machine down: reboot(2) there would only end that namespace.
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to contain the attempt")
    workdir = tmp_path / "work"
    workdir.mkdir()
    booted = psutil.boot_time()
    code = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True);"
        " r = libc.reboot(0x4321FEDC); print('reboot', r, os.strerror(ctypes.get_errno()))"
    )
    confinement = Confinement(PermissionMode.SUPERUSER, workdir)
    sandbox = choose_sandbox(SandboxKind.AUTO, Permissions(), hidden=[], shown=[])
    sandbox.give(workdir)
    # the interpreter itself: a version manager's `python3` shim may not start in a sandbox
    python = shlex.quote(os.path.realpath(sys.executable))
    launch = sandbox.launch(["bash", "-c", f'reboot -f; {python} -c "{code}"'], confinement)
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", *launch.argv],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )

    assert "reboot -1 Operation not permitted" in done.stdout, done.stderr
    assert psutil.boot_time() == booted


# --- processes and the network ------------------------------------------------------------


async def test_nothing_a_sandboxed_task_started_outlives_its_cancel(
    start_node: StartNode,
) -> None:
    _, stub = await start_node()
    marker = f"{300 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    command = f"(trap '' TERM; sleep {marker}) & sleep {marker} & wait"
    call = stub.ExecuteTask(
        execute("ns-1", kind="shell", command=command, permission_mode="superuser")
    )
    await call.read()
    for _ in range(200):
        if _sleepers(marker):
            break
        await asyncio.sleep(0.025)
    assert len(_sleepers(marker)) == 2

    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="ns-1"))
    await collect(call)

    for _ in range(400):
        if not _sleepers(marker):
            break
        await asyncio.sleep(0.025)
    assert _sleepers(marker) == []


def _sleepers(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", marker]:
            found.append(process.pid)
    return found


async def test_with_the_network_off_a_task_cannot_connect(
    start_node: StartNode, tmp_path: Path
) -> None:
    config = tmp_path / "agent_config.json"
    config.write_text(json.dumps({"permissions": {"superuser": {"network": False}}}))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    _, stub = await start_node(env={"AGENTMESH_CONFIG": str(config)})
    probe = (
        'python3 -c "import socket; s = socket.socket(); s.settimeout(3);'
        f" print('connect', s.connect_ex(('127.0.0.1', {port})))\""
    )
    try:
        events = await collect(
            stub.ExecuteTask(
                execute("net-1", kind="shell", command=probe, permission_mode="superuser")
            )
        )
    finally:
        listener.close()

    assert "connect 0" not in stdout_of(events)
    assert "connect " in stdout_of(events)


# --- choosing the sandbox ------------------------------------------------------------------


async def test_sandbox_none_is_said_on_the_card_and_in_every_trace(
    start_node: StartNode,
) -> None:
    _, stub = await start_node(sandbox="none")

    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    events = await collect(stub.ExecuteTask(execute("none-1", kind="shell", command="echo hi")))

    assert card.sandbox.startswith("none")
    diagnostics = [e.diagnostic.message for e in events if e.WhichOneof("payload") == "diagnostic"]
    assert any("not sandboxed" in message for message in diagnostics)
    assert events[-1].result.state == COMPLETED


async def test_the_card_names_the_sandbox(start_node: StartNode) -> None:
    _, stub = await start_node()

    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())

    assert card.sandbox.startswith("bubblewrap")


async def test_without_a_sandbox_auto_refuses_shell_tasks_and_still_runs_echo(
    start_node: StartNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = canary(tmp_path)
    no_bwrap = tmp_path / "bin"
    no_bwrap.mkdir()
    monkeypatch.setenv("PATH", f"{no_bwrap}:/nonexistent")  # bwrap cannot be found
    _, stub = await start_node()
    monkeypatch.undo()

    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    refused = await collect(
        stub.ExecuteTask(
            execute("u-1", kind="shell", command="echo x > canary.txt", permission_mode="superuser")
        )
    )
    echoed = await collect(stub.ExecuteTask(execute("u-2", kind="echo", prompt="hi")))

    assert card.sandbox.startswith("unavailable")
    assert refused[-1].result.state == REJECTED
    assert "no working sandbox" in refused[-1].result.error
    assert intact(target)
    assert echoed[-1].result.state == COMPLETED


async def test_an_explicit_bubblewrap_that_does_not_work_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = node_settings(tmp_path)
    options = NodeSettings(listen="127.0.0.1:0", name="strict", sandbox=SandboxKind.BUBBLEWRAP)

    with pytest.raises(Exception, match=r"node\.sandbox is bubblewrap"):
        await AgentNode.start(settings, options)


def test_none_and_unavailable_say_what_they_are() -> None:
    assert NoSandbox().describe().startswith("none")
    assert "refused" in UnavailableSandbox("no bwrap").describe()
    assert load_settings({}, cwd=Path("/")).node.sandbox is SandboxKind.AUTO
