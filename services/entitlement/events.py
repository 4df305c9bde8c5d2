"""The entitlement service's event contract: its stream and the subjects it publishes on.

Nothing is published yet; the service's issue fills in its events
(protos/accrue/entitlement/v1/entitlement_events.proto) and their subjects here.
"""

from __future__ import annotations

STREAM = "ACCRUE_ENTITLEMENT"
SUBJECT_PREFIX = "accrue.entitlement.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)
