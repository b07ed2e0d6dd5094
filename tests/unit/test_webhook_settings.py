"""The webhook's settings: flags over EBB_WEBHOOK_* environment over defaults, validated."""

from __future__ import annotations

import pytest

from ebb.common.settings import SettingsError
from ebb.webhook.main import WebhookSettings, load_settings
from ebb.webhook.model import AdmissionSettings


def test_defaults():
    settings = load_settings([], {})
    assert settings == WebhookSettings()
    assert settings.grpc_port == 8093
    assert settings.https_port == 8443
    assert settings.host == "127.0.0.1"
    assert not settings.https_enabled
    assert settings.admission == AdmissionSettings()


def test_flags_win_over_environment(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    env = {
        "EBB_WEBHOOK_GRPC_PORT": "9000",
        "EBB_WEBHOOK_TLS_CERT": str(cert),
        "EBB_WEBHOOK_TLS_KEY": str(key),
    }
    settings = load_settings(
        ["--grpc-port", "0", "--https-port", "0", "--ready-file", "r.json"], env
    )
    assert settings.grpc_port == 0
    assert settings.https_port == 0
    assert settings.https_enabled
    assert settings.ready_file == "r.json"


def test_admission_knobs():
    settings = load_settings(
        ["--allow-zero-initial-scale", "true", "--max-revision-timeout-seconds", "120"], {}
    )
    assert settings.admission.allow_zero_initial_scale is True
    assert settings.admission.max_revision_timeout_s == 120
    # the default timeout never exceeds the maximum
    assert settings.admission.revision_timeout_s == 120


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "/nonexistent.pem"], "tls-cert and tls-key must be given together"),
        (
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
            "tls-cert = '/nonexistent.pem', no such file",
        ),
        (["--grpc-port", "70000"], "grpc-port = 70000, must be in 0..65535"),
        (["--log-level", "loud"], "log-level = 'loud', must be one of debug, info, warning, error"),
        (
            ["--allow-zero-initial-scale", "maybe"],
            "allow-zero-initial-scale = 'maybe', must be true or false",
        ),
        (
            ["--max-revision-timeout-seconds", "0"],
            "max-revision-timeout-seconds = 0, must be at least 1",
        ),
        (
            ["--max-revision-timeout-seconds", "ten"],
            "max-revision-timeout-seconds = 'ten', must be an integer",
        ),
    ],
)
def test_bad_settings_name_the_key(argv, message):
    with pytest.raises(SettingsError) as info:
        load_settings(argv, {})
    assert str(info.value) == message
