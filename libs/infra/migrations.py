"""Alembic, per service: each service keeps its own history in services/<name>/migrations."""

from __future__ import annotations

from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url


def alembic_config(database_url: str, migrations_dir: Path, metadata: sa.MetaData) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["target_metadata"] = metadata
    return cfg


def ensure_database(database_url: str) -> None:
    """Create the service's database when the server has none by that name (dev, tests)."""
    url = make_url(database_url)
    name = url.database
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def upgrade(database_url: str, migrations_dir: Path, metadata: sa.MetaData) -> None:
    ensure_database(database_url)
    command.upgrade(alembic_config(database_url, migrations_dir, metadata), "head")


def run_env() -> None:
    """Body of every service's migrations/env.py (online mode, sync psycopg)."""
    from alembic import context

    cfg = context.config
    engine = sa.create_engine(cfg.attributes["database_url"], poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=cfg.attributes["target_metadata"])
        with context.begin_transaction():
            # replicas starting together migrate one at a time
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('accrue-alembic'))"))
            context.run_migrations()
    engine.dispose()
