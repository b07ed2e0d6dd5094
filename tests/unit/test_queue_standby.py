"""The queue's `--standby` mode: what it does with its one line of orders."""

from __future__ import annotations

import io

from ebb.queue import main as queue_main


def test_end_of_input_exits_quietly():
    assert queue_main.standby(io.StringIO("")) == 0


def test_a_bad_order_is_refused(capsys):
    assert queue_main.standby(io.StringIO("{not json\n")) == 2
    assert queue_main.standby(io.StringIO('{"log": "x"}\n')) == 2
    assert "bad standby order" in capsys.readouterr().err


def test_an_order_runs_the_queue_with_its_flags(monkeypatch):
    seen = []
    monkeypatch.setattr(queue_main, "main", lambda argv, environ=None: seen.append(argv) or 0)
    assert queue_main.standby(io.StringIO('{"argv": ["--app-port", 8080]}\n')) == 0
    assert seen == [["--app-port", "8080"]]


def test_invalid_flags_in_an_order_fail_like_a_cold_queue(capsys):
    assert queue_main.standby(io.StringIO('{"argv": ["--app-port", "0"]}\n')) == 2
    assert "app-port" in capsys.readouterr().err
