"""bench.wrk: wrk's command line and both forms of its output (pure)."""

import pytest

from bench.wrk import (
    DONE_LUA,
    WrkParseError,
    parse_time_ms,
    parse_wrk,
    wrk_command,
)

TEXT = """\
Running 5s test @ http://127.0.0.1:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   617.15us  359.91us  12.52ms   92.50%
    Req/Sec    26.10k     1.71k   28.88k    78.00%
  Latency Distribution
     50%  560.00us
     75%  700.00us
     90%  850.00us
     99%    1.80ms
  129870 requests in 5.00s, 11.15MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  25974.01
Transfer/sec:      2.23MB
"""

JSON_LINE = (
    'BENCH_JSON {"requests":129870,"duration_us":5000000,"bytes":11691520,'
    '"errors":{"connect":0,"read":2,"write":0,"status":7,"timeout":3},'
    '"latency_us":{"min":40,"mean":617.150,"stdev":359.910,"max":12520,'
    '"p50":561,"p75":702,"p90":851,"p95":1003,"p99":1799,"p99.9":5000}}'
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("92.00us", 0.092), ("1.10ms", 1.1), ("2.00s", 2000.0), ("1.50m", 90_000.0),
     ("0.50h", 1_800_000.0), (" 560.00us ", 0.56)],
)
def test_parse_time_ms(text, ms):
    assert parse_time_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "1.0", "fast", "1.0xs", "-1ms"])
def test_parse_time_ms_rejects(text):
    with pytest.raises(WrkParseError):
        parse_time_ms(text)


def test_parse_text_summary():
    result = parse_wrk(TEXT)
    assert result.requests == 129870
    assert result.duration_s == pytest.approx(5.0)
    assert result.rps == pytest.approx(25974.01)
    assert result.p50_ms == pytest.approx(0.56)
    assert result.p90_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1.8)
    assert result.p95_ms is None  # wrk's text has no p95
    assert result.mean_ms == pytest.approx(0.61715)
    assert result.max_ms == pytest.approx(12.52)
    assert result.errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3, "status": 7}
    assert result.error_count == 12


def test_json_line_wins_over_text():
    result = parse_wrk(TEXT + JSON_LINE + "\n")
    assert result.p50_ms == pytest.approx(0.561)
    assert result.p95_ms == pytest.approx(1.003)
    assert result.p99_ms == pytest.approx(1.799)
    assert result.rps == pytest.approx(129870 / 5.0)
    assert result.errors["status"] == 7
    assert result.error_count == 12


def test_text_without_errors_lines_counts_zero():
    text = "\n".join(line for line in TEXT.splitlines()
                     if "errors" not in line and "Non-2xx" not in line)
    assert parse_wrk(text).error_count == 0


@pytest.mark.parametrize(
    "drop", ["Requests/sec", "requests in", "50%", "99%"],
)
def test_missing_figures_are_an_error(drop):
    text = "\n".join(line for line in TEXT.splitlines() if drop not in line)
    with pytest.raises(WrkParseError):
        parse_wrk(text)


def test_bad_json_line_is_an_error():
    with pytest.raises(WrkParseError, match="BENCH_JSON"):
        parse_wrk('BENCH_JSON {"requests": 1}\n')


def test_zero_duration_is_an_error():
    with pytest.raises(WrkParseError):
        parse_wrk(JSON_LINE.replace('"duration_us":5000000', '"duration_us":0'))


def test_wrk_command():
    argv = wrk_command("http://127.0.0.1:1/", connections=64, duration_s=5, threads=2,
                       headers={"Host": "a.default.localhost"}, script="/tmp/done.lua")
    assert argv == ["wrk", "-t", "2", "-c", "64", "-d", "5s", "--timeout", "5s", "--latency",
                    "-H", "Host: a.default.localhost", "-s", "/tmp/done.lua",
                    "http://127.0.0.1:1/"]


def test_wrk_command_bounds_threads_and_duration():
    argv = wrk_command("http://x/", connections=1, duration_s=0.2, threads=4)
    assert argv[argv.index("-t") + 1] == "1"  # wrk needs connections >= threads
    assert argv[argv.index("-d") + 1] == "1s"  # whole seconds, at least one
    with pytest.raises(ValueError):
        wrk_command("http://x/", connections=0, duration_s=1)


def test_done_hook_defines_no_per_request_functions():
    # request()/response() would take wrk off its fast path.
    assert "done = function" in DONE_LUA
    assert "request =" not in DONE_LUA and "response =" not in DONE_LUA
