"""Controller settings: flags over env over defaults; errors name the key and the rule."""

import pytest

from ebb.common.settings import SettingsError, parse_duration_s
from ebb.controller.settings import load


def test_defaults_and_env():
    cfg = load([], {"HOME": "/home/u"})
    assert (cfg.grpc_port, cfg.gateway_port) == (8090, 8080)
    assert str(cfg.data_dir) == "/home/u/.ebb"
    cfg = load(["--grpc-port", "9000"], {"EBB_CONTROLLER_GRPC_PORT": "9100", "EBB_GATEWAY_PORT": "81", "EBB_HOME": "/d"})
    assert (cfg.grpc_port, cfg.gateway_port, str(cfg.data_dir)) == (9000, 81, "/d")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--grpc-port", "70000"], "grpc-port = 70000, must be in 0..65535"),
        (["--gateway-port", "http"], "gateway-port = 'http', must be an integer port 0..65535"),
        (["--webhook", "localhost"], "webhook = 'localhost', must be HOST:PORT"),
        (["--log-level", "loud"], "log-level = 'loud', must be one of debug, info, warning, error"),
    ],
)
def test_validation_messages(argv, message):
    with pytest.raises(SettingsError) as err:
        load(argv, {})
    assert str(err.value) == message


@pytest.mark.parametrize("text,seconds", [("30s", 30.0), ("1m", 60.0), ("250ms", 0.25), ("1h", 3600.0), ("5", 5.0)])
def test_durations(text, seconds):
    assert parse_duration_s("k", text) == seconds


def test_bad_duration_names_key():
    with pytest.raises(SettingsError, match="stable-window = 'soon', must be a duration"):
        parse_duration_s("stable-window", "soon")
