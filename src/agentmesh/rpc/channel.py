"""Client channels to agentmesh services, carrying the mesh token."""

from __future__ import annotations

import grpc

from agentmesh.config import ConfigError, TlsSettings
from agentmesh.rpc.auth import client_interceptors
from agentmesh.rpc.server import (
    KEEPALIVE_SECONDS,
    KEEPALIVE_TIMEOUT_SECONDS,
    MAX_MESSAGE_BYTES,
)


def open_channel(target: str, *, token: str | None, tls: TlsSettings) -> grpc.aio.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),
        # A peer that stopped answering is found out by pings (see rpc.server), also while
        # a call waits for its next message, and while no call is open.
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
        # gRPC (1.85) gives up on an unanswered keepalive ping only after this timeout, a
        # minute by default, whatever keepalive_timeout_ms says: without it a frozen node's
        # attempts were lost 70 s after it froze, not 15.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A peer back after an outage is dialled within a second: gRPC's own backoff grows
        # to two minutes, and a node restarted after a crash sat unused for up to 14 s.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    interceptors = client_interceptors(token)
    if not tls.enabled and tls.ca_file is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    try:
        ca = tls.ca_file.read_bytes() if tls.ca_file else None
        # With client-certificate verification, this process's own cert/key identify it.
        key = tls.key_file.read_bytes() if tls.key_file else None
        chain = tls.cert_file.read_bytes() if tls.cert_file else None
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
