"""Many instances, one database, as deployed: HAProxy in front of several independent
`ticketing serve` processes (each with its own workers and pools), which reach PostgreSQL
through PgBouncer in transaction pooling mode. The live-update listener of each worker gets a
direct connection (`TICKETING_LISTEN_DATABASE_URL`): LISTEN can't go through transaction
pooling.

`make bench ARGS="--instances 2"` runs the benchmark through it; tests/test_instances.py
runs a short sale through it, so that it can't rot. HAProxy and PgBouncer come from Debian's
packages, installed when missing (as wrk is).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

# HAProxy names the instance that answered in this response header (for tests and curious
# humans; clients must not care).
SERVED_BY = "X-Served-By"
# Idle connections: the balancer closes them before the service does (its keep-alive timeout
# is 75 s), never the other way round, which would lose requests (a 502).
BALANCER_KEEPALIVE_S = 60


def require_tool(binary: str, package: str | None = None) -> str:
    """The path of `binary`, installed from Debian's packages when missing."""
    found = _which(binary)
    if found:
        return found
    package = package or binary
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print(f"Installing {package} from Debian's packages...", flush=True)
    install = [*sudo, "apt-get", "install", "-y", "-q", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    installed = subprocess.run(install, capture_output=True, text=True, env=env)
    if installed.returncode:  # package lists not fetched yet (a fresh container)
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env)
        installed = subprocess.run(install, capture_output=True, text=True, env=env)
    found = _which(binary)
    if installed.returncode or not found:
        raise SystemExit(
            f"Install {package} (apt-get install {package}) and run again:\n{installed.stderr}"
        )
    return found


def version(binary: str) -> str:
    """The version that `binary -V` (pgbouncer) or `-v` (haproxy) reports."""
    flag = "-v" if binary == "haproxy" else "-V"
    shown = subprocess.run([require_tool(binary), flag], capture_output=True, text=True)
    found = re.search(r"\d+\.\d+(\.\d+)?", shown.stdout + shown.stderr)
    return found.group(0) if found else "?"


def _which(binary: str) -> str | None:
    # Debian puts pgbouncer and haproxy in /usr/sbin, which a user's PATH may lack.
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]:
        path = Path(directory) / binary
        if directory and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    """A process of the stack and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(name: str, command: list[str], log: Path, **popen: object) -> Process:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    return Process(name, process, log)


def _stop(process: Process, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    if process.popen.poll() is None:
        process.popen.send_signal(sig)
        try:
            process.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()


def _wait_for(
    ready: Callable[[], bool], process: Process, what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{process.output()[-4000:]}")
        time.sleep(0.1)


@dataclass
class PgBouncer:
    url: str  # the service's DATABASE_URL: PostgreSQL's database, through the pool
    admin_dsn: str  # PgBouncer's console (SHOW POOLS, SHOW STATS, ...)
    process: Process

    def show(self, what: str) -> list[dict[str, object]]:
        """A `SHOW <what>` of PgBouncer's console, as rows of column names to values."""
        connection = psycopg2.connect(self.admin_dsn)
        connection.autocommit = True  # the console has no transactions
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SHOW {what}")
                names = [column.name for column in cursor.description or []]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            connection.close()


@contextmanager
def pgbouncer(database_url: str, work: Path, *, pool_size: int = 20) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of `database_url`'s server: at most
    `pool_size` server connections per database, shared by every client transaction."""
    binary = require_tool("pgbouncer")
    target = make_url(database_url)
    host = str(target.query.get("host") or target.host or "localhost")
    user = target.username or "postgres"
    server = f"host={host} user={user}"
    if target.port:
        server += f" port={target.port}"
    if target.password:
        server += f" password={target.password}"
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    users = work / "pgbouncer-users.txt"
    users.write_text(f'"{user}" ""\n')
    config = work / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
; Clients on this machine only; PostgreSQL authenticates PgBouncer itself.
auth_type = trust
auth_file = {users}
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 5000
log_connections = 0
log_disconnections = 0
; Nothing: the service sends no startup parameter that PgBouncer doesn't know, and a
; parameter ignored here would silently not be set.
ignore_startup_parameters =
"""
    )
    command = [binary]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command += ["-u", _unprivileged_user()]
    process = _start("pgbouncer", [*command, str(config)], work / "pgbouncer.log")
    try:
        _wait_for(lambda: _accepts(port), process, "PgBouncer")
        url = target.set(host="127.0.0.1", port=port, password=None, query={})
        yield PgBouncer(
            url.render_as_string(hide_password=False),
            f"host=127.0.0.1 port={port} user={user} dbname=pgbouncer",
            process,
        )
    finally:
        _stop(process)


def _unprivileged_user() -> str:
    """pgserver, when it runs the embedded PostgreSQL as root, runs it as `pgserver`, whose
    socket directory only that user may enter; else nobody."""
    for name in ("pgserver", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise SystemExit("No unprivileged user to run PgBouncer as (pgserver or nobody).")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Instance:
    name: str
    port: int
    process: Process

    def workers(self) -> list[int]:
        return workers_of(self.process.popen.pid)


def workers_of(pid: int) -> list[int]:
    """A server's worker processes (uvicorn's children), or the server itself if it has none."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = [int(child) for child in children if "resource_tracker" not in _cmdline(child)]
    return workers or [pid]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@contextmanager
def serving(
    env: dict[str, str], work: Path, *, count: int, workers: int, name: str = "instance"
) -> Iterator[list[Instance]]:
    """`count` x `ticketing serve`, started at once (each migrates first, as deployed), ready
    when their /readyz say so."""
    command = [str(Path(sys.executable).parent / "ticketing"), "serve", "--host", "127.0.0.1"]
    command += ["--workers", str(workers)]
    started: list[Instance] = []
    try:
        for number in range(1, count + 1):
            port = free_port()
            called = f"{name}{number}"
            process = _start(
                called, [*command, "--port", str(port)], work / f"{called}.log", env=env
            )
            started.append(Instance(called, port, process))
        for each in started:
            _wait_for(partial(_ready, each.port), each.process, f"Instance {each.name}")
        yield started
    finally:
        for each in started:
            each.process.popen.send_signal(signal.SIGTERM)
        for each in started:
            _stop(each.process)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class HAProxy:
    port: int
    process: Process


@contextmanager
def haproxy(
    backends: Sequence[tuple[str, int]],
    work: Path,
    *,
    health: str | None = "/readyz",
    ready: Callable[[int], bool] | None = None,
) -> Iterator[HAProxy]:
    """HAProxy balancing each HTTP request (and each WebSocket) round-robin over `backends`
    (name, port), checking `health` on each every second (None: that they accept
    connections). It is ready when `ready(port)` (default: its /readyz answers 200)."""
    binary = require_tool("haproxy")
    port = free_port()
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{backend} check inter 1s fall 2 rise 1"
        for name, backend in backends
    )
    check = f"    option httpchk GET {health}" if health else "    # (TCP checks)"
    config = work / "haproxy.cfg"
    config.write_text(
        f"""global
    maxconn 5000
    # One thread: on a small machine the service needs the cores.
    nbthread 1

defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive {BALANCER_KEEPALIVE_S}s
    timeout tunnel 1h
    timeout client-fin 5s

frontend api
    bind 127.0.0.1:{port}
    default_backend instances

backend instances
    balance roundrobin
{check}
    http-response set-header {SERVED_BY} %s
{servers}
"""
    )
    checked = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True
    )
    if checked.returncode:
        raise SystemExit(f"HAProxy refuses its configuration:\n{checked.stdout}{checked.stderr}")
    process = _start("haproxy", [binary, "-db", "-f", str(config)], work / "haproxy.log")
    try:
        _wait_for(partial(ready or _ready, port), process, "HAProxy")
        yield HAProxy(port, process)
    finally:
        _stop(process, signal.SIGUSR1)  # soft stop: finish what is in flight


@dataclass
class Stack:
    """The balancer's port, and the processes behind it."""

    port: int
    instances: list[Instance]
    balancer: HAProxy
    pooler: PgBouncer
    extra: list[Process] = field(default_factory=list)

    def workers(self) -> list[int]:
        return [pid for instance in self.instances for pid in instance.workers()]

    def proxies(self) -> list[int]:
        """HAProxy's and PgBouncer's processes: the stack's own cost."""
        return [self.balancer.process.popen.pid, self.pooler.process.popen.pid]


@contextmanager
def stack(
    database_url: str,
    env: dict[str, str],
    work: Path,
    *,
    instances: int = 2,
    workers: int = 1,
    pool_size: int = 20,
) -> Iterator[Stack]:
    """HAProxy -> `instances` x `ticketing serve` (`workers` each) -> PgBouncer (transaction
    pooling, `pool_size` server connections) -> the PostgreSQL of `database_url`, which the
    listeners reach directly. `env`: the instances' environment (DATABASE_URL is set here)."""
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as started:
        pooler = started.enter_context(pgbouncer(database_url, work, pool_size=pool_size))
        instance_env = {
            **env,
            "DATABASE_URL": pooler.url,
            "TICKETING_LISTEN_DATABASE_URL": database_url,
        }
        running = started.enter_context(
            serving(instance_env, work, count=instances, workers=workers)
        )
        balancer = started.enter_context(haproxy([(i.name, i.port) for i in running], work))
        yield Stack(balancer.port, running, balancer, pooler)
