"""The HTTP/2 server core's answer path (`ebb.common.h2server`), through a fake transport:
handlers that send at any time, the peer's windows and frame size, trailers-only against
trailers, the bounds on output a peer leaves unread, and the handler's life cycle.

The frame layer's rules are tested through the stats port (test_autoscaler_statsport.py
and the conformance tests), which is the same code.
"""

from __future__ import annotations

import struct

import pytest
from helpers import FakeTransport, H2Peer, grpc_frame

from ebb.common import h2server as h2

PATH = b"/test.v1.Echo/Talk"


class Talk(h2.Handler):
    """Records what the core tells it; the test drives its stream."""

    __slots__ = ("stream", "events")
    calls: list[Talk] = []

    def __init__(self, stream: h2.Stream) -> None:
        super().__init__(stream)
        self.events: list[tuple] = []
        Talk.calls.append(self)

    def on_message(self, message) -> None:
        self.events.append(("message", message))

    def on_end(self) -> None:
        self.events.append(("end",))

    def on_close(self, error) -> None:
        self.events.append(("close", error))


class Peer(H2Peer):
    def __init__(self) -> None:
        Talk.calls = []
        self.port = h2.H2Port({PATH: Talk})
        super().__init__(h2.H2Connection(self.port), FakeTransport())
        self.conn.connection_made(self.transport)
        self.frames()  # the server's SETTINGS and WINDOW_UPDATE

    def start(self, *settings: tuple[int, int]) -> None:
        payload = b"".join(struct.pack(">HI", k, v) for k, v in settings)
        self.send(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, payload))
        assert self.frames() == [(h2.SETTINGS, h2.ACK, 0, b"")]

    def open(self, stream_id: int, path: bytes = PATH, *, end_stream: bool = False) -> Talk:
        fields = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b"content-type", b"application/grpc"),
        ]
        flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
        self.send(h2.frame(h2.HEADERS, flags, stream_id, self.encoder.encode(fields)))
        return Talk.calls[-1] if Talk.calls and Talk.calls[-1].stream.id == stream_id else None

    def window(self, stream_id: int, increment: int) -> None:
        self.send(h2.frame(h2.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))


def messages(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset + 1)
        out.append(data[offset + 5 : offset + 5 + length])
        offset += 5 + length
    assert offset == len(data)
    return out


@pytest.fixture
async def peer() -> Peer:
    client = Peer()
    yield client
    client.conn.connection_lost(None)


async def test_messages_go_to_the_handler_and_it_answers_at_any_time(peer):
    peer.start()
    talk = peer.open(1)
    peer.send(h2.frame(h2.DATA, 0, 1, grpc_frame(b"one") + grpc_frame(b"two")[:4]))
    assert talk.events == [("message", b"one")]
    assert talk.stream.send_message(b"first")  # before the client is done
    head, body = peer.frames()
    assert head[:3] == (h2.HEADERS, h2.END_HEADERS, 1) and not head[1] & h2.END_STREAM
    assert peer.decode(head[3])[b":status"] == b"200"
    assert body[:3] == (h2.DATA, 0, 1) and messages(body[3]) == [b"first"]
    peer.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_frame(b"two")[4:]))
    assert talk.events[1:] == [("message", b"two"), ("end",)]
    talk.stream.send_message(b"second")
    talk.stream.finish()
    body, tail = peer.frames()  # no second HEADERS before the DATA
    assert messages(body[3]) == [b"second"]
    assert tail[1] & h2.END_STREAM and peer.decode(tail[3]) == {b"grpc-status": b"0"}
    assert talk.events[-1] == ("close", None) and not peer.conn.streams
    assert not talk.stream.send_message(b"late") and not talk.stream.open


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (0, "", {b"grpc-status": b"0"}),
        (5, "no such thing", {b"grpc-status": b"5", b"grpc-message": b"no such thing"}),
    ],
)
async def test_finish_with_nothing_sent_is_trailers_only(peer, status, message, expected):
    peer.start()
    talk = peer.open(1, end_stream=True)
    talk.stream.finish(status, message)
    (only,) = peer.frames()  # the client had ended its side: no reset
    assert only[1] == h2.END_HEADERS | h2.END_STREAM
    fields = peer.decode(only[3])
    assert fields.pop(b":status") == b"200" and fields.pop(b"content-type") == b"application/grpc"
    assert fields == expected
    assert talk.events == [("end",), ("close", message or None)]


async def test_finish_after_messages_sends_status_in_trailers_and_resets_a_sending_client(peer):
    peer.start()
    talk = peer.open(1)
    talk.stream.send_message(b"x")
    talk.stream.finish(13, "broke: 100%")
    head, body, tail, reset = peer.frames()
    assert peer.decode(tail[3]) == {b"grpc-status": b"13", b"grpc-message": b"broke: 100%25"}
    assert reset[:3] == (h2.RST_STREAM, 0, 1) and struct.unpack(">I", reset[3])[0] == h2.NO_ERROR
    assert peer.port.counters["grpc_status_13"] == 1


async def test_output_waits_for_the_streams_window_and_goes_out_split_to_it(peer):
    peer.start((h2.S_INITIAL_WINDOW_SIZE, 0))
    talk = peer.open(1, end_stream=True)
    assert talk.stream.send_message(b"a" * 95)  # 100 bytes framed
    talk.stream.finish()
    assert peer.frames() == []  # not even the HEADERS: they go with the first DATA
    assert peer.conn._waiting == {1: talk.stream}
    peer.window(1, 30)
    head, first = peer.frames()
    assert head[0] == h2.HEADERS and first[:3] == (h2.DATA, 0, 1) and len(first[3]) == 30
    peer.window(1, 30)
    (second,) = peer.frames()
    assert len(second[3]) == 30
    peer.window(1, 1000)
    third, tail = peer.frames()
    assert len(third[3]) == 40 and tail[1] & h2.END_STREAM
    assert messages(first[3] + second[3] + third[3]) == [b"a" * 95]
    assert not peer.conn._waiting and peer.conn._pending_bytes == 0


async def test_frames_are_at_most_the_peers_max_frame_size(peer):
    peer.start((h2.S_MAX_FRAME_SIZE, 20_000))
    talk = peer.open(1, end_stream=True)
    talk.stream.reply(b"m" * 50_000)  # fits the 64 KiB windows
    head, *data, tail = peer.frames()
    assert [len(f[3]) for f in data] == [20_000, 20_000, 10_005]
    assert messages(b"".join(f[3] for f in data)) == [b"m" * 50_000]
    assert tail[1] & h2.END_STREAM


async def test_the_connection_window_is_shared_and_its_update_sends_the_oldest_first(peer):
    peer.start()
    one, three = peer.open(1), peer.open(3)
    one.stream.send_message(b"1" * 60_000)
    three.stream.send_message(b"3" * 10_000)  # the connection window has ~5.5 KB left
    sent = peer.frames()
    data = [f for f in sent if f[0] == h2.DATA]
    assert sum(len(f[3]) for f in data) == h2.DEFAULT_WINDOW
    assert list(peer.conn._waiting) == [3]
    peer.window(1, 100_000)  # the stream's window is not the limit: nothing moves
    assert peer.frames() == []
    peer.window(0, 100_000)
    (rest,) = peer.frames()
    assert rest[2] == 3 and len(rest[3]) == 60_005 + 10_005 - h2.DEFAULT_WINDOW
    assert not peer.conn._waiting


async def test_a_larger_initial_window_sends_what_waited(peer):
    peer.start((h2.S_INITIAL_WINDOW_SIZE, 0))
    talks = [peer.open(i) for i in (1, 3)]
    for talk in talks:
        talk.stream.send_message(b"w")
    assert peer.frames() == []
    peer.send(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", h2.S_INITIAL_WINDOW_SIZE, 100)))
    frames = peer.frames()
    assert [(f[0], f[2]) for f in frames if f[0] == h2.DATA] == [(h2.DATA, 1), (h2.DATA, 3)]


async def test_output_a_peer_leaves_unread_is_bounded(peer, monkeypatch):
    monkeypatch.setattr(h2, "MAX_PENDING_BYTES", 10_000)
    peer.start((h2.S_INITIAL_WINDOW_SIZE, 0))
    talk = peer.open(1)
    assert talk.stream.send_message(b"x" * 6_000)
    assert not talk.stream.send_message(b"x" * 6_000)  # 12,010 bytes would wait
    (reset,) = peer.frames()
    assert reset[:3] == (h2.RST_STREAM, 0, 1)
    assert struct.unpack(">I", reset[3])[0] == h2.ENHANCE_YOUR_CALM
    assert talk.events == [("close", "reset: enhance_your_calm")]
    assert peer.conn._pending_bytes == 0 and not peer.conn._waiting
    assert not peer.transport.closed  # the connection stays


async def test_a_stream_past_the_waiting_bound_is_reset_not_the_connection(peer, monkeypatch):
    monkeypatch.setattr(h2, "MAX_WAITING", 2)
    peer.start((h2.S_INITIAL_WINDOW_SIZE, 0))
    talks = [peer.open(i) for i in (1, 3, 5)]
    assert talks[0].stream.send_message(b"a") and talks[1].stream.send_message(b"b")
    assert not talks[2].stream.send_message(b"c")
    (reset,) = peer.frames()
    assert reset[:3] == (h2.RST_STREAM, 0, 5) and struct.unpack(">I", reset[3]) == (0xB,)
    assert not peer.transport.closed
    assert talks[0].events == talks[1].events == []
    assert talks[2].events == [("close", "reset: enhance_your_calm")]


async def test_a_client_cancel_closes_the_handler_and_drops_its_output(peer):
    peer.start((h2.S_INITIAL_WINDOW_SIZE, 0))
    talk = peer.open(1)
    talk.stream.send_message(b"waits")
    peer.send(h2.frame(h2.RST_STREAM, 0, 1, struct.pack(">I", 8)))  # CANCEL
    assert talk.events == [("close", "cancelled by the client")]
    assert not peer.conn._waiting and peer.conn._pending_bytes == 0
    assert not talk.stream.send_message(b"after") and peer.frames() == []


async def test_shut_down_ends_each_call_as_its_handler_says_then_goaway(peer):
    peer.start()
    quiet = peer.open(1)  # the default: trailers-only UNAVAILABLE
    talking = peer.open(3, end_stream=True)
    talking.stream.send_message(b"so far")
    peer.frames()
    peer.conn.shut_down()
    frames = peer.frames()
    quiet_end = [f for f in frames if f[2] == 1 and f[0] == h2.HEADERS]
    assert peer.decode(quiet_end[0][3])[b"grpc-status"] == str(h2.GRPC_UNAVAILABLE).encode()
    talking_end = [f for f in frames if f[2] == 3 and f[0] == h2.HEADERS]
    assert peer.decode(talking_end[0][3])[b"grpc-status"] == str(h2.GRPC_UNAVAILABLE).encode()
    assert frames[-1][0] == h2.GOAWAY and peer.transport.closed
    assert quiet.events[-1][0] == talking.events[-1][0] == "close"


async def test_an_unknown_path_is_unimplemented_and_no_handler_is_made(peer):
    peer.start()
    assert peer.open(1, b"/test.v1.Echo/Other", end_stream=True) is None
    (only,) = peer.frames()
    fields = peer.decode(only[3])
    assert fields[b"grpc-status"] == b"12" and b"/test.v1.Echo/Other" in fields[b"grpc-message"]
    assert Talk.calls == []


async def test_a_long_status_message_stays_one_small_frame(peer):
    peer.start()
    talk = peer.open(1, end_stream=True)
    talk.stream.finish(13, "é" * 50_000)
    (only,) = peer.frames()
    assert len(only[3]) < h2.MAX_FRAME_SIZE
    assert peer.decode(only[3])[b"grpc-message"].endswith(b"...")
