"""The resource commands: apply, service create/update/list/describe/delete, revision and route views, revision delete."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ebb.api.serving.v1 import resources_pb2
from ebb.cli import output
from ebb.cli.client import ServingClient
from ebb.cli.errors import CliError
from ebb.cli.manifest import GROUP, ManifestError, load_documents, resolve_working_dirs
from ebb.cli.update import (
    AUTOSCALING_PREFIX,
    UpdateArgs,
    edit_service,
    new_revision_refs,
    template_changed,
)

KIND_BY_NAME = {
    "service": resources_pb2.KIND_SERVICE,
    "configuration": resources_pb2.KIND_CONFIGURATION,
    "revision": resources_pb2.KIND_REVISION,
    "route": resources_pb2.KIND_ROUTE,
}
DEFAULT_WAIT_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.25
FAILURE_WINDOW_S = 2.0  # how long a Ready=False Service with a healthy revision is tolerated


def inner(resource: resources_pb2.Resource):
    """The Service/Configuration/Revision/Route inside a Resource."""
    which = resource.WhichOneof("kind")
    if which is None:
        raise CliError("the controller returned an empty resource")
    return getattr(resource, which)


def qualified(kind: str, name: str) -> str:
    """`service.serving.knative.dev/hello`, as kubectl names what it applied."""
    return f"{kind.lower()}.{GROUP}/{name}"


# ---- apply ----


def read_manifest(path: str, stdin: TextIO) -> tuple[str, str]:
    """(source name, text) of `-f PATH` (`-` = stdin)."""
    if path == "-":
        return "<stdin>", stdin.read()
    try:
        return path, Path(path).read_text()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def apply_documents(
    client: ServingClient, files: Sequence[str], *, namespace: str | None, dry_run: bool,
    stdin: TextIO, out: TextIO,
) -> None:
    """Parse every document of every file first (all or nothing), then apply them in order."""
    documents = []
    for path in files:
        source, text = read_manifest(path, stdin)
        try:
            loaded = load_documents(text, source, namespace=namespace)
        except ManifestError as exc:
            raise CliError(str(exc)) from None
        base_dir = Path.cwd() if path == "-" else Path(path).resolve().parent
        for document in loaded:
            resolve_working_dirs(document.resource, base_dir)
        documents.extend(loaded)
    for document in documents:
        response = client.apply(document.resource, dry_run=dry_run)
        if response.created:
            verb = "created"
        elif response.changed:
            verb = "configured"
        else:
            verb = "unchanged"
        suffix = " (dry run)" if dry_run else ""
        print(f"{qualified(document.kind, document.message.metadata.name)} {verb}{suffix}", file=out)


# ---- service create ----


def parse_pairs(values: Sequence[str] | None, flag: str) -> list[tuple[str, str]]:
    """`K=V` flags as ordered pairs; CliError names the flag of a malformed one."""
    pairs = []
    for value in values or ():
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {value!r}: expected KEY=VALUE")
        pairs.append((key, rest))
    return pairs


@dataclass(frozen=True)
class ServiceSpecArgs:
    """What `ebb service create` was told, before it becomes a Service."""

    name: str
    namespace: str
    cmd: str
    env: Sequence[tuple[str, str]] = ()
    annotations: Sequence[tuple[str, str]] = ()
    labels: Sequence[tuple[str, str]] = ()
    port: int | None = None
    concurrency_limit: int | None = None
    timeout_s: int | None = None
    workdir: str | None = None
    image: str = "local"


def build_service(args: ServiceSpecArgs) -> resources_pb2.Service:
    """A Knative Service running `cmd` (shlex-split) in local mode; annotations go on both the
    Service and its revision template (as `kn --annotation` does), except autoscaling ones,
    which act on revisions only and which Knative refuses on a Service's metadata."""
    try:
        command = shlex.split(args.cmd)
    except ValueError as exc:
        raise CliError(f"--cmd {args.cmd!r}: {exc}") from None
    if not command:
        raise CliError("--cmd: must not be empty")
    container = resources_pb2.Container(image=args.image, command=command)
    if args.workdir:
        container.working_dir = args.workdir
    for key, value in args.env:
        container.env.add(name=key, value=value)
    if args.port is not None:
        container.ports.add(container_port=args.port)
    spec = resources_pb2.RevisionSpec(containers=[container])
    if args.concurrency_limit is not None:
        spec.container_concurrency = args.concurrency_limit
    if args.timeout_s is not None:
        spec.timeout_seconds = args.timeout_s
    annotations = dict(args.annotations)
    template_meta = resources_pb2.ObjectMeta(annotations=annotations)
    service_annotations = {k: v for k, v in annotations.items() if not k.startswith(AUTOSCALING_PREFIX)}
    return resources_pb2.Service(
        api_version="serving.knative.dev/v1",
        kind="Service",
        metadata=resources_pb2.ObjectMeta(
            name=args.name, namespace=args.namespace, annotations=service_annotations, labels=dict(args.labels)
        ),
        spec=resources_pb2.ServiceSpec(
            template=resources_pb2.RevisionTemplateSpec(metadata=template_meta, spec=spec)
        ),
    )


def create_service(
    client: ServingClient, service: resources_pb2.Service, *, force: bool, wait: bool,
    wait_timeout_s: float, out: TextIO, err: TextIO,
) -> None:
    """Apply a new Service (or replace it with --force); with `wait`, block until Ready."""
    name, namespace = service.metadata.name, service.metadata.namespace
    if not force and client.find(resources_pb2.KIND_SERVICE, name, namespace) is not None:
        raise CliError(f'service "{name}" already exists in namespace {namespace} (use --force to replace it)')
    response = client.apply(resources_pb2.Resource(service=service))
    verb = "created" if response.created else ("configured" if response.changed else "unchanged")
    print(f"{qualified('Service', name)} {verb}", file=out, flush=True)
    if not wait:
        return
    stored = inner(response.resource)
    generation = stored.metadata.generation or 1
    print(f"Waiting for service {name} to become ready (up to {wait_timeout_s:g}s)...", file=err, flush=True)
    ready = wait_service_ready(client, name, namespace, generation, wait_timeout_s)
    print(ready.status.url, file=out)


# ---- service update ----


def update_service(
    client: ServingClient, name: str, namespace: str, args: UpdateArgs, *, wait: bool,
    wait_timeout_s: float, out: TextIO, err: TextIO,
) -> None:
    """Read the Service, change what `args` asks for, Apply; with `wait`, block until the
    new generation is Ready and print the URL.

    Revisions that the new traffic block names for the first time must exist (or be the
    revision this update stamps, named by --revision-name): a Route to a missing revision
    cannot be served, so refusing here is kinder than a Route that turns False.
    """
    found = client.find(resources_pb2.KIND_SERVICE, name, namespace)
    if found is None:
        raise CliError(f'service "{name}" not found in namespace {namespace}')
    current = found.service
    desired = edit_service(current, args)
    stamped = desired.spec.template.metadata.name
    for revision in new_revision_refs(current.spec.traffic, desired.spec.traffic):
        if revision != stamped and client.find(resources_pb2.KIND_REVISION, revision, namespace) is None:
            raise CliError(f'revision "{revision}" not found in namespace {namespace}')
    new_revision = template_changed(current, desired)
    response = client.apply(resources_pb2.Resource(service=desired))
    verb = "configured" if response.changed else "unchanged"
    print(f"{qualified('Service', name)} {verb}", file=out, flush=True)
    if not wait:
        return
    generation = inner(response.resource).metadata.generation or 1
    what = "its new revision" if new_revision and response.changed else "the change"
    print(f"Waiting for service {name} to become ready with {what} (up to {wait_timeout_s:g}s)...",
          file=err, flush=True)
    ready = wait_service_ready(client, name, namespace, generation, wait_timeout_s)
    print(ready.status.url, file=out)


def service_state(service: resources_pb2.Service, generation: int) -> tuple[str, str]:
    """("ready", url) | ("failed", reason: message) | ("pending", reason) for one observation.

    A status older than `generation` says nothing about the change we made, so it is pending.
    """
    status = service.status
    if status.observed_generation < generation:
        return "pending", "not observed yet"
    cond = output.condition(status.conditions)
    if cond is None or cond.status not in ("True", "False"):
        return "pending", (cond.reason if cond is not None else "") or "Unknown"
    if cond.status == "True":
        return "ready", status.url
    return "failed", _reason(cond) or "Ready=False"


def wait_state(
    service: resources_pb2.Service, generation: int, revision: resources_pb2.Revision | None
) -> tuple[str, str]:
    """Like service_state, but a Ready=False Service is judged by its latest revision.

    ("failing", detail) means the Service says False while its revision is fine: routes may
    lag behind a revision for a moment (as `kn --wait-window` allows), so callers wait a
    short window before calling it failed. A revision still deploying means pending; a
    revision that is Ready=False is the real failure and names why (e.g. its exit code).
    """
    state, detail = service_state(service, generation)
    if state != "failed":
        return state, detail
    if revision is not None:
        cond = output.condition(revision.status.conditions)
        if cond is None or cond.status not in ("True", "False"):
            return "pending", f"revision {revision.metadata.name}: {(cond.reason if cond else '') or 'Deploying'}"
        if cond.status == "False":
            return "failed", f"revision {revision.metadata.name}: {_reason(cond) or 'Ready=False'}"
    return "failing", detail


def _reason(cond) -> str:
    return ": ".join(part for part in (cond.reason, cond.message) if part)


class ReadinessCheck:
    """One Service's way to Ready, one poll at a time (for `--wait` and `ebb up --sample`).

    check() reads the Service (and, when it says Ready=False, its latest revision) and
    returns ("ready", url), ("failed", why) or ("pending", reason); a Service that stays
    "failing" (see wait_state) for `failure_window_s` is failed.
    """

    def __init__(self, client: ServingClient, name: str, namespace: str, generation: int,
                 failure_window_s: float = FAILURE_WINDOW_S) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.generation = generation
        self.failure_window_s = failure_window_s
        self.failing_since: float | None = None
        self.service: resources_pb2.Service | None = None

    def check(self, now: float) -> tuple[str, str]:
        found = self.client.find(resources_pb2.KIND_SERVICE, self.name, self.namespace)
        if found is None:
            return "failed", "it was deleted"
        service = self.service = found.service
        revision = None
        latest = service.status.latest_created_revision_name
        if service_state(service, self.generation)[0] == "failed" and latest:
            rev = self.client.find(resources_pb2.KIND_REVISION, latest, self.namespace)
            revision = rev.revision if rev is not None else None
        state, detail = wait_state(service, self.generation, revision)
        if state != "failing":
            self.failing_since = None
            return state, detail
        self.failing_since = now if self.failing_since is None else self.failing_since
        if now - self.failing_since >= self.failure_window_s:
            return "failed", detail
        return "pending", detail


def wait_service_ready(
    client: ServingClient, name: str, namespace: str, generation: int, timeout_s: float,
    *, failure_window_s: float = FAILURE_WINDOW_S, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> resources_pb2.Service:
    """Poll until the Service is Ready=True for `generation`; CliError when it fails (see
    ReadinessCheck) or `timeout_s` passes."""
    deadline = clock() + timeout_s
    readiness = ReadinessCheck(client, name, namespace, generation, failure_window_s)
    while True:
        now = clock()
        state, detail = readiness.check(now)
        if state == "ready" and readiness.service is not None:
            return readiness.service
        if state == "failed":
            raise CliError(f"service {name} failed to become ready: {detail}")
        if now >= deadline:
            raise CliError(f"service {name} not ready after {timeout_s:g}s (last reason: {detail})")
        sleep(min(POLL_INTERVAL_S, max(0.01, deadline - now)))


# ---- views ----


def _emit_list(messages: list, fmt: str, headers: Sequence[str], row: Callable, out: TextIO,
               all_namespaces: bool, empty: str) -> None:
    if fmt != "table":
        print(output.dump(output.list_document(messages), fmt), file=out)
        return
    if not messages:
        print(empty, file=sys.stderr)
        return
    if all_namespaces:
        headers = ["NAMESPACE", *headers]
    rows = [([m.metadata.namespace or "default"] if all_namespaces else []) + list(row(m)) for m in messages]
    print(output.table(headers, rows), file=out)


def list_services(client: ServingClient, namespace: str, fmt: str, out: TextIO) -> None:
    services = [inner(r) for r in client.list(resources_pb2.KIND_SERVICE, namespace)]

    def row(s):
        return (s.metadata.name, s.status.url, s.status.latest_ready_revision_name or s.status.latest_created_revision_name,
                output.ready_status(s.status.conditions), output.ready_reason(s.status.conditions))

    _emit_list(services, fmt, ["NAME", "URL", "LATEST", "READY", "REASON"], row, out,
               all_namespaces=not namespace, empty=_none_found("services", namespace))


REVISION_HEADERS = ["NAME", "SERVICE", "GENERATION", "READY", "DESIRED", "ACTUAL", "READY-INSTANCES",
                    "MODE", "CONCURRENCY(stable/panic)", "RPS", "PANIC", "REASON"]


def _rps(status: resources_pb2.RevisionStatus) -> str:
    """Requests per second across the instances in the autoscaler's last complete second."""
    return f"{status.requests_per_second:.1f}"


def revision_row(rev: resources_pb2.Revision) -> tuple:
    status = rev.status
    desired = "?" if status.desired_replicas < 0 else status.desired_replicas
    return (
        rev.metadata.name,
        rev.metadata.labels.get(output.SERVICE_LABEL, ""),
        output.revision_generation(rev),
        output.ready_status(status.conditions),
        desired,
        status.actual_replicas,
        status.ready_replicas,
        status.serving_mode or "-",
        f"{status.stable_value:.2f}/{status.panic_value:.2f}",
        _rps(status),
        "yes" if status.panic else "no",
        output.ready_reason(status.conditions),
    )


def list_revisions(client: ServingClient, namespace: str, service: str | None, fmt: str, out: TextIO) -> None:
    labels = {output.SERVICE_LABEL: service} if service else None
    revisions = [inner(r) for r in client.list(resources_pb2.KIND_REVISION, namespace, labels)]
    _emit_list(revisions, fmt, REVISION_HEADERS, revision_row, out, all_namespaces=not namespace,
               empty=_none_found("revisions", namespace, service))


def list_routes(client: ServingClient, namespace: str, fmt: str, out: TextIO) -> None:
    routes = [inner(r) for r in client.list(resources_pb2.KIND_ROUTE, namespace)]

    def row(r):
        return (r.metadata.name, r.status.url, output.traffic_summary(r.status.traffic or r.spec.traffic),
                output.ready_status(r.status.conditions), output.ready_reason(r.status.conditions))

    _emit_list(routes, fmt, ["NAME", "URL", "TRAFFIC", "READY", "REASON"], row, out,
               all_namespaces=not namespace, empty=_none_found("routes", namespace))


def _none_found(what: str, namespace: str, service: str | None = None) -> str:
    where = f" in namespace {namespace}" if namespace else ""
    of = f" of service {service}" if service else ""
    return f"No {what}{of} found{where}."


def describe(client: ServingClient, kind: str, name: str, namespace: str, fmt: str, out: TextIO) -> None:
    """One resource: a readable summary (table format) or its full JSON/YAML."""
    code = KIND_BY_NAME[kind]
    found = client.find(code, name, namespace)
    if found is None:
        raise CliError(f'{kind} "{name}" not found in namespace {namespace}')
    resource = inner(found)
    if fmt != "table":
        print(output.dump(output.to_dict(resource), fmt), file=out)
        return
    revisions = []
    if kind == "service":
        revisions = [inner(r) for r in client.list(resources_pb2.KIND_REVISION, namespace, {output.SERVICE_LABEL: name})]
    print(summary(kind, resource, revisions), file=out)


LABEL_WIDTH = 17  # "Rev annotations: " is the longest field label


def _field(label: str, value: object) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{value}"


def summary(kind: str, resource, revisions: Sequence[resources_pb2.Revision] = ()) -> str:
    """Human-readable description of a resource: identity, what it runs, its revisions and
    traffic (with tags and tag URLs), then its conditions with their reasons."""
    meta = resource.metadata
    lines = [_field("Name", meta.name), _field("Namespace", meta.namespace or "default")]
    created = output.format_timestamp(meta.creation_timestamp)
    if created:
        lines.append(_field("Created", created))
    if meta.generation:
        lines.append(_field("Generation", meta.generation))
    for title, mapping in (("Labels", meta.labels), ("Annotations", meta.annotations)):
        if mapping:
            lines.append(_field(title, ", ".join(f"{k}={v}" for k, v in sorted(mapping.items()))))
    status = resource.status
    url = getattr(status, "url", "")
    if url:
        lines.append(_field("URL", url))
    if kind == "revision":
        for label, key in (("Service", output.SERVICE_LABEL), ("Configuration", output.CONFIGURATION_LABEL)):
            if meta.labels.get(key):
                lines.append(_field(label, meta.labels[key]))
    spec = None
    if kind in ("service", "configuration"):
        spec = resource.spec.template.spec
        template_annotations = resource.spec.template.metadata.annotations
        if resource.spec.template.metadata.name:
            lines.append(_field("Revision name", resource.spec.template.metadata.name))
        if template_annotations and dict(template_annotations) != dict(meta.annotations):
            lines.append(_field("Rev annotations", ", ".join(f"{k}={v}" for k, v in sorted(template_annotations.items()))))
    elif kind == "revision":
        spec = resource.spec
    if spec is not None:
        lines.extend(_container_lines(spec))
    if kind in ("service", "configuration"):
        lines.append(_field("Latest created", status.latest_created_revision_name or "-"))
        lines.append(_field("Latest ready", status.latest_ready_revision_name or "-"))
    if kind == "revision":
        s = status
        desired = "?" if s.desired_replicas < 0 else s.desired_replicas
        lines.append(_field("Instances", f"desired {desired}, actual {s.actual_replicas}, ready {s.ready_replicas}"))
        lines.append(_field("Autoscaler", f"mode {s.serving_mode or '-'}, stable {s.stable_value:.2f}, "
                                          f"panic {s.panic_value:.2f}{' (PANIC)' if s.panic else ''}, "
                                          f"{s.requests_per_second:.1f} req/s"))
        if s.log_url:
            lines.append(_field("Logs", s.log_url))
    if kind in ("service", "route"):
        lines.extend(_traffic_lines(resource))
    if revisions:
        served = _traffic_by_revision(status.traffic)
        lines.append("Revisions:")
        # Live load next to each revision: what the autoscaler last saw (stable concurrency,
        # requests per second) and the instances running and ready.
        rows = [(r.metadata.name, output.revision_generation(r), served.get(r.metadata.name, ""),
                 output.ready_status(r.status.conditions), r.status.actual_replicas, r.status.ready_replicas,
                 r.status.serving_mode or "-", f"{r.status.stable_value:.2f}", _rps(r.status),
                 output.ready_reason(r.status.conditions))
                for r in sorted(revisions, key=_generation_key, reverse=True)]
        lines.append(output.indent(output.table(
            ["NAME", "GENERATION", "TRAFFIC", "READY", "ACTUAL", "READY-INSTANCES", "MODE", "CONCURRENCY", "RPS",
             "REASON"], rows)))
    if status.conditions:
        lines.append("Conditions:")
        lines.append(output.indent(output.conditions_table(status.conditions)))
    return "\n".join(lines)


def _traffic_lines(resource) -> list[str]:
    """The traffic as served (status: revision names, tag URLs); while the controller has
    not resolved it yet, the traffic as asked for (spec)."""
    served = list(resource.status.traffic)
    targets = served or list(resource.spec.traffic)
    if not targets:
        return []
    rows = []
    for t in targets:
        name = t.revision_name or (f"@latest ({t.configuration_name})" if t.configuration_name else "@latest")
        follows = "yes" if (t.latest_revision if t.HasField("latest_revision") else not t.revision_name) else ""
        rows.append((f"{t.percent}%", name, follows, t.tag, t.url))
    title = "Traffic:" if served else "Traffic (requested, not yet resolved):"
    return [title, output.indent(output.table(["PERCENT", "REVISION", "LATEST", "TAG", "URL"], rows))]


def _traffic_by_revision(targets) -> dict[str, str]:
    """`{"hello-00001": "50% (old)"}` from status traffic, for the revisions table."""
    shares: dict[str, list[str]] = {}
    for t in targets:
        if t.revision_name:
            shares.setdefault(t.revision_name, []).append(f"{t.percent}%" + (f" ({t.tag})" if t.tag else ""))
    return {name: ", ".join(parts) for name, parts in shares.items()}


def _generation_key(revision: resources_pb2.Revision) -> tuple[int, str]:
    generation = output.revision_generation(revision)
    return (int(generation) if generation.isdigit() else 0, revision.metadata.name)


def _container_lines(spec: resources_pb2.RevisionSpec) -> list[str]:
    lines = []
    for container in spec.containers:
        argv = [*container.command, *container.args]
        if argv:
            lines.append(_field("Command", shlex.join(argv)))
        if container.image and container.image != "local":
            lines.append(_field("Image", container.image))
        if container.working_dir:
            lines.append(_field("Workdir", container.working_dir))
        if container.env:
            lines.append(_field("Env", ", ".join(f"{e.name}={e.value}" for e in container.env)))
        if container.ports:
            lines.append(_field("Port", container.ports[0].container_port))
    if spec.HasField("container_concurrency"):
        lines.append(_field("Concurrency", f"{spec.container_concurrency} (0 = unlimited)"))
    if spec.HasField("timeout_seconds"):
        lines.append(_field("Timeout", f"{spec.timeout_seconds}s"))
    return lines


def delete(client: ServingClient, kind: str, name: str, namespace: str, out: TextIO) -> None:
    client.delete(KIND_BY_NAME[kind], name, namespace)
    print(f"{qualified(kind, name)} deleted", file=out)


def delete_revision(client: ServingClient, name: str, namespace: str, *, force: bool, out: TextIO) -> None:
    """Delete one revision; unless `force`, refuse while a Route sends it traffic or names it
    (its URL would break) or while it is the latest of its Configuration (the controller
    stamps the latest generation again, as Knative does, so deleting it only restarts it)."""
    found = client.find(resources_pb2.KIND_REVISION, name, namespace)
    if found is None:
        raise CliError(f'revision "{name}" not found in namespace {namespace}')
    problems = [] if force else revision_delete_blockers(client, found.revision, namespace)
    if problems:
        raise CliError(f'revision "{name}" {problems[0]}, or use --force')
    delete(client, "revision", name, namespace, out)


def revision_delete_blockers(client: ServingClient, revision: resources_pb2.Revision, namespace: str) -> list[str]:
    """Why deleting `revision` would hurt: routes that use it, or being its config's latest."""
    name = revision.metadata.name
    problems = []
    for route in (inner(r) for r in client.list(resources_pb2.KIND_ROUTE, namespace)):
        uses = [t for t in route.status.traffic if t.revision_name == name and (t.percent or t.tag)]
        pinned = [t for t in route.spec.traffic if t.revision_name == name]
        if not uses and not pinned:
            continue
        shares = ", ".join(f"{t.percent}%" + (f" tag {t.tag}" if t.tag else "") for t in uses or pinned)
        owner = route.metadata.labels.get(output.SERVICE_LABEL)
        how = f"`ebb service update {owner} --traffic/--untag`" if owner else "a new spec.traffic"
        problems.append(f"is routed by route {route.metadata.name} ({shares}): move its traffic first with {how}")
    configuration = revision.metadata.labels.get(output.CONFIGURATION_LABEL)
    if configuration:
        found = client.find(resources_pb2.KIND_CONFIGURATION, configuration, namespace)
        if found is not None and found.configuration.status.latest_created_revision_name == name:
            problems.append(f"is the latest revision of configuration {configuration} and would be created "
                            "again: update the configuration instead")
    return problems


def default_workdir() -> str:
    """Where `--cmd` runs in local mode unless `--workdir` says: the caller's directory, so
    `--cmd "python samples/hello/app.py"` works from the repository root."""
    return os.getcwd()
