"""The payment service's event contract: its stream and the subjects it publishes on.

Nothing is published yet; the service's issue fills in its events
(protos/accrue/payment/v1/payment_events.proto) and their subjects here.
"""

from __future__ import annotations

STREAM = "ACCRUE_PAYMENT"
SUBJECT_PREFIX = "accrue.payment.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)
