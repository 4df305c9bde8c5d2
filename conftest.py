"""The repository's test configuration: what the mesh fixtures of libs/testing/fixtures.py
run is this repository's registry (services/registry.py, through services/run.py)."""

from __future__ import annotations

import os

# The mesh fixtures spawn processes while this process holds gRPC channels; gRPC's fork
# handlers can then hang inside fork() (seen in tests/integration/test_billing_faults.py).
# The children exec at once and never use the parent's gRPC state, so the handlers are
# not needed. Read by gRPC when it initializes: before anything here imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest

from libs.infra.runner import Topology


@pytest.fixture(scope="session")
def topology() -> Topology:
    from services.run import TOPOLOGY

    return TOPOLOGY
