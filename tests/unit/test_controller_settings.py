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


def test_autoscaler_stats_defaults_to_the_autoscaler_address():
    """Queues stream to --autoscaler-stats; left empty it is --autoscaler (whose port serves
    StatsService too), so setups that predate the stats port keep working."""
    cfg = load(["--autoscaler", "as:8091"], {})
    assert (cfg.autoscaler, cfg.autoscaler_stats) == ("as:8091", "as:8091")
    cfg = load(["--autoscaler", "as:8091", "--autoscaler-stats", "as:8094"], {})
    assert (cfg.autoscaler, cfg.autoscaler_stats) == ("as:8091", "as:8094")
    cfg = load([], {"EBB_AUTOSCALER": "as:8091", "EBB_AUTOSCALER_STATS": "stats.ebb.svc:8094"})
    assert (cfg.autoscaler, cfg.autoscaler_stats) == ("as:8091", "stats.ebb.svc:8094")
    assert load([], {}).autoscaler_stats == ""


def test_autoscaler_stats_must_be_host_port():
    with pytest.raises(SettingsError) as err:
        load(["--autoscaler", "as:8091", "--autoscaler-stats", "as"], {})
    assert str(err.value) == "autoscaler-stats = 'as', must be HOST:PORT"


def test_local_queues_stream_to_the_stats_address(tmp_path):
    """The local runtime hands each queue the stats address as its --autoscaler."""
    from ebb.controller.backends import local_backend
    from ebb.controller.runtime import InstanceSpec, RevisionKey
    from ebb.controller.runtime_local import Instance

    cfg = load(["--data-dir", str(tmp_path), "--autoscaler", "127.0.0.1:8091",
                "--autoscaler-stats", "127.0.0.1:8094"], {})
    backend = local_backend(cfg, None)
    try:
        spec = InstanceSpec(service="hello", configuration="hello", revision="hello-00001",
                            namespace="default", command=("app",))
        inst = Instance(
            id="hello-00001-a", namespace="default", revision="hello-00001", app_port=1, queue_port=2
        )
        args = backend.runtime._queue_args(RevisionKey("default", "hello-00001"), spec, inst)
    finally:
        backend.store.close()
    assert args[args.index("--autoscaler") + 1] == "127.0.0.1:8094"
