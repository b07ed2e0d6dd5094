"""The controller's EndpointsService over real gRPC: each activator is told how many
activators share the instances and which one it is, again whenever one comes or goes;
a watcher without an activator id is not counted."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from ebb.api.networking.v1 import endpoints_pb2 as pb
from ebb.api.networking.v1 import endpoints_pb2_grpc as pb_grpc
from ebb.controller.server import EndpointsServicer

WAIT_S = 10.0  # a hang guard, not a performance figure


class EndpointsState:
    """What EndpointsServicer uses of the controller: an update queue per watcher, the
    first update a snapshot of `state` (revision key -> endpoints view)."""

    def __init__(self, state: dict | None = None) -> None:
        self.watchers: list[asyncio.Queue] = []
        self.state = dict(state or {})

    def watch_endpoints(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait((dict(self.state), [], True))
        self.watchers.append(queue)
        return queue

    def unwatch_endpoints(self, queue: asyncio.Queue) -> None:
        self.watchers.remove(queue)


@contextlib.asynccontextmanager
async def serving(controller: EndpointsState):
    """The real EndpointsServicer in front of `controller`, on a free port."""
    server = grpc.aio.server()
    pb_grpc.add_EndpointsServiceServicer_to_server(EndpointsServicer(controller), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def endpoints_server():
    controller = EndpointsState()
    async with serving(controller) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield controller, pb_grpc.EndpointsServiceStub(channel)


async def next_share(call) -> tuple[int, int, bool]:
    msg = await asyncio.wait_for(call.read(), WAIT_S)
    return msg.activator_index, msg.activator_count, msg.snapshot


async def test_activators_learn_their_share_as_others_come_and_go():
    async with endpoints_server() as (controller, stub):
        b = stub.WatchEndpoints(pb.WatchEndpointsRequest(activator_id="activator-b"))
        assert await next_share(b) == (0, 1, True)  # alone

        a = stub.WatchEndpoints(pb.WatchEndpointsRequest(activator_id="activator-a"))
        assert await next_share(a) == (0, 2, True)  # "a" sorts first
        assert await next_share(b) == (1, 2, False)  # told at once, nothing else in it

        tool = stub.WatchEndpoints(pb.WatchEndpointsRequest())  # grpcurl, say
        assert await next_share(tool) == (0, 0, True)  # not counted
        assert len(controller.watchers) == 3

        a.cancel()
        assert await next_share(b) == (0, 1, False)  # "a" left: "b" has it all again
        tool.cancel()
        b.cancel()
        for _ in range(100):
            if not controller.watchers:
                break
            await asyncio.sleep(0.02)
        assert controller.watchers == []
