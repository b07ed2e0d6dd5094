"""`ebb` entry point: argument parsing and dispatch; every expected error is one line, exit 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from ebb.cli import mesh as meshmod
from ebb.cli import output, resources
from ebb.cli.errors import CliError
from ebb.cli.update import TrafficEdits, UpdateArgs, parse_key_edits, parse_tags, parse_traffic

DATA_DIR_HELP = "data dir of the mesh (default: env EBB_HOME, else ~/.ebb)"


class Parser(argparse.ArgumentParser):
    """argparse that exits 1 (not 2) on usage errors, with a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(1, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--data-dir and --server, accepted both before and after the subcommand."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--data-dir", default=default, metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument("--server", default=default, metavar="HOST:PORT",
                        help="controller address (instead of finding it in DATA_DIR/mesh.json)")


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=output.FORMATS, default="table", help="output format")


def _namespace_option(parser: argparse.ArgumentParser, all_option: bool = False) -> None:
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    if all_option:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0..65535)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ebb", description="Ebb: request-driven serverless apps on your machine.")
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def sub(group, name: str, help_text: str, *, connect: bool = True) -> argparse.ArgumentParser:
        parser_ = group.add_parser(name, help=help_text, description=help_text)
        if connect:
            _connection_options(parser_, suppress=True)
        return parser_

    # up
    up = commands.add_parser("up", help="run the local mesh (controller, autoscaler, activator, webhook, Envoy)",
                             description="Run the local mesh in the foreground; Ctrl-C stops it.")
    up.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR", help=DATA_DIR_HELP)
    up.add_argument("--http-port", type=_port, default=8080, help="gateway (Envoy) HTTP port (default 8080)")
    up.add_argument("--admin-port", type=_port, default=9901, help="Envoy admin port (default 9901)")
    up.add_argument("--controller-port", type=_port, default=8090, help="controller gRPC port (default 8090)")
    up.add_argument("--autoscaler-port", type=_port, default=8091, help="autoscaler gRPC port (default 8091)")
    up.add_argument("--autoscaler-stats-port", type=_port, default=8094,
                    help="autoscaler port the queues and activators stream stats to (default 8094)")
    up.add_argument("--activator-port", type=_port, default=8012, help="activator HTTP port (default 8012)")
    up.add_argument("--activator-grpc-port", type=_port, default=8092, help="activator gRPC port (default 8092)")
    up.add_argument("--webhook-port", type=_port, default=8093, help="webhook gRPC port (default 8093)")
    up.add_argument("--config", metavar="FILE", help="autoscaler settings (YAML, Knative config-autoscaler keys)")
    up.add_argument("--tracing", action="store_true", help="export OpenTelemetry traces from every component")
    up.add_argument("--sample", action="store_true", help="also deploy samples/hello once the mesh is up")
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="log level of every component (default info)")
    up.add_argument("--max-restarts", type=_positive_int, default=5, metavar="N",
                    help="restart a component that dies up to N times a minute, then stop the mesh "
                         "(default 5; 0 = stop at the first death)")
    up.add_argument("--start-timeout", type=_seconds, default=30.0, metavar="S",
                    help="seconds each component may take to become ready (default 30)")

    # status
    status = sub(commands, "status", "show each component's address and health")
    _output_option(status)

    # apply
    apply = sub(commands, "apply", "create or update resources from Knative manifests")
    apply.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                       help="manifest file (multi-document YAML; - for stdin); repeatable")
    apply.add_argument("-n", "--namespace", default=None, help="namespace for documents that name none")
    apply.add_argument("--dry-run", action="store_true", help="default and validate only; store nothing")

    # service
    service = commands.add_parser("service", help="manage services", aliases=["services", "svc", "ksvc"])
    service_cmds = service.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    service_cmds.required = True
    create = sub(service_cmds, "create", "create a service that runs a command")
    create.add_argument("name")
    create.add_argument("--cmd", required=True, help='command line of the app, e.g. "python app.py"')
    create.add_argument("--env", "-e", action="append", metavar="K=V", help="environment variable; repeatable")
    create.add_argument("--port", "-p", type=_port, help="port the app listens on (default: Ebb picks one, in $PORT)")
    create.add_argument("--annotation", "-a", action="append", metavar="K=V",
                        help="annotation on the service and its revisions, e.g. "
                             "autoscaling.knative.dev/min-scale=1; repeatable")
    create.add_argument("--label", "-l", action="append", metavar="K=V", help="label on the service; repeatable")
    create.add_argument("--concurrency-limit", type=_positive_int, metavar="N",
                        help="hard limit of concurrent requests per instance (containerConcurrency; 0 = none)")
    create.add_argument("--timeout", type=_positive_int, metavar="S", help="request timeout in seconds (timeoutSeconds)")
    create.add_argument("--workdir", default=None, metavar="DIR",
                        help="working directory of the command (default: the current directory)")
    create.add_argument("--image", default="local", help="container image (kept, unused in local mode)")
    _namespace_option(create)
    create.add_argument("--force", action="store_true", help="replace the service if it exists")
    create.add_argument("--wait", action="store_true", help="wait until the service is Ready, then print its URL")
    create.add_argument("--wait-timeout", type=_seconds, default=resources.DEFAULT_WAIT_TIMEOUT_S, metavar="S",
                        help=f"seconds to wait with --wait (default {resources.DEFAULT_WAIT_TIMEOUT_S:g})")
    update = sub(service_cmds, "update", "change a service: its template (a new revision) or its traffic (none)")
    update.add_argument("name")
    update.add_argument("--cmd", help='new command line of the app, e.g. "python app.py --v2"')
    update.add_argument("--env", "-e", action="append", metavar="K=V|K-",
                        help="set an environment variable, or remove it with K-; repeatable")
    update.add_argument("--annotation", "-a", action="append", metavar="K=V|K-",
                        help="set an annotation on the service and its revisions (autoscaling ones on the "
                             "revisions only), or remove it with K-; repeatable")
    update.add_argument("--concurrency-limit", type=_positive_int, metavar="N",
                        help="hard limit of concurrent requests per instance (containerConcurrency; 0 = none)")
    update.add_argument("--timeout", type=_positive_int, metavar="S", help="request timeout in seconds (timeoutSeconds)")
    update.add_argument("--revision-name", metavar="NAME",
                        help="name of the new revision (NAME-prefixed with the service name unless it is already); "
                             "without it a template change drops a chosen name and Ebb numbers the revision")
    update.add_argument("--traffic", action="append", metavar="REF=PCT",
                        help="traffic share of a revision, a tag or @latest (the latest ready revision); "
                             "repeatable; replaces every percent of the traffic block (untagged targets not "
                             "named are dropped), the shares must sum to 100")
    update.add_argument("--tag", action="append", metavar="REF=TAG",
                        help="give a revision (or @latest) the URL TAG-NAME.NAMESPACE...; repeatable")
    update.add_argument("--untag", action="append", metavar="TAG", help="remove a tag; repeatable")
    _namespace_option(update)
    update.add_argument("--wait", action="store_true",
                        help="wait until the service is Ready with this change, then print its URL")
    update.add_argument("--wait-timeout", type=_seconds, default=resources.DEFAULT_WAIT_TIMEOUT_S, metavar="S",
                        help=f"seconds to wait with --wait (default {resources.DEFAULT_WAIT_TIMEOUT_S:g})")
    for action, help_text in (("list", "list services"),):
        listing = sub(service_cmds, action, help_text)
        _namespace_option(listing, all_option=True)
        _output_option(listing)
    for action, help_text in (("describe", "show one service"), ("delete", "delete a service and its revisions")):
        one = sub(service_cmds, action, help_text)
        one.add_argument("name")
        _namespace_option(one)
        if action == "describe":
            _output_option(one)

    # revision
    revision = commands.add_parser("revision", help="inspect revisions", aliases=["revisions", "rev"])
    revision_cmds = revision.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    revision_cmds.required = True
    rev_list = sub(revision_cmds, "list", "list revisions with their scale and autoscaler state")
    rev_list.add_argument("--service", "-s", metavar="NAME", help="only the revisions of this service")
    _namespace_option(rev_list, all_option=True)
    _output_option(rev_list)
    rev_describe = sub(revision_cmds, "describe", "show one revision")
    rev_describe.add_argument("name")
    _namespace_option(rev_describe)
    _output_option(rev_describe)
    rev_delete = sub(revision_cmds, "delete", "delete a revision that no route uses")
    rev_delete.add_argument("name")
    _namespace_option(rev_delete)
    rev_delete.add_argument("--force", action="store_true",
                            help="delete even while a route uses it or it is its configuration's latest")

    # route
    route = commands.add_parser("route", help="inspect routes", aliases=["routes"])
    route_cmds = route.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    route_cmds.required = True
    route_list = sub(route_cmds, "list", "list routes and their traffic")
    _namespace_option(route_list, all_option=True)
    _output_option(route_list)
    route_describe = sub(route_cmds, "describe", "show one route")
    route_describe.add_argument("name")
    _namespace_option(route_describe)
    _output_option(route_describe)
    return parser


ALIASES = {"services": "service", "svc": "service", "ksvc": "service", "revisions": "revision",
           "rev": "revision", "routes": "route"}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one `ebb` command; returns the exit code (0 ok, 1 any error)."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (1, message already printed)
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    args.command = ALIASES.get(args.command, args.command)
    prefix = "ebb up" if args.command == "up" else "ebb"
    try:
        return dispatch(args, environ)
    except CliError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ebb service list | head`: the reader left; not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown quiet
        except OSError:
            pass
        return 1


def dispatch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.command == "up":
        from ebb.cli import up

        return up.run_up(up.settings_from_args(args, environ))
    mesh = meshmod.discover(getattr(args, "server", None), getattr(args, "data_dir", None), environ)
    if args.command == "status":
        return run_status(mesh, args.output)

    from ebb.cli.client import ServingClient

    out = sys.stdout
    with ServingClient(mesh.controller) as client:
        if args.command == "apply":
            resources.apply_documents(client, args.filename, namespace=args.namespace, dry_run=args.dry_run,
                                      stdin=sys.stdin, out=out)
            return 0
        namespace = "" if getattr(args, "all_namespaces", False) else getattr(args, "namespace", "default")
        if args.command == "service":
            return _service(client, args, namespace, out)
        if args.command == "revision":
            if args.action == "list":
                resources.list_revisions(client, namespace, args.service, args.output, out)
            elif args.action == "delete":
                resources.delete_revision(client, args.name, namespace, force=args.force, out=out)
            else:
                resources.describe(client, "revision", args.name, namespace, args.output, out)
            return 0
        if args.command == "route":
            if args.action == "list":
                resources.list_routes(client, namespace, args.output, out)
            else:
                resources.describe(client, "route", args.name, namespace, args.output, out)
            return 0
    raise CliError(f"unknown command {args.command}")


def _service(client, args: argparse.Namespace, namespace: str, out) -> int:
    if args.action == "create":
        spec = resources.ServiceSpecArgs(
            name=args.name,
            namespace=namespace,
            cmd=args.cmd,
            env=resources.parse_pairs(args.env, "--env"),
            annotations=resources.parse_pairs(args.annotation, "--annotation"),
            labels=resources.parse_pairs(args.label, "--label"),
            port=args.port,
            concurrency_limit=args.concurrency_limit,
            timeout_s=args.timeout,
            workdir=args.workdir if args.workdir is not None else resources.default_workdir(),
            image=args.image,
        )
        service = resources.build_service(spec)
        resources.create_service(client, service, force=args.force, wait=args.wait,
                                 wait_timeout_s=args.wait_timeout, out=out, err=sys.stderr)
    elif args.action == "update":
        resources.update_service(client, args.name, namespace, update_args(args), wait=args.wait,
                                 wait_timeout_s=args.wait_timeout, out=out, err=sys.stderr)
    elif args.action == "list":
        resources.list_services(client, namespace, args.output, out)
    elif args.action == "describe":
        resources.describe(client, "service", args.name, namespace, args.output, out)
    elif args.action == "delete":
        resources.delete(client, "service", args.name, namespace, out)
    return 0


def update_args(args: argparse.Namespace) -> UpdateArgs:
    """`ebb service update` flags as UpdateArgs (CliError for a malformed one)."""
    return UpdateArgs(
        cmd=args.cmd,
        env=parse_key_edits(args.env, "--env"),
        annotations=parse_key_edits(args.annotation, "--annotation"),
        concurrency_limit=args.concurrency_limit,
        timeout_s=args.timeout,
        revision_name=args.revision_name,
        traffic=TrafficEdits(percents=parse_traffic(args.traffic), tags=parse_tags(args.tag),
                             untags=tuple(args.untag or ())),
    )


def run_status(mesh: meshmod.Mesh, fmt: str) -> int:
    from ebb.cli import status

    results = status.check_all(mesh.addresses)
    if fmt == "table":
        rows = [(r.name, r.address, r.status, r.detail) for r in results]
        print(output.table(["COMPONENT", "ADDRESS", "STATUS", "DETAIL"], rows))
        if mesh.data_dir:
            print(f"\ndata dir: {mesh.data_dir}" + (f"  (ebb up pid {mesh.pid})" if mesh.pid else ""))
    else:
        data = {
            "source": mesh.source,
            "pid": mesh.pid,
            "data_dir": mesh.data_dir,
            "components": {r.name: {"address": r.address, "check": r.check, "status": r.status,
                                    **({"detail": r.detail} if r.detail else {})} for r in results},
        }
        print(json.dumps(data, indent=2) if fmt == "json" else output.dump(data, "yaml"))
    unhealthy = [r.name for r in results if not r.healthy]
    if unhealthy:
        print(f"ebb: not healthy: {', '.join(unhealthy)}", file=sys.stderr)
        return 1
    return 0
