"""bench.coldstart's pure parts: revision states from `ebb revision list -o json`, log
timestamps and events, the steps of a cold request, the overhead and the report."""

import calendar
import json

import pytest

from bench import coldstart as bc

T0 = calendar.timegm((2026, 11, 26, 19, 14, 21, 0, 0, 0))


def test_revision_states_zero_values_left_out():
    listing = {"items": [
        {"metadata": {"name": "hello-00001"},
         "status": {"desiredReplicas": 0, "servingMode": "proxy"}},
        {"metadata": {"name": "hello-00002"},
         "status": {"actualReplicas": 2, "readyReplicas": 1, "desiredReplicas": 2,
                    "servingMode": "serve"}},
        {"metadata": {"name": "hello-00003"}},
    ]}
    states = bc.revision_states(listing)
    assert states["hello-00001"] == bc.RevisionState("hello-00001", 0, 0, 0, "proxy")
    assert states["hello-00001"].at_zero
    assert not states["hello-00002"].at_zero
    assert states["hello-00002"].ready == 1
    assert not states["hello-00003"].at_zero  # no mode yet: not known to be in proxy mode
    assert bc.revision_states(listing["items"]) == states  # a bare list works too
    assert bc.revision_states({}) == {}


def test_parse_ts():
    assert bc.parse_ts("2026-11-26T19:14:21.123Z") == pytest.approx(T0 + 0.123)
    assert bc.parse_ts("2026-11-26T19:14:21Z") == T0
    with pytest.raises(ValueError):
        bc.parse_ts("2026-11-26T19:14:21.123")


def line(ms, msg, **fields):
    return json.dumps({"ts": f"2026-11-26T19:14:{21 + ms // 1000:02d}.{ms % 1000:03d}Z",
                       "level": "info", "msg": msg, **fields})


def test_log_events_skip_other_lines():
    events = bc.log_events([line(5, "a"), "plain text", "{broken json", "", line(7, "b", x=1)])
    assert [e.msg for e in events] == ["a", "b"]
    assert events[1].at == pytest.approx(T0 + 0.007)
    assert events[1].fields["x"] == 1


def test_first_event_after_since_with_fields():
    events = bc.log_events([line(1, "m", k="a"), line(50, "m", k="b"), line(40, "m", k="a"),
                            line(60, "other")])
    assert bc.first_event(events, T0 + 0.030, "m").at == pytest.approx(T0 + 0.040)
    assert bc.first_event(events, T0 + 0.030, "m", k="b").at == pytest.approx(T0 + 0.050)
    assert bc.first_event(events, T0 + 0.070, "m") is None
    # stamps are truncated to the ms: an event stamped just before `since` still counts
    assert bc.first_event(events, T0 + 0.0405, "m").at == pytest.approx(T0 + 0.040)


def test_step_times():
    sent = T0 + 0.010
    events = {
        "autoscaler": bc.log_events([
            line(5, "scale decision", revision="default/hello-00001", desired=0),
            line(12, "scale decision", revision="default/other-00001", desired=3),
            line(14, "scale decision", revision="default/hello-00001", desired=1)]),
        "controller": bc.log_events([line(20, "instance started", instance="i")]),
        "queue": bc.log_events([line(2, "queue serving"), line(30, "proxy listening"),
                                line(230, "queue serving"), line(300, "app ready")]),
        "activator": bc.log_events([line(410, "instance answered its probe")]),
    }
    steps = bc.step_times(events, sent, "hello-00001")
    assert steps == pytest.approx({"decision": 0.004, "instance_started": 0.010,
                                   "proxy_listening": 0.020, "queue_serving": 0.220, "app_ready": 0.290,
                                   "activator_probe": 0.400}, abs=1e-6)
    assert bc.step_times({}, sent, "hello-00001") == dict.fromkeys(steps)


def test_overhead_and_medians():
    assert bc.overhead_ms([300.0, 320.0, 310.0], [100.0, 90.0, 110.0]) == pytest.approx(210.0)
    assert bc.overhead_ms([], [1.0]) is None
    assert bc.median_or_none([None, 3.0, 1.0]) == 2.0
    assert bc.median_or_none([None]) is None


@pytest.mark.parametrize(("head", "status"), [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200),
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", 503),
    (b"garbage", None), (b"", None), (b"HTTP/1.1 abc\r\n", None)])
def test_http_status(head, status):
    assert bc.http_status(head) == status


def results(cold_ms, app_ms, status=200):
    res = bc.Results(machine={"nproc": 2, "cpu_model": "x", "mem_total_mb": 1, "python": "3"})
    for c in cold_ms:
        res.cold.append({"first_byte_s": c / 1000, "status": status, "body_ok": True,
                         "waited_for_zero_s": 9.0,
                         "steps_s": {"decision": 0.003, "instance_started": 0.008,
                                     "proxy_listening": 0.01, "queue_serving": None, "app_ready": 0.3,
                                     "activator_probe": 0.4}})
    for a in app_ms:
        res.app.append({"ready_s": a / 1000, "first_byte_s": (a + 2) / 1000})
        res.queue.append({"listening_s": 0.2, "healthy_s": 0.25})
    res.python_start_s = [0.02, 0.03]
    res.queue_import_s = [0.15]
    return res


def test_figures_and_render_met():
    res = results([120.0, 125.0, 130.0], [100.0, 100.0, 101.0])
    f = bc.figures(res)
    assert f["overhead_ms"] == pytest.approx(25.0)
    assert f["steps_median_ms"]["decision"] == pytest.approx(3.0)
    assert f["steps_median_ms"]["queue_serving"] is None
    assert f["steps_seen"]["queue_serving"] == 0 and f["steps_seen"]["decision"] == 3
    assert f["queue_healthy_ms"]["median"] == pytest.approx(250.0)
    text = bc.render(res)
    assert "+25 ms" in text and "| met" in text and "3/3" in text


def test_figures_and_render_not_met_and_failures():
    res = results([500.0, 520.0], [100.0, 110.0])
    res.cold.append({**res.cold[0], "status": 503, "body_ok": False})
    f = bc.figures(res)
    assert f["failed_trials"] == 1
    assert f["cold_first_byte_ms"]["n"] == 2  # a failed request is not a cold start
    text = bc.render(res)
    assert "NOT met" in text and "1 failed" in text


def test_parse_args():
    assert bc.parse_args([]).trials == 10
    assert bc.parse_args(["--quick"]).trials == 3
    for bad in (["--trials", "0"], ["--trials", "51"], ["--settle", "-1"]):
        with pytest.raises(SystemExit):
            bc.parse_args(bad)
