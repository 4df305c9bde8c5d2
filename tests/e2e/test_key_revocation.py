"""API keys through the `accrue` CLI against running gateways: create, list, revoke.

Two gateway processes (the mesh's and a second one on the same database, as two replicas
would run) both accept a key, then both refuse it within one second of
`accrue key revoke` returning (the documented bound), while the merchant's other key
keeps working on both. The second gateway caches keys for 5 minutes, so its refusal can
only come from the revocation notification, not from its cache entry running out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from libs.infra.runner import ROOT, Mesh

pytestmark = pytest.mark.e2e
REVOCATION_BOUND_SECONDS = 1.0


def accrue(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ACCRUE_GATEWAY_DATABASE_URL": mesh.database_url("gateway")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def assignments(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.strip().splitlines())


def listed_keys(mesh: Mesh, merchant_id: str) -> tuple[str, dict[str, dict[str, str]]]:
    out = accrue(mesh, "key", "list", "--merchant", merchant_id)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    columns = header.split()
    assert columns == ["ID", "PREFIX", "CREATED", "REVOKED"]
    table = {cells[0]: dict(zip(columns, cells, strict=True)) for cells in (row.split() for row in rows)}
    return out.stdout, table


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def second_gateway(mesh: Mesh) -> Iterator[str]:
    """Another gateway process on the same gateway database and services, caching keys for 5 minutes."""
    name = "gateway-replica"
    env = mesh.service_env("gateway")
    # a cache lifetime far past the test: only the revocation notification can make it refuse a key
    env.update(ACCRUE_HTTP_PORT="0", ACCRUE_PORT_FILE=str(mesh.state_dir / "ports" / name), ACCRUE_API_KEY_CACHE_SECONDS="300")
    for service in mesh.plan.gateway.talks_to:
        env[f"ACCRUE_{service.upper()}_ADDR"] = f"127.0.0.1:{mesh.processes[service].port}"
    process = mesh.spawn(name, mesh.plan.entry, env, port_env="ACCRUE_HTTP_PORT", args=("gateway",))
    url = f"http://127.0.0.1:{mesh.wait_port(process)}"
    deadline = time.monotonic() + 30
    while not healthy(url):
        assert time.monotonic() < deadline, "the second gateway did not become healthy"
        time.sleep(0.05)
    yield url
    mesh.kill(name, signal.SIGTERM)
    del mesh.processes[name]
    # a graceful stop closes the revocation listener too (uvicorn re-raises SIGTERM once it has shut down)
    log = process.log_file.read_text(errors="replace")
    assert process.popen.returncode in (0, -signal.SIGTERM) and "Application shutdown complete." in log, log[-3000:]
    assert "api_key_listener_lost" not in log


@dataclass
class Keys:
    merchant_id: str
    first: str
    first_id: str
    second: str
    second_id: str


def status(gateway_url: str, secret: str) -> int:
    response = httpx.get(f"{gateway_url}/v0/products?limit=1", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    return response.status_code


def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(mesh: Mesh, second_gateway: str) -> None:
    gateways = [mesh.gateway_url, second_gateway]
    made = assignments(accrue(mesh, "merchant", "create", "--name", "Revocation"))
    merchant_id = made["ACCRUE_MERCHANT_ID"]
    extra = assignments(accrue(mesh, "key", "create", "--merchant", merchant_id))
    assert set(extra) == {"ACCRUE_MERCHANT_ID", "ACCRUE_API_KEY_ID", "ACCRUE_API_KEY"}
    assert extra["ACCRUE_MERCHANT_ID"] == merchant_id and extra["ACCRUE_API_KEY"].startswith("sk_test_")

    listing, table = listed_keys(mesh, merchant_id)
    assert len(table) == 2 and extra["ACCRUE_API_KEY_ID"] in table
    assert made["ACCRUE_API_KEY"] not in listing and extra["ACCRUE_API_KEY"] not in listing, "a listing never shows a secret"
    first_id = next(key_id for key_id in table if key_id != extra["ACCRUE_API_KEY_ID"])
    assert table[first_id]["PREFIX"] == made["ACCRUE_API_KEY"][:12] and table[first_id]["REVOKED"] == "-"
    keys = Keys(merchant_id, made["ACCRUE_API_KEY"], first_id, extra["ACCRUE_API_KEY"], extra["ACCRUE_API_KEY_ID"])

    for url in gateways:  # used, so each gateway holds both keys in its cache
        for _ in range(3):
            assert status(url, keys.first) == 200
            assert status(url, keys.second) == 200

    revoked = accrue(mesh, "key", "revoke", keys.first_id)
    assert revoked.returncode == 0, revoked.stderr
    assert keys.first_id in revoked.stdout and "revoked" in revoked.stdout
    deadline = time.monotonic() + REVOCATION_BOUND_SECONDS
    still_accepted = set(gateways)
    while still_accepted and time.monotonic() < deadline:
        still_accepted = {url for url in still_accepted if status(url, keys.first) != 401}
        time.sleep(0.01)
    assert not still_accepted, f"the revoked key still worked {REVOCATION_BOUND_SECONDS} s after `accrue key revoke` on {still_accepted}"

    for url in gateways:
        refused = httpx.get(f"{url}/v0/products?limit=1", headers={"Authorization": f"Bearer {keys.first}"}, timeout=10)
        assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED"
        assert status(url, keys.second) == 200, "the merchant's other key keeps working"

    _, after = listed_keys(mesh, merchant_id)
    assert after[keys.first_id]["REVOKED"] != "-" and after[keys.second_id]["REVOKED"] == "-"
    # revoking again is harmless and says when it happened
    again = accrue(mesh, "key", "revoke", keys.first_id)
    assert again.returncode == 0, again.stderr
    assert after[keys.first_id]["REVOKED"] in again.stdout


def test_a_key_created_while_the_gateways_run_works_at_once(mesh: Mesh, second_gateway: str) -> None:
    merchant_id = assignments(accrue(mesh, "merchant", "create", "--name", "Fresh keys"))["ACCRUE_MERCHANT_ID"]
    secret = assignments(accrue(mesh, "key", "create", "--merchant", merchant_id))["ACCRUE_API_KEY"]
    for url in [mesh.gateway_url, second_gateway]:
        assert status(url, secret) == 200


def test_key_commands_refuse_unknown_merchants_and_keys(mesh: Mesh) -> None:
    for args in (["key", "list", "--merchant", "org_missing"], ["key", "create", "--merchant", "org_missing"]):
        out = accrue(mesh, *args)
        assert out.returncode != 0 and "MERCHANT_NOT_FOUND" in out.stderr, (args, out.stderr)
    out = accrue(mesh, "key", "revoke", "key_missing")
    assert out.returncode != 0 and "API_KEY_NOT_FOUND" in out.stderr


def test_merchant_list_shows_active_key_counts(mesh: Mesh) -> None:
    made = assignments(accrue(mesh, "merchant", "create", "--name", "Listed merchant"))
    assignments(accrue(mesh, "key", "create", "--merchant", made["ACCRUE_MERCHANT_ID"]))
    out = accrue(mesh, "merchant", "list")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header.split() == ["ID", "CREATED", "ACTIVE_KEYS", "NAME"]
    row = next(r.split(maxsplit=3) for r in rows if r.startswith(made["ACCRUE_MERCHANT_ID"]))
    assert row[2:] == ["2", "Listed merchant"]
    assert made["ACCRUE_API_KEY"] not in out.stdout
