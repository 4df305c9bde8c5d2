"""The one table from errors to HTTP statuses (libs/core/errors.HTTP_STATUS), read by the
gateway and by metering's per-event receipts."""

from __future__ import annotations

import pytest

from libs.core.errors import (
    HTTP_STATUS,
    AlreadyExists,
    DomainError,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unprocessable,
    http_status,
)


def test_every_code_is_listed_not_left_to_the_default() -> None:
    """A code added to ErrorCode without a status would answer 500 by omission."""
    assert {code for code, reason in HTTP_STATUS if reason is None} == set(ErrorCode)


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (InvalidArgument("type", "type is required", reason="REQUIRED"), 400),
        (NotFound("merchant", "org_x", field="namespace"), 404),
        (Unauthenticated("MERCHANT_REQUIRED", "no key"), 401),
        (PermissionDenied("KEY_SCOPE", "the key may not write"), 403),
        (Unprocessable("UNKNOWN_EVENT_TYPE", "no billable metric consumes it", field="type"), 422),
        (FailedPrecondition("FEE_HAS_PRICES", "delete its prices first"), 409),
        (AlreadyExists("FEATURE_KEY_TAKEN", "taken"), 409),
        (Unavailable("CATALOG_UNAVAILABLE", "retry"), 503),
        (FailedPrecondition("PAYMENT_DECLINED", "the card was declined"), 402),
        (Unprocessable("NO_PAYMENT_METHOD", "no saved method"), 422),
        (Unprocessable("INVOICE_NO_BALANCE", "nothing unpaid"), 422),
        (FailedPrecondition("CONCURRENT_ATTEMPT", "another attempt is in flight"), 409),
        (Unavailable("PROVIDER_UNAVAILABLE", "the processor is unreachable"), 502),
        (DomainError("INTERNAL", "internal error"), 500),
    ],
)
def test_an_error_answers_by_its_code_and_an_unprocessable_reason_422(err: DomainError, status: int) -> None:
    assert http_status(err.code, err.reason) == status


def test_an_unprocessable_reason_must_be_in_the_table() -> None:
    with pytest.raises(ValueError, match="HTTP_STATUS"):
        Unprocessable("NOT_LISTED", "would answer 409 over HTTP")
