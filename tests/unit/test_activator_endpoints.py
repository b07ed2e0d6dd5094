"""Reading the controller's endpoints messages, and the activator's probe answers (tables)."""

from __future__ import annotations

import pytest

from ebb.activator.endpoints import DEFAULT_TIMEOUT_S, RevisionSpec, from_proto
from ebb.activator.probe import EAGER_FOR_S, EAGER_PERIOD_S, PERIOD_S, healthy_answer, probe_delay
from ebb.activator.proxy import split_address
from ebb.api.networking.v1 import endpoints_pb2 as pb


def key(name: str) -> pb.RevisionKey:
    return pb.RevisionKey(namespace="default", name=name)


def test_a_snapshot_with_figures_and_removals():
    msg = pb.WatchEndpointsResponse(
        snapshot=True,
        revisions=[
            pb.RevisionEndpoints(
                revision=key("a"),
                addresses=["10.0.0.1:8012"],
                not_ready_addresses=["10.0.0.2:8012"],
                container_concurrency=3,
                timeout_seconds=30,
                response_start_timeout_seconds=5,
                idle_timeout_seconds=7,
            ),
            pb.RevisionEndpoints(revision=key("b"), container_concurrency=-4, timeout_seconds=0),
            pb.RevisionEndpoints(revision=pb.RevisionKey(name="no-namespace")),
        ],
        removed=[key("gone")],
    )
    revisions, removed, snapshot, share = from_proto(msg)
    assert snapshot is True
    assert share is None  # not counted as an activator
    assert removed == [("default", "gone")]
    assert revisions == [
        RevisionSpec("default", "a", ("10.0.0.1:8012",), ("10.0.0.2:8012",), 3, 30, 5, 7),
        RevisionSpec("default", "b", (), (), 0, DEFAULT_TIMEOUT_S, 0, 0),  # negatives read as 0, 0 s as the default
    ]


@pytest.mark.parametrize(
    ("index", "count", "share"),
    [(0, 1, (0, 1)), (2, 3, (2, 3)), (0, 0, None), (3, 3, None), (-1, 2, None)],
)
def test_the_activators_share_is_read_when_it_is_in_range(index, count, share):
    msg = pb.WatchEndpointsResponse(activator_index=index, activator_count=count)
    assert from_proto(msg) == ([], [], False, share)


@pytest.mark.parametrize(
    ("answer", "healthy"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue", True),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\nnot ready\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", False),  # the app, not its queue
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", False),  # cut short
        (b"", False),
    ],
)
def test_probe_answer(answer, healthy):
    assert healthy_answer(answer) is healthy


@pytest.mark.parametrize(
    ("probing_for_s", "period_s", "delay_s"),
    [
        (0.0, PERIOD_S, EAGER_PERIOD_S),  # a new instance: every few ms
        (EAGER_FOR_S - 0.001, PERIOD_S, EAGER_PERIOD_S),
        (EAGER_FOR_S, PERIOD_S, PERIOD_S),  # then Knative's 200 ms
        (5.0, 0.5, 0.5),
        (0.0, 0.001, 0.001),  # a period shorter than the eager one stays
    ],
)
def test_probe_delay(probing_for_s, period_s, delay_s):
    assert probe_delay(probing_for_s, period_s) == delay_s


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:8012", ("127.0.0.1", 8012)),
        ("[::1]:80", ("::1", 80)),
        ("pod.ns.svc:1", ("pod.ns.svc", 1)),
        ("unix:/data/run/queues/a-00001-x.sock", ("/data/run/queues/a-00001-x.sock", 0)),  # port 0: a unix socket
    ],
)
def test_split_address(address, parsed):
    assert split_address(address) == parsed


@pytest.mark.parametrize("address", ["unix:", "unix:relative.sock"])
def test_split_address_rejects_a_relative_unix_path(address):
    with pytest.raises(ValueError, match="must be unix:/ABSOLUTE/PATH"):
        split_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", ":80", "h:0", "h:99999", "h:port"])
def test_split_address_rejects(address):
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        split_address(address)
