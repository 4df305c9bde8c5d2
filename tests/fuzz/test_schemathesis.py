"""Schemathesis over GET /openapi.json against the real mesh, every check, stateful links
included, bounded in time (tests/fuzz/schemathesis.toml says what and why).

It passes only if nothing answers 5xx, nothing waits past its deadline, every error is
the JSON body, responses conform to the document, schema-invalid requests are refused
and schema-valid ones accepted, and the stateful phase creates resources through links.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from libs.infra.runner import Mesh

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(mesh: Mesh, tmp_path: Path) -> None:
    _, api_key = mesh.create_merchant("Fuzzer")  # its own merchant: nothing it creates leaks into other tests
    st = Path(sys.executable).with_name("st")
    env = {**os.environ, "ACCRUE_API_KEY": api_key, "NO_COLOR": "1"}
    result = subprocess.run(
        [str(st), "--config-file", str(CONFIG), "run", f"{mesh.gateway_url}/openapi.json", "--checks", "all", "--seed", "20261201"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    print(output[-6000:])  # shown by pytest on failure and with -s
    assert result.returncode == 0, output[-20000:]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    assert links is not None, output[-3000:]
    assert int(links.group(1)) > 0, "the stateful phase created nothing through the documented links"
