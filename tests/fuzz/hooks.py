"""Schemathesis hooks for tests/fuzz/schemathesis.toml.

The stateful phase replays generated requests across scenarios. A create replayed with
an Idempotency-Key it used before answers the first result, as Stripe's does, even if a
later scenario deleted that resource: right for the API, but it reads to Schemathesis as
"created, then not found". Stateful scenarios therefore send no Idempotency-Key; the
other phases fuzz the header, and tests/e2e/test_idempotency.py tests replays.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.generation.meta import TestPhase


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    if case.meta is not None and case.meta.phase.name == TestPhase.STATEFUL and case.headers:
        for name in list(case.headers):
            if name.lower() == "idempotency-key":
                del case.headers[name]
