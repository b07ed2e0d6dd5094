"""The readiness schedule: aggressive at start, periodic once ready, back to aggressive on failure."""

import pytest

from ebb.queue.readiness import (
    AGGRESSIVE_FOR_S,
    AGGRESSIVE_PERIOD_S,
    EAGER_FOR_S,
    EAGER_PERIOD_S,
    FAILURE_THRESHOLD,
    PERIOD_S,
    ProbeSchedule,
)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        # (now, ok) -> (ready, next delay)
        ([(0.0, False)], [(False, EAGER_PERIOD_S)]),
        ([(0.0, False), (0.05, True)], [(False, EAGER_PERIOD_S), (True, PERIOD_S)]),
        # past the first second: every 50 ms
        ([(0.9, False), (1.0, False)], [(False, EAGER_PERIOD_S), (False, AGGRESSIVE_PERIOD_S)]),
        # the app takes longer than 10 s: fall back to 1 s probes
        ([(9.9, False), (10.0, False)], [(False, AGGRESSIVE_PERIOD_S), (False, PERIOD_S)]),
        # once ready, only three failures in a row make it not ready
        (
            [(20.0, True), (21.0, False), (22.0, False), (23.0, False)],
            [(True, PERIOD_S), (True, PERIOD_S), (True, PERIOD_S), (False, EAGER_PERIOD_S)],
        ),
        (
            [(20.0, True), (21.0, False), (22.0, True), (23.0, False), (24.0, False)],
            [(True, PERIOD_S)] * 5,
        ),
    ],
)
def test_schedule(results, expected):
    schedule = ProbeSchedule(now=0.0)
    seen = []
    for now, ok in results:
        delay = schedule.observe(ok, now)
        seen.append((schedule.ready, delay))
    assert seen == expected


def test_lost_app_is_probed_eagerly_then_aggressively_again_for_ten_seconds():
    schedule = ProbeSchedule(now=0.0)
    schedule.observe(True, 1.0)
    for i in range(FAILURE_THRESHOLD):
        schedule.observe(False, 100.0 + i)
    down_at = 100.0 + FAILURE_THRESHOLD - 1
    assert not schedule.ready
    assert schedule.observe(False, down_at + EAGER_FOR_S - 0.1) == EAGER_PERIOD_S
    assert schedule.observe(False, down_at + AGGRESSIVE_FOR_S - 0.1) == AGGRESSIVE_PERIOD_S
    assert schedule.observe(False, down_at + AGGRESSIVE_FOR_S) == PERIOD_S


# -- the revision's probe: parsed from the queue's --readiness-probe JSON

from ebb.queue.readiness import (  # noqa: E402 - grouped with the tests that use them
    DEFAULT_PROBE,
    PROBE_TIMEOUT_S,
    AppProbe,
    parse_probe,
    probe_request,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", DEFAULT_PROBE),
        ('{"tcpSocket": {}}', DEFAULT_PROBE),
        ('{"tcpSocket": {"port": 9000, "host": "10.0.0.2"}, "successThreshold": 2}',
         AppProbe(host="10.0.0.2", port=9000, success_threshold=2)),
        ('{"httpGet": {}}', AppProbe(http=True)),
        ('{"httpGet": {"path": "/healthz", "port": "8081", "scheme": "https",'
         ' "httpHeaders": [{"name": "X-Probe", "value": "1"}]},'
         ' "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 4,'
         ' "successThreshold": 2, "initialDelaySeconds": 3}',
         AppProbe(http=True, path="/healthz", headers=(("X-Probe", "1"),), https=True, port=8081,
                  period_s=5.0, timeout_s=2.0, failure_threshold=4, success_threshold=2,
                  initial_delay_s=3.0)),
    ],
)  # fmt: skip
def test_parse_probe(text, expected):
    assert parse_probe(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "readiness-probe = '{', must be a JSON object"),
        ("[]", "readiness-probe = '[]', must be a JSON object"),
        ('{"exec": {"command": ["true"]}}', "readiness-probe.exec: unknown field (Ebb probes with httpGet or tcpSocket)"),
        ('{"httpGet": {}, "tcpSocket": {}}', "readiness-probe: expected exactly one of httpGet, tcpSocket, got both"),
        ('{"tcpSocket": {}, "periodSeconds": -1}', "readiness-probe.periodSeconds: -1, must be an integer in 0..2147483647"),
        ('{"tcpSocket": {}, "periodSeconds": 1.5}', "readiness-probe.periodSeconds: 1.5, must be an integer"),
        ('{"tcpSocket": {}, "timeoutSeconds": 1}', "readiness-probe.timeoutSeconds: disallowed when periodSeconds is zero"),
        ('{"tcpSocket": {}, "failureThreshold": 3}', "readiness-probe.failureThreshold: disallowed when periodSeconds is zero"),
        ('{"tcpSocket": {"port": 70000}}', "readiness-probe.tcpSocket.port: 70000, must be a port number in 1..65535"),
        ('{"tcpSocket": "x"}', "readiness-probe.tcpSocket: must be an object"),
        ('{"httpGet": {"path": "healthz"}}', "readiness-probe.httpGet.path: 'healthz', must start with /"),
        ('{"httpGet": {"path": "/a b"}}', "readiness-probe.httpGet.path: '/a b', must start with / and hold no spaces"),
        ('{"httpGet": {"scheme": "ftp"}}', "readiness-probe.httpGet.scheme: 'FTP', must be HTTP or HTTPS"),
        ('{"httpGet": {"httpHeaders": [{"name": "X", "value": "a\\r\\nB: c"}]}}',
         "readiness-probe.httpGet.httpHeaders[0]: 'X': 'a\\r\\nB: c' is not a valid header"),
        ('{"httpGet": {"httpHeaders": [{"value": "1"}]}}', "readiness-probe.httpGet.httpHeaders[0]: '': '1' is not a valid header"),
    ],
)  # fmt: skip
def test_bad_probes_name_the_field_and_the_rule(text, message):
    with pytest.raises(ValueError) as caught:
        parse_probe(text)
    assert message in str(caught.value)


def test_probe_request_sends_the_kubelets_headers_then_the_probes_own():
    request = probe_request(AppProbe(http=True, path="/healthz?deep=1"), "127.0.0.1", 8080)
    assert request == (
        b"GET /healthz?deep=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: kube-probe/ebb\r\n"
        b"K-Kubelet-Probe: queue\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    own = AppProbe(http=True, headers=(("host", "app.example"), ("User-Agent", "mine"), ("X-A", "1")))
    assert probe_request(own, "127.0.0.1", 8080) == (
        b"GET / HTTP/1.1\r\nK-Kubelet-Probe: queue\r\nAccept: */*\r\nhost: app.example\r\n"
        b"User-Agent: mine\r\nX-A: 1\r\nConnection: close\r\n\r\n"
    )


# -- the schedule with the revision's own timing


def _run(schedule, results):
    out = []
    for now, ok in results:
        delay = schedule.observe(ok, now)
        out.append((schedule.ready, delay))
    return out


def test_a_probe_with_a_period_follows_kubernetes_timing():
    probe = AppProbe(http=True, period_s=5.0, timeout_s=2.0, failure_threshold=2,
                     success_threshold=2, initial_delay_s=3.0)
    schedule = ProbeSchedule(now=0.0, probe=probe)
    assert (schedule.first_delay_s, schedule.timeout_s) == (3.0, 2.0)
    assert _run(schedule, [(3.0, True), (8.0, True), (13.0, False), (18.0, True), (23.0, False),
                           (28.0, False), (33.0, True), (38.0, True)]) == [
        (False, 5.0),  # one success of the two needed
        (True, 5.0),
        (True, 5.0),  # one failure of the two that count
        (True, 5.0),
        (True, 5.0),
        (False, 5.0),  # two in a row: not ready, and no aggressive probing
        (False, 5.0),
        (True, 5.0),
    ]


def test_a_period_without_timeout_or_threshold_takes_kubernetes_defaults():
    schedule = ProbeSchedule(now=0.0, probe=AppProbe(period_s=10.0))
    assert (schedule.first_delay_s, schedule.timeout_s) == (0.0, 1.0)
    _run(schedule, [(0.0, True)])
    assert _run(schedule, [(10.0, False), (20.0, False)]) == [(True, 10.0), (True, 10.0)]
    assert _run(schedule, [(30.0, False)]) == [(False, 10.0)]


def test_aggressive_probing_honours_the_success_threshold_and_the_initial_delay():
    schedule = ProbeSchedule(now=0.0, probe=AppProbe(success_threshold=2, initial_delay_s=5.0))
    assert (schedule.first_delay_s, schedule.timeout_s) == (5.0, PROBE_TIMEOUT_S)
    assert _run(schedule, [(5.0, True), (5.005, False), (5.01, True), (5.015, True)]) == [
        (False, EAGER_PERIOD_S),
        (False, EAGER_PERIOD_S),
        (False, EAGER_PERIOD_S),
        (True, PERIOD_S),
    ]
