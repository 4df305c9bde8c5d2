"""A client in a second language, as a user would write it: examples/node (@grpc/grpc-js,
@grpc/proto-loader) loads protos/ with the documented include directories (make
protos-deps), calls CatalogService directly on the catalog's port with the merchant's
token as metadata, and decodes ErrorInfo's stable reason from grpc-status-details-bin.

`npm ci` runs once per package-lock.json into .build/node-example/<hash>/ (needs the npm
registry the first time; CI has it), never into examples/node itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libs.infra.runner import ROOT, Mesh
from libs.testing.tokens import merchant_token

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "node"


def _installed() -> Path:
    """A directory with the example's node_modules, from its lock file (cached by its hash)."""
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    where = ROOT / ".build" / "node-example" / hashlib.sha256(lock + (EXAMPLE / "package.json").read_bytes()).hexdigest()[:16]
    if not (where / "node_modules" / ".package-lock.json").is_file():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(EXAMPLE / name, where / name)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=where, check=True, capture_output=True, timeout=300)
    return where


@pytest.fixture(scope="module")
def example() -> Path:
    subprocess.run([sys.executable, str(ROOT / "tools" / "protodeps.py")], check=True, capture_output=True, timeout=60)
    where = _installed()
    shutil.copyfile(EXAMPLE / "catalog.js", where / "catalog.js")  # the current source, beside its node_modules
    return where / "catalog.js"


def _run(example: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "ACCRUE_PROTOS_DIR": str(ROOT / "protos"),
        "ACCRUE_PROTODEPS_DIR": str(ROOT / ".build" / "protodeps"),
    }
    return subprocess.run(["node", str(example), *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


def _steps(stdout: str) -> dict[str, Any]:
    return {step["step"]: step for step in map(json.loads, stdout.splitlines())}


def test_the_node_example_creates_lists_and_decodes_the_error_reason(mesh: Mesh, example: Path) -> None:
    address = f"127.0.0.1:{mesh.processes['catalog'].port}"
    token = merchant_token(mesh.merchant_id).value
    done = _run(example, {"ACCRUE_CATALOG_ADDR": address, "ACCRUE_MERCHANT_TOKEN": token}, "Made in Node")
    assert done.returncode == 0, done.stderr
    steps = _steps(done.stdout)
    product = steps["created"]["product"]
    assert product["name"] == "Made in Node" and product["merchant_id"] == mesh.merchant_id
    assert product["id"].startswith("prod_")
    assert product["id"] in steps["listed"]["ids"]
    error = steps["error"]["error"]
    assert (error["code"], error["reason"]) == ("NOT_FOUND", "PRODUCT_NOT_FOUND")
    assert {"type": "google.rpc.ErrorInfo"}.items() <= next(d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo").items()


def test_a_forged_token_is_refused_and_the_reason_is_decoded(mesh: Mesh, example: Path) -> None:
    address = f"127.0.0.1:{mesh.processes['catalog'].port}"
    forged = merchant_token(mesh.merchant_id).value[:-4] + "AAAA"  # the signature no longer matches
    done = _run(example, {"ACCRUE_CATALOG_ADDR": address, "ACCRUE_MERCHANT_TOKEN": forged})
    assert done.returncode == 1
    failed = json.loads(done.stderr.strip().splitlines()[-1])
    assert failed["step"] == "failed" and failed["error"]["code"] == "UNAUTHENTICATED"
    assert failed["error"]["reason"], failed  # a stable UPPER_SNAKE reason from ErrorInfo
    assert failed["error"]["reason"].isupper()
