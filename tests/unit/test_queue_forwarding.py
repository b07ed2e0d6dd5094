"""What the queue tells the app about the request's path, as Knative's queue-proxy does:
`Forwarded` shimmed from the `X-Forwarded-*` headers as they came (ForwardedShimHandler),
X-Forwarded-For extended with this hop (Go's ReverseProxy), no X-Forwarded-Proto made up,
and the routing pair (`Knative-Serving-Namespace`, `-Revision`) not passed to the app; the
activator still sends that pair on to the queue. Pure tables, then the real proxies with
fake transports."""

from __future__ import annotations

import pytest
from test_metrics_activator import ADDRESS, activator_with, instance_app, request
from test_metrics_queue import client, head_of, pooled_app

from ebb.activator.endpoints import RevisionSpec
from ebb.common import http1
from ebb.queue.proxy import Proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("xff", "host", "proto", "expected"),
    [
        (None, None, None, None),  # nothing came: no Forwarded
        (b"", b" ", b"", None),  # empty values say nothing either
        (b"203.0.113.9", None, None, b"for=203.0.113.9"),
        (None, None, b"https", b"proto=https"),
        (None, b"h.example", None, b"host=h.example"),  # host only from X-Forwarded-Host
        (b"203.0.113.9", b"h.example", b"https", b"for=203.0.113.9;host=h.example;proto=https"),
        # every further node its own element; host and proto describe the first
        (b"203.0.113.9, 10.0.0.1,10.0.0.2", None, b"http", b"for=203.0.113.9;proto=http, for=10.0.0.1, for=10.0.0.2"),
        # IPv6 nodes bracketed and quoted
        (b"2001:db8::1, ::1", None, None, b'for="[2001:db8::1]", for="[::1]"'),
        # values that are not RFC 7239 tokens are quoted (Knative would send them bare)
        (b"10.0.0.1:8080", b"h.example:8443", None, b'for="10.0.0.1:8080";host="h.example:8443"'),
        (b"_hidden", None, b"https", b"for=_hidden;proto=https"),
    ],
)
def test_forwarded_header(xff, host, proto, expected):
    http1._FORWARDED_MEMO.clear()
    assert http1.forwarded_header(xff, host, proto) == expected
    assert http1.forwarded_header(xff, host, proto) == expected  # from the memo


def _to_app(raw_headers: bytes) -> dict[str, str]:
    """The head the app gets for a GET carrying `raw_headers`."""
    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, down = client(queue)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h.example\r\n" + raw_headers + b"\r\n")
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK")
    return head_of(bytes(app.transport.out))


@pytest.mark.parametrize(
    ("sent", "xff", "xfp", "forwarded"),
    [
        (b"", "127.0.0.1", None, None),
        (b"X-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9, 127.0.0.1", None, "for=203.0.113.9"),
        (b"X-Forwarded-Proto: https\r\n", "127.0.0.1", "https", "proto=https"),
        (
            b"X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: h.example\r\n",
            "203.0.113.9, 10.0.0.1, 127.0.0.1",
            "https",
            "for=203.0.113.9;host=h.example;proto=https, for=10.0.0.1",
        ),
        # A Forwarded that came is left as it is, whatever else came.
        (
            b"Forwarded: for=198.51.100.1;proto=https\r\nX-Forwarded-For: 203.0.113.9\r\n",
            "203.0.113.9, 127.0.0.1",
            None,
            "for=198.51.100.1;proto=https",
        ),
        # One X-Forwarded-For split over two lines is one chain.
        (
            b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.1\r\n",
            "203.0.113.9, 10.0.0.1, 127.0.0.1",
            None,
            "for=203.0.113.9, for=10.0.0.1",
        ),
    ],
)
async def test_the_queues_forwarding_headers(sent, xff, xfp, forwarded):
    seen = _to_app(sent)
    assert seen["x-forwarded-for"] == xff
    assert seen.get("x-forwarded-proto") == xfp
    assert seen.get("forwarded") == forwarded


async def test_the_queue_keeps_the_routing_headers_from_the_app():
    seen = _to_app(
        b"knative-serving-namespace: default\r\nKnative-Serving-Revision: r1\r\n"
        b"Knative-Serving-Tag: blue\r\nX-User: kept\r\n"
    )
    assert "knative-serving-namespace" not in seen and "knative-serving-revision" not in seen
    assert seen["knative-serving-tag"] == "blue" and seen["x-user"] == "kept"


async def test_the_activator_sends_the_routing_headers_on_to_the_queue():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    queue = instance_app(act)
    conn, _ = client(act)
    conn.data_received(request())
    queue.data_received(OK)
    sent = bytes(queue.transport.out)
    assert sent.count(b"Knative-Serving-Namespace: default\r\n") == 1
    assert sent.count(b"Knative-Serving-Revision: r1\r\n") == 1
