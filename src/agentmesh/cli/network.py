"""`agentmesh network`: the `home_network` inventory of hosts and the services they run.

Nodes add their host as they register; people add what runs no node (a NAS, a printer),
tag hosts and remove them.
"""

from __future__ import annotations

import click

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, memory_stub, scheduler_stub
from agentmesh.cli.views import ago, host_json
from agentmesh.v1 import memory_pb2, scheduler_pb2


def _tags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


@click.group(invoke_without_command=True)
@json_option
@pass_app
@click.pass_context
def network(ctx: click.Context, app: App, as_json: bool) -> int | None:
    """List the home network: hosts, addresses, services, tags, when each was last seen."""
    if ctx.invoked_subcommand is not None:
        return None

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=CALL_TIMEOUT)
        if output.json:
            output.data([host_json(host) for host in reply.hosts])
            return EXIT_OK
        rows = [
            [
                host.host_name or "-",
                host.ip_address or "-",
                host.service or "-",
                ",".join(host.tags) or "-",
                ago(host.last_seen, host.HasField("last_seen")),
                host.notes or "",
            ]
            for host in reply.hosts
        ]
        output.table(["HOST", "ADDRESS", "SERVICE", "TAGS", "SEEN", "NOTES"], rows)
        return EXIT_OK

    return app.run(command)


@network.command()
@click.argument("host")
@click.option("--ip", default="", help="its IPv4 or IPv6 address")
@click.option("--service", required=True, help="what it runs, e.g. nas, printer, ssh")
@click.option("--tags", default="", help="comma-separated tags")
@click.option("--notes", default="", help="anything worth knowing about it")
@json_option
@pass_app
def add(app: App, host: str, ip: str, service: str, tags: str, notes: str, as_json: bool) -> int:
    """Add a host and a service it runs (or change that row)."""

    async def command() -> int:
        request = memory_pb2.AddHostRequest(
            host_name=host, ip_address=ip, service=service, tags=_tags(tags), notes=notes
        )
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            row = await stub.AddHost(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data(host_json(row))
        else:
            output.line(f"{row.host_name} ({row.ip_address or 'no address'}): {row.service}")
        return EXIT_OK

    return app.run(command)


@network.command()
@click.argument("host")
@click.argument("tags", nargs=-1)
@click.option("--remove", multiple=True, help="a tag to take off (repeat for more)")
@json_option
@pass_app
def tag(app: App, host: str, tags: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> int:
    """Tag every row of HOST with TAGS, and take off the --remove ones."""

    async def command() -> int:
        request = memory_pb2.TagHostRequest(host_name=host, add=tags, remove=remove)
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.TagHost(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data([host_json(row) for row in reply.hosts])
            return EXIT_OK
        for row in reply.hosts:
            output.line(f"{row.host_name} {row.service}: {','.join(row.tags) or 'no tags'}")
        return EXIT_OK

    return app.run(command)


@network.command(name="rm")
@click.argument("host")
@click.option("--service", default="", help="only this service's row (default: all of them)")
@pass_app
def remove(app: App, host: str, service: str) -> int:
    """Remove a host (or one of its services) from the home network."""

    async def command() -> int:
        request = memory_pb2.RemoveHostRequest(host_name=host, service=service)
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.RemoveHost(request, timeout=CALL_TIMEOUT)
        output_for(False).line(f"removed {reply.removed} row(s) of {host}")
        return EXIT_OK

    return app.run(command)
