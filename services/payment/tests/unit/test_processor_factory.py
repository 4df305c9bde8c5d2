"""ACCRUE_PAYMENT_PROCESSOR picks the adapter: the sandbox's by default, any registered one
by its name, an unknown name refused at start (not at the first charge)."""

from __future__ import annotations

import asyncio

import pytest

from services.payment.processors.factory import build_processor, register_processor
from services.payment.processors.sandbox import SandboxProcessor
from services.payment.settings import PaymentServiceSettings
from services.payment.tests.fakes import FakeProcessor


def test_the_default_processor_is_the_sandbox() -> None:
    assert PaymentServiceSettings().payment_processor == "sandbox"
    processor = build_processor("sandbox")
    try:
        assert isinstance(processor, SandboxProcessor) and processor.name == "sandbox"
    finally:
        asyncio.run(processor.aclose())


def test_a_registered_adapter_is_built_by_name_and_an_unknown_one_refused() -> None:
    fake = FakeProcessor(name="acme")
    register_processor("acme", lambda: fake)
    assert build_processor("acme") is fake
    with pytest.raises(ValueError, match="no card processor adapter is called 'stripe'"):
        build_processor("stripe")
    register_processor("liar", lambda: FakeProcessor(name="other"))
    with pytest.raises(ValueError, match="calls itself"):
        build_processor("liar")
