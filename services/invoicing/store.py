"""Tables of the invoicing service's own database."""

from __future__ import annotations

import sqlalchemy as sa

from libs.infra.db import add_infra_tables

metadata = sa.MetaData()
add_infra_tables(metadata)
