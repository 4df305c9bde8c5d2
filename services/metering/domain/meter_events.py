"""Meter-event rules, pure: validation of an incoming event and its derived identity.

(Meter events, the usage being ingested; what metering publishes is in services/metering/events.py.)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from libs.core.errors import InvalidArgument
from libs.core.json_limits import MAX_EXACT_INTEGER, check_json, check_no_nul

MAX_FUTURE = timedelta(minutes=5)
# The backdating window's default (Stripe takes 35 days): older usage is refused, so a
# closed period cannot keep moving. A service setting (ACCRUE_METERING_MAX_EVENT_AGE_DAYS).
DEFAULT_MAX_AGE_DAYS = 35
MAX_KEY_LENGTH = 255
# type, subject, externalSubject, source and idempotencyKey: at most this many characters
MAX_TEXT_LENGTH = 255
# data's encoded size (protobuf Struct bytes, about its compact JSON size): one event
# always fits a stream message, and a walk of it stays cheap
MAX_DATA_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def event_id(merchant_id: str, idempotency_key: str) -> str:
    """A stable id per (merchant, key): a duplicate answers with the original's id.
    128 bits of SHA-256 in hex (alphanumeric, as ids are; base64's base32 is pure Python)."""
    return "evt_" + hashlib.sha256(f"{merchant_id}\0{idempotency_key}".encode()).hexdigest()[:32]


def dedupe_id(merchant_id: str, idempotency_key: str) -> str:
    """The JetStream Nats-Msg-Id of an event."""
    return f"{merchant_id}:{idempotency_key}"


def partition_of(merchant_id: str, subject_key: str, partitions: int) -> int:
    """Subject partition of the meter stream: one customer's events stay in one partition."""
    digest = hashlib.blake2b(f"{merchant_id}\0{subject_key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % partitions


def valid_type(value: str) -> bool:
    """Whether ``check_type`` accepts it: only such types are worth looking up."""
    return bool(value) and len(value) <= MAX_TEXT_LENGTH and not _CONTROL.search(value)


def check_type(value: str) -> str:
    if not value:
        raise InvalidArgument("type", "type is required", reason="REQUIRED")
    if not valid_type(value):
        raise InvalidArgument(
            "type", f"type must be at most {MAX_TEXT_LENGTH} characters without control characters", reason="INVALID_TYPE"
        )
    return value


def check_length(value: str | None, field: str) -> None:
    if value is not None and len(value) > MAX_TEXT_LENGTH:
        raise InvalidArgument(field, f"{field} is {len(value)} characters long; at most {MAX_TEXT_LENGTH} are allowed", reason="TOO_LONG")


def check_source(value: str) -> str:
    check_no_nul(value, "source")
    if not value:
        raise InvalidArgument("source", "source is required", reason="REQUIRED")
    check_length(value, "source")
    return value


def check_subjects(subject: str, external_subject: str | None) -> None:
    """``subject`` (a customer id) or ``externalSubject`` (the merchant's own customer
    key) is required. When both are given, ``subject`` wins, as in Paygentic: the event
    is the subject's usage from the start, and ``externalSubject`` is stored and echoed
    (it filters event listings) but never re-attributes it."""
    if not subject and not external_subject:
        raise InvalidArgument("subject", "subject (customer id) or externalSubject is required", reason="REQUIRED")
    check_no_nul(subject, "subject")
    check_length(subject, "subject")
    check_no_nul(external_subject, "externalSubject")
    check_length(external_subject, "externalSubject")


# the reasons of check_time's refusals (judged again on a fresh test clock: server.py)
TIME_BOUND_REASONS = frozenset({"TIMESTAMP_IN_FUTURE", "TIMESTAMP_TOO_OLD"})


def check_time(when: datetime, now: datetime, max_age_days: int = DEFAULT_MAX_AGE_DAYS, reference: str = "server time") -> datetime:
    """At most 5 minutes ahead of ``now``, and within the backdating window before it.
    ``now`` is the server's clock, or the test clock of the event's customer
    (``reference`` names which in the message)."""
    if when - now > MAX_FUTURE:
        raise InvalidArgument(
            "timestamp",
            f"timestamp {when.isoformat()} is more than 5 minutes in the future ({reference} {now.isoformat()})",
            reason="TIMESTAMP_IN_FUTURE",
        )
    if now - when > timedelta(days=max_age_days):
        raise InvalidArgument(
            "timestamp",
            f"timestamp {when.isoformat()} is more than {max_age_days} days in the past ({reference} {now.isoformat()}); "
            "usage older than the backdating window cannot be ingested",
            reason="TIMESTAMP_TOO_OLD",
        )
    return when


def idempotency_key(value: str | None) -> str:
    if value is None:
        return os.urandom(16).hex()  # a uuid4's randomness without building a UUID object
    if not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument("idempotencyKey", "idempotencyKey must be 1-255 characters", reason="INVALID_IDEMPOTENCY_KEY")
    return value


def external_id(value: str | None) -> str | None:
    if value is not None and not _EXTERNAL_ID.fullmatch(value):
        raise InvalidArgument("externalId", "externalId must be 1-255 characters of [A-Za-z0-9_-]", reason="INVALID_EXTERNAL_ID")
    return value


def check_data(data: Mapping[str, Any]) -> None:
    """``data`` as plain Python (libs/infra/proto_struct.py): no NUL text, bounded depth,
    and no number beyond a double's exact range (large or fractional-precision quantities
    belong in decimal strings)."""
    for key, value in data.items():  # the common flat object of short values: no walk
        kind = type(value)
        if "\x00" in key or not (
            (kind is str and "\x00" not in value) or kind is bool or ((kind is int or kind is float) and abs(value) < MAX_EXACT_INTEGER)
        ):
            check_json(data, "data", exact_numbers=True)
            return


def check_data_size(data: struct_pb2.Struct) -> None:
    """Before walking ``data``: its size bounds the walk."""
    size = data.ByteSize()
    if size > MAX_DATA_BYTES:
        raise InvalidArgument("data", f"data is {size} bytes encoded; at most {MAX_DATA_BYTES} (64 KiB) are allowed", reason="TOO_LARGE")
