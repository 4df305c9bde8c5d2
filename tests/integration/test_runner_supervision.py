"""`make run` supervises its processes: restarts on the same port, gives up loudly, stops cleanly.

Each test starts the real runner (``python -m services.run``) as a subprocess with its
own state directory, so its own PostgreSQL and NATS, and SIGKILLs processes of the mesh
by the pids the runner writes to ``<state>/pids/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.infra.runner import ROOT, GaveUp, Mesh, RestartPolicy, Supervisor

pytestmark = pytest.mark.integration


class Runner:
    """``python -m services.run`` with its output collected line by line."""

    def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCRUE_")}
        env.update(ACCRUE_STATE_DIR=str(state_dir), ACCRUE_HTTP_PORT="0", PYTHONUNBUFFERED="1", **(extra_env or {}))
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "services.run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = re.search(pattern, "".join(self._lines), re.MULTILINE)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise AssertionError(f"no {pattern!r} in the runner's output:\n{''.join(self._lines)}")
                self._changed.wait(min(left, 0.2))

    def wait_up(self) -> dict[str, str]:
        self.wait_for(r"^\(also in .*run\.env", timeout=120)
        values = dict(re.findall(r"^(ACCRUE_\w+)=(\S+)$", self.output, re.MULTILINE))
        values.update({name: port for name, port in re.findall(r"^  (\w+)\s+grpc 127\.0\.0\.1:(\d+)$", self.output, re.MULTILINE)})
        return values

    def pid(self, name: str) -> int:
        return int((self.state_dir / "pids" / name).read_text())


StartRunner = Callable[..., Runner]


def leftovers(state_dir: Path) -> list[int]:
    """Live processes started for this state dir: services and the gateway have it in their
    environment, PostgreSQL and NATS on their command line."""
    needle = str(state_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
    return found


@pytest.fixture
def start_runner() -> Iterator[StartRunner]:
    # not under tmp_path: a pytest session starting meanwhile resets /tmp/pytest-of-<user>
    # to 0700, and the embedded PostgreSQL's own user could no longer reach its data dir
    base = Path(tempfile.mkdtemp(prefix="accrue-supervision-"))
    started: list[Runner] = []

    def start(extra_env: dict[str, str] | None = None) -> Runner:
        runner = Runner(base / f"state{len(started)}", extra_env)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.popen.poll() is None:
            runner.popen.send_signal(signal.SIGTERM)
            try:
                runner.popen.wait(30)
            except subprocess.TimeoutExpired:
                runner.popen.kill()
                runner.popen.wait()
        for pid in leftovers(runner.state_dir):  # only if a test failed half-way
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def test_killed_processes_come_back_on_their_ports_and_sigint_stops_everything(start_runner: StartRunner) -> None:
    runner = start_runner()
    up = runner.wait_up()
    gateway_url, catalog_port = up["ACCRUE_GATEWAY_URL"], int(up["catalog"])
    headers = {"Authorization": f"Bearer {up['ACCRUE_API_KEY']}"}
    assert httpx.get(f"{gateway_url}/v0/products?limit=1", headers=headers, timeout=10).status_code == 200

    sandbox_url = up["ACCRUE_SANDBOX_URL"]
    killed = {name: runner.pid(name) for name in ("catalog", "gateway", "metering-aggregator", "sandbox")}
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)

    for name, pid in killed.items():
        runner.wait_for(rf"^{name} \(pid {pid}\) exited, killed by SIGKILL; see \S+/logs/{name}\.log; restarting in 0\.5s", timeout=10)
    runner.wait_for(rf"^catalog is serving again on 127\.0\.0\.1:{catalog_port}$", timeout=60)
    runner.wait_for(rf"^gateway is serving again on {re.escape(gateway_url.removeprefix('http://'))}$", timeout=60)
    runner.wait_for(r"^metering-aggregator restarted \(pid \d+\)$", timeout=10)
    runner.wait_for(rf"^sandbox is serving again on {re.escape(sandbox_url.removeprefix('http://'))}$", timeout=60)
    assert httpx.get(f"{sandbox_url}/healthz", timeout=10).status_code == 200  # the URL every process holds
    assert all(runner.pid(name) != pid for name, pid in killed.items())
    assert _serving(catalog_port)

    # the same URL and key as printed before: the gateway reaches the restarted catalog
    created = httpx.post(
        f"{gateway_url}/v0/products",
        headers=headers,
        json={"merchantId": up["ACCRUE_MERCHANT_ID"], "name": "After restart", "description": "supervised"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    listed = httpx.get(f"{gateway_url}/v0/products?limit=1", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"][0]["id"] == created.json()["id"]

    runner.popen.send_signal(signal.SIGINT)
    assert runner.popen.wait(30) == 0, runner.output
    assert runner.output.rstrip().endswith("stopped")
    assert leftovers(runner.state_dir) == []


def test_a_process_that_keeps_failing_stops_the_mesh_with_a_nonzero_exit(start_runner: StartRunner) -> None:
    runner = start_runner({"ACCRUE_RESTART_MAX": "2"})
    up = runner.wait_up()
    gateway_port = int(up["ACCRUE_GATEWAY_URL"].rsplit(":", 1)[1])
    os.kill(runner.pid("gateway"), signal.SIGKILL)

    # take the gateway's port before the runner's first restart (0.5 s of backoff): every
    # restart then fails to bind
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 0.4
    while True:
        try:
            squatter.bind(("127.0.0.1", gateway_port))
            break
        except OSError:
            assert time.monotonic() < deadline, "the killed gateway's port did not free up"
            time.sleep(0.01)
    squatter.listen()
    try:
        code = runner.popen.wait(60)
    finally:
        squatter.close()

    assert code == 1, runner.output
    assert "restart 1 of at most 2" in runner.output
    assert "restart 2 of at most 2" in runner.output
    assert re.search(
        r"^accrue: gave up on gateway: it exited \(exit code 1\) again after 2 restarts; see \S+/gateway\.log", runner.output, re.M
    )
    assert "gateway is serving again" not in runner.output
    assert runner.output.rstrip().endswith("stopped")
    assert leftovers(runner.state_dir) == []


def test_backoff_doubles_resets_after_a_stable_run_and_gives_up(tmp_path: Path) -> None:
    """The policy, on real processes and a fake clock: a module that exits with 3, or
    stays up, as the test says in a file."""
    (tmp_path / "flaky.py").write_text(
        f"import pathlib, sys, time\nif pathlib.Path({str(tmp_path / 'mode')!r}).read_text() == 'stay':\n    time.sleep(60)\nsys.exit(3)\n"
    )
    mode = tmp_path / "mode"
    mode.write_text("exit")
    (tmp_path / "logs").mkdir()
    mesh = Mesh(tmp_path)
    now = [0.0]
    said: list[str] = []
    supervisor = Supervisor(mesh, RestartPolicy(max_restarts=2, stable_after=30), say=said.append, clock=lambda: now[0])

    def at(t: float) -> None:
        if mode.read_text() == "exit":
            mesh.processes["flaky"].popen.wait(30)
        now[0] = t
        supervisor.poll()

    try:
        mesh.spawn("flaky", "flaky", {"ACCRUE_PORT_FILE": str(tmp_path / "flaky.port"), "PYTHONPATH": str(tmp_path)}, port_env=None)
        first = mesh.processes["flaky"].popen.pid
        at(0)
        assert said[-1].startswith(
            f"flaky (pid {first}) exited, exit code 3; see {tmp_path}/logs/flaky.log; restarting in 0.5s (restart 1 "
        )
        at(0.4)
        assert mesh.processes["flaky"].popen.pid == first  # still backing off
        at(0.5)
        assert said[-1] == f"flaky restarted (pid {mesh.processes['flaky'].popen.pid})"
        at(0.6)
        assert "restarting in 1s (restart 2 of at most 2 in a row)" in said[-1]
        mode.write_text("stay")
        at(1.6)  # restart 2: this one stays up
        at(31.6)  # ... for stable_after: the count starts again
        mesh.kill("flaky")
        now[0] = 32.0
        supervisor.poll()
        assert "killed by SIGKILL" in said[-1] and "restarting in 0.5s (restart 1 of" in said[-1]
        mode.write_text("exit")
        at(32.5)
        at(32.6)
        assert "restarting in 1s (restart 2 of" in said[-1]
        at(33.6)
        with pytest.raises(GaveUp, match=r"gave up on flaky: it exited \(exit code 3\) again after 2 restarts; see \S+/flaky\.log"):
            at(33.7)
        log = (tmp_path / "logs" / "flaky.log").read_text()
        assert re.findall(r"--- restarted by the runner \(restart (\d)\) ---", log) == ["1", "2", "1", "2"]
    finally:
        mesh.stop()
