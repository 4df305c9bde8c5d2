"""The usage hint of one aggregator commit (aggregator.usage_stored): one StoredSubject
per (merchant, subject) with its types, one message unless the commit named more
subjects than one message should carry."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.infra.proto_time import from_timestamp
from services.metering.aggregator import HINT_SUBJECTS_PER_MESSAGE, usage_stored

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_one_entry_per_merchant_and_subject_with_its_types() -> None:
    (message,) = usage_stored({("org_b", "cus_1", "t"), ("org_a", "cus_2", "u"), ("org_a", "cus_2", "t"), ("org_a", "cus_1", "t")}, AT)
    assert [(s.merchant_id, s.subject, list(s.event_types)) for s in message.subjects] == [
        ("org_a", "cus_1", ["t"]),
        ("org_a", "cus_2", ["t", "u"]),
        ("org_b", "cus_1", ["t"]),
    ]
    assert from_timestamp(message.stored_at) == AT


def test_a_commit_of_very_many_subjects_is_split_and_names_each_once() -> None:
    stored = {("org_a", f"cus_{n:05d}", "t") for n in range(HINT_SUBJECTS_PER_MESSAGE + 1)}
    messages = usage_stored(stored, AT)
    assert [len(m.subjects) for m in messages] == [HINT_SUBJECTS_PER_MESSAGE, 1]
    assert sorted(s.subject for m in messages for s in m.subjects) == sorted(s for _, s, _ in stored)
    assert usage_stored(set(), AT) == []
