"""The invoicing service's event contract: its stream and the subjects it publishes on.

Nothing is published yet; the service's issue fills in its events
(protos/accrue/invoicing/v1/invoicing_events.proto) and their subjects here.
"""

from __future__ import annotations

STREAM = "ACCRUE_INVOICING"
SUBJECT_PREFIX = "accrue.invoicing.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)
