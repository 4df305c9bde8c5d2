"""Every definition's Alembic history builds exactly the tables its store.py declares:
migrate a fresh database, then alembic's autogenerate comparison finds nothing to add,
drop or alter. A table, column, index or constraint added on one side only fails here."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from libs.infra import migrations
from libs.infra.service import ServiceDefinition
from libs.testing.fixtures import Infra
from services.run import TOPOLOGY

PROCESSES = (*(e.definition for e in TOPOLOGY.externals), *TOPOLOGY.services, *TOPOLOGY.workers, TOPOLOGY.gateway)
MIGRATED = [d for d in PROCESSES if d.migrations_dir is not None]


def test_every_database_is_migrated_by_some_definition() -> None:
    databases = {d.database_name for d in PROCESSES}
    assert databases == {d.name for d in MIGRATED}


@pytest.mark.parametrize("definition", MIGRATED, ids=lambda d: d.name)
def test_the_migrations_build_the_declared_tables(infra: Infra, definition: ServiceDefinition) -> None:
    assert definition.migrations_dir is not None
    url = infra.new_database_url(f"drift_{definition.name}")
    migrations.upgrade(url, definition.migrations_dir, definition.metadata)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            drift = compare_metadata(context, definition.metadata)
    finally:
        engine.dispose()
    assert drift == []
