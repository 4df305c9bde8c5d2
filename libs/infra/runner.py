"""The local mesh: `make run` and the end-to-end tests start Accrue through this.

What it starts is a ``Topology`` (services/run.py builds it from services/registry.py):
a real PostgreSQL and NATS (embedded, from pip wheels) unless ACCRUE_POSTGRES_URL /
ACCRUE_NATS_URL point at existing servers, then the stand-ins for systems outside Accrue
(``External``: the sandbox card processor), then every service, every worker and the
gateway as separate processes on free ports (or pinned ones: ACCRUE_<NAME>_PORT, or
ACCRUE_GRPC_BASE_PORT for the services in registry order), waiting until each service is
healthy (gRPC health checking; the gateway's and the externals' /healthz); then it creates
a demo merchant and writes .accrue/run.env (the gateway URL, the merchant, every service's
ACCRUE_<NAME>_ADDR, ACCRUE_PUBLIC_URL and what each external shares: its URL and keys).
Nothing here knows which services exist.

The gateway's port is decided before anything starts, so every process is given the
gateway's public base URL (ACCRUE_PUBLIC_URL: checkout and webhook links) unless the
environment sets one.

Every process gets the runner's environment, ACCRUE_* included (ACCRUE_LOG_LEVEL,
ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT...), with what the runner decides winning: databases,
NATS, ports, the addresses of the services it runs. Each child dies with the runner, even
a SIGKILLed one (a parent-death signal; PostgreSQL, which pg_ctl detaches, through a
watchdog: libs/infra/embedded.py).

``main()`` (``make run``) then supervises the processes the way a container runtime
would: one that exits is restarted with exponential backoff on the port it had (the
gateway and the printed URLs hold that address), and after too many restarts in a row
the runner stops everything and exits non-zero. See ``Supervisor``.

With ACCRUE_EDGE=1 main() also starts one edge (``Mesh.start_edge``: a NATS leaf node, an
ingest-only metering and a gateway of its own; ACCRUE_EDGE_GATEWAY_URL in run.env).

main() reads ACCRUE_STATE_DIR (default .accrue: data, logs/, pids/, run.env),
ACCRUE_HTTP_PORT (the gateway's; 0 for any free one), ACCRUE_RESTART_MAX (default 5) and
the port pins (``pinned_ports``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from libs.infra.embedded import EmbeddedNats, EmbeddedPostgres, die_with_parent, free_port
from libs.infra.service import ServiceDefinition
from libs.infra.tokens import SIGNING_KEY_ENV, mesh_token_env

ROOT = Path(__file__).resolve().parents[2]
# what main() reads for itself: not handed on to the processes
RUNNER_ONLY = frozenset(
    {"ACCRUE_STATE_DIR", "ACCRUE_HTTP_PORT", "ACCRUE_RESTART_MAX", "ACCRUE_GRPC_BASE_PORT", "ACCRUE_EDGE", "ACCRUE_GATEWAY_PROCESSES"}
)


def env_name(name: str) -> str:
    """A process name as it appears in variables: metering-aggregator -> METERING_AGGREGATOR."""
    return name.upper().replace("-", "_")


def pinned_ports(services: Sequence[ServiceDefinition], environ: Mapping[str, str]) -> dict[str, int]:
    """The gRPC ports asked for: ACCRUE_GRPC_BASE_PORT gives the services base, base+1, ...
    in registry order; ACCRUE_<NAME>_PORT pins one (and wins). Services not named get a
    free port. Raises ValueError for a value that is no port, or two services on one."""
    ports: dict[str, int] = {}
    base = environ.get("ACCRUE_GRPC_BASE_PORT", "").strip()
    for index, definition in enumerate(services):
        own = environ.get(f"ACCRUE_{env_name(definition.name)}_PORT", "").strip()
        if own:
            ports[definition.name] = _port(f"ACCRUE_{env_name(definition.name)}_PORT", own)
        elif base:
            ports[definition.name] = _port("ACCRUE_GRPC_BASE_PORT", base) + index
    taken: dict[int, str] = {}
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise ValueError(f"{name}'s port {port} is outside 1-65535")
        if port in taken:
            raise ValueError(f"{taken[port]} and {name} are both pinned to port {port}")
        taken[port] = name
    return ports


def external_ports(externals: Sequence[External], environ: Mapping[str, str]) -> dict[str, int]:
    """The externals' HTTP ports for ``make run``: ACCRUE_<NAME>_PORT when set, else the
    port its settings default to when free (the sandbox: 8100), else any free one."""
    ports: dict[str, int] = {}
    for external in externals:
        variable = f"ACCRUE_{env_name(external.definition.name)}_PORT"
        own = environ.get(variable, "").strip()
        ports[external.definition.name] = _port(variable, own) if own else _preferred_port(external.default_port)
    return ports


def _port(variable: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{variable}={value!r} is not a port number") from None


def _no_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {}


def _no_url_env(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class External:
    """A stand-in for a system outside Accrue that the mesh runs before its services (the
    sandbox card processor): an HTTP process of its own definition, probed on /healthz.

    ``shared_env`` gives the settings it shares with every process of the mesh, made once
    per mesh from the runner's environment (a value set there is kept; keys missing are
    made fresh); ``url_env`` the variables that say where it is, from its URL once it
    listens. Every process started after it gets both."""

    definition: ServiceDefinition
    shared_env: Callable[[Mapping[str, str]], dict[str, str]] = _no_env
    url_env: Callable[[str, Mapping[str, str]], dict[str, str]] = _no_url_env

    @property
    def default_port(self) -> int:
        """The HTTP port its settings default to (``make run`` prefers it when free)."""
        return int(self.definition.settings.model_fields["http_port"].default)


def _no_hub_env(domains: Sequence[str]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class EdgePlan:
    """Edge ingestion (README "Edge ingestion"): an edge is a NATS leaf node of the mesh's
    NATS with its own JetStream domain, an ingest process connected to it, and a gateway
    whose ``stands_in_for`` backend is that ingest process (every other backend stays the
    central one). ``hub_env`` is what the central processes are told of the edge domains
    (the central meter stream sources each edge's stream)."""

    ingest: ServiceDefinition
    stands_in_for: str
    hub_env: Callable[[Sequence[str]], dict[str, str]] = _no_hub_env


@dataclass
class Edge:
    """One running edge (Mesh.start_edge)."""

    name: str
    domain: str
    nats: EmbeddedNats
    ingest: Process
    gateway: Process
    gateway_url: str


@dataclass(frozen=True)
class Topology:
    """What a mesh runs: externals (HTTP stand-ins for outside systems, started first),
    services (gRPC, started and awaited next, in order), workers (started once the
    services are healthy) and the gateway, each a process running ``python -m <entry> <name>``."""

    services: Sequence[ServiceDefinition]
    workers: Sequence[ServiceDefinition]
    gateway: ServiceDefinition
    entry: str
    # (the gateway's database URL, a name) -> (merchant id, API key)
    create_merchant: Callable[[str, str], tuple[str, str]]
    externals: Sequence[External] = ()
    # what an edge runs (Mesh.start_edge); None: this topology has no edge ingestion
    edge: EdgePlan | None = None

    def definition(self, name: str) -> ServiceDefinition:
        for found in (*(e.definition for e in self.externals), *self.services, *self.workers, self.gateway):
            if found.name == name:
                return found
        raise KeyError(f"no {name!r} in the topology")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port_file: Path
    log_file: Path
    port: int = 0
    # what it takes to start it again (Mesh.respawn): module and arguments, environment,
    # and the variable that pins its port (none for one nobody holds the address of)
    module: str = ""
    env: dict[str, str] = field(default_factory=dict)
    port_env: str | None = "ACCRUE_GRPC_PORT"
    args: tuple[str, ...] = ()


@dataclass
class Mesh:
    state_dir: Path
    # fsync off for tests; make run keeps PostgreSQL durable
    durable: bool = True
    gateway_port: int | None = None
    # gateway processes sharing its port (0: ACCRUE_GATEWAY_PROCESSES, else 1)
    gateway_processes: int = 0
    # processes of a gRPC service (name -> count; absent: ACCRUE_<NAME>_PROCESSES, else 1),
    # each on its own port; who calls it is given all of them and balances per call
    service_processes: dict[str, int] = field(default_factory=dict)
    # services' gRPC ports (name -> port, pinned_ports); the others take any free port
    grpc_ports: dict[str, int] = field(default_factory=dict)
    # every service's port once the first one starts (_decide_ports); pinned ones included
    _decided_ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # None: the runner's ACCRUE_LOG_LEVEL, else INFO
    log_level: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # database names are <prefix>_<service>: two meshes can share one PostgreSQL
    db_prefix: str = "accrue"
    pg: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    postgres_url: str = ""
    nats_url: str = ""
    processes: dict[str, Process] = field(default_factory=dict)
    gateway_url: str = ""
    merchant_id: str = ""
    api_key: str = ""
    # the merchant-token keys its processes sign and verify with (libs/infra/tokens.py):
    # the environment's, else a pair of this mesh's own, made in start_infra
    token_env: dict[str, str] = field(default_factory=dict)
    # what start() and start_service() run; a mesh without one only runs infra and spawn()
    topology: Topology | None = None
    # externals' HTTP ports (name -> port; 0 or absent: any free one)
    http_ports: dict[str, int] = field(default_factory=dict)
    # what the externals share with every process (External.shared_env and url_env):
    # ACCRUE_SANDBOX_URL, ACCRUE_SANDBOX_SECRET_KEY, ... once they run
    external_env: dict[str, str] = field(default_factory=dict)
    # the gateway's public base URL given to every process (ACCRUE_PUBLIC_URL), decided
    # with the gateway's port before anything starts (start()); "" until then
    public_url: str = ""
    _gateway_port: int | None = field(default=None, init=False, repr=False)
    # the decided gateway port, bound until the gateway listens (_hold_port)
    _port_hold: socket.socket | None = field(default=None, init=False, repr=False)
    # the edges started (start_edge), by name
    edges: dict[str, Edge] = field(default_factory=dict)

    @property
    def plan(self) -> Topology:
        if self.topology is None:
            raise RuntimeError("this Mesh has no topology: use services.run.Mesh (the registry's)")
        return self.topology

    def database_url(self, name: str) -> str:
        return make_url(self.postgres_url).set(database=f"{self.db_prefix}_{name}").render_as_string(hide_password=False)

    def start_infra(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.token_env = self.token_env or mesh_token_env(os.environ)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        (self.state_dir / "ports").mkdir(exist_ok=True)
        self.postgres_url = self.postgres_url or os.environ.get("ACCRUE_POSTGRES_URL", "")
        if not self.postgres_url:
            self.pg = EmbeddedPostgres(self.state_dir / "pgdata", durable=self.durable)
            self.pg.start()
            self.postgres_url = self.pg.url
        self.nats_url = self.nats_url or os.environ.get("ACCRUE_NATS_URL", "")
        if not self.nats_url:
            self.nats = EmbeddedNats(self.state_dir / "nats")
            self.nats.start()
            self.nats_url = self.nats.url
        pid_dir = self.state_dir / "pids"
        pid_dir.mkdir(exist_ok=True)
        if self.pg is not None:
            (pid_dir / "postgres").write_text(str(self.pg.pid()))
        if self.nats is not None and self.nats.pid is not None:
            (pid_dir / "nats-server").write_text(str(self.nats.pid))

    def _mints_tokens(self, name: str) -> bool:
        assert self.topology is not None
        if name == self.topology.gateway.name:
            return True
        try:
            return self.topology.definition(name).mints_tokens
        except KeyError:
            return False

    def service_env(self, name: str, database: str | None = None) -> dict[str, str]:
        """The runner's environment, its own ACCRUE_* settings included, under what the
        runner decides (database, NATS, port, port file, log level) and the mesh's extra_env."""
        env = {k: v for k, v in os.environ.items() if k not in RUNNER_ONLY}
        env.update(self.token_env)
        env.update(self.external_env)
        if self.public_url:
            env["ACCRUE_PUBLIC_URL"] = self.public_url
        env.update(
            ACCRUE_DATABASE_URL=self.database_url(database or name),
            ACCRUE_NATS_URL=self.nats_url,
            ACCRUE_GRPC_PORT=str(self.grpc_ports.get(name, 0)),
            ACCRUE_PORT_FILE=str(self.state_dir / "ports" / name),
            ACCRUE_LOG_LEVEL=self.log_level or os.environ.get("ACCRUE_LOG_LEVEL") or "INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        if self.topology is not None and not self._mints_tokens(name):
            # only the gateway and the definitions that declare mints_tokens get the
            # signing key; every other process only verifies tokens
            env.pop(SIGNING_KEY_ENV, None)
        return env

    def spawn(
        self, name: str, module: str, env: dict[str, str], port_env: str | None = "ACCRUE_GRPC_PORT", args: Sequence[str] = ()
    ) -> Process:
        port_file = Path(env["ACCRUE_PORT_FILE"])
        port_file.unlink(missing_ok=True)
        log_file = self.state_dir / "logs" / f"{name}.log"
        with open(log_file, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGTERM, as a stop would: it stops gracefully when the runner is killed
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        pid_dir = self.state_dir / "pids"
        pid_dir.mkdir(exist_ok=True)
        (pid_dir / name).write_text(str(popen.pid))
        process = Process(
            name=name, popen=popen, port_file=port_file, log_file=log_file, module=module, env=env, port_env=port_env, args=tuple(args)
        )
        self.processes[name] = process
        return process

    def respawn(self, name: str) -> Process:
        """Start ``name`` again as it was started, on the port it had bound: whoever holds
        its address (the gateway, run.env) keeps a valid one."""
        old = self.processes[name]
        env = dict(old.env)
        if old.port_env is not None and old.port:
            env[old.port_env] = str(old.port)
        process = self.spawn(name, old.module, env, old.port_env, old.args)
        process.port = old.port
        return process

    def definition_env(self, definition: ServiceDefinition, name: str | None = None) -> dict[str, str]:
        """A definition's process environment: its database, the deployment's settings
        (the runner's environment and the mesh's extra_env win), and the address of each
        service it talks to that runs (over any address in the environment)."""
        env = self.service_env(name or definition.name, definition.database_name)
        for key, value in definition.env.items():
            env.setdefault(key, value)
        for other in definition.talks_to:
            target = self.service_target(other)
            if target:
                env[f"ACCRUE_{env_name(other)}_ADDR"] = target
        return env

    def process_count(self, name: str) -> int:
        """How many processes run the gRPC service ``name`` (service_processes, else
        ACCRUE_<NAME>_PROCESSES, else 1)."""
        count = self.service_processes.get(name) or int(os.environ.get(f"ACCRUE_{env_name(name)}_PROCESSES", "1") or 1)
        return max(1, count)

    @staticmethod
    def replica_name(name: str, index: int) -> str:
        """Process ``index`` of service ``name``: the first is ``name``, then ``name-2`` ..."""
        return name if index == 1 else f"{name}-{index}"

    def service_target(self, name: str) -> str:
        """The gRPC target of service ``name``: ``127.0.0.1:port`` of its one process, or
        for several an ``ipv4:`` list of every one, which a channel balances per call
        (libs/infra/grpc_client.py: round_robin). A process not started yet (services may
        call each other both ways) or down (restarting) is there by its decided port.
        "" when it neither runs nor has a port decided."""
        ports = []
        for index in range(1, self.process_count(name) + 1):
            replica = self.replica_name(name, index)
            if replica in self.processes and self.processes[replica].popen.poll() is None:
                ports.append(self.wait_port(self.processes[replica]))
            elif replica in self._decided_ports:
                ports.append(self._decided_ports[replica])
        if len(ports) <= 1:
            return f"127.0.0.1:{ports[0]}" if ports else ""
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def _decide_ports(self) -> None:
        """Every service's gRPC port (pinned, else a free one), decided before the first one
        starts, so that each is given the address of every service it talks to whatever
        the start order (the subscription service calls invoicing, which calls it back)."""
        for definition in self.plan.services:
            if definition.name not in self._decided_ports:
                self._decided_ports[definition.name] = self.grpc_ports.get(definition.name) or free_port()
            for index in range(2, self.process_count(definition.name) + 1):
                self._decided_ports.setdefault(self.replica_name(definition.name, index), free_port())

    def start_service(self, name: str, index: int = 1) -> Process:
        """Process ``index`` of the gRPC service ``name`` (replica_name), on its decided port."""
        definition = self.plan.definition(name)
        self._decide_ports()
        process_name = self.replica_name(name, index)
        env = self.definition_env(definition, process_name)  # its own port file and log
        if definition.mints_tokens:  # service_env knows a replica by its name only
            env.update(self.token_env)
        if process_name in self._decided_ports:
            env["ACCRUE_GRPC_PORT"] = str(self._decided_ports[process_name])
        return self.spawn(process_name, self.plan.entry, env, args=(name,))

    def start_worker(self, kind: str, name: str | None = None) -> Process:
        """A worker process of ``kind`` (a definition in topology.workers); several may run
        (give each its own name). Restarted on any port: nobody holds its address."""
        definition = self.plan.definition(kind)
        return self.spawn(name or kind, self.plan.entry, self.definition_env(definition, name), port_env=None, args=(kind,))

    def wait_port(self, process: Process, timeout: float = 90) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                tail = process.log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{tail}")
            if process.port_file.exists() and process.port_file.read_text().strip():
                process.port = int(process.port_file.read_text())
                return process.port
            time.sleep(0.05)
        raise TimeoutError(f"{process.name} did not start within {timeout}s (see {process.log_file})")

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        process = self.processes[name]
        self.wait_port(process, timeout=90)
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"{name} did not report SERVING")

    def decide_gateway_port(self) -> int:
        """The gateway's port, decided once: ``gateway_port`` when pinned, a free one for 0,
        else 8000 when free. The public URL follows from it (unless the environment's
        ACCRUE_PUBLIC_URL says otherwise)."""
        if self._gateway_port is None:
            if self.gateway_port is None:
                self._gateway_port = _preferred_port(8000)
            else:
                self._gateway_port = self.gateway_port or free_port()
            self.public_url = self.public_url or os.environ.get("ACCRUE_PUBLIC_URL", "") or f"http://127.0.0.1:{self._gateway_port}"
            self._hold_port(self._gateway_port)
        return self._gateway_port

    def _hold_port(self, port: int) -> None:
        """Keep the decided port bound (not listening) until the gateway listens on it:
        between the decision and the gateway's start every service starts and connects, and
        an outgoing connection's ephemeral port could otherwise take it. The gateway binds
        with SO_REUSEPORT, as this hold does, so it binds beside it."""
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            hold.bind(("127.0.0.1", port))
        except OSError:  # taken meanwhile: the gateway's own bind says so
            hold.close()
            return
        self._port_hold = hold

    def _release_port(self) -> None:
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None

    def start_gateway(self) -> None:
        """The gateway: ``gateway_processes`` processes (default ACCRUE_GATEWAY_PROCESSES, else
        1) sharing one port with SO_REUSEPORT, the kernel spreading connections over them
        (the gateway is stateless). The first is ``gateway``, the others ``gateway-2`` ..."""
        count = self.gateway_processes or int(os.environ.get("ACCRUE_GATEWAY_PROCESSES", "1") or 1)
        try:
            for index in range(1, max(1, count) + 1):
                self.start_gateway_process(index)
        finally:
            self._release_port()

    def start_gateway_process(self, index: int) -> Process:
        """Gateway process number ``index`` (1: ``gateway``) on the gateway's port, which
        every one binds with SO_REUSEPORT: more can join a running mesh (a port already
        taken by something else was ruled out when the port was decided)."""
        gateway = self.plan.gateway
        name = gateway.name if index == 1 else f"{gateway.name}-{index}"
        env = self.definition_env(gateway)
        env.update(ACCRUE_HTTP_PORT=str(self.decide_gateway_port()), ACCRUE_HTTP_REUSE_PORT="true")
        process = self.spawn(name, self.plan.entry, env, port_env="ACCRUE_HTTP_PORT", args=(gateway.name,))
        self.wait_port(process)
        if index == 1:
            self.gateway_url = f"http://127.0.0.1:{process.port}"
        self._wait_http_healthy(name, f"http://127.0.0.1:{process.port}")
        return process

    def _wait_http_healthy(self, name: str, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].popen.poll() is not None:
                tail = self.processes[name].log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {self.processes[name].popen.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not become healthy")

    def start_external(self, external: External) -> Process:
        """An external (before the services): its shared settings made (once per mesh), its
        process started and healthy, then where it is added to what every process gets."""
        definition = external.definition
        for key, value in external.shared_env(os.environ).items():
            self.external_env.setdefault(key, value)
        env = self.definition_env(definition)
        env["ACCRUE_HTTP_PORT"] = str(self.http_ports.get(definition.name, 0))
        process = self.spawn(definition.name, self.plan.entry, env, port_env="ACCRUE_HTTP_PORT", args=(definition.name,))
        self.wait_port(process)
        url = f"http://127.0.0.1:{process.port}"
        self._wait_http_healthy(definition.name, url)
        self.external_env.update(external.url_env(url, os.environ))
        return process

    def create_merchant(self, name: str) -> tuple[str, str]:
        return self.plan.create_merchant(self.database_url(self.plan.gateway.database_name), name)

    def start(self, merchant_name: str = "Demo merchant") -> None:
        """Infra (unless already started), every service, every worker, the gateway, and a
        merchant: the whole mesh."""
        self.start_infra()
        self.decide_gateway_port()
        for external in self.plan.externals:
            if external.definition.name not in self.processes:
                self.start_external(external)
        for definition in self.plan.services:
            self.start_service(definition.name)
        for definition in self.plan.services:
            self.wait_healthy(definition.name)
        # more processes of a service once its first has migrated its database
        replicas = [(d.name, index) for d in self.plan.services for index in range(2, self.process_count(d.name) + 1)]
        for name, index in replicas:
            self.start_service(name, index)
        for name, index in replicas:
            self.wait_healthy(self.replica_name(name, index))
        for definition in self.plan.workers:
            self.start_worker(definition.name)
        self.start_gateway()
        self.merchant_id, self.api_key = self.create_merchant(merchant_name)
        (self.state_dir / "run.env").write_text(
            f"ACCRUE_GATEWAY_URL={self.gateway_url}\n"
            f"ACCRUE_MERCHANT_ID={self.merchant_id}\n"
            f"ACCRUE_API_KEY={self.api_key}\n"
            f"ACCRUE_GATEWAY_DATABASE_URL={self.database_url('gateway')}\n"
            f"ACCRUE_PUBLIC_URL={self.public_url}\n"
            + "".join(f"{key}={value}\n" for key, value in self.service_addresses().items())
            + "".join(f"{key}={value}\n" for key, value in sorted(self.external_env.items()))
        )

    def service_addresses(self) -> dict[str, str]:
        """ACCRUE_<NAME>_ADDR -> the target of every gRPC service (the gateway's settings, run.env)."""
        return {f"ACCRUE_{env_name(d.name)}_ADDR": self.service_target(d.name) for d in self.plan.services if d.name in self.processes}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        process.popen.wait(30)

    # --- edge ingestion (README "Edge ingestion") ------------------------------------

    @property
    def edge_plan(self) -> EdgePlan:
        if self.plan.edge is None:
            raise RuntimeError("this mesh's topology has no edge plan")
        return self.plan.edge

    def prepare_edges(self, domains: Sequence[str], leafnode_port: int = 0) -> None:
        """Before start(): the embedded NATS becomes a hub that accepts leaf nodes (on
        ``leafnode_port``, 0 any free one), and the central processes are told the edge
        domains (EdgePlan.hub_env). A NATS of the environment's (ACCRUE_NATS_URL) must
        accept leaf nodes itself: start_edge is then given its leaf-node URL."""
        self.extra_env.update(self.edge_plan.hub_env(domains))
        self.nats_url = self.nats_url or os.environ.get("ACCRUE_NATS_URL", "")
        if self.nats_url or self.nats is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.nats = EmbeddedNats(self.state_dir / "nats", leafnode_port=leafnode_port)
        self.nats.start()
        self.nats_url = self.nats.url

    def start_edge(self, domain: str = "edge", name: str | None = None, hub: str | None = None, wait_for_link: bool = True) -> Edge:
        """One edge, after start(): a leaf-node nats-server (JetStream domain ``domain``, its
        store in <state>/<name>/nats) connected to ``hub`` (a nats-leaf:// URL; default
        ACCRUE_EDGE_HUB_URL, else the embedded hub's), the ingest process on it
        (``<name>-ingest``, its own gRPC port) and a gateway (``<name>-gateway``, its own
        HTTP port) whose ``stands_in_for`` backend is that process. Both are supervised and
        restarted like the others; the leaf nats-server is not (it is infrastructure)."""
        plan = self.edge_plan
        name = name or domain
        if name in self.edges:
            raise ValueError(f"an edge named {name!r} is already running")
        hub = hub or os.environ.get("ACCRUE_EDGE_HUB_URL", "")
        if not hub:
            if self.nats is None or self.nats.leafnode_port is None:
                raise RuntimeError("the hub accepts no leaf nodes: call prepare_edges() before start(), or give the hub's leaf-node URL")
            hub = self.nats.leafnode_url
        leaf = EmbeddedNats(self.state_dir / name / "nats", domain=domain, hub=hub)
        leaf.start()
        if leaf.pid is not None:
            (self.state_dir / "pids" / f"{name}-nats-server").write_text(str(leaf.pid))
        try:
            if wait_for_link:
                leaf.wait_leaf_connections(1)
            ingest_name = f"{name}-ingest"
            env = self.definition_env(plan.ingest, ingest_name)
            env["ACCRUE_NATS_URL"] = leaf.url
            ingest = self.spawn(ingest_name, self.plan.entry, env, args=(plan.ingest.name,))
            self.wait_healthy(ingest_name)
            gateway_name = f"{name}-gateway"
            gateway_env = self.definition_env(self.plan.gateway, gateway_name)
            # it mints merchant tokens as the central gateway does (with the same key)
            signing_key = self.service_env(self.plan.gateway.name).get(SIGNING_KEY_ENV) or os.environ.get(SIGNING_KEY_ENV, "")
            gateway_env[SIGNING_KEY_ENV] = signing_key
            gateway_env[f"ACCRUE_{env_name(plan.stands_in_for)}_ADDR"] = f"127.0.0.1:{ingest.port}"
            gateway_env["ACCRUE_HTTP_PORT"] = "0"
            gateway = self.spawn(gateway_name, self.plan.entry, gateway_env, port_env="ACCRUE_HTTP_PORT", args=(self.plan.gateway.name,))
            self.wait_port(gateway)
            url = f"http://127.0.0.1:{gateway.port}"
            self._wait_http_healthy(gateway_name, url)
        except BaseException:
            leaf.stop()
            raise
        edge = Edge(name=name, domain=domain, nats=leaf, ingest=ingest, gateway=gateway, gateway_url=url)
        self.edges[name] = edge
        return edge

    def stop(self) -> None:
        self._release_port()
        for process in self.processes.values():
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
            (self.state_dir / "pids" / process.name).unlink(missing_ok=True)
        for edge in self.edges.values():
            edge.nats.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.pg is not None:
            self.pg.stop()


def _preferred_port(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff (0.5 s, 1 s, 2 s ... capped); a process that stays up
    ``stable_after`` seconds has its count reset; one more exit after ``max_restarts``
    restarts in a row is given up on."""

    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_restarts: int = 5
    stable_after: float = 30.0

    @classmethod
    def from_env(cls) -> RestartPolicy:
        return cls(max_restarts=int(os.environ.get("ACCRUE_RESTART_MAX", cls.max_restarts)))

    def backoff(self, restarts: int) -> float:
        return float(min(self.initial_backoff * 2**restarts, self.max_backoff))


class GaveUp(Exception):
    def __init__(self, process: Process, code: int, restarts: int) -> None:
        super().__init__(
            f"gave up on {process.name}: it exited ({describe_exit(code)}) again after {restarts} restarts; see {process.log_file}"
        )
        self.process = process


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Watch:
    started_at: float
    restarts: int = 0  # in a row: since it last stayed up policy.stable_after
    restart_at: float | None = None  # dead, to be started again then
    back: bool = True  # its restart has been reported as serving


class Supervisor:
    """Restarts the mesh's processes when they exit, as ``make run`` does.

    ``poll()`` is one non-blocking round over ``mesh.processes`` (call it every few
    hundred milliseconds); it raises ``GaveUp`` when a process has used up its restarts.
    """

    def __init__(
        self,
        mesh: Mesh,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mesh = mesh
        self.policy = policy or RestartPolicy()
        self.say = say
        self.clock = clock
        self._watches: dict[str, _Watch] = {}

    def poll(self) -> None:
        now = self.clock()
        for name, process in list(self.mesh.processes.items()):
            watch = self._watches.setdefault(name, _Watch(started_at=now))
            if watch.restart_at is not None:
                if now >= watch.restart_at:
                    self._restart(name, watch, now)
                continue
            code = process.popen.poll()
            if code is None:
                self._check_running(process, watch, now)
                continue
            if watch.restarts >= self.policy.max_restarts:
                raise GaveUp(process, code, watch.restarts)
            delay = self.policy.backoff(watch.restarts)
            self.say(
                f"{name} (pid {process.popen.pid}) exited, {describe_exit(code)}; see {process.log_file}; "
                f"restarting in {delay:g}s (restart {watch.restarts + 1} of at most {self.policy.max_restarts} in a row)"
            )
            watch.restart_at = now + delay

    def run(self, should_stop: Callable[[], bool], interval: float = 0.2) -> None:
        while not should_stop():
            self.poll()
            time.sleep(interval)

    def _restart(self, name: str, watch: _Watch, now: float) -> None:
        old = self.mesh.processes[name]
        watch.restarts += 1
        watch.restart_at = None
        watch.started_at = now
        with contextlib.suppress(OSError), open(old.log_file, "a") as log:
            log.write(f"--- restarted by the runner (restart {watch.restarts}) ---\n")
        process = self.mesh.respawn(name)
        where = f" on 127.0.0.1:{process.port}" if process.port_env is not None and process.port else ""
        watch.back = not where  # nothing to wait for when it listens on nothing
        self.say(f"{name} restarted (pid {process.popen.pid}){where}")

    def _check_running(self, process: Process, watch: _Watch, now: float) -> None:
        if not watch.back and process.port_file.exists() and process.port_file.read_text().strip():
            watch.back = True
            self.say(f"{process.name} is serving again on 127.0.0.1:{process.port_file.read_text().strip()}")
        if watch.restarts and now - watch.started_at >= self.policy.stable_after:
            watch.restarts = 0


def main(topology: Topology) -> None:
    """``make run`` (``python -m services.run``): start the mesh, print where it is, supervise it."""
    started = time.monotonic()
    state_dir = Path(os.environ["ACCRUE_STATE_DIR"]) if "ACCRUE_STATE_DIR" in os.environ else ROOT / ".accrue"
    gateway_port = int(os.environ["ACCRUE_HTTP_PORT"]) if "ACCRUE_HTTP_PORT" in os.environ else None
    try:
        grpc_ports = pinned_ports(topology.services, os.environ)
    except ValueError as err:
        sys.exit(f"accrue: {err}")
    try:
        http_ports = external_ports(topology.externals, os.environ)
    except ValueError as err:
        sys.exit(f"accrue: {err}")
    mesh = Mesh(state_dir, gateway_port=gateway_port, grpc_ports=grpc_ports, topology=topology, http_ports=http_ports)
    stop = False
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        received.append(signal.Signals(signum).name)  # printed after the loop: print() is not reentrant

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    gave_up: GaveUp | None = None
    # ACCRUE_EDGE=1: one edge too (domain "edge"; ACCRUE_EDGE=<domain> names it)
    edge_wanted = os.environ.get("ACCRUE_EDGE", "").strip()
    edge_domain = "edge" if edge_wanted.lower() in ("1", "true", "yes") else edge_wanted
    try:
        if edge_domain:
            mesh.prepare_edges([edge_domain])
        mesh.start()
        edge = mesh.start_edge(edge_domain) if edge_domain else None
        if edge is not None:
            with open(mesh.state_dir / "run.env", "a") as run_env:
                run_env.write(f"ACCRUE_EDGE_GATEWAY_URL={edge.gateway_url}\n")
        elapsed = time.monotonic() - started
        print(f"\nAccrue is up in {elapsed:.1f}s", flush=True)
        print(f"  gateway      {mesh.gateway_url}   (OpenAPI: {mesh.gateway_url}/openapi.json)")
        for external in topology.externals:
            name = external.definition.name
            print(f"  {name:<12} http://127.0.0.1:{mesh.processes[name].port}   (outside Accrue: a stand-in, see the README)")
        for definition in topology.services:
            print(f"  {definition.name:<12} grpc {mesh.service_target(definition.name)}")
        for worker in topology.workers:
            role = worker.name.removeprefix(f"{worker.database_name}-")
            print(f"  {role:<12} {worker.database_name}'s {role} worker (python -m {topology.entry} {worker.name})")
        if edge is not None:
            where = f"ingest on NATS leaf node {edge.nats.url}, JetStream domain {edge.domain!r}"
            print(f"  edge         {edge.gateway_url}   (the gateway of edge {edge.name!r}: {where})")
        print(f"  postgres     {mesh.postgres_url}")
        print(f"  nats         {mesh.nats_url}")
        print(f"  logs         {mesh.state_dir / 'logs'}   (pids in {mesh.state_dir / 'pids'})")
        print(f"\nACCRUE_GATEWAY_URL={mesh.gateway_url}")
        print(f"ACCRUE_MERCHANT_ID={mesh.merchant_id}")
        print(f"ACCRUE_API_KEY={mesh.api_key}")
        print(f"ACCRUE_PUBLIC_URL={mesh.public_url}")
        if edge is not None:
            print(f"ACCRUE_EDGE_GATEWAY_URL={edge.gateway_url}")
        for key, value in sorted(mesh.external_env.items()):
            if key.endswith("_URL"):  # its keys are in run.env only
                print(f"{key}={value}")
        for key, value in mesh.service_addresses().items():
            print(f"{key}={value}")
        print(f"\n(also in {mesh.state_dir / 'run.env'}; Ctrl-C stops everything)", flush=True)
        try:
            Supervisor(mesh, RestartPolicy.from_env()).run(lambda: stop)
        except GaveUp as err:
            gave_up = err
            print(f"accrue: {err}; stopping everything", file=sys.stderr, flush=True)
    finally:
        print(f"stopping ({received[0]})..." if received else "stopping...", flush=True)
        mesh.stop()
        print("stopped", flush=True)
    if gave_up is not None:
        sys.exit(1)
