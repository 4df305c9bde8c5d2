"""The charge attempt's state machine (ChargeAttempt.observe): monotonic, decided once, a
disagreement settled only by the processor's own answer; what is told to invoicing; the
dunning schedule a failed automatic attempt carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.core.errors import InvalidArgument
from services.payment.domain.model import (
    AttemptStatus,
    Change,
    ChargeAttempt,
    ChargeDecided,
    CollectionSettings,
    Observation,
    PayableType,
    Trigger,
    next_attempt,
)
from services.payment.domain.use_cases import observation_of, outcome_of
from services.payment.processors.base import Charge, ChargeStatus

NOW = datetime(2026, 5, 1, 9, tzinfo=UTC)
PROCESSING = Observation(AttemptStatus.PROCESSING, provider_ref="ch_1")
SUCCEEDED = Observation(AttemptStatus.SUCCEEDED, provider_ref="ch_1", authoritative=True)
FAILED = Observation(AttemptStatus.FAILED, provider_ref="ch_1", failure_code="card_declined", decline_code="generic_decline")


def attempt(
    trigger: Trigger = Trigger.MANUAL, *, payable: PayableType = PayableType.INVOICE, number: int = 0, amount: str = "49.00"
) -> ChargeAttempt:
    return ChargeAttempt.begin(
        merchant_id="org_1", attempt_key="inv_1:retry:1", payable_type=payable, payable_id="inv_1", session_id=None,
        customer_id="cus_1", subscription_id=None, amount=Decimal(amount), currency="USD", source_kind="method",
        source_ref="pm_1", payment_method_id="pm_a", trigger=trigger, attempt_number=number, first_attempt_at=None,
        effective_time=NOW, submit_nonce=None, now=NOW,
    )  # fmt: skip


def decided(found: ChargeAttempt) -> list[ChargeDecided]:
    return [e for e in found.events if isinstance(e, ChargeDecided)]


def test_an_attempt_starts_sending_with_its_amount_in_minor_units() -> None:
    found = attempt()
    assert (found.status, found.amount_minor, found.decided_at, found.reported_at) == ("sending", 4900, None, None)
    with pytest.raises(InvalidArgument) as bad:
        attempt(amount="49.001")
    assert bad.value.field == "amount"


def test_sending_processing_succeeded_decides_once() -> None:
    found = attempt()
    assert found.observe(PROCESSING, NOW) is Change.APPLIED and found.status == "processing"
    assert found.observe(PROCESSING, NOW) is Change.DUPLICATE
    assert found.observe(SUCCEEDED, NOW) is Change.APPLIED and found.status == "succeeded"
    assert found.observe(SUCCEEDED, NOW) is Change.DUPLICATE
    assert [e.status for e in decided(found)] == [AttemptStatus.SUCCEEDED]
    assert found.decided_at == NOW and found.provider_ref == "ch_1"


def test_processing_never_overwrites_a_final_state() -> None:
    for final in (SUCCEEDED, FAILED):
        found = attempt()
        found.observe(final, NOW)
        assert found.observe(PROCESSING, NOW) is Change.STALE
        assert found.status == final.status.value


def test_an_older_webhook_is_stale() -> None:
    found = attempt()
    assert found.observe(Observation(AttemptStatus.SUCCEEDED, provider_ref="ch_1", sequence=2), NOW) is Change.APPLIED
    assert found.processor_sequence == 2
    assert found.observe(Observation(AttemptStatus.PROCESSING, sequence=1), NOW) is Change.STALE
    assert found.observe(Observation(AttemptStatus.FAILED, sequence=2, authoritative=True), NOW) is Change.STALE
    assert found.status == "succeeded"


def test_a_webhook_alone_cannot_flip_a_final_state_the_processor_can() -> None:
    found = attempt()
    found.observe(FAILED, NOW)
    assert found.observe(Observation(AttemptStatus.SUCCEEDED, provider_ref="ch_1", sequence=9), NOW) is Change.CONFLICT
    assert found.status == "failed" and found.processor_sequence is None
    found.mark_reported(NOW)
    assert found.observe(SUCCEEDED, NOW + timedelta(seconds=1)) is Change.APPLIED
    assert (found.status, found.failure_code, found.reported_at) == ("succeeded", None, None)  # told again
    assert [e.status for e in decided(found)] == [AttemptStatus.FAILED, AttemptStatus.SUCCEEDED]


def test_a_failure_keeps_the_processors_codes() -> None:
    found = attempt()
    found.observe(FAILED, NOW)
    outcome = outcome_of(found)
    assert (outcome.status, outcome.failure_code, outcome.decline_code, outcome.provider_payment_ref) == (
        "failed", "card_declined", "generic_decline", "ch_1",
    )  # fmt: skip


def test_an_in_flight_attempt_answers_processing() -> None:
    assert outcome_of(attempt()).status == "processing"


def test_nobody_observes_an_attempt_as_sending() -> None:
    with pytest.raises(ValueError):
        attempt().observe(Observation(AttemptStatus.SENDING), NOW)


@pytest.mark.parametrize(
    ("trigger", "payable", "seen", "reported"),
    [
        (Trigger.AUTOMATIC, PayableType.INVOICE, FAILED, True),
        (Trigger.MANUAL, PayableType.INVOICE, FAILED, True),
        (Trigger.PAGE, PayableType.INVOICE, SUCCEEDED, True),
        (Trigger.PAGE, PayableType.INVOICE, FAILED, False),  # the customer may try another card
        (Trigger.PAGE, PayableType.PAYMENT, SUCCEEDED, False),  # a one-off payment is nobody's invoice
        (Trigger.MANUAL, PayableType.INVOICE, PROCESSING, False),  # not decided yet
    ],
)
def test_what_invoicing_is_told(trigger: Trigger, payable: PayableType, seen: Observation, reported: bool) -> None:
    found = attempt(trigger, payable=payable)
    found.observe(seen, NOW)
    assert found.needs_report is reported
    if reported:
        found.mark_reported(NOW)
        assert not found.needs_report


def test_observation_of_a_charge() -> None:
    charge = Charge(ref="ch_9", idempotency_key="k", status=ChargeStatus.FAILED, amount_minor=100, currency="USD", failure_code="x")
    seen = observation_of(charge, authoritative=True, sequence=3)
    assert (seen.status, seen.provider_ref, seen.failure_code, seen.sequence, seen.authoritative) == (
        AttemptStatus.FAILED,
        "ch_9",
        "x",
        3,
        True,
    )


# --- dunning ----------------------------------------------------------------------------


def test_the_default_schedule_retries_after_3_5_and_7_days_then_keeps_active() -> None:
    settings = CollectionSettings(merchant_id="org_1")
    assert [next_attempt(settings, n, NOW).at for n in range(3)] == [NOW + timedelta(days=d) for d in (3, 5, 7)]
    last = next_attempt(settings, 3, NOW)
    assert (last.at, last.after_final_failure) == (None, "keep_active")


def test_a_failed_automatic_attempt_carries_its_retry_counted_from_the_first() -> None:
    settings = CollectionSettings(merchant_id="org_1", retry_schedule_days=[2, 10], after_final_failure="terminate")
    first = NOW - timedelta(days=2)
    for number, expected in ((0, first + timedelta(days=2)), (1, first + timedelta(days=10))):
        found = attempt(Trigger.AUTOMATIC, number=number)
        found.first_attempt_at = first
        found.observe(FAILED, NOW)
        found.schedule(settings)
        assert (found.next_attempt_at, found.after_final_failure) == (expected, None)
    exhausted = attempt(Trigger.AUTOMATIC, number=2)
    exhausted.observe(FAILED, NOW)
    exhausted.schedule(settings)
    assert (exhausted.next_attempt_at, exhausted.after_final_failure) == (None, "terminate")
    manual = attempt(Trigger.MANUAL)
    manual.observe(FAILED, NOW)
    manual.schedule(settings)
    assert (manual.next_attempt_at, manual.after_final_failure) == (None, None)  # retryPayment is no dunning step


def test_no_schedule_means_the_policy_at_once() -> None:
    settings = CollectionSettings(merchant_id="org_1", retry_schedule_days=[])
    assert next_attempt(settings, 0, NOW).after_final_failure == "keep_active"


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=10, unique=True).map(sorted), st.integers(0, 12))
def test_retries_are_increasing_and_end_with_the_policy(days: list[int], n: int) -> None:
    settings = CollectionSettings(merchant_id="org_1", retry_schedule_days=days)
    due = next_attempt(settings, n, NOW)
    if n < len(days):
        assert due.at == NOW + timedelta(days=days[n]) and due.after_final_failure is None
        if n:
            previous = next_attempt(settings, n - 1, NOW).at
            assert previous is not None and previous < due.at
    else:
        assert due.at is None and due.after_final_failure == "keep_active"


@given(st.lists(st.sampled_from(["processing", "succeeded", "failed"]), max_size=12))
def test_once_final_an_attempt_never_goes_back_in_flight(states: list[str]) -> None:
    found = attempt()
    was_final = False
    for state in states:
        found.observe(Observation(AttemptStatus(state), provider_ref="ch_1"), NOW)
        if was_final:
            assert found.state.final
        was_final = found.state.final
    assert len(decided(found)) <= 1  # without the processor's own answer, decided once
