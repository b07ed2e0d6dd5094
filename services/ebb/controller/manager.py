"""The control loop: read the store and the runtime, run the reconcilers, write back, push xDS.

Level-based: every pass reconciles everything from scratch (cheap at local scale); any store
write, instance change or Envoy ACK triggers another pass, and a timer catches the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from google.protobuf import json_format

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller import reconcile as rc
from ebb.controller.gateway import cluster_name, gateway_spec, route_virtual_hosts
from ebb.controller.resources import LABEL_CONFIGURATION, key_of
from ebb.controller.runtime import Address, InstanceSpec, RevisionKey, Runtime
from ebb.controller.scaling import ScalingSpec
from ebb.controller.snapshot import VirtualHostSpec, build_snapshot
from ebb.controller.store import NotFound, Store

log = logging.getLogger(__name__)

RESYNC_S = 1.0
ACK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EndpointsView:
    """What activators learn of a revision (mirrors networking.v1.RevisionEndpoints)."""

    addresses: tuple[str, ...]
    not_ready_addresses: tuple[str, ...]
    container_concurrency: int
    timeout_s: int
    response_start_timeout_s: int
    idle_timeout_s: int


@dataclass(frozen=True)
class ScaleInputs:
    """What the last pass knew of a revision besides its decision: enough to start the
    instances a new decision asks for without a whole pass (`Controller.scale_up_now`)."""

    spec: InstanceSpec
    annotations: Mapping[str, str]
    reachable: bool
    latest: bool
    scale_target_initialized: bool  # as written to the revision's status

    def desired(self, decision: rc.Decision | None, *, can_scale_to_zero: bool, running: int) -> int:
        """`rc.desired_instances` for this revision under `decision`, `running` running now."""
        return rc.desired_instances(
            self.annotations,
            reachable=self.reachable,
            latest=self.latest,
            decision=decision,
            can_scale_to_zero=can_scale_to_zero,
            scale_target_initialized=self.scale_target_initialized,
            running=running,
        )


def instance_spec(rev: r.Revision) -> InstanceSpec:
    """What the runtime needs to start an instance of the revision."""
    container = rev.spec.containers[0] if rev.spec.containers else r.Container()
    port = container.ports[0].container_port if container.ports else 0
    probe = container.readiness_probe
    return InstanceSpec(
        service=rev.metadata.labels.get("serving.knative.dev/service", ""),
        configuration=rev.metadata.labels.get(LABEL_CONFIGURATION, ""),
        revision=rev.metadata.name,
        namespace=rev.metadata.namespace,
        command=tuple(container.command) + tuple(container.args),
        env=tuple((e.name, e.value) for e in container.env),
        working_dir=container.working_dir,
        container_port=port,
        container_concurrency=rev.spec.container_concurrency if rev.spec.HasField("container_concurrency") else 0,
        timeout_s=rev.spec.timeout_seconds if rev.spec.HasField("timeout_seconds") else 300,
        response_start_timeout_s=rev.spec.response_start_timeout_seconds,
        idle_timeout_s=rev.spec.idle_timeout_seconds,
        readiness_probe=queue_probe(probe, port) if container.HasField("readiness_probe") else "",
    )


def queue_probe(probe: r.Probe, container_port: int) -> str:
    """The readiness probe as the queue's --readiness-probe JSON (Kubernetes' field names);
    "" for the default TCP probe. A port that is the serving port is left out: the queue
    probes the app wherever the runtime put it."""
    raw = json_format.MessageToDict(probe)
    for handler in ("httpGet", "tcpSocket"):
        action = raw.get(handler)
        if action is not None and action.get("port") in (None, container_port):
            action.pop("port", None)
    if raw.get("successThreshold") == 1:
        del raw["successThreshold"]
    if raw in ({}, {"tcpSocket": {}}):
        return ""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


class Controller:
    """Owns the reconcile loop, the gateway snapshot and the endpoints fan-out."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        ads,
        *,
        gateway_port: int,
        scaling=None,
        activator: Address | None = None,
        wall_clock: Callable[[], float] = time.time,
        metrics=None,
    ) -> None:
        self._metrics = metrics  # ControllerMetrics or None
        self._store = store
        self._runtime = runtime
        self._ads = ads
        self._gateway_port = gateway_port
        self._wall = wall_clock
        self._scaling = scaling
        self._activator = activator
        self._acked_spec = None  # the GatewaySpec Envoy last ACKed
        self._last_good_hosts: dict = {}
        self._last_good: dict = {}  # route key -> the last Resolution served (rc.Resolution)
        self._dirty = asyncio.Event()
        self._stopped = False
        self._snapshot_version = ""
        self._acked_hosts: frozenset[VirtualHostSpec] = frozenset()
        self._ack_task: asyncio.Task | None = None
        self._endpoints: dict[RevisionKey, EndpointsView] = {}
        self._endpoint_watchers: list[asyncio.Queue] = []
        self._scale_inputs: dict[RevisionKey, ScaleInputs] = {}
        self._store_changed = True  # since the last pass began; no fast path before a pass
        self.passes = 0
        self.errors = 0
        store.subscribe(self._on_store_event)
        runtime.set_listener(self.trigger)

    # ------------------------------------------------------------ loop

    def trigger(self) -> None:
        self._dirty.set()

    def _on_store_event(self, _event) -> None:
        self._store_changed = True
        self.trigger()

    async def run(self) -> None:
        while not self._stopped:
            try:
                await asyncio.wait_for(self._dirty.wait(), RESYNC_S)
            except TimeoutError:
                pass
            self._dirty.clear()
            if self._stopped:
                break
            try:
                if not self._store_changed:
                    await self.scale_up_now()
                self._store_changed = False
                if self._metrics is None:
                    await self.reconcile_once()
                else:
                    with self._metrics.reconcile("pass"):
                        await self.reconcile_once()
            except Exception:  # a control loop never dies of one bad pass
                self.errors += 1
                log.exception("reconcile pass failed")
            self.passes += 1

    def stop(self) -> None:
        self._stopped = True
        self._dirty.set()
        if self._ack_task:
            self._ack_task.cancel()

    async def scale_up_now(self) -> None:
        """Start the instances that scaling decisions ask for beyond what runs, ahead of
        the pass that follows.

        A request held at zero waits for exactly this, and a whole pass reads, parses and
        writes every resource first (milliseconds each). Only used when no resource has
        changed since the last pass began, so that pass's view of each revision still
        holds; scaling down and everything else is left to the pass.
        """
        if self._scaling is None:
            return
        now = self._wall()
        for key, inputs in list(self._scale_inputs.items()):
            decision = self._scaling.decisions.get(key)
            if decision is None:
                continue
            actual = self._runtime.view(key).actual
            desired = inputs.desired(decision, can_scale_to_zero=self._activator is not None, running=actual)
            running = rc.hold_instances_for_switch(desired, actual, self._activator_acked(key))
            if running > actual:
                await self._runtime.ensure(key, inputs.spec, running, now_s=now)
                self._publish_instances(key)

    # ------------------------------------------------------------ one pass

    async def reconcile_once(self) -> None:
        now = self._wall()
        store = self._store
        services = {key_of(s): s for s in store.list("Service")}

        # 1. Services own a Configuration and a Route of the same name.
        for svc in services.values():
            store.put(rc.service_configuration(svc), now_s=now)
            store.put(rc.service_route(svc), now_s=now)

        # 2. Children whose owner is gone are deleted (owner references, as Kubernetes' GC).
        self._collect_garbage()

        configurations = store.list("Configuration")
        revisions = store.list("Revision")

        # 3. One revision per Configuration generation (its name may be taken by any
        #    revision of the namespace).
        by_namespace = self._by_namespace(revisions)
        for cfg in configurations:
            new_rev = rc.revision_for(cfg, by_namespace.get(cfg.metadata.namespace, []))
            if new_rev is not None:
                stored, _ = store.put(new_rev, now_s=now)
                by_namespace.setdefault(cfg.metadata.namespace, []).append(stored)
                log.info("revision created", extra={"revision": stored.metadata.name})

        # 4. Which revisions are routed (they need instances) - resolve with current statuses.
        routes = store.list("Route")
        configurations = {(c.metadata.namespace, c.metadata.name): c for c in store.list("Configuration")}
        revisions = {(v.metadata.namespace, v.metadata.name): v for v in store.list("Revision")}
        resolutions = {key_of(rt): self._resolve(rt, configurations, revisions) for rt in routes}
        routed = {
            RevisionKey(k.namespace, name) for k, res in resolutions.items() for name in self._routed_names(k, res)
        }
        # The latest created revision of each configuration (it needs instances to become
        # ready even before any route sends it traffic), from this pass's revisions, not
        # last status.
        latest_created = set()
        in_namespace = self._by_namespace(revisions.values())
        for c in configurations.values():
            newest = rc.latest_created(c, in_namespace.get(c.metadata.namespace, []))
            if newest is not None:
                latest_created.add(RevisionKey(newest.metadata.namespace, newest.metadata.name))

        # 5. Instances, serving mode and revision status.
        modes: dict[RevisionKey, str] = {}
        for (ns, name), rev in revisions.items():
            key = RevisionKey(ns, name)
            spec = instance_spec(rev)
            decision = None
            if self._scaling is not None:
                self._scaling.register(
                    key,
                    ScalingSpec(
                        annotations=tuple(sorted(rev.metadata.annotations.items())),
                        container_concurrency=spec.container_concurrency,
                        reachable=key in routed,
                        ready_instances=self._runtime.view(key).ready,
                    ),
                )
                decision = self._scaling.decisions.get(key)
            view = self._runtime.view(key)
            # Kept in the revision's status, so a restarted controller knows a revision
            # that went below its initial-scale was allowed to.
            initialized = rc.scale_target_initialized(
                rev.metadata.annotations,
                reachable=key in routed,
                decision=decision,
                ready=view.ready,
                initialized=rev.status.scale_target_initialized,
            )
            inputs = self._scale_inputs[key] = ScaleInputs(
                spec, dict(rev.metadata.annotations), key in routed, key in latest_created, initialized
            )
            desired = inputs.desired(decision, can_scale_to_zero=self._activator is not None, running=view.actual)
            modes[key] = rc.serving_mode(decision, desired, view.ready, has_activator=self._activator is not None)
            running = rc.hold_instances_for_switch(desired, view.actual, self._activator_acked(key))
            await self._runtime.ensure(key, spec, running, now_s=now)
            status = rc.revision_status(rev, self._runtime.view(key), now_s=now)
            status.status.desired_replicas = desired
            status.status.serving_mode = modes[key]
            status.status.scale_target_initialized = initialized
            if decision is not None:
                status.status.stable_value = decision.stable_value
                status.status.panic_value = decision.panic_value
                status.status.panic = decision.panic
                status.status.requests_per_second = decision.requests_per_second
            revisions[(ns, name)] = self._put_status(status)
        live_keys = {RevisionKey(ns, n) for ns, n in revisions}
        for key in self._scale_inputs.keys() - live_keys:
            del self._scale_inputs[key]
        for key in self._runtime.revisions() - live_keys:
            await self._runtime.remove(key)
        if self._scaling is not None:
            for key in self._scaling.known() - live_keys:
                self._scaling.unregister(key)

        # 6. Configuration status (latest created / ready).
        in_namespace = self._by_namespace(revisions.values())  # with this pass's statuses
        for (ns, name), cfg in configurations.items():
            status = rc.configuration_status(cfg, in_namespace.get(ns, []), now_s=now)
            configurations[(ns, name)] = self._put_status(status)

        # 7. Gateway: resolve again with fresh statuses, build and push the snapshot.
        resolutions = {key_of(rt): self._resolve(rt, configurations, revisions) for rt in routes}
        hosts_by_route = {}
        last_good = {}
        for rt in routes:
            k = key_of(rt)
            if resolutions[k].reason:
                # Like Knative, a route whose traffic cannot be resolved (a target missing,
                # failed, or still deploying) leaves the gateway alone: the last good config
                # keeps serving while the status says why.
                hosts_by_route[k] = self._last_good_hosts.get(k, ())
                last_good[k] = self._last_good.get(k, rc.Resolution())
            else:
                hosts_by_route[k] = route_virtual_hosts(rt, resolutions[k])
                last_good[k] = resolutions[k]
        self._last_good_hosts = dict(hosts_by_route)
        self._last_good = last_good
        endpoints = {
            key: [self._activator] if modes.get(key) == rc.PROXY else self._runtime.ready_addresses(key)
            for key in (RevisionKey(ns, n) for ns, n in revisions)
        }
        spec = gateway_spec(self._gateway_port, [h for hs in hosts_by_route.values() for h in hs], endpoints)
        self._push(spec)

        # 8. Route and Service status.
        routes_by_key = {}
        for rt in routes:
            k = key_of(rt)
            hosts = hosts_by_route[k]
            ingress_ready = bool(hosts) and all(h in self._acked_hosts for h in hosts)
            routes_by_key[(k.namespace, k.name)] = self._put_status(
                rc.route_status(rt, resolutions[k], ingress_ready, self._gateway_port, now_s=now)
            )
        for k, svc in services.items():
            self._put_status(
                rc.service_status(
                    svc, configurations.get((k.namespace, k.name)), routes_by_key.get((k.namespace, k.name)), now_s=now
                )
            )

        # 9. Endpoints for activators.
        self._publish_endpoints(revisions)

    def _routed_names(self, route_key, resolution: rc.Resolution) -> set[str]:
        """Revisions of a route that need instances: those it serves, or while it cannot be
        resolved those its last good config still serves, and every revision it names (one
        pinned while deploying must run to become ready)."""
        served = self._last_good.get(route_key, rc.Resolution()) if resolution.reason else resolution
        return {t.revision for t in served.targets} | set(resolution.referenced)

    @staticmethod
    def _by_namespace(revisions) -> dict[str, list[r.Revision]]:
        """The revisions grouped by namespace (a revision's name may be taken by any of its
        namespace's), once per step rather than once per Configuration."""
        out: dict[str, list[r.Revision]] = {}
        for rev in revisions:
            out.setdefault(rev.metadata.namespace, []).append(rev)
        return out

    def _put_status(self, obj):
        """Write status; an object deleted during the pass is simply skipped."""
        try:
            return self._store.put_status(obj)
        except NotFound:
            return obj

    def _resolve(self, route: r.Route, configurations: dict, revisions: dict) -> rc.Resolution:
        ns = route.metadata.namespace
        return rc.resolve_traffic(
            route,
            {n: c for (cns, n), c in configurations.items() if cns == ns},
            {n: v for (vns, n), v in revisions.items() if vns == ns},
        )

    def _collect_garbage(self) -> None:
        live = {
            (kind, o.metadata.namespace, o.metadata.uid)
            for kind in ("Service", "Configuration")
            for o in self._store.list(kind)
        }
        for kind in ("Configuration", "Route", "Revision"):
            for obj in self._store.list(kind):
                owners = [o for o in obj.metadata.owner_references if o.controller]
                if owners and all((o.kind, obj.metadata.namespace, o.uid) not in live for o in owners):
                    self._store.delete(kind, obj.metadata.namespace, obj.metadata.name)
                    log.info("garbage collected", extra={"kind": kind, "resource": obj.metadata.name})

    # ------------------------------------------------------------ xDS

    def _push(self, spec) -> None:
        snapshot = build_snapshot(spec)
        version = snapshot.version if hasattr(snapshot, "version") else repr(sorted(snapshot.versions.items()))
        if version == self._snapshot_version:
            return
        self._snapshot_version = version
        self._ads.set_snapshot(snapshot)
        if self._ack_task:
            self._ack_task.cancel()
        self._ack_task = asyncio.ensure_future(self._await_ack(snapshot, spec))

    async def _await_ack(self, snapshot, spec) -> None:
        if await self._ads.wait_snapshot_acked(snapshot, ACK_TIMEOUT_S):
            self._acked_hosts = frozenset(spec.virtual_hosts)
            self._acked_spec = spec
            log.info("gateway acknowledged", extra={"virtual_hosts": len(spec.virtual_hosts)})
            self.trigger()

    def _activator_acked(self, key: RevisionKey) -> bool:
        """Envoy has ACKed a config in which the revision's only endpoint is the activator
        (or in which the revision has no cluster at all: nothing routes to it)."""
        if self._activator is None or self._acked_spec is None:
            return False
        name = cluster_name(key)
        for cluster in self._acked_spec.clusters:
            if cluster.name == name:
                return [(e.host, e.port) for e in cluster.endpoints] == [(self._activator.host, self._activator.port)]
        return True

    # ------------------------------------------------------------ endpoints

    def _publish_endpoints(self, revisions: dict) -> None:
        state: dict[RevisionKey, EndpointsView] = {}
        for (ns, n), rev in revisions.items():
            key = RevisionKey(ns, n)
            spec = instance_spec(rev)
            addresses, not_ready = self._instance_addresses(key)
            state[key] = EndpointsView(
                addresses=addresses,
                not_ready_addresses=not_ready,
                container_concurrency=spec.container_concurrency,
                timeout_s=spec.timeout_s,
                response_start_timeout_s=spec.response_start_timeout_s,
                idle_timeout_s=spec.idle_timeout_s,
            )
        changed = {k: v for k, v in state.items() if self._endpoints.get(k) != v}
        removed = [k for k in self._endpoints if k not in state]
        self._endpoints = state
        if changed or removed:
            for queue in self._endpoint_watchers:
                queue.put_nowait((changed, removed, False))

    def _instance_addresses(self, key: RevisionKey) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The revision's ready and not-ready instance addresses, as EndpointsView lists them."""
        return (
            tuple(a.dial() for a in self._runtime.ready_addresses(key)),
            tuple(a.dial() for a in self._runtime.not_ready_addresses(key)),
        )

    def _publish_instances(self, key: RevisionKey) -> None:
        """Tell activators of the revision's instances now (a new one listed not-ready, so
        they start probing it), outside a pass."""
        view = self._endpoints.get(key)
        if view is None:
            return
        addresses, not_ready = self._instance_addresses(key)
        updated = replace(view, addresses=addresses, not_ready_addresses=not_ready)
        if updated != view:
            self._endpoints[key] = updated
            for queue in self._endpoint_watchers:
                queue.put_nowait(({key: updated}, [], False))

    def watch_endpoints(self) -> asyncio.Queue:
        """A queue of (changed, removed, snapshot) updates, starting with the full state."""
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait((dict(self._endpoints), [], True))
        self._endpoint_watchers.append(queue)
        return queue

    def unwatch_endpoints(self, queue: asyncio.Queue) -> None:
        if queue in self._endpoint_watchers:
            self._endpoint_watchers.remove(queue)

    def endpoints_of(self, key: RevisionKey) -> list[Address]:
        return self._runtime.ready_addresses(key)
