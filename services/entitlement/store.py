"""The entitlement service's own database: its tables and the repositories that read and write
them (loading and saving the domain's aggregates). Every table is declared here and
created by a migration in migrations/versions (tests/integration/test_migrations.py
checks that the two agree)."""

from __future__ import annotations

import sqlalchemy as sa

from libs.infra.db import add_infra_tables

metadata = sa.MetaData()
add_infra_tables(metadata)
