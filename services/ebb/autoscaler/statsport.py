"""`StatsService.StreamStats` on a port of its own: gRPC's wire protocol over HTTP/2,
read in the event loop.

Why a second listener: every queue holds one StreamStats stream and sends one message a
second, so a fleet of N instances is N connections each delivering one small message at
a time. grpcio's AsyncIO server hands every received message from its I/O threads to a
poller thread and then, through a socketpair, to the event loop: about 90 µs of CPU per
message, so one core took only 8-10k of a fleet's stats a second
(docs/benchmarks-control-plane.md). Here a message is a frame parsed where it is read,
in the loop's `data_received`, with no thread in between.

The port speaks just enough HTTP/2 (RFC 9113) for any gRPC client (grpcio, grpc-js,
grpc-go, grpcurl with `-proto`) to call this one method:
- the connection preface, SETTINGS (acknowledged), PING (answered), WINDOW_UPDATE,
  RST_STREAM, GOAWAY, PRIORITY (ignored), unknown frame types (ignored);
- HEADERS and CONTINUATION, decoded with `hpack` (the dynamic table stays in step even for
  a stream that is refused);
- DATA, with padding; gRPC's length-prefixed messages split across frames or packed
  several to a frame;
- flow control: each stream and the connection get a 16 MiB window, given back as the
  bytes are read (they are consumed at once, so the window only bounds a burst);
- answers: `StreamStatsResponse` with the totals and `grpc-status: 0` when the client ends
  its stream (or the autoscaler stops); a trailers-only error for anything else:
  UNIMPLEMENTED for another method or a compression other than identity,
  RESOURCE_EXHAUSTED for a message over 4 MiB, INTERNAL for a compressed message; HTTP
  405/415 for a request that is not gRPC.
A connection-level protocol error answers GOAWAY with the RFC's code and closes. What is
not here: server push (a server never needs it), compression, reflection and health (the
autoscaler's gRPC port serves those, and StreamStats too).

The HTTP/2 server itself is `ebb.common.h2server` (shared with the admin server,
`ebb.common.h2admin`); this module is its one method, StreamStats, and the port that
serves it. Its names, and the wire's (`ebb.common.h2frames`), are re-exported here for
the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ebb.autoscaler.server import STATS_SERVICE, StatsTally, decode_stats_request
from ebb.common.h2server import H2Connection, H2Port, Handler, Stream

if TYPE_CHECKING:
    from ebb.autoscaler.server import AutoscalerServer
    from ebb.common.tracing import Tracing

STREAM_STATS_PATH = f"/{STATS_SERVICE}/StreamStats".encode()


class StreamStatsCall(StatsTally, Handler):
    """One StreamStats call, its own tally: every message goes straight to `take` (so a
    message costs the connection one call after decoding, and a stream one object); the
    totals answer the client's end of stream, or the port's close."""

    __slots__ = ("stream",)
    decode = staticmethod(decode_stats_request)
    on_message = StatsTally.take

    def __init__(self, stream: Stream, owner: AutoscalerServer) -> None:
        StatsTally.__init__(self, owner, stream.conn.peer_name)
        self.stream = stream

    def on_end(self) -> None:
        self.stream.reply(self.response().SerializeToString())

    def on_shutdown(self) -> None:
        """As on the gRPC port: the totals so far, so a reporter sees a clean end and
        reconnects; a stream stopped inside a message cannot be answered whole (reset)."""
        if not self.stream.pending:
            self.on_end()


class StatsPort(H2Port):
    """The listener: StreamStats on its own port, counting what happens on it."""

    name = "stats"

    def __init__(self, owner: AutoscalerServer, tracing: Tracing | None = None) -> None:
        super().__init__({STREAM_STATS_PATH: self._call}, tracing)
        self.owner = owner

    def _call(self, stream: Stream) -> StreamStatsCall:
        return StreamStatsCall(stream, self.owner)


class StatsConnection(H2Connection):
    """One HTTP/2 connection to the stats port."""

    def __init__(self, port: StatsPort) -> None:
        super().__init__(port)
        self._owner = port.owner


StatsPort.protocol = StatsConnection
