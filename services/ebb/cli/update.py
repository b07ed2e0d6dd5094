"""`ebb service update`: the pure edit of a stored Service (template, annotations, traffic), as kn does it.

Nothing here talks to the controller: `edit_service` takes the Service as stored and the
parsed flags and returns the Service to Apply. The controller stamps a new revision when
the template changed and none when only traffic or metadata changed.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ebb.api.serving.v1 import resources_pb2
from ebb.cli.errors import CliError

LATEST = "@latest"  # the traffic target that follows the latest ready revision
AUTOSCALING_PREFIX = "autoscaling.knative.dev/"


# ---- flags ----


@dataclass(frozen=True)
class KeyEdits:
    """`K=V` (set) and `K-` (remove) flags, in the order given."""

    sets: tuple[tuple[str, str], ...] = ()
    removes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sets or self.removes)


def parse_key_edits(values: Sequence[str] | None, flag: str) -> KeyEdits:
    """`--env A=1 --env B-` as KeyEdits; CliError names the flag of a malformed one."""
    sets: list[tuple[str, str]] = []
    removes: list[str] = []
    for value in values or ():
        key, sep, rest = value.partition("=")
        if sep:
            if not key:
                raise CliError(f"{flag} {value!r}: expected KEY=VALUE or KEY-")
            sets.append((key, rest))
        elif value.endswith("-") and len(value) > 1:
            removes.append(value[:-1])
        else:
            raise CliError(f"{flag} {value!r}: expected KEY=VALUE or KEY- (to remove KEY)")
    both = {k for k, _ in sets} & set(removes)
    if both:
        raise CliError(f"{flag}: {sorted(both)[0]} is both set and removed")
    return KeyEdits(tuple(sets), tuple(removes))


def _split_ref(value: str, flag: str, what: str) -> tuple[str, str]:
    ref, sep, rest = value.partition("=")
    if not sep or not ref or not rest:
        raise CliError(f"{flag} {value!r}: expected {what}")
    return ref, rest


def parse_traffic(values: Sequence[str] | None) -> tuple[tuple[str, int], ...] | None:
    """`--traffic REV=PCT|TAG=PCT|@latest=PCT` as (ref, percent) pairs; None when not given.

    Only the syntax is checked here: ranges and the sum of 100 are the webhook's to judge,
    so its message is the one the user sees.
    """
    if not values:
        return None
    pairs: list[tuple[str, int]] = []
    for value in values:
        ref, text = _split_ref(value, "--traffic", "REVISION=PERCENT, TAG=PERCENT or @latest=PERCENT")
        number = text.strip().removesuffix("%")
        try:
            percent = int(number)
        except ValueError:
            raise CliError(f"--traffic {value!r}: {text!r} is not a whole percent") from None
        if any(ref == seen for seen, _ in pairs):
            raise CliError(f"--traffic: {ref} is given more than once")
        pairs.append((ref, percent))
    return tuple(pairs)


def parse_tags(values: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """`--tag REV=TAG|@latest=TAG` as (ref, tag) pairs; a tag may be given only once."""
    pairs: list[tuple[str, str]] = []
    for value in values or ():
        ref, tag = _split_ref(value, "--tag", "REVISION=TAG or @latest=TAG")
        if any(tag == seen for _, seen in pairs):
            raise CliError(f"--tag: tag {tag} is given more than once")
        pairs.append((ref, tag))
    return tuple(pairs)


@dataclass(frozen=True)
class TrafficEdits:
    """What `--traffic`, `--tag` and `--untag` ask for."""

    percents: tuple[tuple[str, int], ...] | None = None  # None: --traffic not given
    tags: tuple[tuple[str, str], ...] = ()
    untags: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.percents is not None or bool(self.tags or self.untags)


@dataclass(frozen=True)
class UpdateArgs:
    """Everything `ebb service update` can change; unset fields are left as stored."""

    cmd: str | None = None
    env: KeyEdits = field(default_factory=KeyEdits)
    annotations: KeyEdits = field(default_factory=KeyEdits)
    concurrency_limit: int | None = None
    timeout_s: int | None = None
    revision_name: str | None = None
    traffic: TrafficEdits = field(default_factory=TrafficEdits)

    def __bool__(self) -> bool:
        return any((
            self.cmd is not None, self.env, self.annotations, self.concurrency_limit is not None,
            self.timeout_s is not None, self.revision_name is not None, self.traffic,
        ))


# ---- the edit ----


def revision_name_for(service_name: str, name: str) -> str:
    """`--revision-name v2` on service hello means `hello-v2` (Knative requires the prefix;
    kn adds it the same way)."""
    prefix = f"{service_name}-"
    return name if name.startswith(prefix) else prefix + name


def edit_service(current: resources_pb2.Service, args: UpdateArgs) -> resources_pb2.Service:
    """The Service to Apply: `current` (as stored) with the asked-for changes.

    Only what Apply takes is copied (name, namespace, labels, annotations, spec), never
    status. A template change without `--revision-name` drops a user-chosen template name,
    so the controller names the new revision `NAME-0000N` (Knative refuses a template
    change that keeps the old name).
    """
    if not args:
        raise CliError("nothing to update: give at least one of --cmd, --env, --annotation, "
                       "--concurrency-limit, --timeout, --revision-name, --traffic, --tag, --untag")
    meta = current.metadata
    service = resources_pb2.Service(
        api_version=current.api_version or "serving.knative.dev/v1",
        kind="Service",
        metadata=resources_pb2.ObjectMeta(
            name=meta.name, namespace=meta.namespace, labels=dict(meta.labels), annotations=dict(meta.annotations)
        ),
    )
    service.spec.CopyFrom(current.spec)
    template = service.spec.template
    if not template.spec.containers:
        template.spec.containers.add()
    container = template.spec.containers[0]

    if args.cmd is not None:
        container.command[:] = _split_command(args.cmd)
        del container.args[:]
    _edit_env(container, args.env)
    for key, value in args.annotations.sets:
        template.metadata.annotations[key] = value
        if not key.startswith(AUTOSCALING_PREFIX):
            # Autoscaling annotations act on revisions only; Knative refuses them on a Service.
            service.metadata.annotations[key] = value
    for key in args.annotations.removes:
        template.metadata.annotations.pop(key, None)
        service.metadata.annotations.pop(key, None)
    if args.concurrency_limit is not None:
        template.spec.container_concurrency = args.concurrency_limit
    if args.timeout_s is not None:
        template.spec.timeout_seconds = args.timeout_s

    if args.revision_name is not None:
        template.metadata.name = revision_name_for(meta.name, args.revision_name)
    elif template != current.spec.template and template.metadata.name:
        template.metadata.ClearField("name")

    if args.traffic:
        current_targets = list(current.spec.traffic) or [
            resources_pb2.TrafficTarget(latest_revision=True, percent=100)
        ]
        del service.spec.traffic[:]
        service.spec.traffic.extend(compute_traffic(current_targets, args.traffic))
    return service


def template_changed(current: resources_pb2.Service, desired: resources_pb2.Service) -> bool:
    """True when Applying `desired` makes the controller stamp a new revision."""
    return current.spec.template != desired.spec.template


def _split_command(cmd: str) -> list[str]:
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise CliError(f"--cmd {cmd!r}: {exc}") from None
    if not argv:
        raise CliError("--cmd: must not be empty")
    return argv


def _edit_env(container: resources_pb2.Container, edits: KeyEdits) -> None:
    """Set in place (order kept), append new names, drop removed ones (absent: no-op)."""
    for key, value in edits.sets:
        for var in container.env:
            if var.name == key:
                var.value = value
                break
        else:
            container.env.add(name=key, value=value)
    if edits.removes:
        kept = [var for var in container.env if var.name not in edits.removes]
        del container.env[:]
        container.env.extend(kept)


def compute_traffic(
    targets: Sequence[resources_pb2.TrafficTarget], edits: TrafficEdits
) -> list[resources_pb2.TrafficTarget]:
    """The new traffic block, computed as `kn service update` does:

    1. `--untag TAG` removes the tag (CliError when no target has it);
    2. `--tag REV=TAG` tags REV's untagged target, else adds a 0% target for REV with the
       tag; `@latest=TAG` does the same for the latestRevision target;
    3. `--traffic` first sets every percent to 0, then gives each REF its share: REF is
       `@latest` (the untagged latestRevision target, added when missing), a tag, or a
       revision name (added when missing);
    4. targets left with 0% and no tag are dropped.

    e.g. [@latest 100] + `--traffic hello-00001=50 --traffic @latest=50` ->
    [@latest 50, hello-00001 50]. Sums are not checked: the webhook says what is wrong.
    """
    out = [_copy_target(t) for t in targets]
    for tag in edits.untags:
        hits = [t for t in out if t.tag == tag]
        if not hits:
            raise CliError(f"--untag {tag}: no traffic target has tag {tag}")
        for target in hits:
            target.tag = ""

    for ref, tag in edits.tags:
        holder = next((t for t in out if t.tag == tag), None)
        if holder is not None:
            if _refers_to(holder, ref):
                continue  # already so
            raise CliError(f"--tag {ref}={tag}: tag {tag} is already on {_target_name(holder)} "
                           f"(add --untag {tag} to move it)")
        mine = [t for t in out if _refers_to(t, ref)]
        untagged = next((t for t in mine if not t.tag), None)
        if untagged is not None:
            untagged.tag = tag
        else:
            out.append(_new_target(ref, 0, tag))

    if edits.percents is not None:
        for target in out:
            target.percent = 0
        for ref, percent in edits.percents:
            if ref == LATEST:
                latest = [t for t in out if _is_latest(t)]
                target = next((t for t in latest if not t.tag), None) or (latest[0] if latest else None)
            else:
                target = next((t for t in out if t.tag == ref), None) or next(
                    (t for t in out if t.revision_name == ref and not t.tag), None
                ) or next((t for t in out if t.revision_name == ref), None)
            if target is None:
                out.append(_new_target(ref, percent, ""))
            else:
                target.percent = percent

    return [t for t in out if t.tag or (t.HasField("percent") and t.percent != 0)]


def _copy_target(target: resources_pb2.TrafficTarget) -> resources_pb2.TrafficTarget:
    copy = resources_pb2.TrafficTarget()
    copy.CopyFrom(target)
    copy.ClearField("url")  # status only; the webhook refuses it in a spec
    if not copy.HasField("percent"):
        copy.percent = 0
    return copy


def _is_latest(target: resources_pb2.TrafficTarget) -> bool:
    # A target without revisionName follows the latest revision (Knative's default).
    return target.latest_revision if target.HasField("latest_revision") else not target.revision_name


def _refers_to(target: resources_pb2.TrafficTarget, ref: str) -> bool:
    return _is_latest(target) if ref == LATEST else (target.revision_name == ref and not _is_latest(target))


def _new_target(ref: str, percent: int, tag: str) -> resources_pb2.TrafficTarget:
    if ref == LATEST:
        return resources_pb2.TrafficTarget(latest_revision=True, percent=percent, tag=tag)
    return resources_pb2.TrafficTarget(revision_name=ref, latest_revision=False, percent=percent, tag=tag)


def _target_name(target: resources_pb2.TrafficTarget) -> str:
    return LATEST if _is_latest(target) else target.revision_name


def new_revision_refs(
    before: Sequence[resources_pb2.TrafficTarget], after: Sequence[resources_pb2.TrafficTarget]
) -> list[str]:
    """Revision names that `after` routes to and `before` did not (to check they exist)."""
    known = {t.revision_name for t in before if t.revision_name}
    seen: list[str] = []
    for target in after:
        name = target.revision_name
        if name and not _is_latest(target) and name not in known and name not in seen:
            seen.append(name)
    return seen
