"""The repository's test configuration: what the mesh fixtures of libs/testing/fixtures.py
run is this repository's registry (services/registry.py, through services/run.py)."""

from __future__ import annotations

import pytest

from libs.infra.runner import Topology


@pytest.fixture(scope="session")
def topology() -> Topology:
    from services.run import TOPOLOGY

    return TOPOLOGY
