"""One table from domain errors to gRPC status codes, and the wrappers every RPC goes through.

An error's `Reason` travels as `google.rpc.ErrorInfo` (domain "agentmesh") in the status
details; `reason_of` reads it back on the calling side.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from agentmesh import errors
from agentmesh.rpc.request_shape import RefusedRequest

log = logging.getLogger(__name__)

ERROR_DOMAIN = "agentmesh"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

STATUS_CODES: dict[type[errors.AgentmeshError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")


def status_code_for(error: errors.AgentmeshError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], error: errors.AgentmeshError
) -> NoReturn:
    """End the RPC with the error's status code, and google.rpc details where they help."""
    code = status_code_for(error)
    message = str(error)
    status = status_pb2.Status(code=code.value[0], message=message)
    if isinstance(error, errors.InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.problem
                    )
                ]
            )
        )
        status.details.append(detail)
    if error.reason is not None:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN))
        status.details.append(info)
    await context.abort(
        code, message, trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),)
    )
    raise AssertionError("unreachable")  # context.abort raises


def reason_of(error: grpc.aio.AioRpcError) -> errors.Reason | None:
    """The agentmesh reason a failed call carries in its status details, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                try:
                    return errors.Reason(info.reason)
                except ValueError:
                    return None  # a reason from a newer version: treat as none
    return None


async def _internal(context: grpc.aio.ServicerContext[Any, Any], method: str) -> NoReturn:
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
    raise AssertionError("unreachable")


def unary(
    method: Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Route a unary RPC's domain errors through the error table (and a request refused on
    the wire, see `request_shape`, as its INVALID_ARGUMENT)."""

    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            if isinstance(request, RefusedRequest):
                raise request.error
            return await method(self, request, context)
        except errors.AgentmeshError as error:
            await abort(context, error)
        except Exception:
            await _internal(context, method.__name__)

    return wrapper


def streaming(
    method: Callable[
        [Servicer, Request, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Response]
    ],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Response]]:
    """Route a server-streaming RPC's domain errors through the error table (and a request
    refused on the wire, as for `unary`)."""

    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Response]:
        try:
            if isinstance(request, RefusedRequest):
                raise request.error
            async for response in method(self, request, context):
                yield response
        except errors.AgentmeshError as error:
            await abort(context, error)
        except Exception:
            await _internal(context, method.__name__)

    return wrapper
