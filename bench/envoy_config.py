"""Static Envoy bootstraps for the benchmark (one listener -> one static cluster), and
`start_static_envoy` to run one.

No xDS: the Envoy hop baseline must cost only what proxying costs. Both the "one Envoy
hop" path (-> app) and the static gateway path (-> queue) use this.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import procs
from ebb.common.envoy import envoy_command

_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# Envoy's defaults (1024 requests/pending per cluster) are far above the benchmark's 64
# connections; raised anyway so a bigger --concurrency never measures a circuit breaker.
MAX_REQUESTS = 100_000


def _socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def static_bootstrap(
    listen_port: int,
    upstream_port: int,
    admin_port: int,
    *,
    host: str = "127.0.0.1",
    upstream_host: str = "127.0.0.1",
    cluster: str = "upstream",
    route_timeout_s: float = 30.0,
) -> dict:
    """An Envoy v3 bootstrap: HTTP listener on host:listen_port routing every request (any
    Host, any path) to a STATIC cluster of one endpoint, upstream_host:upstream_port."""
    for name, port in (("listen_port", listen_port), ("upstream_port", upstream_port),
                       ("admin_port", admin_port)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} = {port}, must be in 1..65535")
    if route_timeout_s <= 0:
        raise ValueError(f"route_timeout_s = {route_timeout_s}, must be greater than 0")
    timeout = f"{route_timeout_s:g}s"
    http_connection_manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": "bench",
        "codec_type": "HTTP1",
        # A lean baseline: no UUID per request (x-request-id), which costs Envoy ~5-10 %
        # of its throughput here; the Python proxies do not make one either.
        "generate_request_id": False,
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"},
                         "route": {"cluster": cluster, "timeout": timeout}}
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": _ROUTER_TYPE}}],
    }
    return {
        "admin": {"address": _socket_address(host, admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": _socket_address(host, listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": http_connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": MAX_REQUESTS,
                                "max_pending_requests": MAX_REQUESTS,
                                "max_requests": MAX_REQUESTS,
                            }
                        ]
                    },
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _socket_address(upstream_host,
                                                                             upstream_port)}}
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def start_static_envoy(processes: procs.Processes, binary: str, config_path: Path, upstream_port: int, *,
                       name: str = "envoy", path: str = "/",
                       cpus: set[int] | None = None) -> tuple[procs.Proc, int]:
    """Envoy with one worker and `static_bootstrap` in front of `upstream_port`, started by
    `processes` (a bench.procs.Processes) and answering on `path`; returns (proc, port)."""
    listen, admin = procs.free_port(), procs.free_port()
    config_path.write_text(json.dumps(static_bootstrap(listen, upstream_port, admin), indent=1))
    argv = envoy_command(binary, str(config_path), admin, None, concurrency=1, log_level="warning")
    proc = processes.start(name, argv, cpus=cpus)
    procs.wait_http(proc, admin, "/ready", timeout_s=30)
    procs.wait_http(proc, listen, path, timeout_s=30)
    return proc, listen
