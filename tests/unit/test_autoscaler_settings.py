"""Autoscaler settings: Knative's config-autoscaler keys, defaults, validation; annotations."""

from __future__ import annotations

import pytest

from ebb.autoscaler.main import load, read_config_file
from ebb.autoscaler.settings import (
    KNATIVE_KEYS,
    KPA_CLASS,
    AnnotationError,
    AutoscalerSettings,
    resolve,
    revision_config,
    unknown_keys,
)
from ebb.common.settings import SettingsError

A = "autoscaling.knative.dev/"
PATH = "metadata.annotations.autoscaling.knative.dev/"

# ---------------------------------------------------------------------------------------
# Cluster settings: defaults

DEFAULTS = [
    ("enable-scale-to-zero", "enable_scale_to_zero", True),
    ("container-concurrency-target-default", "container_concurrency_target_default", 100.0),
    ("container-concurrency-target-percentage", "container_concurrency_target_percentage", 0.7),
    ("requests-per-second-target-default", "requests_per_second_target_default", 200.0),
    ("target-burst-capacity", "target_burst_capacity", 211.0),
    ("activator-capacity", "activator_capacity", 100.0),
    ("stable-window", "stable_window_s", 60),
    ("panic-window-percentage", "panic_window_percentage", 10.0),
    ("panic-threshold-percentage", "panic_threshold_percentage", 200.0),
    ("max-scale-up-rate", "max_scale_up_rate", 1000.0),
    ("max-scale-down-rate", "max_scale_down_rate", 2.0),
    ("scale-to-zero-grace-period", "scale_to_zero_grace_period_s", 30.0),
    ("scale-to-zero-pod-retention-period", "scale_to_zero_pod_retention_period_s", 0.0),
    ("scale-down-delay", "scale_down_delay_s", 0),
    ("initial-scale", "initial_scale", 1),
    ("allow-zero-initial-scale", "allow_zero_initial_scale", False),
    ("min-scale", "min_scale", 0),
    ("max-scale", "max_scale", 0),
    ("max-scale-limit", "max_scale_limit", 0),
    ("pod-autoscaler-class", "pod_autoscaler_class", KPA_CLASS),
]


def test_every_knative_key_has_a_default_row():
    assert sorted(k for k, _, _ in DEFAULTS) == sorted(KNATIVE_KEYS)


@pytest.mark.parametrize(("key", "attr", "default"), DEFAULTS)
def test_default(key, attr, default):
    assert getattr(AutoscalerSettings(), attr) == default
    assert getattr(AutoscalerSettings.from_mapping({}), attr) == default
    assert AutoscalerSettings().to_mapping()[key] is not None


# ---------------------------------------------------------------------------------------
# Cluster settings: parsing Knative values


@pytest.mark.parametrize(
    ("key", "value", "attr", "expected"),
    [
        ("enable-scale-to-zero", "false", "enable_scale_to_zero", False),
        ("enable-scale-to-zero", False, "enable_scale_to_zero", False),
        ("enable-scale-to-zero", "True", "enable_scale_to_zero", True),
        (
            "container-concurrency-target-default",
            "10",
            "container_concurrency_target_default",
            10.0,
        ),
        (
            "container-concurrency-target-percentage",
            "70",
            "container_concurrency_target_percentage",
            0.7,
        ),
        (
            "container-concurrency-target-percentage",
            0.5,
            "container_concurrency_target_percentage",
            0.5,
        ),
        (
            "container-concurrency-target-percentage",
            "1",
            "container_concurrency_target_percentage",
            1.0,
        ),
        (
            "container-concurrency-target-percentage",
            100,
            "container_concurrency_target_percentage",
            1.0,
        ),
        ("requests-per-second-target-default", "0.01", "requests_per_second_target_default", 0.01),
        ("target-burst-capacity", "-1", "target_burst_capacity", -1.0),
        ("target-burst-capacity", 0, "target_burst_capacity", 0.0),
        ("activator-capacity", "1", "activator_capacity", 1.0),
        ("stable-window", "6s", "stable_window_s", 6),
        ("stable-window", "1m30s", "stable_window_s", 90),
        ("stable-window", "1h", "stable_window_s", 3600),
        ("stable-window", 60, "stable_window_s", 60),
        ("panic-window-percentage", "1", "panic_window_percentage", 1.0),
        ("panic-threshold-percentage", "1000", "panic_threshold_percentage", 1000.0),
        ("max-scale-up-rate", "1.5", "max_scale_up_rate", 1.5),
        ("max-scale-down-rate", 4, "max_scale_down_rate", 4.0),
        ("scale-to-zero-grace-period", "10s", "scale_to_zero_grace_period_s", 10.0),
        ("scale-to-zero-grace-period", "500ms", "scale_to_zero_grace_period_s", 0.5),
        ("scale-to-zero-pod-retention-period", "1m", "scale_to_zero_pod_retention_period_s", 60.0),
        ("scale-down-delay", "15m", "scale_down_delay_s", 900),
        ("scale-down-delay", "0", "scale_down_delay_s", 0),
        ("initial-scale", "3", "initial_scale", 3),
        ("allow-zero-initial-scale", "true", "allow_zero_initial_scale", True),
        ("min-scale", 2, "min_scale", 2),
        ("max-scale", "5", "max_scale", 5),
        ("max-scale-limit", "0", "max_scale_limit", 0),
        ("pod-autoscaler-class", KPA_CLASS, "pod_autoscaler_class", KPA_CLASS),
    ],
)
def test_parse(key, value, attr, expected):
    assert getattr(AutoscalerSettings.from_mapping({key: value}), attr) == expected


def test_zero_initial_scale_when_allowed():
    s = AutoscalerSettings.from_mapping({"initial-scale": "0", "allow-zero-initial-scale": "true"})
    assert s.initial_scale == 0


def test_max_scale_within_limit():
    s = AutoscalerSettings.from_mapping({"max-scale": "5", "max-scale-limit": "10"})
    assert (s.max_scale, s.max_scale_limit) == (5, 10)


# ---------------------------------------------------------------------------------------
# Cluster settings: validation messages name the key and the range

INVALID = [
    ({"enable-scale-to-zero": "maybe"}, "enable-scale-to-zero = 'maybe', must be true or false"),
    (
        {"container-concurrency-target-default": "0"},
        "container-concurrency-target-default = 0, must be greater than 0",
    ),
    (
        {"container-concurrency-target-default": "ten"},
        "container-concurrency-target-default = 'ten', must be a number",
    ),
    (
        {"container-concurrency-target-percentage": "150"},
        "container-concurrency-target-percentage = 150, must be in (0, 1] as a fraction or (1, 100] as a percentage",
    ),
    (
        {"container-concurrency-target-percentage": "0"},
        "container-concurrency-target-percentage = 0, must be in (0, 1] as a fraction or (1, 100] as a percentage",
    ),
    (
        {
            "container-concurrency-target-default": "0.01",
            "container-concurrency-target-percentage": "0.5",
        },
        "container-concurrency-target-percentage and container-concurrency-target-default "
        "yield a target concurrency of 0.005, must be at least 0.01",
    ),
    (
        {"requests-per-second-target-default": "0.001"},
        "requests-per-second-target-default = 0.001, must be at least 0.01",
    ),
    (
        {"target-burst-capacity": "-2"},
        "target-burst-capacity = -2, must be at least 0, or -1 (activator always in the path)",
    ),
    ({"activator-capacity": "0.5"}, "activator-capacity = 0.5, must be at least 1"),
    ({"stable-window": "5s"}, "stable-window = 5s, must be in 6s..1h"),
    ({"stable-window": "2h"}, "stable-window = 2h0m0s, must be in 6s..1h"),
    ({"stable-window": "6500ms"}, "stable-window = 6.5s, must be whole seconds"),
    (
        {"stable-window": "soon"},
        "stable-window = 'soon', must be a duration like 30s, 1m30s or 500ms",
    ),
    ({"panic-window-percentage": "0.5"}, "panic-window-percentage = 0.5, must be in 1..100"),
    ({"panic-window-percentage": "101"}, "panic-window-percentage = 101, must be in 1..100"),
    (
        {"panic-threshold-percentage": "100"},
        "panic-threshold-percentage = 100, must be in 110..1000",
    ),
    (
        {"panic-threshold-percentage": "1001"},
        "panic-threshold-percentage = 1001, must be in 110..1000",
    ),
    ({"max-scale-up-rate": "1"}, "max-scale-up-rate = 1, must be greater than 1.0"),
    ({"max-scale-down-rate": "0.5"}, "max-scale-down-rate = 0.5, must be greater than 1.0"),
    (
        {"scale-to-zero-grace-period": "0s"},
        "scale-to-zero-grace-period = 0s, must be greater than 0s",
    ),
    (
        {"scale-to-zero-pod-retention-period": "-1s"},
        "scale-to-zero-pod-retention-period = -1s, must be at least 0s",
    ),
    ({"scale-down-delay": "-1s"}, "scale-down-delay = -1s, must be in 0s..1h"),
    ({"scale-down-delay": "61m"}, "scale-down-delay = 1h1m0s, must be in 0s..1h"),
    ({"scale-down-delay": "1.5s"}, "scale-down-delay = 1.5s, must be whole seconds"),
    ({"initial-scale": "-1"}, "initial-scale = -1, must be at least 0"),
    (
        {"initial-scale": "0"},
        "initial-scale = 0, must be at least 1 unless allow-zero-initial-scale is true",
    ),
    ({"initial-scale": "one"}, "initial-scale = 'one', must be an integer"),
    (
        {"allow-zero-initial-scale": "yes"},
        "allow-zero-initial-scale = 'yes', must be true or false",
    ),
    ({"min-scale": "-1"}, "min-scale = -1, must be at least 0"),
    ({"max-scale": "-1"}, "max-scale = -1, must be at least 0 (0 = unbounded)"),
    (
        {"min-scale": "3", "max-scale": "2"},
        "max-scale = 2, must be at least min-scale = 3 (or 0 = unbounded)",
    ),
    ({"max-scale-limit": "-1"}, "max-scale-limit = -1, must be at least 0 (0 = no limit)"),
    ({"max-scale-limit": "10"}, "max-scale = 0, must be in 1..10 when max-scale-limit is set"),
    (
        {"max-scale-limit": "10", "max-scale": "11"},
        "max-scale = 11, must be in 1..10 when max-scale-limit is set",
    ),
    (
        {"pod-autoscaler-class": "hpa.autoscaling.knative.dev"},
        "pod-autoscaler-class = 'hpa.autoscaling.knative.dev', must be kpa.autoscaling.knative.dev "
        "(the only class Ebb implements)",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid(data, message):
    with pytest.raises(SettingsError) as err:
        AutoscalerSettings.from_mapping(data)
    assert str(err.value) == message


def test_direct_construction_validates_too():
    with pytest.raises(SettingsError, match=r"^max-scale-down-rate = 1, must be greater than 1.0$"):
        AutoscalerSettings(max_scale_down_rate=1.0)


def test_unknown_keys_are_ignored_and_reported():
    data = {"_example": "...", "stable-window": "10s", "tick-interval": "2s", "panic-window": "6s"}
    assert AutoscalerSettings.from_mapping(data).stable_window_s == 10
    assert unknown_keys(data) == ["panic-window", "tick-interval"]


def test_round_trip_through_knative_names():
    s = AutoscalerSettings.from_mapping(
        {"stable-window": "90s", "scale-to-zero-grace-period": "10s"}
    )
    assert AutoscalerSettings.from_mapping(s.to_mapping()) == s


# ---------------------------------------------------------------------------------------
# Per-revision config


def config(annotations=None, cc=0, **settings):
    return revision_config(AutoscalerSettings(**settings), annotations or {}, cc)


def test_revision_defaults():
    c = config()
    assert c.autoscaler_class == KPA_CLASS
    assert c.metric == "concurrency"
    assert (c.total_value, c.target_utilization, c.target_value) == (100.0, 0.7, 70.0)
    assert c.target_burst_capacity == 211.0
    assert (c.stable_window_s, c.panic_window_s, c.panic_threshold) == (60, 6, 2.0)
    assert (c.min_scale, c.max_scale, c.initial_scale, c.activation_scale) == (0, 0, 1, 1)
    assert (c.scale_down_delay_s, c.aggregation) == (0, "linear")
    assert (c.max_scale_up_rate, c.max_scale_down_rate) == (1000.0, 2.0)
    assert c.enable_scale_to_zero and c.scale_to_zero_grace_period_s == 30.0


@pytest.mark.parametrize(
    ("annotations", "cc", "total", "target_value"),
    [
        ({}, 0, 100.0, 70.0),  # the concurrency default
        ({}, 10, 10.0, 7.0),  # containerConcurrency
        ({A + "target": "50"}, 10, 10.0, 7.0),  # min(target, CC)
        ({A + "target": "5"}, 10, 5.0, 3.5),
        ({A + "target": "50"}, 0, 50.0, 35.0),
        ({A + "target-utilization-percentage": "50"}, 10, 10.0, 5.0),
        ({A + "target": "0.01"}, 0, 0.01, 0.01),  # TargetValue never below 0.01
        ({A + "metric": "rps"}, 10, 200.0, 140.0),  # rps: default, CC ignored, 0.7 fixed
        ({A + "metric": "rps", A + "target": "150"}, 10, 150.0, 105.0),
        ({A + "metric": "rps", A + "target-utilization-percentage": "50"}, 0, 200.0, 100.0),
    ],
)
def test_target(annotations, cc, total, target_value):
    c = config(annotations, cc)
    assert c.total_value == total
    assert c.target_value == pytest.approx(target_value)


def test_rps_ignores_the_cluster_utilization():
    c = config({A + "metric": "rps"}, container_concurrency_target_percentage=0.5)
    assert c.target_value == pytest.approx(140.0)
    assert config({}, container_concurrency_target_percentage=0.5).target_value == 50.0


@pytest.mark.parametrize(
    ("window", "pct", "panic_window_s"),
    [
        ("60s", "10", 6),
        ("6s", "10", 1),
        ("15s", "10", 2),
        ("25s", "10", 3),
        ("6s", "1", 1),
        ("1h", "100", 3600),
    ],
)
def test_panic_window(window, pct, panic_window_s):
    c = config({A + "window": window, A + "panic-window-percentage": pct})
    assert c.panic_window_s == panic_window_s


@pytest.mark.parametrize(
    ("annotations", "attr", "expected"),
    [
        ({A + "class": KPA_CLASS}, "autoscaler_class", KPA_CLASS),
        ({A + "target-burst-capacity": "-1"}, "target_burst_capacity", -1.0),
        ({A + "target-burst-capacity": "0"}, "target_burst_capacity", 0.0),
        ({A + "window": "2m"}, "stable_window_s", 120),
        ({A + "panic-threshold-percentage": "150"}, "panic_threshold", 1.5),
        ({A + "min-scale": "2"}, "min_scale", 2),
        ({A + "max-scale": "7"}, "max_scale", 7),
        ({A + "minScale": "2"}, "min_scale", 2),  # Knative's old camelCase spelling
        ({A + "initial-scale": "4"}, "initial_scale", 4),
        ({A + "scale-down-delay": "30s"}, "scale_down_delay_s", 30),
        ({A + "activation-scale": "3"}, "activation_scale", 3),
        (
            {A + "metric-aggregation-algorithm": "weighted-exponential"},
            "aggregation",
            "weighted-exponential",
        ),
        (
            {A + "metric-aggregation-algorithm": "weightedExponential"},
            "aggregation",
            "weighted-exponential",
        ),
        (
            {A + "scale-to-zero-pod-retention-period": "1m5s"},
            "scale_to_zero_pod_retention_period_s",
            65.0,
        ),
    ],
)
def test_annotation_overrides(annotations, attr, expected):
    assert getattr(config(annotations), attr) == expected


def test_cluster_settings_flow_into_the_revision():
    c = config(
        {},
        stable_window_s=30,
        target_burst_capacity=0,
        min_scale=1,
        max_scale=9,
        scale_down_delay_s=10,
        enable_scale_to_zero=False,
        scale_to_zero_grace_period_s=5,
    )
    assert (c.stable_window_s, c.panic_window_s, c.target_burst_capacity) == (30, 3, 0)
    assert (c.min_scale, c.max_scale, c.scale_down_delay_s) == (1, 9, 10)
    assert (c.enable_scale_to_zero, c.scale_to_zero_grace_period_s) == (False, 5)


def test_zero_initial_scale_annotation_when_the_cluster_allows_it():
    assert config({A + "initial-scale": "0"}, allow_zero_initial_scale=True).initial_scale == 0


INVALID_ANNOTATIONS = [
    (
        {A + "class": "hpa.autoscaling.knative.dev"},
        PATH
        + "class: invalid value: hpa.autoscaling.knative.dev (Ebb supports only kpa.autoscaling.knative.dev)",
    ),
    ({A + "metric": "cpu"}, PATH + "metric: invalid value: cpu"),
    ({A + "target": "0"}, PATH + "target: target 0 should be at least 0.01"),
    ({A + "target": "lots"}, PATH + "target: invalid value: lots"),
    (
        {A + "target-utilization-percentage": "0.5"},
        PATH + "target-utilization-percentage: expected 1 <= 0.5 <= 100",
    ),
    ({A + "target-burst-capacity": "-2"}, PATH + "target-burst-capacity: invalid value: -2"),
    ({A + "window": "5s"}, PATH + "window: expected 6s <= 5s <= 1h0m0s"),
    ({A + "window": "6.5s"}, PATH + "window: must be specified with at most second precision"),
    ({A + "window": "60"}, PATH + "window: invalid value: 60"),
    (
        {A + "panic-window-percentage": "101"},
        PATH + "panic-window-percentage: expected 1 <= 101 <= 100",
    ),
    (
        {A + "panic-threshold-percentage": "109"},
        PATH + "panic-threshold-percentage: expected 110 <= 109 <= 1000",
    ),
    ({A + "min-scale": "-1"}, PATH + "min-scale: expected 0 <= -1 <= 2147483647"),
    ({A + "max-scale": "x"}, PATH + "max-scale: invalid value: x"),
    ({A + "max-scale": "+-5"}, PATH + "max-scale: invalid value: +-5"),  # syntax, not range
    ({A + "min-scale": "2147483648"}, PATH + "min-scale: expected 0 <= 2147483648 <= 2147483647"),
    ({A + "window": " 60s"}, PATH + "window: invalid value:  60s"),  # Go does not trim
    (
        {A + "min-scale": "3", A + "max-scale": "2"},
        PATH + "max-scale: max-scale=2 is less than min-scale=3",
    ),
    (
        {A + "initial-scale": "0"},
        PATH + "initial-scale: invalid value: 0 (initial-scale=0 not allowed by cluster)",
    ),
    (
        {A + "initial-scale": "-1"},
        PATH + "initial-scale: invalid value: -1 (must be greater than or equal to 0)",
    ),
    ({A + "scale-down-delay": "2h"}, PATH + "scale-down-delay: expected 0s <= 2h <= 1h0m0s"),
    (
        {A + "scale-down-delay": "1500ms"},
        PATH + "scale-down-delay: must be specified with at most second precision",
    ),
    (
        {A + "activation-scale": "1"},
        PATH + "activation-scale: activation-scale=1 must be greater than 1",
    ),
    (
        {A + "activation-scale": "2", A + "min-scale": "3"},
        PATH + "activation-scale: min-scale=3 is greater than activation-scale=2",
    ),
    (
        {A + "activation-scale": "5", A + "max-scale": "4"},
        PATH + "activation-scale: max-scale=4 is less than activation-scale=5",
    ),
    (
        {A + "metric-aggregation-algorithm": "median"},
        PATH + "metric-aggregation-algorithm: invalid value: median",
    ),
    (
        {A + "min-scales": "1"},
        PATH
        + 'min-scales: invalid key name "autoscaling.knative.dev/min-scales" (not a known autoscaling annotation)',
    ),
]


@pytest.mark.parametrize(("annotations", "message"), INVALID_ANNOTATIONS)
def test_invalid_annotation(annotations, message):
    with pytest.raises(AnnotationError) as err:
        config(annotations)
    assert err.value.errors == [message]


def test_lenient_resolution_falls_back_to_the_cluster_setting():
    settings = AutoscalerSettings(stable_window_s=30)
    resolution = resolve(
        settings, {A + "window": "5s", A + "max-scale": "4", A + "target": "zero"}, 0
    )
    assert resolution.config.stable_window_s == 30  # the bad window is ignored
    assert resolution.config.max_scale == 4  # the good annotation still applies
    assert resolution.config.total_value == 100.0
    assert len(resolution.errors) == 2


def test_max_scale_limit_applies_to_the_annotation():
    settings = AutoscalerSettings(max_scale=5, max_scale_limit=10)
    res = resolve(settings, {A + "max-scale": "11"}, 0)
    assert res.errors == (PATH + "max-scale: expected 1 <= 11 <= 10",)
    assert res.config.max_scale == 5
    res = resolve(settings, {A + "max-scale": "0"}, 0)
    assert res.errors == (PATH + "max-scale: max-scale=0 (unlimited), must be less than 10",)


def test_one_line_per_refused_annotation():
    # The webhook reports both rules max-scale breaks; the autoscaler names the first.
    settings = AutoscalerSettings(max_scale=1, max_scale_limit=3)
    res = resolve(settings, {A + "min-scale": "10", A + "max-scale": "5"}, 0)
    assert res.errors == (PATH + "max-scale: max-scale=5 is less than min-scale=10",)
    assert (res.config.min_scale, res.config.max_scale) == (10, 1)


def test_initial_scale_is_a_64_bit_integer_as_in_knative():
    assert config({A + "initial-scale": "3000000000"}).initial_scale == 3_000_000_000


def test_errors_come_in_the_order_annotations_are_applied():
    res = resolve(
        AutoscalerSettings(),
        {A + "max-scale": "x", A + "metric": "cpu", A + "typo": "1", A + "window": "1s"},
        -1,
    )
    assert res.errors == (
        PATH + 'typo: invalid key name "autoscaling.knative.dev/typo" '
        "(not a known autoscaling annotation)",
        "spec.containerConcurrency: expected 0 <= -1 <= 1000 (0 is used)",
        PATH + "metric: invalid value: cpu",
        PATH + "window: expected 6s <= 1s <= 1h0m0s",
        PATH + "max-scale: invalid value: x",
    )


def test_both_spellings_is_an_error_and_the_canonical_one_wins():
    res = resolve(AutoscalerSettings(), {A + "min-scale": "2", A + "minScale": "3"}, 0)
    assert res.config.min_scale == 2
    assert res.errors == (
        PATH + "minScale: expected exactly one of autoscaling.knative.dev/min-scale, "
        "autoscaling.knative.dev/minScale, got both (autoscaling.knative.dev/min-scale is used)",
    )


def test_other_annotations_are_ignored():
    assert (
        resolve(
            AutoscalerSettings(), {"example.com/x": "1", "autoscaling.knative.devx": "y"}, 0
        ).errors
        == ()
    )


def test_container_concurrency_out_of_range():
    res = resolve(AutoscalerSettings(), {}, -3)
    assert res.errors == ("spec.containerConcurrency: expected 0 <= -3 <= 1000 (0 is used)",)
    assert res.config.total_value == 100.0


# ---------------------------------------------------------------------------------------
# The process's flags and config file


def test_flags_defaults():
    cfg = load([], {})
    assert (cfg.grpc_port, cfg.tick_interval_s, cfg.ready_file, cfg.log_level) == (
        8091,
        2.0,
        "",
        "info",
    )
    assert cfg.autoscaler == AutoscalerSettings()


def test_tick_slices_default_and_env():
    assert load([], {}).tick_slices == 1
    assert load([], {"EBB_AUTOSCALER_TICK_SLICES": "4"}).tick_slices == 4
    assert load(["--tick-slices", "10"], {}).tick_slices == 10


def test_flags_from_env_and_argv(tmp_path):
    env = {"EBB_AUTOSCALER_GRPC_PORT": "9000", "EBB_AUTOSCALER_TICK_INTERVAL_S": "0.5"}
    cfg = load(["--grpc-port", "0", "--log-level", "DEBUG"], env)
    assert (cfg.grpc_port, cfg.tick_interval_s, cfg.log_level) == (0, 0.5, "debug")


def test_config_file(tmp_path):
    path = tmp_path / "ebb.yaml"
    path.write_text(
        "controller: {x: 1}\n"
        "autoscaler:\n"
        "  scale-to-zero-grace-period: 10s\n"
        "  stable-window: 30s\n"
        "  container-concurrency-target-percentage: 80\n"
        "  enable-scale-to-zero: false\n"
        "  tick-interval: 2s\n"
    )
    cfg = load(["--config", str(path)], {})
    assert cfg.autoscaler.scale_to_zero_grace_period_s == 10.0
    assert cfg.autoscaler.stable_window_s == 30
    assert cfg.autoscaler.container_concurrency_target_percentage == pytest.approx(0.8)
    assert cfg.autoscaler.enable_scale_to_zero is False
    assert cfg.ignored_keys == ("tick-interval",)


def test_config_file_without_the_section_means_defaults(tmp_path):
    path = tmp_path / "ebb.yaml"
    path.write_text("controller: {}\n")
    assert read_config_file(str(path)) == (AutoscalerSettings(), ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "autoscaler:\n  max-scale-down-rate: 0.5\n",
            "autoscaler.max-scale-down-rate = 0.5, must be greater than 1.0",
        ),
        ("autoscaler:\n  stable-window: 5s\n", "autoscaler.stable-window = 5s, must be in 6s..1h"),
        ("autoscaler: [1, 2]\n", "autoscaler must be a mapping of config-autoscaler keys"),
        ("- 1\n", "must be a YAML mapping with an `autoscaler:` section"),
        ("autoscaler: {\n", "not valid YAML (line 2)"),
    ],
)
def test_config_file_errors_are_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "ebb.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load(["--config", str(path)], {})
    assert str(err.value) == f"config {path}: {message}"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tick-interval-s", "0"], "tick-interval-s = 0, must be greater than 0 and at most 60"),
        (["--tick-interval-s", "often"], "tick-interval-s = 'often', must be a number of seconds"),
        (["--tick-slices", "0"], "tick-slices = 0, must be between 1 and 100"),
        (["--tick-slices", "2.5"], "tick-slices = '2.5', must be a whole number"),
        (["--grpc-port", "70000"], "grpc-port = 70000, must be in 0..65535"),
        (["--log-level", "loud"], "log-level = 'loud', must be one of debug, info, warning, error"),
    ],
)
def test_flag_errors(argv, message):
    with pytest.raises(SettingsError) as err:
        load(argv, {})
    assert str(err.value) == message


def test_main_exits_1_with_one_line(tmp_path, capsys):
    from ebb.autoscaler.main import main

    path = tmp_path / "bad.yaml"
    path.write_text("autoscaler:\n  panic-threshold-percentage: 50\n")
    assert main(["--config", str(path)], {}) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"autoscaler: config {path}: autoscaler.panic-threshold-percentage = 50, must be in 110..1000\n"
    )


def test_missing_config_file(tmp_path, capsys):
    from ebb.autoscaler.main import main

    assert main(["--config", str(tmp_path / "nope.yaml")], {}) == 1
    assert capsys.readouterr().err.startswith(
        f"autoscaler: config {tmp_path / 'nope.yaml'}: cannot read"
    )
