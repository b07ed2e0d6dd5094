"""The two ways the controller runs: local (SQLite + processes) or Kubernetes (CRs + Deployments).

Both give the same Store and Runtime to the same reconcilers; only setup and teardown differ.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ebb.controller.runtime import Address, RevisionKey
from ebb.controller.settings import ControllerSettings


@dataclass
class Backend:
    store: object
    runtime: object
    start: Callable[[], Awaitable[object]]
    close: Callable[[bool], Awaitable[None]]


def local_backend(cfg: ControllerSettings, metrics) -> Backend:
    from ebb.controller.runtime_local import LocalRuntime
    from ebb.controller.store import SqliteStore

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(cfg.data_dir / "ebb.db")
    runtime = LocalRuntime(cfg.data_dir, autoscaler=cfg.autoscaler_stats, metrics=metrics)

    async def close(stop_instances: bool) -> None:
        await runtime.close(stop_instances=stop_instances)
        store.close()

    # adopt(): instances a crashed controller left running keep serving and are taken over.
    return Backend(store, runtime, runtime.adopt, close)


def kubernetes_backend(cfg: ControllerSettings, environ: Mapping[str, str]) -> Backend:
    from ebb.controller.k8s_objects import queue_sidecar_from_env
    from ebb.controller.runtime_k8s import KubernetesRuntime
    from ebb.controller.store_k8s import KubernetesStore, api_client_from_environment

    sidecar = queue_sidecar_from_env(environ)
    # The queue must listen on the pod's address so the kubelet, Envoy and the activator
    # reach it.
    sidecar = type(sidecar)(**{**sidecar.__dict__, "extra_args": (*sidecar.extra_args, "--host", "0.0.0.0")})
    api = api_client_from_environment()
    runtime_box: list = []
    store = KubernetesStore(
        api, finalizer_check=lambda k: runtime_box[0].released(RevisionKey(k.namespace, k.name))
    )
    runtime = KubernetesRuntime(
        api,
        sidecar=sidecar,
        revision_of=lambda k: store.get("Revision", k.namespace, k.name),
        autoscaler=cfg.autoscaler_stats,
    )
    runtime_box.append(runtime)

    async def start() -> None:
        await store.start()
        await runtime.start()

    async def close(_stop_instances: bool) -> None:
        # Deployments belong to the cluster: a stopping controller never scales them down.
        await runtime.close(stop_instances=False)
        await store.close()
        api.close()

    return Backend(store, runtime, start, close)


def resolve_address(value: str) -> Address:
    """HOST:PORT with the host resolved once: Envoy's endpoints must be IP addresses
    (in a cluster the activator's Service name resolves to its stable ClusterIP)."""
    host, port = value.rsplit(":", 1)
    return Address(socket.gethostbyname(host), int(port))
