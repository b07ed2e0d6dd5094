"""Reconcilers: pure functions from desired resources (and observed facts) to children and status.

Nothing here touches a socket, a process or the clock: callers pass `now_s` and views of the
runtime, and write what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebb.api.serving.v1 import resources_pb2 as r
from ebb.controller.resources import (
    API_VERSION,
    LABEL_CONFIGURATION,
    LABEL_CONFIGURATION_GENERATION,
    LABEL_SERVICE,
    condition,
    new,
    set_condition,
)

# ---------------------------------------------------------------- Service -> children


def _owner(parent, *, controller: bool = True) -> r.OwnerReference:
    return r.OwnerReference(
        api_version=API_VERSION,
        kind=parent.kind or type(parent).__name__,
        name=parent.metadata.name,
        uid=parent.metadata.uid,
        controller=controller,
        block_owner_deletion=True,
    )


def service_configuration(svc: r.Service) -> r.Configuration:
    """The Configuration a Service owns: same name, the Service's template."""
    cfg = new("Configuration")
    cfg.metadata.name = svc.metadata.name
    cfg.metadata.namespace = svc.metadata.namespace
    cfg.metadata.labels.update(svc.metadata.labels)
    cfg.metadata.labels[LABEL_SERVICE] = svc.metadata.name
    cfg.metadata.owner_references.append(_owner(svc))
    cfg.spec.template.CopyFrom(svc.spec.template)
    return cfg


def service_route(svc: r.Service) -> r.Route:
    """The Route a Service owns: its traffic block, `latestRevision` bound to its Configuration."""
    route = new("Route")
    route.metadata.name = svc.metadata.name
    route.metadata.namespace = svc.metadata.namespace
    route.metadata.labels.update(svc.metadata.labels)
    route.metadata.labels[LABEL_SERVICE] = svc.metadata.name
    route.metadata.owner_references.append(_owner(svc))
    targets = list(svc.spec.traffic) or [r.TrafficTarget(latest_revision=True, percent=100)]
    for target in targets:
        out = route.spec.traffic.add()
        out.CopyFrom(target)
        if not target.revision_name:
            # Inside a Service, "latest" means the latest ready revision of its Configuration.
            out.configuration_name = svc.metadata.name
            out.latest_revision = True
    return route


# ---------------------------------------------------------------- Configuration -> Revision


def revision_name(cfg: r.Configuration) -> str:
    """`NAME-0000N` by generation, unless the template chooses a name."""
    return cfg.spec.template.metadata.name or f"{cfg.metadata.name}-{cfg.metadata.generation:05d}"


def generation_of(rev: r.Revision) -> int:
    try:
        return int(rev.metadata.labels.get(LABEL_CONFIGURATION_GENERATION, "0"))
    except ValueError:
        return 0


def revision_for(cfg: r.Configuration, revisions: list[r.Revision]) -> r.Revision | None:
    """The Revision to create for the Configuration's current generation, or None if it exists.

    A revision is stamped once per generation of the Configuration; metadata-only changes do
    not bump the generation and so make no revision.
    """
    generation = cfg.metadata.generation
    if any(generation_of(rev) == generation for rev in revisions):
        return None
    name = revision_name(cfg)
    if any(rev.metadata.name == name for rev in revisions):
        return None  # a user-chosen name that already exists: validation reports it
    rev = new("Revision")
    rev.metadata.name = name
    rev.metadata.namespace = cfg.metadata.namespace
    rev.metadata.labels.update(cfg.spec.template.metadata.labels)
    rev.metadata.annotations.update(cfg.spec.template.metadata.annotations)
    rev.metadata.labels[LABEL_CONFIGURATION] = cfg.metadata.name
    rev.metadata.labels[LABEL_CONFIGURATION_GENERATION] = str(generation)
    service = cfg.metadata.labels.get(LABEL_SERVICE)
    if service:
        rev.metadata.labels[LABEL_SERVICE] = service
    rev.metadata.owner_references.append(_owner(cfg))
    rev.spec.CopyFrom(cfg.spec.template.spec)
    return rev


def configuration_status(cfg: r.Configuration, revisions: list[r.Revision], *, now_s: float) -> r.Configuration:
    """Configuration with latestCreated/latestReady revision names and its Ready condition."""
    out = r.Configuration()
    out.CopyFrom(cfg)
    ordered = sorted(revisions, key=generation_of)
    current = [rev for rev in ordered if generation_of(rev) == cfg.metadata.generation]
    latest_created = current[-1] if current else (ordered[-1] if ordered else None)
    ready = [rev for rev in ordered if _ready(rev) == "True"]
    out.status.observed_generation = cfg.metadata.generation
    out.status.latest_created_revision_name = latest_created.metadata.name if latest_created else ""
    # Recomputed every pass: a deleted or failed revision stops being "latest ready".
    out.status.latest_ready_revision_name = ready[-1].metadata.name if ready else ""
    if latest_created is None:
        set_condition(out, "Ready", "Unknown", "RevisionMissing", "Configuration has no revision yet.", now_s=now_s)
    else:
        state = _ready(latest_created)
        cond = condition(latest_created, "Ready")
        name = latest_created.metadata.name
        if state == "True":
            set_condition(out, "Ready", "True", now_s=now_s)
        elif state == "False":
            detail = (cond.message if cond else "").rstrip(".")
            set_condition(
                out, "Ready", "False", "RevisionFailed", f'Revision "{name}" failed with message: {detail}.', now_s=now_s
            )
        else:
            set_condition(out, "Ready", "Unknown", "", f'Waiting for revision "{name}" to become ready.', now_s=now_s)
    return out


def _ready(obj) -> str:
    cond = condition(obj, "Ready")
    return cond.status if cond else "Unknown"


# ---------------------------------------------------------------- Revision status


@dataclass(frozen=True)
class InstanceView:
    """What the runtime observed of a revision's instances."""

    desired: int = 0
    actual: int = 0  # started (running) instances
    ready: int = 0  # instances passing readiness
    ever_ready: bool = False  # an instance has been ready at some point
    failure_reason: str = ""  # e.g. "ExitCode1"; empty when healthy
    failure_message: str = ""


def revision_status(rev: r.Revision, view: InstanceView, *, now_s: float) -> r.Revision:
    """Revision Ready = ResourcesAvailable ∧ ContainerHealthy (Knative).

    A revision that once became ready stays Ready when scaled to zero; a failure before it
    was ever ready fails it with the reason the runtime saw.
    """
    out = r.Revision()
    out.CopyFrom(rev)
    st = out.status
    st.observed_generation = rev.metadata.generation
    st.desired_replicas, st.actual_replicas, st.ready_replicas = view.desired, view.actual, view.ready
    if view.ever_ready or view.ready > 0:
        set_condition(out, "ResourcesAvailable", "True", now_s=now_s)
        set_condition(out, "ContainerHealthy", "True", now_s=now_s)
        set_condition(out, "Ready", "True", now_s=now_s)
    elif view.failure_reason:
        set_condition(out, "ResourcesAvailable", "Unknown", "Deploying", now_s=now_s)
        set_condition(out, "ContainerHealthy", "False", view.failure_reason, view.failure_message, now_s=now_s)
        set_condition(out, "Ready", "False", view.failure_reason, view.failure_message, now_s=now_s)
    else:
        set_condition(out, "ResourcesAvailable", "Unknown", "Deploying", now_s=now_s)
        set_condition(out, "ContainerHealthy", "Unknown", "Deploying", now_s=now_s)
        set_condition(out, "Ready", "Unknown", "Deploying", now_s=now_s)
    set_condition(
        out,
        "Active",
        "True" if view.ready > 0 else "False",
        "" if view.ready > 0 else "NoTraffic",
        "" if view.ready > 0 else "The target is not receiving traffic.",
        now_s=now_s,
    )
    return out


# ---------------------------------------------------------------- Route


@dataclass(frozen=True)
class ResolvedTarget:
    """A traffic target resolved to a concrete revision."""

    revision: str
    percent: int
    tag: str = ""
    latest_revision: bool = False
    configuration: str = ""


@dataclass(frozen=True)
class Resolution:
    """Traffic of a route as served, or why it cannot be served."""

    targets: tuple[ResolvedTarget, ...] = ()
    reason: str = ""  # empty when all traffic is assigned
    message: str = ""
    # "False" when a target failed for good (missing, or its revision failed); "Unknown"
    # while a configuration's first revision is still deploying (Knative does the same).
    status: str = "False"


def resolve_traffic(
    route: r.Route, configurations: dict[str, r.Configuration], revisions: dict[str, r.Revision]
) -> Resolution:
    """Resolve every target to a revision name (same namespace maps keyed by name)."""
    targets = []
    for target in route.spec.traffic:
        percent = target.percent if target.HasField("percent") else 0
        if target.revision_name:
            rev = revisions.get(target.revision_name)
            if rev is None:
                return Resolution(
                    reason="RevisionMissing", message=f'Revision "{target.revision_name}" referenced in traffic not found.'
                )
            if _ready(rev) == "False":
                return Resolution(
                    reason="RevisionMissing", message=f'Revision "{target.revision_name}" failed to become ready.'
                )
            targets.append(ResolvedTarget(target.revision_name, percent, target.tag))
        elif target.configuration_name:
            cfg = configurations.get(target.configuration_name)
            if cfg is None:
                return Resolution(
                    reason="ConfigurationMissing",
                    message=f'Configuration "{target.configuration_name}" referenced in traffic not found.',
                )
            ready = cfg.status.latest_ready_revision_name
            if ready and ready not in revisions:
                return Resolution(
                    reason="RevisionMissing", message=f'Revision "{ready}" referenced in traffic not found.'
                )
            if not ready:
                cond = condition(cfg, "Ready")
                return Resolution(
                    reason="RevisionMissing",
                    message=(cond.message if cond and cond.message else "")
                    or f'Configuration "{target.configuration_name}" does not have any ready Revision.',
                    status="False" if cond is not None and cond.status == "False" else "Unknown",
                )
            targets.append(
                ResolvedTarget(ready, percent, target.tag, latest_revision=True, configuration=target.configuration_name)
            )
    return Resolution(targets=tuple(targets))


def host_of(name: str, namespace: str, tag: str = "") -> str:
    """`NAME.NAMESPACE.localhost`, or `TAG-NAME.NAMESPACE.localhost` for a tag."""
    return f"{tag + '-' if tag else ''}{name}.{namespace}.localhost"


def url_of(host: str, gateway_port: int) -> str:
    return f"http://{host}" + ("" if gateway_port == 80 else f":{gateway_port}")


def route_status(
    route: r.Route, resolution: Resolution, ingress_ready: bool, gateway_port: int, *, now_s: float
) -> r.Route:
    """Route Ready = AllTrafficAssigned ∧ IngressReady; status.traffic names revisions."""
    out = r.Route()
    out.CopyFrom(route)
    st = out.status
    st.observed_generation = route.metadata.generation
    host = host_of(route.metadata.name, route.metadata.namespace)
    st.url = url_of(host, gateway_port)
    st.address.url = f"http://{route.metadata.name}.{route.metadata.namespace}.svc.cluster.local"
    if resolution.reason:
        state = resolution.status
        set_condition(out, "AllTrafficAssigned", state, resolution.reason, resolution.message, now_s=now_s)
        set_condition(out, "IngressReady", "Unknown", "", "", now_s=now_s)
        set_condition(out, "Ready", state, resolution.reason, resolution.message, now_s=now_s)
        return out
    del st.traffic[:]
    for target in resolution.targets:
        t = st.traffic.add(revision_name=target.revision, percent=target.percent, tag=target.tag)
        t.latest_revision = target.latest_revision
        if target.tag:
            t.url = url_of(host_of(route.metadata.name, route.metadata.namespace, target.tag), gateway_port)
    set_condition(out, "AllTrafficAssigned", "True", now_s=now_s)
    if ingress_ready:
        set_condition(out, "IngressReady", "True", now_s=now_s)
        set_condition(out, "Ready", "True", now_s=now_s)
    else:
        msg = "Waiting for the gateway to acknowledge the configuration."
        set_condition(out, "IngressReady", "Unknown", "IngressNotConfigured", msg, now_s=now_s)
        set_condition(out, "Ready", "Unknown", "IngressNotConfigured", msg, now_s=now_s)
    return out


# ---------------------------------------------------------------- Service status


def service_status(svc: r.Service, cfg: r.Configuration | None, route: r.Route | None, *, now_s: float) -> r.Service:
    """Service Ready = ConfigurationsReady ∧ RoutesReady, with the children's status merged."""
    out = r.Service()
    out.CopyFrom(svc)
    st = out.status
    st.observed_generation = svc.metadata.generation
    for child, cond_type in ((cfg, "ConfigurationsReady"), (route, "RoutesReady")):
        cond = condition(child, "Ready") if child is not None else None
        if cond is None:
            set_condition(out, cond_type, "Unknown", "Creating", "", now_s=now_s)
        else:
            set_condition(out, cond_type, cond.status, cond.reason, cond.message, now_s=now_s)
    if cfg is not None:
        st.latest_created_revision_name = cfg.status.latest_created_revision_name
        st.latest_ready_revision_name = cfg.status.latest_ready_revision_name
    if route is not None:
        st.url = route.status.url
        st.address.CopyFrom(route.status.address)
        del st.traffic[:]
        st.traffic.extend(route.status.traffic)
    states = [condition(out, t).status for t in ("ConfigurationsReady", "RoutesReady")]
    if all(s == "True" for s in states):
        set_condition(out, "Ready", "True", now_s=now_s)
    else:
        failing = next(
            (condition(out, t) for t in ("ConfigurationsReady", "RoutesReady") if condition(out, t).status == "False"),
            None,
        ) or next(condition(out, t) for t in ("ConfigurationsReady", "RoutesReady") if condition(out, t).status != "True")
        set_condition(out, "Ready", failing.status, failing.reason, failing.message, now_s=now_s)
    return out


# ---------------------------------------------------------------- applying scale decisions

ANNOTATION_PREFIX = "autoscaling.knative.dev/"


@dataclass(frozen=True)
class ScaleBounds:
    """A revision's min/max/initial scale (mirrors autoscaler.v1.ScaleBounds).

    The autoscaler resolves them, because it holds the cluster-wide config-autoscaler
    settings: each annotation when valid, else the cluster's setting of the same name.
    """

    min_scale: int = 0
    max_scale: int = 0  # 0 = unbounded
    initial_scale: int = 1


@dataclass(frozen=True)
class Decision:
    """The autoscaler's latest verdict for a revision (mirrors autoscaler.v1.ScaleDecision)."""

    desired: int  # -1 = unknown yet
    excess_burst_capacity: int = 0
    panic: bool = False
    stable_value: float = 0.0
    panic_value: float = 0.0
    requests_per_second: float = 0.0
    bounds: ScaleBounds | None = None  # None: not sent; the annotations alone apply


def _int_annotation(annotations, name: str, default: int) -> int:
    try:
        return int(annotations.get(ANNOTATION_PREFIX + name, default))
    except (TypeError, ValueError):
        return default  # the webhook rejects malformed values; never fail the loop on one


def scale_bounds(annotations, decision: Decision | None) -> ScaleBounds:
    """The decision's bounds (annotation, else the cluster-wide setting; a max-scale-limit
    has already ruled out larger maxima), or the annotations alone over Knative's defaults
    until the autoscaler has sent them."""
    bounds = decision.bounds if decision is not None else None
    if bounds is None:
        bounds = ScaleBounds(
            min_scale=_int_annotation(annotations, "min-scale", 0),
            max_scale=_int_annotation(annotations, "max-scale", 0),
            initial_scale=_int_annotation(annotations, "initial-scale", 1),
        )
    return bounds


def scale_target_initialized(
    annotations, *, reachable: bool, decision: Decision | None, ready: int, initialized: bool
) -> bool:
    """Knative's ScaleTargetInitialized: set once `ready` instances reach the revision's
    starting scale, max(initial-scale, min-scale while routed), and never unset.

    Until it is set, initial-scale stays the floor (`desired_instances`), so a revision with
    initial-scale 5 keeps 5 through an idle first decision: at 1, 2 .. 4 ready it is not
    initialized; at 5 it is, and the next idle decision takes it down. With initial-scale
    0 or 1 and no min-scale it is set at the first ready instance (at once for 0), and
    nothing waited for it.
    Not before the autoscaler has spoken: only its bounds carry a cluster-wide initial-scale.
    """
    if initialized:
        return True
    if decision is None:
        return False
    bounds = scale_bounds(annotations, decision)
    min_scale = bounds.min_scale if reachable else 0
    return ready >= max(bounds.initial_scale, min_scale)


def desired_instances(
    annotations,
    *,
    reachable: bool,
    latest: bool,
    decision: Decision | None,
    can_scale_to_zero: bool,
    scale_target_initialized: bool,
    running: int,
) -> int:
    """Instances to run, applying a decision as Knative's KPA reconciler does.

    - the bounds are `scale_bounds`: the autoscaler's, else the annotations alone;
    - min-scale applies only while the revision is reachable (routed);
    - until the revision is `scale_target_initialized`, initial-scale is a floor as well
      (when above 1, as in Knative: 0 or 1 is no floor under a decision);
    - without a decision (none yet, or desired -1: the autoscaler has no data), an
      initialized revision keeps the `running` instances, as Knative leaves the scale
      alone, so a restarted controller or autoscaler neither wakes a revision at zero nor
      pushes one back up to initial-scale; a revision not yet initialized gets
      max(initial-scale, min-scale), the scale Knative creates it with;
    - then clamp to [min, max] (max 0 = unbounded);
    - a revision that is neither routed nor the newest of its configuration runs nothing;
    - without an activator to hold requests, a routed revision never goes below one.

    e.g. min-scale 2, decision 1 while routed -> 2; the same revision unrouted -> 0;
    initial-scale 5, decision 1 -> 5 until 5 instances have been ready, then 1.
    """
    if not reachable and not latest:
        return 0
    bounds = scale_bounds(annotations, decision)
    min_scale = bounds.min_scale if reachable else 0
    if decision is None or decision.desired < 0:
        desired = running if scale_target_initialized else bounds.initial_scale
    else:
        desired = decision.desired
        if bounds.initial_scale > 1 and not scale_target_initialized:
            desired = max(desired, bounds.initial_scale)
    desired = max(desired, min_scale)
    if bounds.max_scale > 0:
        desired = min(desired, bounds.max_scale)
    if reachable and not can_scale_to_zero:
        desired = max(desired, 1)
    return desired


SERVE = "serve"
PROXY = "proxy"


def serving_mode(decision: Decision | None, desired: int, ready: int, *, has_activator: bool) -> str:
    """Where the gateway sends a revision's traffic: its instances, or the activator.

    Knative puts the activator in the path ("proxy") when the revision is scaled to zero or
    short of burst capacity (EBC < 0), and also before the autoscaler has spoken (the initial
    EBC, initial_scale × target − TBC, is negative by default: 1 × 100 − 211 = −111). Ebb also
    proxies while no instance is ready, so a request is held, not refused.
    """
    if not has_activator:
        return SERVE
    if decision is None or desired == 0 or ready == 0 or decision.excess_burst_capacity < 0:
        return PROXY
    return SERVE


def hold_instances_for_switch(desired: int, running: int, activator_acked: bool) -> int:
    """Make-before-break scale to zero: keep the instances until Envoy has ACKed the
    activator as the revision's endpoint; only then may the last one stop."""
    if desired == 0 and running > 0 and not activator_acked:
        return running
    return desired
