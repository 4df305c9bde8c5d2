"""Meter-event bounds, pure: the backdating window, the future bound, text lengths, data
size, and which of subject / externalSubject an event needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import struct_pb2
from pydantic import ValidationError

from libs.core.errors import InvalidArgument
from services.metering.domain import meter_events as rules
from services.metering.settings import MeteringSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _refused(call: object, *args: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as refused:
        call(*args)  # type: ignore[operator]
    return refused.value


@pytest.mark.parametrize(
    "when",
    [datetime(1, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC), NOW - timedelta(days=35, microseconds=1)],
)
def test_a_timestamp_older_than_the_window_is_refused_naming_timestamp(when: datetime) -> None:
    error = _refused(rules.check_time, when, NOW)
    assert (error.reason, error.field) == ("TIMESTAMP_TOO_OLD", "timestamp")
    assert "35 days" in error.message


@pytest.mark.parametrize("when", [NOW - timedelta(days=35), NOW - timedelta(days=34), NOW, NOW + timedelta(minutes=5)])
def test_a_timestamp_inside_the_window_is_kept(when: datetime) -> None:
    assert rules.check_time(when, NOW) == when


def test_the_window_is_a_parameter() -> None:
    assert rules.check_time(NOW - timedelta(days=2), NOW, max_age_days=3) == NOW - timedelta(days=2)
    error = _refused(rules.check_time, NOW - timedelta(days=2, seconds=1), NOW, 2)
    assert (error.reason, error.field) == ("TIMESTAMP_TOO_OLD", "timestamp")
    assert "2 days" in error.message


def test_the_future_bound_still_holds() -> None:
    error = _refused(rules.check_time, NOW + timedelta(minutes=5, seconds=1), NOW)
    assert (error.reason, error.field) == ("TIMESTAMP_IN_FUTURE", "timestamp")


@pytest.mark.parametrize("field", ["subject", "externalSubject"])
def test_subjects_are_at_most_255_characters(field: str) -> None:
    at_limit = "s" * rules.MAX_TEXT_LENGTH
    args = (at_limit, None) if field == "subject" else ("", at_limit)
    rules.check_subjects(*args)
    for length in (rules.MAX_TEXT_LENGTH + 1, 100_000):
        long = "s" * length
        error = _refused(rules.check_subjects, *((long, None) if field == "subject" else ("", long)))
        assert (error.reason, error.field) == ("TOO_LONG", field)


def test_subject_or_external_subject_is_required_and_both_may_be_given() -> None:
    error = _refused(rules.check_subjects, "", None)
    assert (error.reason, error.field) == ("REQUIRED", "subject")
    error = _refused(rules.check_subjects, "", "")
    assert (error.reason, error.field) == ("REQUIRED", "subject")
    rules.check_subjects("cus_1", None)
    rules.check_subjects("", "acct-1")
    rules.check_subjects("cus_1", "acct-1")  # subject wins; both are kept
    # each is checked even when the other would do
    assert _refused(rules.check_subjects, "cus_1", "x" * 256).field == "externalSubject"
    assert _refused(rules.check_subjects, "cus\x00", "acct-1").field == "subject"


def test_source_is_at_most_255_characters() -> None:
    assert rules.check_source("s" * 255) == "s" * 255
    error = _refused(rules.check_source, "s" * 256)
    assert (error.reason, error.field) == ("TOO_LONG", "source")


def test_type_validity_is_what_check_type_accepts() -> None:
    for value in ("", "t" * 256, "a\nb", "a\x00b"):
        assert not rules.valid_type(value)
        assert _refused(rules.check_type, value).field == "type"
    for value in ("t", "t" * 255, "ai.inference.tokens"):
        assert rules.valid_type(value)
        assert rules.check_type(value) == value


def _data_of_size(size: int) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    length = size
    while True:  # the length prefixes grow with the string
        data.update({"pad": "p" * length})
        if data.ByteSize() <= size:
            break
        length -= 1
    assert data.ByteSize() == size
    return data


def test_data_is_at_most_64_kib_encoded() -> None:
    rules.check_data_size(_data_of_size(rules.MAX_DATA_BYTES))
    error = _refused(rules.check_data_size, _data_of_size(rules.MAX_DATA_BYTES + 1))
    assert (error.reason, error.field) == ("TOO_LARGE", "data")
    many_keys = struct_pb2.Struct()
    many_keys.update({f"k{i}": i for i in range(10_000)})
    assert _refused(rules.check_data_size, many_keys).field == "data"


def test_the_window_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MeteringSettings().metering_max_event_age_days == rules.DEFAULT_MAX_AGE_DAYS == 35
    monkeypatch.setenv("ACCRUE_METERING_MAX_EVENT_AGE_DAYS", "90")
    assert MeteringSettings().metering_max_event_age_days == 90
    monkeypatch.setenv("ACCRUE_METERING_MAX_EVENT_AGE_DAYS", "0")
    with pytest.raises(ValidationError):
        MeteringSettings()
