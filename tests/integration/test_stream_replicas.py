"""ensure_stream's replica check against the real single-node JetStream: R1 is allowed by
default, a wanted R3 that the node cannot place leaves R1 with a warning, and a required
R3 (production: ACCRUE_REQUIRE_STREAM_REPLICAS=3) refuses to start."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from libs.infra import messaging
from libs.testing.fixtures import Infra
from services.streams import declared, main

pytestmark = pytest.mark.integration


def _names() -> tuple[str, str]:
    return f"TEST_R_{uuid.uuid4().hex[:10]}", f"test.r.{uuid.uuid4().hex[:10]}"


async def test_by_default_a_single_node_stream_is_r1_and_accepted(nc: NatsClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCRUE_STREAM_REPLICAS", raising=False)
    monkeypatch.delenv("ACCRUE_REQUIRE_STREAM_REPLICAS", raising=False)
    js = nc.jetstream()
    name, prefix = _names()
    await messaging.ensure_stream(js, name, [f"{prefix}.>"])
    assert (await js.stream_info(name)).config.num_replicas == 1


async def test_wanting_r3_on_one_node_keeps_r1_when_nothing_requires_more(nc: NatsClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCRUE_STREAM_REPLICAS", "3")
    monkeypatch.delenv("ACCRUE_REQUIRE_STREAM_REPLICAS", raising=False)
    js = nc.jetstream()
    name, prefix = _names()
    await messaging.ensure_stream(js, name, [f"{prefix}.>"])  # missing: R3 cannot be placed, created R1
    assert (await js.stream_info(name)).config.num_replicas == 1
    await messaging.ensure_stream(js, name, [f"{prefix}.>"])  # existing R1: the raise to R3 fails, kept
    assert (await js.stream_info(name)).config.num_replicas == 1


@pytest.mark.parametrize("existing", [False, True], ids=["missing", "existing-r1"])
async def test_requiring_r3_refuses_to_start_on_a_stream_that_ends_up_r1(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    monkeypatch.setenv("ACCRUE_STREAM_REPLICAS", "3")
    monkeypatch.setenv("ACCRUE_REQUIRE_STREAM_REPLICAS", "3")
    js = nc.jetstream()
    name, prefix = _names()
    if existing:
        await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], num_replicas=1))
    with pytest.raises(messaging.StreamReplicasError, match=rf"stream {name} has 1 replica\(s\) but ACCRUE_REQUIRE_STREAM_REPLICAS is 3"):
        await messaging.ensure_stream(js, name, [f"{prefix}.>"])


async def test_explicit_arguments_win_over_the_environment(nc: NatsClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCRUE_REQUIRE_STREAM_REPLICAS", "3")
    js = nc.jetstream()
    name, prefix = _names()
    await messaging.ensure_stream(js, name, [f"{prefix}.>"], replicas=1, require_replicas=1)
    assert (await js.stream_info(name)).config.num_replicas == 1


def test_a_replica_setting_below_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCRUE_STREAM_REPLICAS", "0")
    with pytest.raises(ValueError, match="ACCRUE_STREAM_REPLICAS must be at least 1"):
        messaging._env_int("ACCRUE_STREAM_REPLICAS", 1)


def test_the_streams_job_creates_every_declared_stream_and_fails_below_the_required_replicas(
    infra: Infra, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m services.streams` (the production Job): on one node --replicas 1 passes,
    --replicas 3 exits 1 naming the stream that stayed R1."""
    assert main(["--replicas", "1", "--nats-url", infra.nats_url]) == 0
    out = capsys.readouterr().out
    for name, subjects in declared().items():
        assert f"{name}: 1 replica(s), subjects {', '.join(subjects)}" in out
    assert main(["--replicas", "3", "--nats-url", infra.nats_url]) == 1
    assert "ACCRUE_REQUIRE_STREAM_REPLICAS is 3" in capsys.readouterr().err
