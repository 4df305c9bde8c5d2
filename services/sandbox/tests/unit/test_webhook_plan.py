"""How the sandbox plans its deliveries: always one, duplicates and late (out of order)
deliveries at their rates, retries that back off and stop; and the adapter's dev defaults
are the sandbox's own (the two sides of one dev machine agree without configuration)."""

from __future__ import annotations

import random

from services.payment.processors import sandbox as adapter
from services.sandbox import settings
from services.sandbox.domain.webhooks import DeliveryKind, DeliveryPolicy, plan, retry_delay


def test_every_event_is_delivered_once_within_the_delay_bounds_when_nothing_else_is_asked() -> None:
    policy = DeliveryPolicy(min_delay=0.01, max_delay=0.2, duplicate_rate=0.0, reorder_rate=0.0)
    rng = random.Random(7)
    for _ in range(200):
        deliveries, late = plan(policy, rng, older_event_pending_reorder=True)
        assert [d.kind for d in deliveries] == [DeliveryKind.FIRST]
        assert 0.01 <= deliveries[0].delay <= 0.2
        assert late is None


def test_duplicates_and_late_deliveries_come_after_the_first_at_their_rates() -> None:
    policy = DeliveryPolicy(duplicate_rate=0.25, reorder_rate=0.5)
    rng = random.Random(11)
    plans = [plan(policy, rng, older_event_pending_reorder=True) for _ in range(2000)]
    duplicated = [deliveries for deliveries, _ in plans if len(deliveries) == 2]
    late = [(deliveries, when) for deliveries, when in plans if when is not None]
    assert 0.2 < len(duplicated) / len(plans) < 0.3
    assert 0.45 < len(late) / len(plans) < 0.55
    assert all(d[1].kind is DeliveryKind.DUPLICATE and d[1].delay > d[0].delay for d in duplicated)
    assert all(when > deliveries[0].delay for deliveries, when in late)  # the older event arrives after the newer one
    assert all(plan(policy, rng)[1] is None for _ in range(100))  # only an event that ends `processing` reorders


def test_retries_back_off_and_stop_after_the_last_attempt() -> None:
    policy = DeliveryPolicy(max_attempts=4, first_retry_delay=0.5, max_retry_delay=1.5)
    assert [retry_delay(policy, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, None]


def test_the_adapter_defaults_to_the_sandboxs_dev_keys_and_port() -> None:
    assert adapter.DEV_SECRET_KEY == settings.DEV_SECRET_KEY
    assert adapter.DEV_PUBLISHABLE_KEY == settings.DEV_PUBLISHABLE_KEY
    assert adapter.DEV_WEBHOOK_SECRET == settings.DEV_WEBHOOK_SECRET
    assert adapter.DEV_URL.endswith(f":{settings.DEFAULT_HTTP_PORT}")
