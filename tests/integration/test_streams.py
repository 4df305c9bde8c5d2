"""ensure_stream against a real JetStream: the producer's declaration of its subjects wins
over what an earlier starter created, and the operator's other settings are kept."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from libs.infra import messaging

pytestmark = pytest.mark.integration


async def test_a_missing_stream_is_created_with_the_declared_subjects(nc: NatsClient) -> None:
    js = nc.jetstream()
    name, prefix = f"TEST_S_{uuid.uuid4().hex[:10]}", f"test.s.{uuid.uuid4().hex[:10]}"
    await messaging.ensure_stream(js, name, [f"{prefix}.>"])
    info = await js.stream_info(name)
    assert info.config.subjects == [f"{prefix}.>"]
    assert info.config.duplicate_window == 120.0
    await messaging.ensure_stream(js, name, [f"{prefix}.>"])  # again: nothing to change
    assert (await js.stream_info(name)).config.subjects == [f"{prefix}.>"]


async def test_an_existing_stream_with_other_subjects_takes_the_declared_ones_and_keeps_its_settings(nc: NatsClient) -> None:
    js = nc.jetstream()
    name, prefix = f"TEST_S_{uuid.uuid4().hex[:10]}", f"test.s.{uuid.uuid4().hex[:10]}"
    # as an older release (or an operator) left it: fewer subjects, its own limits
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.old.>"], max_msgs=1234, duplicate_window=30.0))
    await js.publish(f"{prefix}.old.kept", b"1")

    await messaging.ensure_stream(js, name, [f"{prefix}.old.>", f"{prefix}.new.>"])

    info = await js.stream_info(name)
    assert sorted(info.config.subjects or []) == [f"{prefix}.new.>", f"{prefix}.old.>"]
    assert (info.config.max_msgs, info.config.duplicate_window) == (1234, 30.0)
    assert info.state.messages == 1  # updated in place, not recreated
    ack = await js.publish(f"{prefix}.new.thing", b"2")  # the new subject is captured now
    assert ack.stream == name
