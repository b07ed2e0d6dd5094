"""The shared proxy core's per-request shortcuts keep their meaning, driven through the real
activator with fake transports: one timer per connection instead of one per exchange, the
memo of `Forwarded` values, each connection's cached forwarding lines, response headers
sorted as they arrive, small answers in one write, the throttler's unlimited-capacity
fast path."""

from __future__ import annotations

from test_metrics_activator import ADDRESS, activator_with, instance_app, request
from test_metrics_queue import client, head_of, pooled_app

from ebb.activator.endpoints import RevisionSpec
from ebb.activator.throttler import Throttler
from ebb.common import http1
from ebb.queue.proxy import Proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_forwarded_header_memo_gives_what_building_gives():
    http1._FORWARDED_MEMO.clear()
    built = http1._build_forwarded(b"203.0.113.9, ::1", b"h.example", b"https")
    assert built == b"for=203.0.113.9;host=h.example;proto=https, for=\"[::1]\""
    first = http1.forwarded_header(b"203.0.113.9, ::1", b"h.example", b"https")
    assert first == built
    assert http1.forwarded_header(b"203.0.113.9, ::1", b"h.example", b"https") is first  # memo


def test_forwarded_header_memo_is_bounded():
    http1._FORWARDED_MEMO.clear()
    for i in range(http1._FORWARDED_MEMO_MAX + 10):
        http1.forwarded_header(b"10.0.%d.%d" % (i // 256, i % 256), None, b"http")
    assert len(http1._FORWARDED_MEMO) <= http1._FORWARDED_MEMO_MAX
    long_chain = b", ".join([b"10.0.0.1"] * 100)
    assert http1.forwarded_header(long_chain, None, b"http").count(b"for=") == 100
    assert (long_chain, None, b"http") not in http1._FORWARDED_MEMO  # long ones are not kept


async def test_keep_alive_requests_share_one_connection_timer():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    app = instance_app(act)
    conn, down = client(act)
    conn.data_received(request())
    timer, armed_at = conn._timer, conn._timer_at
    assert timer is not None and armed_at == conn.active.t_start + 60
    app.data_received(OK)
    conn.data_received(request())  # the next request on the connection: no new timer
    assert conn._timer is timer and conn._timer_at == armed_at
    app.data_received(OK)
    assert down.out.count(b"HTTP/1.1 200 OK") == 2
    conn.connection_lost(None)
    assert conn._timer is None and timer.cancelled()


async def test_a_shorter_timeout_moves_the_connection_timer_forward():
    act = activator_with(
        RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60),
        RevisionSpec("default", "r2", timeout_s=5),  # at zero: its request is held
    )
    app = instance_app(act)
    conn, down = client(act)
    conn.data_received(request("r1"))
    app.data_received(OK)
    conn.data_received(request("r2"))
    assert conn._timer_at == conn.active.t_start + 5


async def test_the_timer_fired_for_an_earlier_request_rearms_for_the_active_one():
    act = activator_with(RevisionSpec("default", "r1", timeout_s=1))  # at zero: held
    conn, down = client(act)
    conn.data_received(request())
    ex = conn.active
    conn._timer.cancel()
    conn._on_timer()  # as if armed for an earlier exchange: this one has time left
    assert not ex.finished and conn._timer is not None
    assert conn._timer_at == ex.t_start + 1
    ex.t_start -= 1.0  # its second has passed
    conn._timer.cancel()
    conn._on_timer()
    assert ex.finished and down.out.startswith(b"HTTP/1.1 504")


async def test_response_headers_are_sorted_as_they_arrive():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,)))
    app = instance_app(act)
    conn, down = client(act)
    conn.data_received(request())
    app.data_received(
        b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"X-App: yes\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    head = head_of(bytes(down.out))
    assert head["x-app"] == "yes" and head["transfer-encoding"] == "chunked"
    assert not {"connection", "x-hop", "keep-alive"} & set(head)
    assert bytes(down.out).endswith(b"2\r\nok\r\n0\r\n\r\n")


def test_unlimited_capacity_takes_the_only_instance_at_once():
    throttler: Throttler[str] = Throttler(0, 10)
    assert throttler.acquire("early") is None  # no instance yet: it waits
    only = throttler.add("a:1")
    assert throttler.dispatch() == [("early", only)]
    assert throttler.acquire("w1") is only and throttler.acquire("w2") is only
    assert only.in_flight == 3
    assert throttler.release(only) is None and only.in_flight == 2


def test_a_fresh_exchange_is_first_due_at_its_shortest_timeout():
    assert http1.Limits(10).first_s == 10
    assert http1.Limits(10, 3).first_s == 3  # responseStartTimeoutSeconds
    assert http1.Limits(10, 3, 2).first_s == 2  # idleTimeoutSeconds, counted from the start


def _heads(raw: bytes) -> list[dict[str, str]]:
    """Every request head in `raw` (bodiless requests), as header dicts."""
    return [head_of(b"GET x\r\n" + part) for part in raw.split(b"GET ")[1:]]


async def test_the_queues_forwarding_lines_follow_each_requests_values_on_one_connection():
    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, _ = client(queue)
    sent = [
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",  # as cached
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Host: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.2\r\nForwarded: for=x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: other\r\n\r\n",
    ]
    for raw in sent:
        conn.data_received(raw)
        app.data_received(OK)
    got = [
        (h["x-forwarded-for"], h.get("x-forwarded-proto"), h.get("forwarded"))
        for h in _heads(bytes(app.transport.out))
    ]
    assert got == [
        ("10.0.0.1, 127.0.0.1", None, "for=10.0.0.1"),
        ("10.0.0.1, 127.0.0.1", None, "for=10.0.0.1"),
        ("10.0.0.2, 127.0.0.1", None, "for=10.0.0.2"),
        ("10.0.0.2, 127.0.0.1", "https", "for=10.0.0.2;proto=https"),
        ("10.0.0.2, 127.0.0.1", None, "for=10.0.0.2;host=a.example"),
        ("10.0.0.2, 127.0.0.1", None, "for=x"),  # as it came
        ("127.0.0.1", None, None),  # no X-Forwarded-* came: no Forwarded
    ]


async def test_the_activators_forwarding_lines_follow_each_requests_values_on_one_connection():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    app = instance_app(act)
    conn, _ = client(act)
    extras = [
        b"",
        b"X-Forwarded-For: 10.0.0.1\r\n",
        b"X-Forwarded-For: 10.0.0.1\r\n",  # as cached
        b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nK-Original-Host: o.example\r\n",
        b"Forwarded: for=x\r\nK-Proxy-Request: someone\r\n",
        b"",
    ]
    for extra in extras:
        conn.data_received(request(extra=extra))
        app.data_received(OK)
    heads = _heads(bytes(app.transport.out))
    assert [h["x-forwarded-for"] for h in heads] == [
        "127.0.0.1", "10.0.0.1, 127.0.0.1", "10.0.0.1, 127.0.0.1", "10.0.0.1, 127.0.0.1",
        "127.0.0.1", "127.0.0.1",
    ]
    assert [h.get("x-forwarded-proto") for h in heads] == [None, None, None, "https", None, None]
    assert [h.get("k-original-host") for h in heads] == [None, None, None, "o.example", None, None]
    assert [h.get("forwarded") for h in heads] == [None, None, None, None, "for=x", None]
    assert all(h["k-proxy-request"] == "activator" for h in heads)


async def test_a_head_and_a_small_body_leave_in_one_write_a_large_body_apart():
    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, down = client(queue)
    writes: list[bytes] = []
    down.writelines = lambda items: writes.append(b"<writev>")  # type: ignore[method-assign]
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    app.data_received(OK)
    assert down.last.startswith(b"HTTP/1.1 200 OK\r\n") and down.last.endswith(b"\r\n\r\nok")
    assert writes == []
    big = b"x" * http1.SMALL_JOIN
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    app.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
    assert writes == [b"<writev>"]  # not copied into one buffer


# -- protocol switches (Upgrade): what goes upstream, and an answer nobody asked for


async def test_upgrade_goes_upstream_only_when_connection_asks_for_it():
    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, _ = client(queue)
    conn.data_received(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: k\r\n\r\n"
    )
    sent = head_of(bytes(app.transport.out))
    assert (sent["upgrade"], sent["connection"]) == ("websocket", "Upgrade")
    assert sent["sec-websocket-key"] == "k"
    assert conn.active.upgrade == b"websocket"

    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, _ = client(queue)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")  # no Connection
    sent = head_of(bytes(app.transport.out))
    assert "upgrade" not in sent and "connection" not in sent
    assert conn.active.upgrade is None


async def test_a_switch_nobody_asked_for_is_502_and_a_plain_answer_to_an_upgrade_closes():
    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, down = client(queue)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    app.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
    assert bytes(down.out).startswith(b"HTTP/1.1 502 ")
    assert b"switched protocols unasked" in bytes(down.out)
    assert app.closed

    queue = Proxy(app_port=9)
    app = pooled_app(queue.pool)
    conn, down = client(queue)
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    app.data_received(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
    assert bytes(down.out).startswith(b"HTTP/1.1 426 ") and b"Connection: close\r\n" in bytes(down.out)
    assert down.closed and app.closed  # neither connection is trusted with HTTP again
