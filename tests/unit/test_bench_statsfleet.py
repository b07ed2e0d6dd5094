"""bench.statsfleet's pure parts: the request it opens a stream with, its DATA frames, and how
it reads a server's frames (acknowledgements, windows, the answer), without sockets."""

import struct

import hpack
import pytest

from bench import statsfleet as sf
from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.common import h2frames as fr
from ebb.common import h2server as h2s

SERVER_SETTINGS = struct.pack(">HI", fr.S_INITIAL_WINDOW_SIZE, h2s.WINDOW) + struct.pack(
    ">HI", fr.S_MAX_CONCURRENT_STREAMS, 100
)


def answer(accepted: int, dropped: int) -> bytes:
    """The stats port's answer to stream 1, built with its own helpers."""
    body = pb.StreamStatsResponse(accepted=accepted, dropped=dropped).SerializeToString()
    return (
        fr.frame(fr.HEADERS, fr.END_HEADERS, 1, h2s.RESPONSE_HEADERS)
        + fr.frame(fr.DATA, 0, 1, sf.grpc_frame(body))
        + fr.frame(fr.HEADERS, fr.END_HEADERS | fr.END_STREAM, 1, h2s.OK_TRAILERS)
    )


def test_request_headers_decode_to_the_stream_stats_call():
    headers = hpack.Decoder().decode(sf.request_headers("127.0.0.1:8094"))
    assert headers == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/ebb.api.autoscaler.v1.StatsService/StreamStats"),
        (":authority", "127.0.0.1:8094"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def test_opening_is_preface_settings_and_headers_for_stream_1():
    opening = sf.StreamStatsClient("h:1").opening()
    assert opening.startswith(fr.PREFACE)
    frames, used = sf.parse_frames(opening[len(fr.PREFACE) :])
    assert used == len(opening) - len(fr.PREFACE)
    assert [(kind, flags, sid) for kind, flags, sid, _ in frames] == [
        (fr.SETTINGS, 0, 0),
        (fr.HEADERS, fr.END_HEADERS, 1),
    ]
    assert frames[0][3] == b""  # an empty SETTINGS: the protocol's defaults
    assert dict(hpack.Decoder().decode(frames[1][3]))[":authority"] == "h:1"


def test_data_frame_carries_one_grpc_framed_message():
    message = pb.StreamStatsRequest()
    message.stats.add(instance="i-1", average_concurrency=2.5)
    raw = message.SerializeToString()
    data = fr.frame(fr.DATA, 0, 1, sf.grpc_frame(raw))
    (frames, used) = sf.parse_frames(data + data[:7])  # a second frame cut short
    assert used == len(data) and len(frames) == 1
    kind, flags, sid, payload = frames[0]
    assert (kind, flags, sid) == (fr.DATA, 0, 1)
    assert payload[0] == 0 and struct.unpack(">I", payload[1:5])[0] == len(raw)
    assert sf.grpc_messages(payload) == [raw]
    assert pb.StreamStatsRequest.FromString(sf.grpc_messages(payload)[0]).stats[0].instance == "i-1"


@pytest.mark.parametrize(
    "body", [b"\x00\x00\x00", b"\x00\x00\x00\x00\x09abc", b"\x01\x00\x00\x00\x00"]
)
def test_grpc_messages_rejects_cut_or_compressed(body):
    with pytest.raises(ValueError):
        sf.grpc_messages(body)


def test_settings_and_ping_are_acknowledged_windows_counted():
    client = sf.StreamStatsClient("h:1")
    ping = b"12345678"
    reply = client.receive(
        fr.frame(fr.SETTINGS, 0, 0, SERVER_SETTINGS)
        + fr.frame(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", h2s.WINDOW - fr.DEFAULT_WINDOW))
        + fr.frame(fr.PING, 0, 0, ping)
        + fr.frame(fr.PING, fr.ACK, 0, ping)  # an answer to a ping: nothing to say
        + fr.frame(fr.SETTINGS, fr.ACK, 0)
    )
    assert reply == fr.frame(fr.SETTINGS, fr.ACK, 0) + fr.frame(fr.PING, fr.ACK, 0, ping)
    assert client.window == client.stream_window == h2s.WINDOW
    assert not client.ended and client.error is None


def test_data_spends_the_windows_and_stops_at_their_end():
    client = sf.StreamStatsClient("h:1")
    assert client.data(fr.DEFAULT_WINDOW - 10)
    assert not client.data(11)  # one byte over: not sent
    assert client.data(10)
    client.receive(fr.frame(fr.WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    assert not client.data(1)  # the stream has room, the connection has not
    client.receive(fr.frame(fr.WINDOW_UPDATE, 0, 0, struct.pack(">I", 100)))
    assert client.data(100)


def test_answer_read_across_reads_gives_the_totals():
    client = sf.StreamStatsClient("h:1")
    data = fr.frame(fr.SETTINGS, 0, 0, SERVER_SETTINGS) + answer(1234, 5)
    for cut in range(0, len(data), 7):  # in pieces, frames split anywhere
        client.receive(data[cut : cut + 7])
    assert client.ended and client.error is None
    assert (client.http_status, client.grpc_status) == (b"200", 0)
    assert client.accepted_dropped() == (1234, 5)


def test_an_error_answer_ends_the_stream_with_its_status():
    client = sf.StreamStatsClient("h:1")
    block = h2s.error_headers(h2s.GRPC_UNIMPLEMENTED, "unknown method /x")
    client.receive(fr.frame(fr.HEADERS, fr.END_HEADERS | fr.END_STREAM, 1, block))
    assert client.ended and client.grpc_status == 12
    with pytest.raises(ValueError, match="grpc-status 12: unknown method /x"):
        client.accepted_dropped()


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        (
            fr.frame(fr.RST_STREAM, 0, 1, struct.pack(">I", 7)),
            "stream reset by the server (code 7)",
        ),
        (fr.frame(fr.GOAWAY, 0, 0, struct.pack(">II", 1, 1) + b"bad"), "GOAWAY code 1: bad"),
        (
            fr.frame(
                fr.HEADERS,
                fr.END_HEADERS | fr.END_STREAM,
                1,
                fr.encode_headers([(b":status", b"415")]),
            ),
            "HTTP status 415",
        ),
        (fr.frame(fr.HEADERS, 0, 1, h2s.RESPONSE_HEADERS), "CONTINUATION"),
        (fr.frame(fr.HEADERS, fr.END_HEADERS, 1, b"\xff\xff\xff\xff"), "does not decode"),
    ],
)
def test_a_failed_stream_says_why(frames, error):
    client = sf.StreamStatsClient("h:1")
    client.receive(frames)
    assert client.ended and error in client.error
    with pytest.raises(ValueError, match=error[:10]):
        client.accepted_dropped()


def test_goaway_without_error_waits_for_the_answer():
    client = sf.StreamStatsClient("h:1")
    client.receive(fr.frame(fr.GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
    assert not client.ended and client.error is None
    client.receive(answer(3, 0) + fr.frame(fr.RST_STREAM, 0, 1, struct.pack(">I", 0)))
    assert client.accepted_dropped() == (3, 0)  # the reset after the trailers changes nothing


def test_parse_args_bounds():
    base = ["--target", "127.0.0.1:1", "--revisions", "10", "--duration", "5"]
    args = sf.parse_args([*base, "--streams", "2500", "--period", "0.5"])
    assert (args.streams, args.period, args.burst, args.go_file) == (2500, 0.5, 250, None)
    for bad in (
        ["--streams", "0"],
        ["--streams", "20001"],
        ["--streams", "1", "--period", "0"],
        ["--streams", "1", "--burst", "0"],
        ["--streams", "1", "--duration", "301"],
    ):
        with pytest.raises(SystemExit):
            sf.parse_args([*base, *bad])
    with pytest.raises(SystemExit):
        sf.parse_args(
            ["--target", "nohost", "--revisions", "1", "--duration", "1", "--streams", "1"]
        )


def test_trailers_without_a_grpc_status_are_not_ok():
    client = sf.StreamStatsClient("h:1")
    trailers = fr.encode_headers([(b":status", b"200")])
    client.receive(fr.frame(fr.HEADERS, fr.END_HEADERS | fr.END_STREAM, 1, trailers))
    assert client.ended and client.grpc_status == -1
    with pytest.raises(ValueError, match="grpc-status -1"):
        client.accepted_dropped()
