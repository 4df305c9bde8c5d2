"""The `accrue` CLI and the served OpenAPI document, against the running mesh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


def test_merchant_create_prints_a_working_key(mesh: Mesh) -> None:
    accrue = Path(sys.executable).parent / "accrue"
    env = {**os.environ, "ACCRUE_GATEWAY_DATABASE_URL": mesh.database_url("gateway")}
    out = subprocess.run([str(accrue), "merchant", "create", "--name", "Acme"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == {"ACCRUE_MERCHANT_ID", "ACCRUE_API_KEY"}
    assert lines["ACCRUE_MERCHANT_ID"].startswith("org_") and lines["ACCRUE_API_KEY"].startswith("sk_test_")
    created = httpx.post(
        f"{mesh.gateway_url}/v0/products",
        json={"merchantId": lines["ACCRUE_MERCHANT_ID"], "name": "CLI", "description": "made with a CLI key"},
        headers={"Authorization": f"Bearer {lines['ACCRUE_API_KEY']}"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["merchantId"] == lines["ACCRUE_MERCHANT_ID"]


def test_merchant_create_refuses_an_empty_name(mesh: Mesh) -> None:
    accrue = Path(sys.executable).parent / "accrue"
    env = {**os.environ, "ACCRUE_GATEWAY_DATABASE_URL": mesh.database_url("gateway")}
    out = subprocess.run([str(accrue), "merchant", "create", "--name", " "], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--name" in out.stderr


def test_openapi_document_is_served_and_lists_the_catalog(merchant_a: MerchantClient) -> None:
    response = httpx.get(f"{merchant_a.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert "post" in doc["paths"]["/v0/products"]
    assert "delete" in doc["paths"]["/v0/fees/{id}"]
    assert "patch" in doc["paths"]["/v0/plans/{id}/versions/{versionNumber}"]


def test_every_process_logs_one_json_object_per_line(mesh: Mesh, merchant_a: MerchantClient) -> None:
    import json

    httpx.get(f"{merchant_a.base_url}/v0/products/prod_missing", headers=merchant_a.headers)  # something to log
    names = ["gateway", "catalog", "metering", "metering-aggregator", "subscription"]
    for name in names:
        lines = [line for line in (mesh.state_dir / "logs" / f"{name}.log").read_text().splitlines() if line.strip()]
        assert lines, name
        for line in lines:
            record = json.loads(line)
            assert "event" in record and "level" in record and "timestamp" in record, (name, line)
