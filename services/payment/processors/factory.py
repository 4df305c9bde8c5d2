"""Which adapter a payment process charges cards with: ``build_processor(name)`` for the
``ACCRUE_PAYMENT_PROCESSOR`` setting (default ``sandbox``).

An adapter is one class keeping the rules of base.py and reading its own settings from
the environment; plugging in another processor (Stripe, Adyen, Airwallex) is that class
and one ``register_processor("stripe", StripeProcessor.from_env)`` line (README
"Payments: plugging in a processor"). Tests register a fake the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from services.payment.processors.base import Processor

ProcessorFactory = Callable[[], Processor]

_FACTORIES: dict[str, ProcessorFactory] = {}


def register_processor(name: str, factory: ProcessorFactory) -> None:
    """Make ``name`` buildable (a later registration of the same name replaces it)."""
    _FACTORIES[name] = factory


def _sandbox() -> Processor:
    # imported here: the adapter (and httpx) only where the sandbox is the processor
    from services.payment.processors.sandbox import sandbox_from_env

    return sandbox_from_env()


register_processor("sandbox", _sandbox)


def build_processor(name: str) -> Processor:
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"no card processor adapter is called {name!r} (ACCRUE_PAYMENT_PROCESSOR; known: {known})")
    processor = factory()
    if processor.name != name:
        raise ValueError(f"the {name!r} adapter calls itself {processor.name!r}")
    return processor
