"""Queue settings: flags, env fallback, defaults, and errors that name the key and the range."""

import pytest

from ebb.common.settings import SettingsError
from ebb.queue.settings import QueueSettings, load

BASE = ["--app-port", "8080"]


def test_defaults():
    settings = load(BASE, {"HOSTNAME": "pod-a"})
    assert settings == QueueSettings(
        app_port=8080,
        http_port=0,
        admin_port=0,
        instance=settings.instance,
        timeout_s=300.0,
        drain_quiet_s=1.0,
        drain_max_s=30.0,
    )
    assert settings.instance.startswith("pod-a-")
    assert settings.queue_depth == 0


def test_flags():
    settings = load(
        [
            *BASE,
            "--http-port", "8012",
            "--admin-port", "9091",
            "--revision", "default/hello-00001",
            "--instance", "hello-00001-abc",
            "--container-concurrency", "4",
            "--timeout-seconds", "30",
            "--response-start-timeout-seconds", "500ms",
            "--idle-timeout-seconds", "10s",
            "--autoscaler", "127.0.0.1:8091",
            "--drain-quiet-s", "0.2",
            "--drain-max-s", "1m",
            "--ready-file", "/tmp/q.json",
            "--log-level", "DEBUG",
        ],
        {},
    )  # fmt: skip
    assert settings == QueueSettings(
        app_port=8080,
        http_port=8012,
        admin_port=9091,
        namespace="default",
        revision="hello-00001",
        instance="hello-00001-abc",
        container_concurrency=4,
        timeout_s=30.0,
        response_start_timeout_s=0.5,
        idle_timeout_s=10.0,
        autoscaler="127.0.0.1:8091",
        drain_quiet_s=0.2,
        drain_max_s=60.0,
        ready_file="/tmp/q.json",
        log_level="debug",
    )
    assert settings.queue_depth == 40


def test_env_fallback_and_flag_precedence():
    env = {
        "EBB_QUEUE_APP_PORT": "9000",
        "EBB_QUEUE_CONTAINER_CONCURRENCY": "2",
        "EBB_QUEUE_TIMEOUT_SECONDS": "60",
    }
    settings = load(["--timeout-seconds", "45"], env)
    assert (settings.app_port, settings.container_concurrency, settings.timeout_s) == (9000, 2, 45.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "app-port is required, must be in 1..65535"),
        (["--app-port", "0"], "app-port = 0, must be in 1..65535"),
        (["--app-port", "70000"], "app-port = 70000, must be in 0..65535"),
        ([*BASE, "--http-port", "x"], "http-port = 'x', must be an integer port 0..65535"),
        ([*BASE, "--admin-port", "-1"], "admin-port = -1, must be in 0..65535"),
        ([*BASE, "--container-concurrency", "1001"], "container-concurrency = 1001, must be in 0..1000"),
        ([*BASE, "--container-concurrency", "-1"], "container-concurrency = -1, must be in 0..1000"),
        ([*BASE, "--container-concurrency", "two"], "container-concurrency = 'two', must be an integer in 0..1000"),
        ([*BASE, "--timeout-seconds", "0"], "timeout-seconds = 0, must be greater than 0 and at most 3600 seconds"),
        ([*BASE, "--timeout-seconds", "2h"], "timeout-seconds = 2h, must be greater than 0 and at most 3600 seconds"),
        ([*BASE, "--timeout-seconds", "-5"], "timeout-seconds = '-5', must be a duration (30s, 500ms, 1m) greater than 0"),
        (
            [*BASE, "--timeout-seconds", "10", "--response-start-timeout-seconds", "11"],
            "response-start-timeout-seconds = 11, must be 0 (off) or greater than 0 and at most 10 seconds",
        ),
        (
            [*BASE, "--timeout-seconds", "10", "--idle-timeout-seconds", "1m"],
            "idle-timeout-seconds = 1m, must be 0 (off) or greater than 0 and at most 10 seconds",
        ),
        ([*BASE, "--drain-max-s", "0"], "drain-max-s = 0, must be greater than 0 and at most 3600 seconds"),
        (
            [*BASE, "--drain-max-s", "5", "--drain-quiet-s", "6"],
            "drain-quiet-s = 6, must be greater than 0 and at most 5 seconds",
        ),
        ([*BASE, "--revision", "hello"], "revision = 'hello', must be NAMESPACE/NAME"),
        ([*BASE, "--revision", "Default/Hello"], "revision = 'Default/Hello', must be NAMESPACE/NAME"),
        ([*BASE, "--autoscaler", "localhost"], "autoscaler = 'localhost', must be HOST:PORT with port in 1..65535"),
        ([*BASE, "--autoscaler", "h:0"], "autoscaler = 'h:0', must be HOST:PORT with port in 1..65535"),
        (
            [*BASE, "--autoscaler", "127.0.0.1:8091"],
            "revision is required when autoscaler is set, must be NAMESPACE/NAME",
        ),
        ([*BASE, "--log-level", "loud"], "log-level = 'loud', must be one of debug, info, warning, error"),
    ],
)  # fmt: skip
def test_invalid_values_name_key_and_range(argv, message):
    with pytest.raises(SettingsError) as caught:
        load(argv, {})
    assert message in str(caught.value)


def test_env_values_are_validated_too():
    with pytest.raises(SettingsError, match=r"container-concurrency = 5000, must be in 0\.\.1000"):
        load(BASE, {"EBB_QUEUE_CONTAINER_CONCURRENCY": "5000"})


def test_main_reports_bad_settings_and_exits_2(capsys):
    from ebb.queue.main import main

    assert main(["--app-port", "8080", "--container-concurrency", "-3"], {}) == 2
    assert "container-concurrency = -3, must be in 0..1000" in capsys.readouterr().err
