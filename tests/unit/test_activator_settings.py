"""The activator's flags and environment."""

from __future__ import annotations

import os

import pytest

from ebb.activator.settings import load
from ebb.common.settings import SettingsError


def test_defaults():
    s = load([], {"HOSTNAME": "node1"})
    assert (s.http_port, s.grpc_port, s.host, s.queue_depth) == (8012, 8092, "127.0.0.1", 10000)
    assert (s.controller, s.autoscaler, s.ready_file, s.log_level) == ("", "", "", "info")
    assert s.instance == f"activator-node1-{os.getpid()}"
    assert (s.drain_quiet_s, s.drain_max_s) == (1.0, 600.0)


def test_flags_win_over_environment():
    s = load(
        ["--http-port", "0", "--controller", "127.0.0.1:8090", "--queue-depth", "5", "--host", "0.0.0.0"],
        {"EBB_ACTIVATOR_HTTP_PORT": "9", "EBB_AUTOSCALER": "localhost:8091", "EBB_ACTIVATOR_QUEUE_DEPTH": "7"},
    )
    assert (s.http_port, s.controller, s.autoscaler, s.queue_depth, s.host) == (
        0, "127.0.0.1:8090", "localhost:8091", 5, "0.0.0.0",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue-depth", "-1"], "queue-depth = -1, must be in 0..1000000"),
        (["--queue-depth", "many"], "queue-depth = 'many', must be an integer"),
        (["--controller", "nowhere"], "controller = 'nowhere', must be HOST:PORT"),
        (["--autoscaler", "h:0"], "autoscaler = 'h:0', must be HOST:PORT"),
        (["--http-port", "70000"], "http-port = 70000, must be in 0..65535"),
        (["--log-level", "loud"], "log-level = 'loud', must be one of"),
        (["--drain-max-s", "0"], "drain-max-s = 0, must be greater than 0"),
        (["--drain-quiet-s", "20m", "--drain-max-s", "10m"], "drain-quiet-s = 20m, must be greater than 0 and at most 600"),
        (["--host", ""], "host = '', must be an address"),
    ],
)
def test_errors_name_the_key_and_the_rule(argv, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(argv, {})


def test_main_exits_2_on_bad_settings(capsys):
    from ebb.activator.main import main

    assert main(["--queue-depth", "x"], {}) == 2
    assert "activator: queue-depth" in capsys.readouterr().err
