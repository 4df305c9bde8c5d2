"""The rules of metering's test-clock cache, pure: a clock only moves forward, a deleted
clock stays deleted and releases its customers, a customer's event finds its clock by
subject or by the external subject naming it, and TestClockChanged reads as a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as sub

from libs.infra.proto_time import from_timestamp, to_timestamp
from services.metering.test_clocks import ClockChange, MerchantClocks, change_of, message_of

M = "org_clockcache0001"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_clock_only_moves_forward_and_its_timestamp_follows() -> None:
    entry = MerchantClocks()
    entry.apply(ClockChange(M, "tc_1", T0, ("cus_1",)))
    entry.apply(ClockChange(M, "tc_1", T0 - timedelta(days=3), ("cus_1",)))
    clock = entry.clock_of("cus_1", None)
    assert clock is not None and clock.time == T0 and from_timestamp(clock.timestamp) == T0
    entry.apply(ClockChange(M, "tc_1", T0 + timedelta(days=31)))
    assert clock.time == T0 + timedelta(days=31) and from_timestamp(clock.timestamp) == T0 + timedelta(days=31)
    assert entry.customers == {"cus_1": "tc_1"}  # a change without customers keeps them


def test_new_customers_are_reported_so_their_external_subjects_are_read() -> None:
    entry = MerchantClocks()
    assert entry.apply(ClockChange(M, "tc_1", T0, ("cus_1",)))
    assert not entry.apply(ClockChange(M, "tc_1", T0, ("cus_1",)))
    assert entry.apply(ClockChange(M, "tc_1", T0, ("cus_1", "cus_2")))
    assert not entry.apply(ClockChange(M, "tc_2", T0, ("cus_2",)))  # moved, already known
    assert entry.customers == {"cus_1": "tc_1", "cus_2": "tc_2"}


def test_a_deleted_clock_releases_its_customers_for_good() -> None:
    entry = MerchantClocks(externals={"acct-1": "cus_1"})
    entry.apply(ClockChange(M, "tc_1", T0, ("cus_1", "cus_2")))
    entry.apply(ClockChange(M, "tc_2", T0, ("cus_3",)))
    entry.apply(ClockChange(M, "tc_1", T0, deleted=True))
    assert entry.clock_of("cus_1", None) is None and entry.clock_of("", "acct-1") is None
    assert entry.customers == {"cus_3": "tc_2"} and entry.externals == {}
    # a late message of the deleted clock brings nobody back
    assert not entry.apply(ClockChange(M, "tc_1", T0 + timedelta(days=1), ("cus_1",)))
    assert entry.clock_of("cus_1", None) is None


def test_an_event_finds_its_clock_by_subject_first_then_by_external_subject() -> None:
    entry = MerchantClocks(externals={"acct-1": "cus_1"})
    entry.apply(ClockChange(M, "tc_1", T0, ("cus_1",)))
    by_external = entry.clock_of("", "acct-1")
    assert by_external is not None and by_external.id == "tc_1"
    assert entry.clock_of("cus_off", "acct-1") is None  # subject wins: that customer is off any clock
    assert entry.clock_of("", "acct-unknown") is None
    assert entry.clock_of("", None) is None


def test_test_clock_changed_reads_as_a_change_and_back() -> None:
    clock = sub.TestClock(id="tc_1", merchant_id=M, current_time=to_timestamp(T0))
    message = ev.TestClockChanged(merchant_id=M, test_clock=clock, customer_ids=["cus_1", ""])
    assert change_of(message, "accrue.subscription.v1.test_clock.advanced") == ClockChange(M, "tc_1", T0, ("cus_1",))
    assert change_of(message, "accrue.subscription.v1.test_clock.deleted") == ClockChange(M, "tc_1", T0, ("cus_1",), deleted=True)
    deleted = ClockChange(M, "tc_1", T0, ("cus_1",), deleted=True)
    assert change_of(message_of(deleted)) == deleted
    assert change_of(ev.TestClockChanged(merchant_id=M, test_clock=sub.TestClock(id="tc_1"))) is None  # no time
    other = sub.TestClock(id="tc_1", merchant_id="org_other", current_time=to_timestamp(T0))
    assert change_of(ev.TestClockChanged(merchant_id=M, test_clock=other)) is None  # merchants disagree
