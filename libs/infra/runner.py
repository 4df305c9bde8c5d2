"""The local mesh: `make run` and the end-to-end tests start Accrue through this.

Starts a real PostgreSQL and NATS (embedded, from pip wheels) unless ACCRUE_POSTGRES_URL /
ACCRUE_NATS_URL point at existing servers, then every service and the gateway as
separate processes on free ports, waits until each is healthy (gRPC health checking;
the gateway's /healthz), creates a demo merchant, and writes .accrue/run.env.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from libs.infra.embedded import EmbeddedNats, EmbeddedPostgres, free_port

SERVICES = ("catalog", "subscription", "metering", "invoicing", "payment", "entitlement")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port_file: Path
    log_file: Path
    port: int = 0


@dataclass
class Mesh:
    state_dir: Path
    # fsync off for tests; make run keeps PostgreSQL durable
    durable: bool = True
    gateway_port: int | None = None
    log_level: str = "INFO"
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

    def database_url(self, name: str) -> str:
        return make_url(self.postgres_url).set(database=f"{self.db_prefix}_{name}").render_as_string(hide_password=False)

    def start_infra(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
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

    def service_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCRUE_")}
        env.update(
            ACCRUE_DATABASE_URL=self.database_url(name),
            ACCRUE_NATS_URL=self.nats_url,
            ACCRUE_GRPC_PORT="0",
            ACCRUE_PORT_FILE=str(self.state_dir / "ports" / name),
            ACCRUE_LOG_LEVEL=self.log_level,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def spawn(self, name: str, module: str, env: dict[str, str]) -> Process:
        port_file = Path(env["ACCRUE_PORT_FILE"])
        port_file.unlink(missing_ok=True)
        log_file = self.state_dir / "logs" / f"{name}.log"
        with open(log_file, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = Process(name=name, popen=popen, port_file=port_file, log_file=log_file)
        self.processes[name] = process
        return process

    def start_service(self, name: str) -> Process:
        env = self.service_env(name)
        if name == "metering":
            # aggregation runs in its own process (as on Kubernetes), on the other core
            env.setdefault("ACCRUE_AGGREGATOR_ENABLED", "false")
        return self.spawn(name, f"services.{name}.app", env)

    def start_aggregator(self, name: str = "metering-aggregator") -> Process:
        """A metering aggregator worker (``python -m services.metering.aggregator``);
        several may run (give each its own name): they share one durable consumer."""
        env = self.service_env("metering")
        env["ACCRUE_PORT_FILE"] = str(self.state_dir / "ports" / name)
        return self.spawn(name, "services.metering.aggregator", env)

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

    def start_gateway(self) -> None:
        env = self.service_env("gateway")
        port = self.gateway_port if self.gateway_port is not None else _preferred_port(8000)
        env.update(ACCRUE_HTTP_PORT=str(port))
        for name in SERVICES:
            env[f"ACCRUE_{name.upper()}_ADDR"] = f"127.0.0.1:{self.processes[name].port}"
        process = self.spawn("gateway", "services.gateway.app", env)
        self.wait_port(process)
        self.gateway_url = f"http://127.0.0.1:{process.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.gateway_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError("gateway did not become healthy")

    def create_merchant(self, name: str) -> tuple[str, str]:
        from services.gateway.merchants import create_merchant_sync

        return create_merchant_sync(self.database_url("gateway"), name)

    def start(self) -> None:
        self.start_infra()
        for name in SERVICES:
            self.start_service(name)
        for name in SERVICES:
            self.wait_healthy(name)
        if self.extra_env.get("ACCRUE_AGGREGATOR_ENABLED") != "false":
            self.start_aggregator()
        self.start_gateway()
        self.merchant_id, self.api_key = self.create_merchant("Demo merchant")
        (self.state_dir / "run.env").write_text(
            f"ACCRUE_GATEWAY_URL={self.gateway_url}\n"
            f"ACCRUE_MERCHANT_ID={self.merchant_id}\n"
            f"ACCRUE_API_KEY={self.api_key}\n"
            f"ACCRUE_GATEWAY_DATABASE_URL={self.database_url('gateway')}\n"
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        process.popen.wait(30)

    def stop(self) -> None:
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


def main() -> None:
    started = time.monotonic()
    mesh = Mesh(ROOT / ".accrue", gateway_port=int(os.environ["ACCRUE_HTTP_PORT"]) if "ACCRUE_HTTP_PORT" in os.environ else None)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        mesh.start()
        elapsed = time.monotonic() - started
        print(f"\nAccrue is up in {elapsed:.1f}s", flush=True)
        print(f"  gateway      {mesh.gateway_url}   (OpenAPI: {mesh.gateway_url}/openapi.json)")
        for name in SERVICES:
            print(f"  {name:<12} grpc 127.0.0.1:{mesh.processes[name].port}")
        print("  aggregator   metering's aggregator worker (python -m services.metering.aggregator)")
        print(f"  postgres     {mesh.postgres_url}")
        print(f"  nats         {mesh.nats_url}")
        print(f"  logs         {mesh.state_dir / 'logs'}")
        print(f"\nACCRUE_GATEWAY_URL={mesh.gateway_url}")
        print(f"ACCRUE_MERCHANT_ID={mesh.merchant_id}")
        print(f"ACCRUE_API_KEY={mesh.api_key}")
        print(f"\n(also in {mesh.state_dir / 'run.env'}; Ctrl-C stops everything)", flush=True)
        while not stop:
            for process in mesh.processes.values():
                if process.popen.poll() is not None:
                    print(f"{process.name} exited with {process.popen.returncode}; see {process.log_file}", flush=True)
                    stop = True
            time.sleep(0.2)
    finally:
        print("stopping...", flush=True)
        mesh.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
