"""Reconcilers: pure functions from desired resources (and observed facts) to children and status.

Nothing here touches a socket, a process or the clock: callers pass `now_s` and views of the
runtime, and write what these functions return.
"""

from __future__ import annotations

import hashlib
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

# A Kubernetes name (and a DNS-1035 label) has at most 63 characters.
MAX_NAME_LENGTH = 63
_MD5_HEX_LENGTH = 32


def child_name(parent: str, suffix: str) -> str:
    """`parent + suffix`, or, when that is longer than 63, the parent cut short with the MD5
    of the whole parent in between, so the name fits and stays unique (Knative's
    kmeta.ChildName). e.g. a 60-character Service's first revision: 60 + 6 = 66 > 63, so
    the first 63 - 32 - 6 = 25 characters, the 32 hex digits, then `-00001`: 63 exactly.
    """
    if len(parent) + len(suffix) <= MAX_NAME_LENGTH:
        return parent + suffix
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: MAX_NAME_LENGTH - _MD5_HEX_LENGTH - len(suffix)] + digest + suffix


def revision_name(cfg: r.Configuration) -> str:
    """`NAME-0000N` by generation (shortened by `child_name` to fit 63), unless the
    template chooses a name."""
    return cfg.spec.template.metadata.name or child_name(cfg.metadata.name, f"-{cfg.metadata.generation:05d}")


def generation_of(rev: r.Revision) -> int:
    try:
        return int(rev.metadata.labels.get(LABEL_CONFIGURATION_GENERATION, "0"))
    except ValueError:
        return 0


def _controlled_by(rev: r.Revision, cfg: r.Configuration) -> bool:
    """The revision's controlling owner is this Configuration (by uid, as Kubernetes does;
    by its configuration label when it names no controller)."""
    owners = [o for o in rev.metadata.owner_references if o.controller]
    if owners:
        return any(o.kind == "Configuration" and o.uid == cfg.metadata.uid for o in owners)
    return rev.metadata.labels.get(LABEL_CONFIGURATION) == cfg.metadata.name


def _name_taken(name: str) -> str:
    """Knative's message when the revision to create is in the way (the API server's
    AlreadyExists, wrapped by MarkRevisionCreationFailed)."""
    return f'Revision creation failed with message: revisions.serving.knative.dev "{name}" already exists.'


def latest_created_revision(cfg: r.Configuration, revisions: list[r.Revision]) -> tuple[r.Revision | None, str]:
    """The revision that stands for the Configuration's current generation, as
    (revision, "") when it exists, (None, "") when it is still to be made, or (None, why)
    when a revision of its name is in the way. `revisions`: the namespace's.

    As Knative: a user-chosen name (`spec.template.metadata.name`) is looked up by name; a
    revision of that name made from this Configuration at this generation, or with the very
    same spec (rolling back to an earlier template), is reused; one of another
    Configuration, or with another spec, is a conflict. A generated name is looked up by
    the generation label; if its name is already taken (say the user named generation 1
    `hello-00002`; generation 2 wants that name) that is a conflict too. Knative retries
    that one silently; Ebb reports it the same way.
    """
    name = cfg.spec.template.metadata.name
    if name:
        existing = next((rev for rev in revisions if rev.metadata.name == name), None)
        if existing is None:
            return None, ""
        if not _controlled_by(existing, cfg):
            return None, _name_taken(name)
        if generation_of(existing) == cfg.metadata.generation or existing.spec == cfg.spec.template.spec:
            return existing, ""
        return None, _name_taken(name)
    for rev in revisions:
        if _controlled_by(rev, cfg) and generation_of(rev) == cfg.metadata.generation:
            return rev, ""
    name = revision_name(cfg)
    if any(rev.metadata.name == name for rev in revisions):
        return None, _name_taken(name)
    return None, ""


def latest_created(cfg: r.Configuration, revisions: list[r.Revision]) -> r.Revision | None:
    """The Configuration's latest created revision (`revisions`: the namespace's): the one
    for its generation; while that is in the way, the one its status last named; while it
    is not made yet, its newest."""
    rev, conflict = latest_created_revision(cfg, revisions)
    return _latest_created_of(cfg, [v for v in revisions if _controlled_by(v, cfg)], rev, conflict)


def _latest_created_of(cfg: r.Configuration, mine: list[r.Revision], rev: r.Revision | None, conflict: str) -> r.Revision | None:
    """`latest_created` from what `latest_created_revision` found; `mine`: the
    Configuration's own revisions."""
    if rev is not None:
        return rev
    if conflict:
        return next((v for v in mine if v.metadata.name == cfg.status.latest_created_revision_name), None)
    return max(mine, key=generation_of, default=None)


def revision_for(cfg: r.Configuration, revisions: list[r.Revision]) -> r.Revision | None:
    """The Revision to create for the Configuration's current generation, or None if it
    exists or cannot be made (`latest_created_revision`; `configuration_status` says why).
    `revisions`: the namespace's.

    A revision is stamped once per generation of the Configuration; metadata-only changes do
    not bump the generation and so make no revision.
    """
    existing, conflict = latest_created_revision(cfg, revisions)
    if existing is not None or conflict:
        return None
    rev = new("Revision")
    rev.metadata.name = revision_name(cfg)
    rev.metadata.namespace = cfg.metadata.namespace
    rev.metadata.labels.update(cfg.spec.template.metadata.labels)
    rev.metadata.annotations.update(cfg.spec.template.metadata.annotations)
    rev.metadata.labels[LABEL_CONFIGURATION] = cfg.metadata.name
    rev.metadata.labels[LABEL_CONFIGURATION_GENERATION] = str(cfg.metadata.generation)
    service = cfg.metadata.labels.get(LABEL_SERVICE)
    if service:
        rev.metadata.labels[LABEL_SERVICE] = service
    rev.metadata.owner_references.append(_owner(cfg))
    rev.spec.CopyFrom(cfg.spec.template.spec)
    return rev


def _latest_ready(cfg: r.Configuration, mine: list[r.Revision], created: r.Revision | None) -> str:
    """Knative's findAndSetLatestReadyRevision: the newest ready revision from the one the
    status names on (the latest created first when it has a user-chosen name, since a
    reused one carries an older generation); none newer ready keeps the one named, even
    while it fails (its traffic stays; the Configuration's Ready says why). A name whose
    revision was deleted is recomputed from all of them (Knative keeps it dangling).
    """
    previous = next((v for v in mine if v.metadata.name == cfg.status.latest_ready_revision_name), None)
    candidates = mine
    if previous is not None:
        start = generation_of(previous)
        candidates = [v for v in mine if start <= generation_of(v) <= cfg.metadata.generation]
    byo = created.metadata.name if created is not None and created.metadata.name == cfg.spec.template.metadata.name else ""
    if previous is not None and byo and created not in candidates:
        candidates.append(created)
    ordered = sorted(candidates, key=lambda v: (v.metadata.name == byo, generation_of(v)), reverse=True)
    ready = next((v for v in ordered if _ready(v) == "True"), previous)
    return ready.metadata.name if ready is not None else ""


def configuration_status(cfg: r.Configuration, revisions: list[r.Revision], *, now_s: float) -> r.Configuration:
    """Configuration with latestCreated/latestReady revision names and its Ready condition.
    `revisions`: the namespace's (a revision of another Configuration may be in the way)."""
    out = r.Configuration()
    out.CopyFrom(cfg)
    mine = [v for v in revisions if _controlled_by(v, cfg)]
    found, conflict = latest_created_revision(cfg, revisions)
    created = _latest_created_of(cfg, mine, found, conflict)
    out.status.observed_generation = cfg.metadata.generation
    out.status.latest_created_revision_name = created.metadata.name if created else ""
    out.status.latest_ready_revision_name = _latest_ready(cfg, mine, created)
    if conflict:
        set_condition(out, "Ready", "False", "RevisionFailed", conflict, now_s=now_s)
    elif created is None:
        set_condition(out, "Ready", "Unknown", "RevisionMissing", "Configuration has no revision yet.", now_s=now_s)
    else:
        state = _ready(created)
        cond = condition(created, "Ready")
        name = created.metadata.name
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

    A failure before the revision was ever ready fails it with the reason the runtime saw.
    One that once became ready stays Ready when scaled to zero, but not while it crash-loops:
    as Knative's reconcileDeployment, wanting instances with none ready while the last one
    exited (say min-scale 1 and an app that exits with code 3 after serving a while) is
    ContainerHealthy=False with reason ExitCode3, until an instance is ready again.
    """
    out = r.Revision()
    out.CopyFrom(rev)
    st = out.status
    st.observed_generation = rev.metadata.generation
    st.desired_replicas, st.actual_replicas, st.ready_replicas = view.desired, view.actual, view.ready
    crash_looping = view.desired > 0 and view.ready == 0 and bool(view.failure_reason)
    if view.ready > 0 or (view.ever_ready and not crash_looping):
        set_condition(out, "ResourcesAvailable", "True", now_s=now_s)
        set_condition(out, "ContainerHealthy", "True", now_s=now_s)
        set_condition(out, "Ready", "True", now_s=now_s)
    elif view.failure_reason:
        if view.ever_ready:  # it had its resources; its container is what fails
            set_condition(out, "ResourcesAvailable", "True", now_s=now_s)
        else:
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
    # while one is still on its way (a revision, or a configuration's first, deploying).
    status: str = "False"
    # Every existing revision the traffic names, ready or not: a revision pinned while it
    # deploys needs instances to become ready (Knative marks all of them routed).
    referenced: tuple[str, ...] = ()


@dataclass(frozen=True)
class _TargetError:
    reason: str
    message: str
    failure: bool  # False: not ready yet (AllTrafficAssigned Unknown)


def _target_error(
    target: r.TrafficTarget, configurations: dict[str, r.Configuration], revisions: dict[str, r.Revision]
) -> tuple[str, _TargetError | None]:
    """(the revision the target resolves to, or "", and why it cannot be served, or None),
    as Knative's addRevisionTarget / addConfigurationTarget with the errors of traffic/errors.go."""
    if target.revision_name:
        name = target.revision_name
        rev = revisions.get(name)
        if rev is None:
            return "", _TargetError("RevisionMissing", f'Revision "{name}" referenced in traffic not found.', True)
        state = _ready(rev)
        if state == "False":
            return name, _TargetError("RevisionMissing", f'Revision "{name}" failed to become ready.', True)
        if state != "True":
            return name, _TargetError("RevisionMissing", f'Revision "{name}" is not yet ready.', False)
        return name, None
    cfg = configurations.get(target.configuration_name)
    if cfg is None:
        message = f'Configuration "{target.configuration_name}" referenced in traffic not found.'
        return "", _TargetError("ConfigurationMissing", message, True)
    ready = cfg.status.latest_ready_revision_name
    if ready and ready not in revisions:
        return "", _TargetError("RevisionMissing", f'Revision "{ready}" referenced in traffic not found.', True)
    if not ready:
        cond = condition(cfg, "Ready")
        message = (cond.message if cond and cond.message else "") or (
            f'Configuration "{target.configuration_name}" does not have any ready Revision.'
        )
        return "", _TargetError("RevisionMissing", message, cond is not None and cond.status == "False")
    return ready, None


def resolve_traffic(
    route: r.Route, configurations: dict[str, r.Configuration], revisions: dict[str, r.Revision]
) -> Resolution:
    """Resolve every target to a revision name (same namespace maps keyed by name).

    Every target is looked at, as in Knative: the first problem is reported, unless a later
    one is a failure (False), which wins over one still on its way (Unknown). e.g. a pinned
    revision still deploying and a missing one: AllTrafficAssigned=False, "... not found".
    """
    targets = []
    referenced: list[str] = []
    error: _TargetError | None = None
    for target in route.spec.traffic:
        if not (target.revision_name or target.configuration_name):
            continue
        revision, problem = _target_error(target, configurations, revisions)
        if revision and revision not in referenced:
            referenced.append(revision)
        if problem is not None:
            if error is None or problem.failure:
                error = problem
            continue
        percent = target.percent if target.HasField("percent") else 0
        if target.revision_name:
            targets.append(ResolvedTarget(revision, percent, target.tag))
        else:
            targets.append(
                ResolvedTarget(revision, percent, target.tag, latest_revision=True, configuration=target.configuration_name)
            )
    if error is not None:
        return Resolution(
            reason=error.reason,
            message=error.message,
            status="False" if error.failure else "Unknown",
            referenced=tuple(referenced),
        )
    return Resolution(targets=tuple(targets), referenced=tuple(referenced))


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
