"""The runner's contract with what it starts: a SIGKILLed runner leaves no process behind,
pinned ports are honoured and every service's address is in run.env, and the user's
ACCRUE_* settings reach the processes under what the runner decides."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from libs.infra.runner import Mesh, external_ports, pinned_ports
from services import registry
from tests.integration.test_runner_supervision import StartRunner, _serving, leftovers, start_runner  # noqa: F401

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps has finished: it holds nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _free_block(size: int) -> int:
    """A base port with ``size`` free ports from it."""
    for base in range(23000, 60000, 97):
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def test_sigkill_of_the_runner_leaves_nothing_and_pinned_ports_are_in_run_env(start_runner: StartRunner) -> None:  # noqa: F811
    names = [d.name for d in registry.SERVICES]
    base = _free_block(len(names) + 1)
    # the base pins every service in registry order; metering's own pin wins over it
    metering_port = base + len(names)
    runner = start_runner({"ACCRUE_GRPC_BASE_PORT": str(base), "ACCRUE_METERING_PORT": str(metering_port)})
    runner.wait_up()
    expected = {name: base + i for i, name in enumerate(names)} | {"metering": metering_port}

    run_env = dict(line.split("=", 1) for line in (runner.state_dir / "run.env").read_text().splitlines())
    for name, port in expected.items():
        assert run_env[f"ACCRUE_{name.upper()}_ADDR"] == f"127.0.0.1:{port}"
        assert _serving(port), name
    assert f"ACCRUE_METERING_ADDR=127.0.0.1:{metering_port}" in runner.output
    # the sandbox processor ran first; its URL and this mesh's keys are in run.env, the public URL is the gateway's
    assert run_env["ACCRUE_PUBLIC_URL"] == run_env["ACCRUE_GATEWAY_URL"]
    assert run_env["ACCRUE_SANDBOX_URL"] == run_env["ACCRUE_SANDBOX_PUBLIC_URL"]
    assert run_env["ACCRUE_SANDBOX_SECRET_KEY"].startswith("sk_test_") and run_env["ACCRUE_SANDBOX_WEBHOOK_SECRET"].startswith("whsec_")
    assert run_env["ACCRUE_SANDBOX_SECRET_KEY"] not in runner.output  # printed: URLs only

    pid_dir = runner.state_dir / "pids"
    pids = {path.name: int(path.read_text()) for path in pid_dir.iterdir()}
    assert {"gateway", "nats-server", "postgres", "sandbox", *names} <= pids.keys()
    mesh_pids = set(pids.values()) | set(leftovers(runner.state_dir))
    mesh_pids.discard(runner.popen.pid)
    assert all(_alive(pid) for pid in pids.values())

    os.kill(runner.popen.pid, signal.SIGKILL)
    runner.popen.wait(10)
    deadline = time.monotonic() + 20  # services stop gracefully (SIGTERM), PostgreSQL fast
    while time.monotonic() < deadline and any(_alive(pid) for pid in mesh_pids):
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in mesh_pids if _alive(pid)}
    assert left == {}
    assert [pid for pid in leftovers(runner.state_dir) if _alive(pid)] == []


def test_pinned_ports_read_from_the_environment() -> None:
    services = registry.SERVICES
    names = [d.name for d in services]
    assert pinned_ports(services, {}) == {}
    assert pinned_ports(services, {"ACCRUE_CATALOG_PORT": "7001"}) == {"catalog": 7001}
    pinned = pinned_ports(services, {"ACCRUE_GRPC_BASE_PORT": "7100", "ACCRUE_INVOICING_PORT": "7200"})
    assert pinned == {name: 7100 + i for i, name in enumerate(names)} | {"invoicing": 7200}
    with pytest.raises(ValueError, match="both pinned to port 7101"):
        pinned_ports(services, {"ACCRUE_GRPC_BASE_PORT": "7100", "ACCRUE_CATALOG_PORT": "7101"})
    with pytest.raises(ValueError, match="not a port number"):
        pinned_ports(services, {"ACCRUE_CATALOG_PORT": "eighty"})
    with pytest.raises(ValueError, match="outside"):
        pinned_ports(services, {"ACCRUE_CATALOG_PORT": "70000"})


def test_the_users_accrue_settings_reach_the_processes_under_the_runners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.run import TOPOLOGY

    monkeypatch.setenv("ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("ACCRUE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ACCRUE_DATABASE_URL", "postgresql+psycopg://elsewhere/x")
    monkeypatch.setenv("ACCRUE_GRPC_BASE_PORT", "7100")  # the runner's own
    mesh = Mesh(
        tmp_path, topology=TOPOLOGY, postgres_url="postgresql+psycopg://postgres@127.0.0.1:5/postgres", grpc_ports={"catalog": 7100}
    )
    mesh.nats_url = "nats://127.0.0.1:6"
    env = mesh.definition_env(TOPOLOGY.definition("catalog"))
    assert env["ACCRUE_OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["ACCRUE_LOG_LEVEL"] == "DEBUG"
    assert env["ACCRUE_DATABASE_URL"] == "postgresql+psycopg://postgres@127.0.0.1:5/accrue_catalog"
    assert env["ACCRUE_NATS_URL"] == "nats://127.0.0.1:6"
    assert env["ACCRUE_GRPC_PORT"] == "7100"
    assert "ACCRUE_GRPC_BASE_PORT" not in env
    assert mesh.definition_env(TOPOLOGY.definition("subscription"))["ACCRUE_GRPC_PORT"] == "0"
    # a mesh's own log level (the tests') wins over the environment's
    quiet = Mesh(tmp_path, topology=TOPOLOGY, log_level="WARNING", postgres_url=mesh.postgres_url)
    assert quiet.service_env("catalog")["ACCRUE_LOG_LEVEL"] == "WARNING"


def test_the_externals_keys_and_urls_and_the_public_url_reach_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.run import TOPOLOGY
    from services.sandbox.app import EXTERNAL

    monkeypatch.setenv("ACCRUE_SANDBOX_SECRET_KEY", "sk_test_from_the_environment")
    monkeypatch.delenv("ACCRUE_PUBLIC_URL", raising=False)
    made = EXTERNAL.shared_env(os.environ)
    assert made["ACCRUE_SANDBOX_SECRET_KEY"] == "sk_test_from_the_environment"  # what the user set is kept
    assert made["ACCRUE_SANDBOX_PUBLISHABLE_KEY"].startswith("pk_test_") and made["ACCRUE_SANDBOX_WEBHOOK_SECRET"].startswith("whsec_")
    assert (
        EXTERNAL.shared_env({})["ACCRUE_SANDBOX_PUBLISHABLE_KEY"] != EXTERNAL.shared_env({})["ACCRUE_SANDBOX_PUBLISHABLE_KEY"]
    )  # fresh per mesh
    assert EXTERNAL.url_env("http://127.0.0.1:9", {}) == {
        "ACCRUE_SANDBOX_URL": "http://127.0.0.1:9",
        "ACCRUE_SANDBOX_PUBLIC_URL": "http://127.0.0.1:9",
    }
    assert (
        EXTERNAL.url_env("http://127.0.0.1:9", {"ACCRUE_SANDBOX_PUBLIC_URL": "https://pay.example"})["ACCRUE_SANDBOX_PUBLIC_URL"]
        == "https://pay.example"
    )
    assert external_ports(TOPOLOGY.externals, {"ACCRUE_SANDBOX_PORT": "7300"}) == {"sandbox": 7300}
    with pytest.raises(ValueError, match="not a port number"):
        external_ports(TOPOLOGY.externals, {"ACCRUE_SANDBOX_PORT": "many"})

    mesh = Mesh(tmp_path, topology=TOPOLOGY, postgres_url="postgresql+psycopg://postgres@127.0.0.1:5/postgres", gateway_port=7400)
    mesh.external_env.update(made, ACCRUE_SANDBOX_URL="http://127.0.0.1:7300")
    assert mesh.decide_gateway_port() == 7400 and mesh.public_url == "http://127.0.0.1:7400"
    for name in ("payment", "invoicing", "subscription", "gateway", "sandbox"):
        env = mesh.definition_env(TOPOLOGY.definition(name))
        assert env["ACCRUE_PUBLIC_URL"] == "http://127.0.0.1:7400", name
        assert env["ACCRUE_SANDBOX_URL"] == "http://127.0.0.1:7300", name
        assert env["ACCRUE_SANDBOX_SECRET_KEY"] == "sk_test_from_the_environment", name
    monkeypatch.setenv("ACCRUE_PUBLIC_URL", "https://billing.example")  # behind a proxy: the environment's wins
    behind = Mesh(tmp_path, topology=TOPOLOGY, postgres_url=mesh.postgres_url, gateway_port=0)
    assert behind.decide_gateway_port() > 0 and behind.public_url == "https://billing.example"
