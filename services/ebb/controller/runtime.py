"""The Runtime interface: run N instances of a revision and report which are ready."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ebb.common.settings import UNIX_ADDRESS_PREFIX
from ebb.controller.reconcile import InstanceView


@dataclass(frozen=True, order=True)
class RevisionKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start one instance of a revision."""

    service: str
    configuration: str
    revision: str
    namespace: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = ""
    container_port: int = 0  # 0 = pick a free port and pass it in PORT
    container_concurrency: int = 0
    timeout_s: int = 300
    response_start_timeout_s: int = 0
    idle_timeout_s: int = 0
    # The container's readinessProbe as the queue's --readiness-probe JSON; "" = the
    # default, a TCP probe probed aggressively.
    readiness_probe: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    unix: str = ""  # a unix socket the queue also listens on (local runtime), or ""

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def dial(self) -> str:
        """What a process on the same machine (the local activator) is told to connect
        to: `unix:PATH` when the queue also listens on a unix socket, else `host:port`."""
        return UNIX_ADDRESS_PREFIX + self.unix if self.unix else str(self)


class Runtime(Protocol):
    """Local processes or Kubernetes Deployments behind one narrow interface."""

    def set_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever an instance changes state."""

    async def ensure(self, key: RevisionKey, spec: InstanceSpec, count: int, *, now_s: float) -> None:
        """Converge the revision to `count` instances (start new ones, drain surplus)."""

    def view(self, key: RevisionKey) -> InstanceView:
        """Counts and failures of the revision's instances."""

    def ready_addresses(self, key: RevisionKey) -> list[Address]:
        """Queue addresses of the ready instances (serving, not draining)."""

    def not_ready_addresses(self, key: RevisionKey) -> list[Address]:
        """Queue addresses of instances started but not yet ready."""

    def revisions(self) -> set[RevisionKey]:
        """Revisions that have instances (running or stopping)."""

    async def remove(self, key: RevisionKey) -> None:
        """Drain and stop every instance of the revision."""

    async def close(self, *, stop_instances: bool) -> None:
        """Stop watching; stop every instance too when asked."""


# Added to a revision's timeoutSeconds for its queue's drain: requests that arrive during
# the drain (until the gateway and the activators have dropped the instance) need their
# whole timeout too.
DRAIN_MARGIN_S = 10


def queue_drain_max_s(spec: InstanceSpec) -> int:
    """How long an instance's queue may drain after SIGTERM: the revision's timeoutSeconds
    plus DRAIN_MARGIN_S, so that no accepted request is cut (Knative gives the pod
    timeoutSeconds of termination grace). e.g. timeoutSeconds 300 -> 310 s."""
    return spec.timeout_s + DRAIN_MARGIN_S


def revision_queue_args(spec: InstanceSpec) -> list[str]:
    """The queue flags that carry the revision's own settings, in both runtimes."""
    args = [
        "--container-concurrency", str(spec.container_concurrency),
        "--timeout-seconds", str(spec.timeout_s),
        "--drain-max-s", str(queue_drain_max_s(spec)),
    ]  # fmt: skip
    if spec.response_start_timeout_s:
        args += ["--response-start-timeout-seconds", str(spec.response_start_timeout_s)]
    if spec.idle_timeout_s:
        args += ["--idle-timeout-seconds", str(spec.idle_timeout_s)]
    if spec.readiness_probe:
        args += ["--readiness-probe", spec.readiness_probe]
    return args
