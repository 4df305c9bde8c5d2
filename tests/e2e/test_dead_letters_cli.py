"""``accrue dead-letters`` against the running mesh: metering's dead letters are listed,
and a replay stores the aggregator's dead-lettered event once (the usage counts it) with
the service's own consumers."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from accrue.metering.v1 import metering_resources_pb2 as resources
from sqlalchemy.engine import make_url

from libs.cli import dead_letters as cli
from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.metering import create_metric, meter_event, metered_total
from services import registry
from services.metering import events
from services.metering.aggregator import BATCH_TYPE, DURABLE

pytestmark = pytest.mark.e2e


def _accrue(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="accrue")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(list(argv)), (*registry.SERVICES, *registry.WORKERS))


def test_a_replayed_aggregator_dead_letter_is_counted_once(
    mesh: Mesh, merchant_b: MerchantClient, capsys: pytest.CaptureFixture[str]
) -> None:
    metric = create_metric(merchant_b)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    event = meter_event(
        merchant_b, metric["eventType"], subject, f"replay-{uuid.uuid4().hex[:8]}", {"tokens": 7}, time=now, ingested_at=now
    )
    database_url = mesh.database_url("metering")
    with psycopg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        (letter_id,) = conn.execute(
            "INSERT INTO dead_letters (consumer, event_id, subject, event_type, merchant_id, payload, headers, error, failed_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, '{}', 'OperationalError: as if the database had been down', now()) RETURNING id",
            (DURABLE, event.idempotency_key, events.partition_subject(0), BATCH_TYPE, merchant_b.merchant_id,
             resources.MeterEventBatch(events=[event]).SerializeToString()),
        ).fetchone() or (None,)  # fmt: skip
    assert metered_total(merchant_b, metric["id"], subject, "0", timeout=0) == "0"

    assert _accrue("dead-letters", "list", "--service", "metering", "--database-url", database_url) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.split()[0] == str(letter_id)]
    assert len(listed) == 1 and DURABLE in listed[0] and event.idempotency_key in listed[0]

    for _ in range(2):  # the second replay finds nothing pending: the event counts once
        assert _accrue("dead-letters", "replay", "--service", "metering", "--database-url", database_url, "--id", str(letter_id)) == 0
        assert metered_total(merchant_b, metric["id"], subject, "7") == "7"
    out = capsys.readouterr().out
    assert f"{letter_id}  {DURABLE}  replayed" in out and "not pending" in out

    assert _accrue("dead-letters", "list", "--service", "metering", "--database-url", database_url, "--all") == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[0] == str(letter_id)]
    assert line.split()[3] != "-"  # REPLAYED is set
