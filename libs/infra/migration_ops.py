"""Alembic operations for the infrastructure tables (libs/infra/tables.py).

Every service's first migration calls ``create_infra_tables_v1``; a later version of
these tables is a migration in every service calling ``create_infra_tables(n)`` /
``drop_infra_tables(n)`` (v2, the dead letters: ``0002_infra_v2``, metering's ``0004``),
so each service's history stays explicit and replayable. The tables are built from the
same declarations the code uses, not from a second copy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from libs.infra.tables import INFRA_VERSIONS


def _tables_of(version: int) -> list[sa.Table]:
    return INFRA_VERSIONS[version - 1](sa.MetaData())


def create_infra_tables(version: int) -> None:
    for table in _tables_of(version):
        table.create(op.get_bind())


def drop_infra_tables(version: int) -> None:
    for table in reversed(_tables_of(version)):
        table.drop(op.get_bind())


def create_infra_tables_v1() -> None:
    create_infra_tables(1)


def drop_infra_tables_v1() -> None:
    drop_infra_tables(1)
