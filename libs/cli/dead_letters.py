"""``accrue dead-letters list|replay --service <name>``: a service's dead letters.

``list`` prints the pending ones (``--all``: replayed ones too). ``replay`` runs them
(``--id N``, repeatable, or ``--all``) through the consumer that failed on them, as the
service and its worker processes define it (services/registry.py; the semantics are in
libs/infra/dead_letters.py): a letter whose event meanwhile got through is a no-op. The
replay needs only the service's database (its handlers write there; the running
service's outbox relay publishes what they record), found in ``--database-url`` or
``ACCRUE_DATABASE_URL``. Exits 1 if a letter could not be replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NatsClient

from libs.cli.main import table, when
from libs.core.clock import SystemClock
from libs.infra import dead_letters
from libs.infra.db import Database, create_engine
from libs.infra.messaging import BatchConsumer, EventConsumer
from libs.infra.service import Runtime, ServiceDefinition


def add_parser(subparsers: Any) -> None:
    """Add ``dead-letters`` to the ``accrue`` parser's subcommands (``dest="command"``)."""
    parser = subparsers.add_parser("dead-letters", help="events a service's consumers gave up on: list, replay")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "list pending dead letters (id, consumer, failed, subject, event id, error)"),
        ("replay", "replay dead letters through their consumer"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--service", required=True, metavar="NAME", help="the service whose database holds them (e.g. metering)")
        action.add_argument("--database-url", default=None, help="the service's database (default: ACCRUE_DATABASE_URL)")
        if name == "list":
            action.add_argument("--all", action="store_true", help="replayed letters too")
        else:
            which = action.add_mutually_exclusive_group(required=True)
            which.add_argument("--id", type=int, action="append", dest="ids", metavar="N", help="this letter (repeatable)")
            which.add_argument("--all", action="store_true", help="every pending letter")


def run(args: argparse.Namespace, registry: Sequence[ServiceDefinition]) -> int:
    """Run a parsed ``dead-letters`` command over the registry's definitions (services and
    workers); the process's exit code."""
    definitions = _definitions(args.service, registry)
    url = args.database_url or os.environ.get("ACCRUE_DATABASE_URL")
    if not url:
        sys.exit("accrue: give --database-url or set ACCRUE_DATABASE_URL to the service's database")
    if args.action == "list":
        return asyncio.run(_list(definitions[0], url, include_replayed=args.all))
    return asyncio.run(_replay(definitions, url, ids=None if args.all else args.ids))


def _definitions(service: str, registry: Sequence[ServiceDefinition]) -> list[ServiceDefinition]:
    """The registry's definitions that open this service's database: the service first,
    then its worker processes (metering-aggregator for metering), whose consumers'
    letters are in the same table."""
    found = sorted((d for d in registry if d.database_name == service), key=lambda d: d.name != service)
    if not found or found[0].name != service:
        names = ", ".join(d.name for d in registry if d.database_name == d.name)
        sys.exit(f"accrue: no service {service!r} (one of: {names})")
    return found


async def _list(definition: ServiceDefinition, url: str, *, include_replayed: bool) -> int:
    db = Database(create_engine(url, pool_size=1), definition.metadata)
    try:
        letters = await dead_letters.list_dead_letters(db, include_replayed=include_replayed)
    finally:
        await db.dispose()
    rows = [
        [str(d.id), d.consumer, when(d.failed_at), when(d.replayed_at), d.event.subject or "-", d.event.event_id or "-", d.error]
        for d in letters
    ]
    print(table(["ID", "CONSUMER", "FAILED", "REPLAYED", "SUBJECT", "EVENT_ID", "ERROR"], rows))
    return 0


async def _replay(definitions: Sequence[ServiceDefinition], url: str, *, ids: list[int] | None) -> int:
    db = Database(create_engine(url, pool_size=2), definitions[0].metadata)
    # never connected: building the consumers needs a client, replaying does not
    nats = NatsClient()
    consumers: dict[str, EventConsumer | BatchConsumer] = {}
    try:
        for definition in definitions:
            runtime = Runtime(settings=definition.settings(database_url=url), db=db, nats=nats, js=nats.jetstream(), clock=SystemClock())
            for worker in definition.workers(runtime):
                if isinstance(worker, EventConsumer | BatchConsumer):
                    consumers.setdefault(worker.durable, worker)
        outcomes = await dead_letters.replay(db, consumers.values(), ids=ids)
    finally:
        await db.dispose()
    for outcome in outcomes:
        detail = f": {outcome.error}" if outcome.error else ""
        if outcome.status == "no_consumer":
            detail = f": no consumer named {outcome.consumer} runs with this environment's settings"
        print(f"{outcome.id}  {outcome.consumer}  {outcome.status}{detail}")
    for letter_id in sorted(set(ids or []) - {o.id for o in outcomes}):
        print(f"{letter_id}  -  not pending (no such letter, or already replayed)")
    return 1 if any(o.status != "replayed" for o in outcomes) else 0
