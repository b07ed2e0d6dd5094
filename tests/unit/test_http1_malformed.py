"""Input the proxy cannot serve ends what it touches at once, driven through the real queue
and activator with fake transports: a body that turns out malformed after its head went to
the app, a client that stops mid-body, a head that never ends (in bytes or in time), a
transfer-coding other than chunked. In each case the slot and the app connection are let
go and the client gets an answer (or a cut) and a closed connection, not silence."""

from __future__ import annotations

import asyncio

import pytest
from test_metrics_activator import ADDRESS, activator_with, instance_app, request
from test_metrics_queue import client, pooled_app

from ebb.activator.endpoints import RevisionSpec
from ebb.common import http1
from ebb.queue.proxy import Proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def queue_cc1():
    """The queue with container-concurrency 1, one idle app connection."""
    queue = Proxy(app_port=9, container_concurrency=1, timeout_s=60)
    app = pooled_app(queue.pool)
    return queue, app


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- a body that turns out malformed after the head was admitted and sent to the app

BAD_BODIES = {
    "hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "negative": b"-3\r\nabc\r\n0\r\n\r\n",
    "overflow": b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
    "extension_bare_lf": b"3;x\nabc\r\n0\r\n\r\n",
    "data_without_crlf": b"3\r\nabcX0\r\n\r\n",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_malformed_chunked_body_is_400_and_frees_the_slot_and_the_app_connection(body):
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(CHUNKED_HEAD)  # admitted, and its head sent to the app
    assert app.transport.out.startswith(b"POST / HTTP/1.1\r\n")
    conn.data_received(body)
    assert status_of(bytes(down.out)) == 400 and b"Connection: close\r\n" in down.out
    assert down.closed and app.transport.closed  # the app saw a broken body: not reused
    assert queue.breaker.in_flight == 0 and queue.in_flight == 0
    assert queue.tally.by_tag[b""][3] == 1  # accounted as a 4xx
    other, _ = client(queue)  # the slot serves the next client
    pooled_app(queue.pool)
    other.data_received(GET)
    assert other.active is not None and not other.active.waiting


async def test_a_body_error_in_the_read_that_brought_the_head_is_400_too():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(CHUNKED_HEAD + b"3\r\nabc\r\nzz\r\n")
    assert status_of(bytes(down.out)) == 400 and down.closed
    assert not app.transport.out  # head and body were to leave together at the end of the read
    assert queue.breaker.in_flight == 0 and queue.in_flight == 0


async def test_a_body_error_after_the_response_started_cuts_the_connection():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(CHUNKED_HEAD + b"3\r\nabc\r\n")
    ex = conn.active
    app.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    conn.data_received(b"zz\r\n")
    assert ex.finished and ex.cut and down.closed and app.transport.closed
    assert b"400" not in down.out  # too late for one: the client sees a truncated response
    assert queue.breaker.in_flight == 0


async def test_a_body_error_while_waiting_for_the_slot_is_400_and_leaves_the_queue():
    queue, app = queue_cc1()
    first, _ = client(queue)
    first.data_received(GET)  # holds the only slot
    conn, down = client(queue)
    conn.data_received(CHUNKED_HEAD + b"3\r\nabc\r\n")
    assert conn.active.waiting and queue.breaker.waiting == 1
    conn.data_received(b"zz\r\n")
    assert status_of(bytes(down.out)) == 400 and down.closed
    assert queue.breaker.waiting == 0


async def test_a_pipelined_request_with_a_bad_body_is_400_in_its_turn_and_never_sent():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(GET + CHUNKED_HEAD + b"zz\r\n")
    assert not down.out and not down.closed  # the first one is still owed its answer
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK") and down.out.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 400 Bad Request\r\n" in down.out and down.closed
    assert app.transport.out.count(b"HTTP/1.1\r\n") == 1  # only the GET went to the app
    assert queue.breaker.in_flight == 0


async def test_the_activator_frees_its_slot_on_a_malformed_body_too():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    app = instance_app(act)
    conn, down = client(act)
    head = request(extra=b"Transfer-Encoding: chunked\r\n").replace(b"GET ", b"POST ")
    conn.data_received(head)
    assert app.transport.out.startswith(b"POST /p HTTP/1.1\r\n")
    conn.data_received(b"-3\r\n")
    assert status_of(bytes(down.out)) == 400 and down.closed and app.transport.closed
    assert act.in_flight == 0


# -- a client that stops sending mid-body


@pytest.mark.parametrize(
    "head, part",
    [
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n", b"x" * 40),
        (CHUNKED_HEAD, b"10\r\n12345"),
        (CHUNKED_HEAD, b"3\r\nabc\r\n0\r\n"),  # all but the last CRLF
    ],
    ids=["content_length", "chunked", "chunked_last_crlf"],
)
@pytest.mark.parametrize("ending", ["eof", "close"])
async def test_a_client_gone_mid_body_frees_the_slot_at_once_as_499(head, part, ending):
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(head + part)
    ex = conn.active
    if ending == "eof":
        assert not conn.eof_received()  # nothing more to answer: the transport closes
    else:
        conn.connection_lost(None)
    assert ex.finished and ex.status == 0  # logged and counted as 499
    assert queue.tally.by_tag[b""][3] == 1
    assert app.transport.closed  # the app saw the body end early: not reused
    assert queue.breaker.in_flight == 0 and queue.in_flight == 0
    assert not down.out


async def test_a_half_close_after_a_complete_request_still_gets_its_answer():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert conn.eof_received() is True  # kept half-open
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK") and down.closed


async def test_a_half_close_mid_body_of_a_pipelined_request_answers_the_ones_before():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(GET + b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
    assert len(conn.pipeline) == 1
    assert conn.eof_received() is True
    assert not conn.pipeline and conn.pipeline_bytes == 0
    app.data_received(OK)
    assert down.out.count(b"HTTP/1.1 ") == 1 and down.closed
    assert queue.breaker.in_flight == 0


async def test_a_half_close_mid_body_after_an_early_answer_closes():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
    app.data_received(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    assert conn.active is None and conn.parsing is not None  # the rest is still read
    assert not conn.eof_received()
    assert down.out.startswith(b"HTTP/1.1 413") and queue.breaker.in_flight == 0


# -- a head that never ends: in bytes


async def test_an_unterminated_header_is_431_once_past_max_head_bytes():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Huge: ")
    piece = b"z" * 16384
    sent = 0
    while not down.closed:
        conn.data_received(piece)
        sent += len(piece)
        assert sent <= http1.MAX_HEAD_BYTES + len(piece), "still reading the header"
    assert status_of(bytes(down.out)) == 431 and not app.transport.out


async def test_reads_that_complete_a_head_and_carry_a_large_body_are_not_a_large_head():
    queue, app = queue_cc1()
    conn, down = client(queue)
    body = b"b" * (2 * http1.MAX_HEAD_BYTES)
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: h\r\n")  # the head, in two reads
    conn.data_received(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert not down.out and app.transport.out.endswith(body)
    assert conn._in_head is False

async def test_a_large_read_ending_in_the_next_head_does_not_count_against_it():
    queue, app = queue_cc1()
    conn, down = client(queue)
    body = b"b" * (2 * http1.MAX_HEAD_BYTES)
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
    conn.data_received(body + b"GET / HTTP/1.1\r\nHo")  # a pipelined head begins
    assert conn._in_head and conn._head_fed == 0
    conn.data_received(b"st: h\r\n\r\n")
    assert not conn._in_head and len(conn.pipeline) == 1 and not down.closed


# -- a head that never ends: in time


@pytest.mark.parametrize(
    "partial", [b"GET / HTTP/1.1\r\nHost: h\r\n", b"GET /\r\n"], ids=["http11", "http09"]
)
async def test_a_head_incomplete_for_head_timeout_s_is_408_and_closed(partial):
    queue, _ = queue_cc1()
    conn, down = client(queue)
    conn.data_received(partial)
    assert conn._timer is not None and conn._timer_at == conn._head_at + http1.HEAD_TIMEOUT_S
    conn._on_timer()  # early: nothing happens, the timer stays on
    assert not down.closed and conn._timer is not None
    conn._timer.cancel()
    conn._head_at -= http1.HEAD_TIMEOUT_S  # its time has passed
    conn._on_timer()
    assert status_of(bytes(down.out)) == 408 and down.closed


async def test_the_activator_closes_a_head_incomplete_for_head_timeout_s():
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    conn, down = client(act)
    conn.data_received(b"GET / HTTP/1.1\r\n")
    conn._timer.cancel()
    conn._head_at -= http1.HEAD_TIMEOUT_S
    conn._on_timer()
    assert status_of(bytes(down.out)) == 408 and down.closed


async def test_the_head_timeout_fires_on_the_loop(monkeypatch):
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.05)
    queue, _ = queue_cc1()
    conn, down = client(queue)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n")
    await asyncio.sleep(0.2)
    assert status_of(bytes(down.out)) == 408 and down.closed


async def test_an_idle_keep_alive_connection_is_not_closed_by_the_head_timeout(monkeypatch):
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.05)
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(GET)
    app.data_received(OK)
    await asyncio.sleep(0.2)
    assert not down.closed and down.out.count(b"HTTP/1.1 200") == 1


async def test_a_head_timeout_with_an_answer_owed_stops_reading_and_closes_after_it():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(GET + b"GET /next HTTP/1.1\r\n")  # the first is being answered
    conn._timer.cancel()
    conn._head_at -= http1.HEAD_TIMEOUT_S
    conn._on_timer()
    assert not down.out and not down.closed and conn.broken
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK") and b"408" not in down.out and down.closed


async def test_a_head_not_read_because_the_proxy_paused_is_given_more_time():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(GET + b"GET /next HTTP/1.1\r\n")
    conn.pause(http1._PAUSE_UPSTREAM)  # the app cannot take more: the client is not read
    conn._timer.cancel()
    conn._head_at -= http1.HEAD_TIMEOUT_S
    conn._on_timer()
    assert not conn.broken and conn._timer is not None


# -- transfer-codings other than chunked


@pytest.mark.parametrize("te", [b"gzip, chunked", b"xchunked", b"deflate,chunked"])
async def test_a_transfer_coding_other_than_chunked_is_501_and_nothing_goes_to_the_app(te):
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + te + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert status_of(bytes(down.out)) == 501 and down.closed
    assert not app.transport.out and queue.in_flight == 0


async def test_chunked_in_any_case_and_spacing_still_goes_through():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  CHUNKED \r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert app.transport.out.endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


async def test_a_pipelined_transfer_coding_other_than_chunked_is_501_in_its_turn():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(
        GET + b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    )
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 501 Not Implemented\r\n" in down.out and down.closed
    assert app.transport.out.count(b"HTTP/1.1\r\n") == 1


# -- heads Go's net/http server refuses (what Knative's queue-proxy and activator run on)

ROUTE = b"Knative-Serving-Namespace: default\r\nKnative-Serving-Revision: r1\r\n"
# request line, header lines (without the routing pair the activator needs), status, body
REFUSED_HEADS = {
    "missing_host": (b"GET / HTTP/1.1", b"", 400, b"missing required Host header"),
    "absolute_form_missing_host": (
        b"GET http://a.example/x HTTP/1.1", b"", 400, b"missing required Host header"
    ),
    "two_hosts": (b"GET / HTTP/1.1", b"Host: a\r\nHost: b\r\n", 400, b"too many Host headers"),
    "two_hosts_differing_in_case": (
        b"GET / HTTP/1.1", b"host: a\r\nHOST: a\r\n", 400, b"too many Host headers"
    ),
    "connect": (b"CONNECT a.example:443 HTTP/1.1", b"Host: a.example:443\r\n", 405, b"CONNECT"),
    "connect_origin_form": (b"CONNECT /x HTTP/1.1", b"Host: h\r\n", 405, b"CONNECT"),
    "asterisk_get": (b"GET * HTTP/1.1", b"Host: h\r\n", 400, b"OPTIONS only"),
    "asterisk_post": (b"POST * HTTP/1.1", b"Host: h\r\nContent-Length: 0\r\n", 400, b"OPTIONS only"),
    "http2": (b"GET / HTTP/2.0", b"Host: h\r\n", 505, b"HTTP/2.0"),
    "http09": (b"GET / HTTP/0.9", b"Host: h\r\n", 505, b"HTTP/0.9"),
    "no_version": (b"GET /", b"Host: h\r\n", 505, b"HTTP/0.9"),  # llhttp reads it as 0.9
}


def head_for(kind: str, line: bytes, headers: bytes) -> bytes:
    return line + b"\r\n" + headers + (ROUTE if kind == "activator" else b"") + b"\r\n"


def proxy_and_app(kind: str):
    """The queue (container-concurrency 1) or the activator (one instance), each with one
    idle app connection."""
    if kind == "queue":
        return queue_cc1()
    act = activator_with(RevisionSpec("default", "r1", addresses=(ADDRESS,), timeout_s=60))
    return act, instance_app(act)


ON_BOTH = pytest.mark.parametrize("kind", ["queue", "activator"])
EVERY_REFUSED_HEAD = pytest.mark.parametrize(
    "line, headers, status, body", REFUSED_HEADS.values(), ids=REFUSED_HEADS.keys()
)


def get_for(kind: str) -> bytes:
    return head_for(kind, b"GET / HTTP/1.1", b"Host: h\r\n")


@ON_BOTH
@EVERY_REFUSED_HEAD
async def test_a_head_gos_server_refuses_is_refused_and_never_sent(
    kind, line, headers, status, body
):
    proxy, app = proxy_and_app(kind)
    conn, down = client(proxy)
    conn.data_received(head_for(kind, line, headers))
    out = bytes(down.out)
    assert status_of(out) == status and b"Connection: close\r\n" in out and body in out
    assert down.closed and not app.transport.out and proxy.in_flight == 0


@ON_BOTH
@EVERY_REFUSED_HEAD
async def test_a_pipelined_head_gos_server_refuses_is_refused_in_its_turn(
    kind, line, headers, status, body
):
    proxy, app = proxy_and_app(kind)
    conn, down = client(proxy)
    conn.data_received(get_for(kind) + head_for(kind, line, headers) + get_for(kind))
    assert not down.out and not down.closed  # the first one is owed its answer first
    app.data_received(OK)
    out = bytes(down.out)
    assert out.startswith(b"HTTP/1.1 200 OK") and out.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 %d " % status in out and out.endswith(body + b"\n") and down.closed
    assert app.transport.out.count(b"HTTP/1.1\r\n") == 1  # only the first GET went to the app


async def test_a_version_llhttp_rejects_itself_is_a_plain_400():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n")
    assert status_of(bytes(down.out)) == 400 and b"Invalid HTTP version" in down.out
    assert down.closed and not app.transport.out


def sent_head(app) -> dict[bytes, bytes]:
    """The request line (key b"") and headers (lowercased names) of what the app got."""
    lines = bytes(app.transport.out).split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    head = {b"": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        assert name.lower() not in head, "one of each here"
        head[name.lower()] = value
    return head


@pytest.mark.parametrize(
    "kind, default", [("queue", b"127.0.0.1:9"), ("activator", b"r1.default")]
)
async def test_http10_without_host_still_goes_on_with_the_default_host(kind, default):
    proxy, app = proxy_and_app(kind)
    conn, down = client(proxy)
    conn.data_received(head_for(kind, b"GET /p HTTP/1.0", b""))
    assert sent_head(app)[b""] == b"GET /p HTTP/1.1" and sent_head(app)[b"host"] == default
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK")


ABSOLUTE_FORMS = {
    "path_and_query": (b"http://a.example:8080/x/y?q=1&r", b"a.example:8080", b"/x/y?q=1&r"),
    "no_path": (b"http://a.example", b"a.example", b"/"),
    "query_no_path": (b"http://a.example?q", b"a.example", b"/?q"),
    "https_ipv6": (b"https://[::1]:8443/x", b"[::1]:8443", b"/x"),
    "userinfo": (b"http://u:p@a.example/x", b"a.example", b"/x"),
    "upper_case_scheme": (b"HTTP://A.example/x", b"A.example", b"/x"),
    "no_authority": (b"http:///x", b"h", b"/x"),  # names no host: the Host header stands
}


@pytest.mark.parametrize("kind", ["queue", "activator"])
@pytest.mark.parametrize("target, host, origin", ABSOLUTE_FORMS.values(), ids=ABSOLUTE_FORMS.keys())
async def test_an_absolute_form_target_goes_on_in_origin_form_with_its_host(
    kind, target, host, origin
):
    proxy, app = proxy_and_app(kind)
    conn, down = client(proxy)
    conn.data_received(head_for(kind, b"GET " + target + b" HTTP/1.1", b"Host: h\r\n"))
    head = sent_head(app)
    assert head[b""] == b"GET " + origin + b" HTTP/1.1" and head[b"host"] == host
    assert conn.active.url == origin  # and it is logged and traced so
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK") and not down.closed


async def test_an_absolute_form_target_keeps_k_original_host_first_in_the_queue():
    queue, app = queue_cc1()
    conn, _ = client(queue)
    conn.data_received(
        b"GET http://a.example/x HTTP/1.1\r\nHost: h\r\nK-Original-Host: o.example\r\n\r\n"
    )
    head = sent_head(app)
    assert head[b""] == b"GET /x HTTP/1.1" and head[b"host"] == b"o.example"


async def test_an_absolute_form_target_leaves_k_original_host_as_it_came_in_the_activator():
    act, app = proxy_and_app("activator")
    conn, _ = client(act)
    conn.data_received(
        head_for(
            "activator", b"GET http://a.example/x HTTP/1.1", b"Host: h\r\nK-Original-Host: o\r\n"
        )
    )
    head = sent_head(app)
    assert head[b""] == b"GET /x HTTP/1.1" and head[b"host"] == b"a.example"
    assert head[b"k-original-host"] == b"o"


@pytest.mark.parametrize("kind", ["queue", "activator"])
async def test_options_asterisk_goes_on_as_it_came(kind):
    proxy, app = proxy_and_app(kind)
    conn, down = client(proxy)
    conn.data_received(head_for(kind, b"OPTIONS * HTTP/1.1", b"Host: h\r\n"))
    assert sent_head(app)[b""] == b"OPTIONS * HTTP/1.1"
    app.data_received(OK)
    assert down.out.startswith(b"HTTP/1.1 200 OK") and not down.closed


async def test_a_host_in_a_chunked_bodys_trailers_is_not_a_second_host():
    queue, app = queue_cc1()
    conn, down = client(queue)
    conn.data_received(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nHost: other\r\n\r\n" + GET)
    assert sent_head(app)[b"host"] == b"h" and not down.out
    app.data_received(OK)
    app.data_received(OK)
    assert down.out.count(b"HTTP/1.1 200 OK") == 2 and not down.closed
