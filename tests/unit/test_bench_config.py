"""bench.envoy_config, bench.procs' /proc parsers, bench.mesh's /clusters reader and
bench.main's settings (pure)."""

import json
from pathlib import Path

import pytest

from bench import procs
from bench.envoy_config import static_bootstrap
from bench.main import QUICK, BenchSettings, parse_args
from bench.mesh import activator_hosts


def test_static_bootstrap_routes_everything_to_one_endpoint():
    config = static_bootstrap(8001, 9001, 7001)
    json.dumps(config)  # serialisable as the Envoy config file
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                            "port_value": 7001}
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 8001
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    typed = hcm["typed_config"]
    assert typed["@type"].endswith("HttpConnectionManager")
    assert typed["generate_request_id"] is False
    (vhost,) = typed["route_config"]["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    (route,) = vhost["routes"]
    assert route["match"] == {"prefix": "/"}
    assert route["route"]["cluster"] == "upstream"
    assert [f["name"] for f in typed["http_filters"]] == ["envoy.filters.http.router"]
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["name"] == "upstream" and cluster["type"] == "STATIC"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9001}
    limits = cluster["circuit_breakers"]["thresholds"][0]
    assert min(limits.values()) >= 1024


def test_static_bootstrap_validates():
    with pytest.raises(ValueError, match="listen_port"):
        static_bootstrap(0, 9001, 7001)
    with pytest.raises(ValueError, match="admin_port"):
        static_bootstrap(8001, 9001, 70000)
    with pytest.raises(ValueError, match="route_timeout_s"):
        static_bootstrap(8001, 9001, 7001, route_timeout_s=0)


def test_stat_cpu_ticks_handles_odd_command_names():
    fields = " ".join(str(n) for n in range(3, 53))  # field N holds the number N
    text = f"1234 (we(ird) name) S {fields.split(' ', 1)[1]}"
    # utime is field 14, stime field 15
    assert procs.stat_cpu_ticks(text) == 14 + 15


def test_status_rss_bytes():
    text = "Name:\tpython\nVmPeak:\t  99999 kB\nVmRSS:\t   49152 kB\nThreads:\t3\n"
    assert procs.status_rss_bytes(text) == 49152 * 1024
    with pytest.raises(ValueError):
        procs.status_rss_bytes("Name:\tkthreadd\n")


def test_machine_cpu_s():
    text = "cpu  100 5 50 1000 20 7 10 3 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    tick = procs.CLK_TCK
    assert procs.machine_cpu_s(text) == pytest.approx(
        {"tasks": 155 / tick, "irq": 17 / tick, "steal": 3 / tick})
    assert procs.machine_busy_s(text) == pytest.approx((155 + 17 + 3) / tick)
    assert procs.machine_cpu_s("cpu  1 2 3 4\n")["steal"] == 0  # old kernels: fewer fields
    with pytest.raises(ValueError):
        procs.machine_cpu_s("intr 1 2 3\n")


def test_activator_hosts_reads_clusters_text():
    text = "\n".join([
        "xds_cluster::127.0.0.1:8090::rq_total::1",
        "default/a-00001::127.0.0.1:8012::cx_connect_fail::2",
        "default/a-00001::127.0.0.1:8012::rq_total::10",
        "default/a-00001::127.0.0.1:8012::rq_active::1",
        "default/b-00001::127.0.0.1:40000::rq_total::99",
        "default/a-00001::127.0.0.1:8012::hostname::",
    ])
    assert activator_hosts(text, "127.0.0.1:8012") == {"default/a-00001": 12}
    assert activator_hosts(text, "127.0.0.1:9999") == {}


def test_parse_args_defaults_and_quick():
    assert parse_args([]) == BenchSettings()
    quick = parse_args(["--quick"])
    assert quick.quick and quick.duration_s == QUICK["duration_s"]
    assert quick.concurrency == QUICK["concurrency"]
    # a flag given wins over --quick's default
    assert parse_args(["--quick", "--concurrency", "1,64"]).concurrency == (1, 64)
    custom = parse_args(["--paths", "direct,queue", "--apps", "slow", "--repeat", "3",
                         "--rate", "0", "--out", "/tmp/x.json"])
    assert custom.paths == ("direct", "queue") and custom.apps == ("slow",)
    assert custom.repeat == 3 and custom.rate == 0 and custom.out == Path("/tmp/x.json")


@pytest.mark.parametrize("argv", [["--duration", "0.5"], ["--repeat", "0"],
                                  ["--concurrency", "0"], ["--paths", "direct,nope"],
                                  ["--apps", ""], ["--rate", "-1"], ["--quiet-wait", "-1"]])
def test_parse_args_rejects(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_smaps_rollup_kb():
    text = ("55d0c0000000-7ffc00000000 ---p 00000000 00:00 0   [rollup]\n"
            "Rss:               49176 kB\nPss:               23876 kB\n"
            "Private_Clean:       100 kB\nPrivate_Dirty:     20564 kB\n")
    fields = procs.smaps_rollup_kb(text)
    assert fields == {"Rss": 49176, "Pss": 23876, "Private_Clean": 100, "Private_Dirty": 20564}


def test_parse_args_queue_args():
    assert parse_args([]).queue_args == ()
    settings = parse_args(["--queue-args", "--no-request-log --log-level warning"])
    assert settings.queue_args == ("--no-request-log", "--log-level", "warning")


def test_stat_task_and_foreign_cpu():
    def stat(flags, utime, stime, start):
        fields = ["S"] + ["0"] * 49  # field 3 onwards
        fields[9 - 3], fields[14 - 3], fields[15 - 3], fields[22 - 3] = (
            str(flags), str(utime), str(stime), str(start))
        return "42 (x y) " + " ".join(fields)

    assert procs.stat_task(stat(0, 5, 7, 1000)) == (1000, 12, False)
    assert procs.stat_task(stat(procs.PF_KTHREAD, 0, 0, 3))[2] is True
    tick = procs.CLK_TCK
    before = {(1, 10): 100, (2, 10): 50, (3, 10): 7}
    after = {(1, 10): 160, (2, 10): 80, (4, 99): 30, (3, 11): 5}  # pid 3 reused, 4 new
    assert procs.foreign_cpu_s(before, after, exclude={2}) == pytest.approx((60 + 30 + 5) / tick)


def test_report_rebuilds_tables_from_recorded_runs(tmp_path, capsys):
    from bench.main import main

    def wrk(rps, p50):
        return {"requests": int(rps * 5), "duration_s": 5.0, "rps": rps, "p50_ms": p50,
                "p90_ms": p50, "p95_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50,
                "max_ms": p50 * 3, "errors": {"connect": 0, "status": 0}}

    runs = [{"app": "fast", "path": path, "concurrency": 16, "repeat": 0, "wrk": wrk(rps, p50),
             "proxy_cpu_s": cpu, "other_cpu_s": 0.1}
            for path, rps, p50, cpu in (("direct", 90_000, 0.1, {}),
                                        ("envoy", 10_000, 1.0, {"envoy": 4.0}),
                                        ("queue", 12_000, 0.9, {"queue": 3.0}))]
    document = {
        "settings": {**BenchSettings(paths=("direct", "envoy", "queue"), apps=("fast",),
                                     concurrency=(16,), rate=0).to_dict()},
        "machine": {"nproc": 2, "cpu_model": "test"},
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
        "command": ["python", "-m", "bench", "--quick"],
        "paths": {k: {"available": True, "note": ""} for k in ("direct", "envoy", "queue")},
        "runs": runs, "open_loop": {"runs": []},
        "memory_mb": {"queue (fast app)": {"idle_after_start_rss_mb": 30.0}},
    }
    source = tmp_path / "in.json"
    source.write_text(json.dumps(document))
    out = tmp_path / "out.json"
    assert main(["--report", str(source), "--out", str(out)]) == 0
    rebuilt = json.loads(out.read_text())
    (queue,) = [s for s in rebuilt["summary"] if s["path"] == "queue"]
    assert queue["vs"]["envoy"]["rps"] == pytest.approx(1.2)
    verdicts = {t["target"].split(" (")[0]: t["met"] for t in rebuilt["targets"]}
    assert verdicts["queue → app throughput ≥ 1× Envoy hop"] is True
    assert verdicts["queue RSS at idle ≤ 40 MB"] is True
    assert "12,000" in capsys.readouterr().out
    assert main(["--report", str(tmp_path / "missing.json")]) == 1


def test_mesh_app_pid_comes_from_the_runtimes_instances_file(tmp_path, monkeypatch):
    from bench.mesh import Mesh

    mesh = Mesh(procs.Processes(tmp_path, "mark"), tmp_path)
    mesh.data_dir.mkdir(parents=True)
    (mesh.data_dir / "instances.json").write_text(json.dumps([
        {"revision": "other-00001", "app_pid": 11},
        {"revision": "bench-fast-00001", "app_pid": 22},
        {"revision": "bench-gone-00001", "app_pid": 33},
    ]))  # fmt: skip
    monkeypatch.setattr(Mesh, "_marked", lambda self: [11, 22])  # 33 is not ours (or gone)
    assert mesh.app_pid("bench-fast-00001") == 22
    assert mesh.app_pid("bench-gone-00001") is None
    (mesh.data_dir / "instances.json").write_text("not json")
    assert mesh.app_pid("bench-fast-00001") is None


def test_compile_bytecode_refreshes_a_stale_pyc(tmp_path, monkeypatch):
    """The services a benchmark starts must not compile their sources at start (memory and
    start-up figures would then depend on when the tree was last edited), even where
    PYTHONDONTWRITEBYTECODE keeps Python itself from refreshing the .pyc."""
    import importlib.util
    import os

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_text("VALUE = 1\n")
    procs.compile_bytecode([module.parent])
    cached = Path(importlib.util.cache_from_source(str(module)))
    first = cached.read_bytes()
    module.write_text("VALUE = 2\n")
    os.utime(module, (cached.stat().st_mtime + 5, cached.stat().st_mtime + 5))
    procs.compile_bytecode([module.parent])
    assert cached.read_bytes() != first  # recompiled: the source is newer
