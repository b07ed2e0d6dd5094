"""Finding a running mesh: the data dir, its `mesh.json`, and whether ports are free."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ebb.cli.errors import CliError
from ebb.common.procs import pid_alive

MESH_FILE = "mesh.json"
HOST = "127.0.0.1"


def resolve_data_dir(flag: str | None, environ: Mapping[str, str]) -> Path:
    """`--data-dir`, else env `EBB_HOME`, else `~/.ebb` (as an absolute path)."""
    if flag:
        raw = flag
    elif environ.get("EBB_HOME"):
        raw = environ["EBB_HOME"]
    else:
        home = environ.get("HOME") or str(Path.home())
        raw = os.path.join(home, ".ebb")
    return Path(os.path.abspath(os.path.expanduser(raw)))


@dataclass(frozen=True)
class Mesh:
    """The addresses a running `ebb up` wrote to `DATA_DIR/mesh.json` (or one `--server`)."""

    controller: str
    source: str  # where the addresses came from, for messages
    addresses: Mapping[str, str]  # component name -> host:port (gateway, controller, ...)
    pid: int | None = None
    data_dir: str | None = None

    @property
    def gateway(self) -> str | None:
        return self.addresses.get("gateway")


def read_mesh_file(path: Path) -> dict:
    """The parsed mesh.json; CliError when it is missing or not a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CliError(f"no mesh is running ({path} not found; start one with `ebb up`)") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} is not a JSON object")
    return data


def discover(server: str | None, data_dir_flag: str | None, environ: Mapping[str, str]) -> Mesh:
    """The mesh to talk to: `--server HOST:PORT` wins; else DATA_DIR/mesh.json of a live `ebb up`."""
    if server:
        if ":" not in server:
            raise CliError(f"--server {server!r}: expected HOST:PORT")
        return Mesh(controller=server, source="--server", addresses={"controller": server})
    data_dir = resolve_data_dir(data_dir_flag, environ)
    path = data_dir / MESH_FILE
    data = read_mesh_file(path)
    pid = data.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        raise CliError(f"no mesh is running (stale {path}: `ebb up` pid {pid} is gone; start one with `ebb up`)")
    controller = data.get("controller")
    if not isinstance(controller, str) or not controller:
        raise CliError(f"{path} has no controller address")
    addresses = {k: v for k, v in data.items() if isinstance(v, str) and k != "data_dir"}
    return Mesh(
        controller=controller,
        source=str(path),
        addresses=addresses,
        pid=pid if isinstance(pid, int) else None,
        data_dir=data.get("data_dir") if isinstance(data.get("data_dir"), str) else str(data_dir),
    )


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a server could listen on host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_free_port(host: str = HOST) -> int:
    """A port the kernel just handed out as free (for `--x-port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def busy_ports(ports: Mapping[str, int], host: str = HOST) -> list[tuple[str, int]]:
    """(name, port) for every port in use, in the given order."""
    return [(name, port) for name, port in ports.items() if port and not port_is_free(port, host)]
