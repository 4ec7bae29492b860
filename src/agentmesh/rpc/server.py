"""A grpc.aio server with health, reflection, a bearer-credential policy and optional TLS."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentmesh.config import ConfigError, TlsSettings
from agentmesh.rpc.auth import BearerAuthInterceptor, Policy

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 << 20
# Keepalive: clients ping each connection every KEEPALIVE_SECONDS, and close one whose peer
# does not answer within KEEPALIVE_TIMEOUT_SECONDS, failing its calls UNAVAILABLE. A peer
# that stops answering without closing its connections (a frozen host, a cable pulled) is
# otherwise never noticed: a scheduler would stream its attempts there, and renew their
# leases, for ever. Servers accept pings this often, even on a connection with no call.
KEEPALIVE_SECONDS = 10
KEEPALIVE_TIMEOUT_SECONDS = 5


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(listen: str, secured: bool, credentials: str = "AGENTMESH_TOKEN") -> None:
    """Without credentials, serve only on loopback: anyone who can connect could run commands."""
    host, _ = split_host_port(listen)
    if not secured and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {listen} without {credentials}: set a token, or listen"
            " on a loopback address such as 127.0.0.1"
        )


def _credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    assert tls.cert_file is not None
    if tls.key_file is None:
        raise ConfigError("tls.key_file: required when tls.cert_file is set")
    try:
        chain = tls.cert_file.read_bytes()
        key = tls.key_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class _GenericHandlersOnly:
    """The server as the services' registration sees it: each service's methods are served
    through its generic handler, none as a registered method.

    grpc.aio keeps one pending request per registered method and, for every call that
    comes in, waits on all of them at once: a server with the scheduler's 38 methods
    spent about a tenth more CPU on each unary call than with generic handlers alone
    (`bench/rpc_server.py`). Generated `add_*_to_server` functions register both ways."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        pass  # served by the service's generic handler


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)


async def start_server(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    policy: Policy | None,
    tls: TlsSettings,
    credentials: str = "AGENTMESH_TOKEN",
    secured: bool | None = None,
) -> RunningServer:
    """Bind `listen` (port 0 picks a free one), register the services, start serving.

    Without credentials configured (`secured` false; by default: no `policy`) every caller
    is served, on loopback only; `credentials` names the settings that would secure it, for
    that refusal. An open server may still have a policy (for credentials of its own)."""
    check_exposure(listen, policy is not None if secured is None else secured, credentials)
    interceptors = [BearerAuthInterceptor(policy)] if policy is not None else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Clients ping every KEEPALIVE_SECONDS (see agentmesh.rpc.channel); by default
            # a server would answer pings that often with a GOAWAY, breaking its streams.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_SECONDS * 1000 // 2),
        ],
    )
    registration = cast(grpc.aio.Server, _GenericHandlersOnly(server))
    register(registration)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registration)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], registration
    )
    try:
        if tls.enabled:
            port = server.add_secure_port(listen, _credentials(tls))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}") from None
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer)
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running
