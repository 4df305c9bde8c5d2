"""A mesh of a test's own, for tests that kill processes or change a service's settings
where the shared mesh must not feel it: its own NATS server and its own databases on
the session's PostgreSQL (``infra_mesh`` of libs/testing/fixtures.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from libs.infra.runner import Mesh


def own_mesh(infra_mesh: Mesh, tmp_path: Path, prefix: str) -> Mesh:
    """A mesh with its infrastructure started and no service yet (the caller starts
    the ones it needs and stops the mesh)."""
    mesh = Mesh(
        tmp_path,
        durable=False,
        postgres_url=infra_mesh.postgres_url,
        db_prefix=f"{prefix}{uuid.uuid4().hex[:6]}",
        log_level="WARNING",
        topology=infra_mesh.topology,
    )
    mesh.start_infra()  # its own NATS; PostgreSQL is shared
    return mesh


def whole_mesh(infra_mesh: Mesh, tmp_path: Path, prefix: str, **options: Any) -> Mesh:
    """A mesh of a test's own to start whole (services, gateway on a free port), on the
    session's PostgreSQL under databases of its own; ``options`` are more Mesh fields."""
    return Mesh(
        tmp_path,
        durable=False,
        gateway_port=0,
        postgres_url=infra_mesh.postgres_url,
        db_prefix=f"{prefix}{uuid.uuid4().hex[:6]}",
        log_level="WARNING",
        topology=infra_mesh.topology,
        **options,
    )
