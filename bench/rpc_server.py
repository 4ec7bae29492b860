"""gRPC server benchmark: a grpc.aio server's CPU per unary call, by how its methods are served.

grpc.aio keeps one pending request per registered method (what generated
`add_*_to_server` functions ask for) and, for every incoming call, waits on all of them
at once. agentmesh's servers serve every method through generic handlers instead (see
agentmesh.rpc.server). This prints, from one run on this machine, the server process's CPU
per trivial unary call (32 callers on one channel, uvloop as the services run it) with
38 methods registered, as the scheduler's services would be, against the same methods
behind generic handlers only; rounds alternate, and the ratio is of the medians.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import grpc
import psutil
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "grpc.health.v1.Health"
# The scheduler's services: Scheduler 16, Memory 10, KeyPool 8, health 3, reflection 1.
METHODS = 38
CALLS = 20_000
CALLERS = 32
ROUNDS = 5


async def serve(registered: bool) -> None:
    async def check(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def handler() -> grpc.RpcMethodHandler[object, object]:
        return grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )

    handlers = {"Check": handler(), **{f"Other{i}": handler() for i in range(METHODS - 1)}}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if registered:
        server.add_registered_method_handlers(SERVICE, handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def call_many(port: int) -> float:
    """Calls a second, after a warm-up."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            await stub.Check(health_pb2.HealthCheckRequest())
        remaining = iter(range(CALLS))

        async def caller() -> None:
            for _ in remaining:
                await stub.Check(health_pb2.HealthCheckRequest())

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return CALLS / (time.perf_counter() - started)


def measure(registered: bool) -> tuple[float, float]:
    """The server's CPU per call in microseconds, and calls a second."""
    mode = "registered" if registered else "generic"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        rate = asyncio.run(call_many(port))
        spent = sum(process.cpu_times()[:2]) - before
    finally:
        server.kill()
        server.wait()
    return spent / CALLS * 1e6, rate


def main() -> None:
    cpu: dict[bool, list[float]] = {True: [], False: []}
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for registered in (True, False):
            per_call, rate = measure(registered)
            cpu[registered].append(per_call)
            rates[registered].append(rate)
    print(f"gRPC server benchmark (one run, this machine; {ROUNDS} rounds of {CALLS} calls)")
    for registered, name in ((True, "registered"), (False, "generic handlers only")):
        print(
            f"  {METHODS} methods, {name}: server CPU per call"
            f" {', '.join(f'{v:.0f}' for v in cpu[registered])} µs"
            f" (median {statistics.median(cpu[registered]):.0f});"
            f" {statistics.median(rates[registered]):,.0f} calls/s"
        )
    ratio = statistics.median(cpu[False]) / statistics.median(cpu[True])
    print(f"  generic handlers only / registered: ratio {ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        uvloop.run(serve(sys.argv[2] == "registered"))
    else:
        main()
