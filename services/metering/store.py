"""Tables of the metering service's own database.

``meter_events`` is the durable deduplication record: its primary key is
(merchant_id, idempotency_key), so an event counts once however often it is delivered.
``metrics`` is metering's projection of the catalog's billable metrics, kept from the
catalog's domain events (metering never reads the catalog's tables).
``subject_map`` is metering's projection of customers' external ids, kept from the
subscription service's customer events (see services/metering/subjects.py).
``test_clocks`` and ``test_clock_customers``: which customers live on which test clock
and the clock's time, kept from the subscription service (SyncTestClock and its
TestClockChanged events; see services/metering/test_clocks.py).
Events a consumer (the aggregator included) could not handle are in the shared
``dead_letters`` infrastructure table (libs/infra/tables.py, libs/infra/dead_letters.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from libs.infra.db import add_infra_tables

metadata = sa.MetaData()
add_infra_tables(metadata)
TS = sa.DateTime(timezone=True)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("aggregation", sa.Text, nullable=False),
    sa.Column("value_property", sa.Text),
    sa.Column("group_by", pg.JSONB, nullable=False),
    sa.Column("event_from", TS),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_metrics_merchant_event_type", "merchant_id", "event_type"),
)

meter_events = sa.Table(
    "meter_events",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("idempotency_key", sa.Text, primary_key=True),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("external_subject", sa.Text),
    sa.Column("external_id", sa.Text),
    sa.Column("time", TS, nullable=False),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("ingested_at", TS, nullable=False),
    sa.Index("ix_meter_events_type_time", "merchant_id", "type", "time"),
    # usage of one customer (invoicing, entitlements, the meter endpoint with subject=)
    sa.Index("ix_meter_events_subject_type_time", "merchant_id", "subject", "type", "time"),
)

# Events still waiting for their external subject to name a customer (subject = ''): the
# retroactive attribution of services/metering/subjects.py finds them through this small
# partial index instead of scanning meter_events.
sa.Index(
    "ix_meter_events_unattributed",
    meter_events.c.merchant_id,
    meter_events.c.external_subject,
    postgresql_where=meter_events.c.subject == "",
)

# External subject -> customer id, per merchant: one last-writer-wins register per
# (merchant, external subject), ordered by the producer's ``sequence`` of the
# CustomerChanged event that wrote it. customer_id NULL means "names no customer": a
# tombstone (the customer was deleted or took another external id; kept, never deleted,
# so that an older event arriving late cannot resurrect the mapping) or a placeholder
# (sequence 0) the aggregator writes for an external subject it has not seen mapped.
subject_map = sa.Table(
    "subject_map",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("external_subject", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    # the external subjects of given customers (test clocks: a clock customer's events
    # sent by external subject, services/metering/test_clocks.py)
    sa.Index("ix_subject_map_customer", "merchant_id", "customer_id"),
)

# Progress of the aggregator: every event accepted before drained_at is in meter_events.
aggregator_state = sa.Table(
    "aggregator_state",
    metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("drained_at", TS, nullable=False),
)

# Test clocks (services/metering/test_clocks.py): each clock's time as metering last heard
# it (it only moves forward; ``deleted`` is sticky, a tombstone that no late message can
# undo), and the customers living on each live clock (a customer lives on at most one;
# a deleted clock's customers are released: their rows are deleted).
test_clocks = sa.Table(
    "test_clocks",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("clock_time", TS, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", TS, nullable=False),
)

test_clock_customers = sa.Table(
    "test_clock_customers",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("test_clock_id", sa.Text, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    # a clock's customers (release on delete, a merchant's load)
    sa.Index("ix_test_clock_customers_clock", "merchant_id", "test_clock_id"),
)
