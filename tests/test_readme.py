"""The README's examples work as written.

Every `grpcurl` line of a ```sh block runs, through server reflection as grpcurl would,
against a real scheduler and node that require the mesh token; every `agentmesh` line
parses with the real command line. Shell words are read as a POSIX shell reads them
(single quotes are literal, `$NAME` expands elsewhere), with these variables defined:
`AGENTMESH_TOKEN`, `SCHEDULER` and `NODE` (the test's servers) and `ID` (the `id` the
last `SubmitTask` example answered).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agentmesh.cli.main import cli
from tests.scheduler.conftest import Mesh
from tests.support.databases import Server

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = "readme-token-7c41"
CALL_TIMEOUT = 60.0
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    """The examples need one database server, not each in turn."""
    return embedded_server


@pytest.fixture
async def mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[Mesh]:
    running = Mesh(tmp_path, database_uri)
    running.configure(AGENTMESH_TOKEN=TOKEN)
    try:
        await running.start_scheduler()
        await running.start_node("desk")
        yield running
    finally:
        await running.close()


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```sh\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE)


def command_lines(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def shell_words(line: str, env: dict[str, str]) -> list[str]:
    """The words of one command line; `$(...)` stays one unexpanded word; a comment ends it."""
    words: list[str] = []
    word: str | None = None
    i = 0

    def expand(text: str) -> str:
        return VARIABLE.sub(lambda m: env[m.group(1) or m.group(2)], text)

    while i < len(line):
        char = line[i]
        if char in " \t":
            if word is not None:
                words.append(word)
            word = None
            i += 1
        elif char == "#" and word is None:
            break
        elif char == "'":
            end = line.index("'", i + 1)
            word = (word or "") + line[i + 1 : end]
            i = end + 1
        elif char == '"':
            end = i + 1
            while line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            word = (word or "") + expand(line[i + 1 : end])
            i = end + 1
        elif line.startswith("$(", i):
            depth, end = 1, i + 2
            while depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            word = (word or "") + line[i:end]
            i = end
        else:
            end = i
            while end < len(line) and line[end] not in " \t'\"" and not line.startswith("$(", end):
                end += 1
            word = (word or "") + expand(line[i:end])
            i = end
    if word is not None:
        words.append(word)
    return words


def substitutions(line: str) -> Iterator[str]:
    """The command lines inside `$(...)`, as in `ID=$(agentmesh submit ...)`."""
    for match in re.finditer(r"\$\(([^()]*)\)", line):
        yield match.group(1)


def commands_of(program: str, text: str, env: dict[str, str]) -> list[list[str]]:
    """Every command line of the README's sh blocks that runs `program`, as words."""
    found = []
    for block in sh_blocks(text):
        for line in command_lines(block):
            for candidate in [line, *substitutions(line)]:
                words = shell_words(candidate, env)
                while words and (words[0] in ("export", "eval") or re.match(r"\w+=", words[0])):
                    words = words[1:]
                if words and Path(words[0]).name == program and not words[0].startswith("$"):
                    found.append(words[1:])
    return found


@dataclass
class Grpcurl:
    """One grpcurl invocation: the flags this test understands, the address, the call."""

    address: str
    verb: str  # "list" or a full method name, "package.Service/Method"
    data: str = "{}"
    headers: list[tuple[str, str]] = field(default_factory=list)


def parse_grpcurl(args: list[str]) -> Grpcurl:
    headers: list[tuple[str, str]] = []
    data = "{}"
    plaintext = False
    positional: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "-plaintext":
            plaintext = True
        elif arg == "-H":
            name, _, value = rest.pop(0).partition(":")
            headers.append((name.strip().lower(), value.strip()))
        elif arg == "-d":
            data = rest.pop(0)
        elif arg.startswith("-"):
            raise AssertionError(f"grpcurl flag this test does not know: {arg}")
        else:
            positional.append(arg)
    assert plaintext, f"the test's servers speak plaintext: {args}"
    assert len(positional) == 2, f"grpcurl needs an address and a method: {args}"
    return Grpcurl(positional[0], positional[1], data, headers)


def call(example: Grpcurl) -> list[dict[str, Any]]:
    """Make the call as grpcurl would (reflection for the types); return the answers as JSON."""
    with grpc.insecure_channel(example.address) as channel:
        if example.verb == "list":
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT)
            return [{"service": s.name} for s in reply.list_services_response.service]
        service_name, _, method_name = example.verb.rpartition("/")
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(example.data, request_class())
        path = f"/{service_name}/{method_name}"
        options = {
            "request_serializer": request_class.SerializeToString,
            "response_deserializer": response_class.FromString,
        }
        if method.server_streaming:
            answers = list(
                channel.unary_stream(path, **options)(
                    request, metadata=example.headers, timeout=CALL_TIMEOUT
                )
            )
        else:
            answers = [
                channel.unary_unary(path, **options)(
                    request, metadata=example.headers, timeout=CALL_TIMEOUT
                )
            ]
        return [json_format.MessageToDict(answer) for answer in answers]


async def run_examples(text: str, env: dict[str, str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Run every grpcurl example of `text` in order; `ID` follows the SubmitTask answers."""
    results = []
    for block in sh_blocks(text):
        for line in command_lines(block):
            words = shell_words(line, env)
            if not words or words[0] != "grpcurl":
                continue
            example = parse_grpcurl(words[1:])
            answers = await asyncio.to_thread(call, example)
            assert answers, f"no answer: {line}"
            if "result" in answers[-1]:  # a task's stream: it must end as the README implies
                state = answers[-1]["result"].get("state")
                assert state == "TASK_STATE_COMPLETED", f"{line}: ended {state}"
            if example.verb.endswith("/SubmitTask"):
                env["ID"] = answers[0]["id"]
            results.append((example.verb, answers))
    return results


def examples_env(mesh: Mesh) -> dict[str, str]:
    return {
        "AGENTMESH_TOKEN": TOKEN,
        "SCHEDULER": mesh.schedulers[0].address,
        "NODE": mesh.nodes[0].address,
        "ID": "",
    }


async def test_every_grpcurl_example_works_as_written(mesh: Mesh) -> None:
    results = await run_examples(README.read_text(), examples_env(mesh))
    called = {verb for verb, _ in results}
    for rpc in [
        "agentmesh.v1.Scheduler/SubmitTask",
        "agentmesh.v1.Scheduler/RunTask",
        "agentmesh.v1.Scheduler/WatchTask",
        "agentmesh.v1.Scheduler/GetTask",
        "agentmesh.v1.Scheduler/ListTasks",
        "agentmesh.v1.Scheduler/CancelTask",
        "agentmesh.v1.Scheduler/ListAgents",
        "agentmesh.v1.AgentNode/GetCapabilities",
        "agentmesh.v1.AgentNode/ExecuteTask",
    ]:
        assert rpc in called, f"the README has no grpcurl example of {rpc}"
    assert all(
        any(h[0] == "authorization" for h in parse_grpcurl(args).headers)
        for args in commands_of("grpcurl", README.read_text(), examples_env(mesh))
        if parse_grpcurl(args).verb != "list"
    ), "every call example carries the token"
    canceled = [answers[0] for verb, answers in results if verb.endswith("/CancelTask")]
    assert canceled, "the README has no CancelTask example"
    assert canceled[-1]["state"] == "TASK_STATE_CANCELED"
    listed = [a["service"] for verb, answers in results if verb == "list" for a in answers]
    assert "agentmesh.v1.Scheduler" in listed
    assert "agentmesh.v1.KeyPool" in listed


@pytest.mark.parametrize(
    ("wrong", "why"),
    [
        ("-H 'authorization: Bearer $AGENTMESH_TOKEN'", "UNAUTHENTICATED"),
        ('-d \'{"spec":{"kind":"echo","promt":"hi"}}\' -H "a: b"', "promt"),
        ("", "UNAUTHENTICATED"),
    ],
)
async def test_a_wrong_example_fails(mesh: Mesh, wrong: str, why: str) -> None:
    example = (
        f"```sh\ngrpcurl -plaintext {wrong or '-d {}'} \\\n"
        "  $SCHEDULER agentmesh.v1.Scheduler/SubmitTask\n```\n"
    )
    with pytest.raises((grpc.RpcError, json_format.ParseError)) as raised:
        await run_examples(example, examples_env(mesh))
    assert why in str(raised.value)


def parse_command_line(argv: list[str]) -> click.Command:
    """Parse argv down to the command it names, converting every value; run nothing."""
    context = cli.make_context("agentmesh", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        # click keeps the subcommand's name apart from its arguments.
        args = [*context._protected_args, *context.args]
        if not args and command.invoke_without_command:
            break  # a group that is a command of its own too (`agentmesh network`)
        name, subcommand, rest = command.resolve_command(context, args)
        assert subcommand is not None, argv
        assert name is not None, argv
        context = subcommand.make_context(name, rest, parent=context)
        command = subcommand
    return command


def test_every_agentmesh_command_line_parses() -> None:
    env = {"AGENTMESH_TOKEN": TOKEN, "SCHEDULER": "127.0.0.1:1", "NODE": "127.0.0.1:2"}
    env["ID"] = "t-0"
    lines = commands_of("agentmesh", README.read_text(), env)
    assert len(lines) > 15, lines
    for argv in lines:
        parse_command_line(argv)


def test_a_wrong_command_line_fails_to_parse() -> None:
    for argv in (["tasks", "--state", "lost"], ["node", "--scheduller", "x:1"], ["nodes"]):
        with pytest.raises(click.ClickException):
            parse_command_line(argv)
