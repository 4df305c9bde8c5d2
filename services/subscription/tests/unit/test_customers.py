"""Customers on the fakes: consumers reused by email, external ids unique among live
customers, updates, deletes blocked by live subscriptions, and the CustomerChanged events
metering's external-subject map depends on."""

from __future__ import annotations

import pytest

from libs.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from libs.core.paging import Page
from services.subscription.domain import commands, use_cases
from services.subscription.domain.model import CustomerChanged, CustomerChangeKind
from services.subscription.domain.ports import CustomerFilters
from services.subscription.tests.unit.world import LATER, MERCHANT, NOW, OTHER, World, consumer


async def test_a_new_email_creates_a_consumer_and_a_customer_and_announces_it() -> None:
    w = World()
    customer, created = await use_cases.create_customer(
        w.uow, MERCHANT, NOW, commands.CreateCustomer(consumer(), external_id="acct-1", tax_rates={"default": 13.5})
    )
    assert created
    assert customer.id.startswith("cus_") and customer.consumer_id.startswith("org_")
    assert customer.tax_rates == {"default": "13.5"}
    assert customer.notification_settings == {"invoice_issued": True, "invoice_paid": True, "renewal_reminder": True}
    assert w.uow.commit() == [CustomerChanged(CustomerChangeKind.CREATED, customer.id, MERCHANT)]


async def test_the_same_email_in_another_case_answers_the_existing_customer_and_announces_nothing() -> None:
    w = World()
    first = await w.customer("Ada@Example.com")
    again, created = await use_cases.create_customer(w.uow, MERCHANT, LATER, commands.CreateCustomer(consumer("  ada@EXAMPLE.com ")))
    assert not created
    assert again.id == first.id
    assert w.uow.commit() == []
    assert len(w.uow.consumers.rows) == 1


async def test_consumers_are_per_merchant() -> None:
    w = World()
    mine = await w.customer()
    theirs = await w.customer(merchant=OTHER)
    assert mine.consumer_id != theirs.consumer_id and mine.id != theirs.id


async def test_a_consumer_of_another_merchant_is_not_found() -> None:
    w = World()
    theirs = await w.customer(merchant=OTHER)
    with pytest.raises(NotFound) as err:
        await use_cases.create_customer(w.uow, MERCHANT, NOW, commands.CreateCustomer(consumer_id=theirs.consumer_id))
    assert err.value.field == "consumerId"


async def test_a_customer_needs_a_consumer() -> None:
    with pytest.raises(InvalidArgument) as err:
        await use_cases.create_customer(World().uow, MERCHANT, NOW, commands.CreateCustomer())
    assert (err.value.field, err.value.reason) == ("consumer", "REQUIRED")


async def test_an_external_id_is_unique_among_the_merchants_live_customers() -> None:
    w = World()
    await w.customer("a@example.com", external_id="acct-1")
    with pytest.raises(AlreadyExists) as err:
        await w.customer("b@example.com", external_id="acct-1")
    assert (err.value.reason, err.value.field) == ("EXTERNAL_ID_TAKEN", "externalId")
    # another merchant may use the same key
    assert (await w.customer("b@example.com", merchant=OTHER, external_id="acct-1")).external_id == "acct-1"


async def test_deleting_a_customer_frees_its_external_id_and_announces_it_as_it_was() -> None:
    w = World()
    first = await w.customer("a@example.com", external_id="acct-1")
    await use_cases.delete_customer(w.uow, MERCHANT, LATER, commands.Delete(first.id))
    (event,) = w.uow.commit()
    assert isinstance(event, CustomerChanged) and event.kind is CustomerChangeKind.DELETED
    assert event.before is not None and event.before.external_id == "acct-1" and event.before.delete_time is None
    second = await w.customer("b@example.com", external_id="acct-1")
    assert second.external_id == "acct-1"
    with pytest.raises(NotFound):
        await w.uow.customers.get(MERCHANT, first.id)


async def test_an_update_that_moves_the_external_id_names_the_previous_one() -> None:
    w = World()
    customer = await w.customer(external_id="acct-1")
    await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, {"external_id": "acct-2"}))
    assert w.uow.commit() == [CustomerChanged(CustomerChangeKind.UPDATED, customer.id, MERCHANT, True, "acct-1")]
    await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, {"external_id": None}))
    assert w.uow.commit() == [CustomerChanged(CustomerChangeKind.UPDATED, customer.id, MERCHANT, True, "acct-2")]
    assert customer.external_id is None
    await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, {"tax_id": "DE123"}))
    assert w.uow.commit() == [CustomerChanged(CustomerChangeKind.UPDATED, customer.id, MERCHANT)]


async def test_an_update_cannot_take_another_customers_external_id() -> None:
    w = World()
    await w.customer("a@example.com", external_id="acct-1")
    other = await w.customer("b@example.com")
    with pytest.raises(AlreadyExists):
        await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(other.id, {"external_id": "acct-1"}))


async def test_tax_rates_take_a_map_or_a_number_and_notification_settings_change_in_part() -> None:
    w = World()
    customer = await w.customer()
    await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, {"tax_rates": 7}))
    assert customer.tax_rates == {"default": "7"}
    changes = {"tax_rates": {"plan_pro": 19.0, "bm_tokens": 0.5}, "notification_settings": {"invoice_paid": False, "invoice_issued": None}}
    await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, changes))
    assert customer.tax_rates == {"plan_pro": "19", "bm_tokens": "0.5"}
    assert customer.notification_settings == {"invoice_issued": True, "invoice_paid": False, "renewal_reminder": True}
    assert customer.update_time == LATER


@pytest.mark.parametrize("rate", [-1, 100.5, "x", True])
async def test_a_tax_rate_is_a_percent(rate: object) -> None:
    w = World()
    customer = await w.customer()
    with pytest.raises(InvalidArgument) as err:
        await use_cases.update_customer(w.uow, MERCHANT, LATER, commands.Update(customer.id, {"tax_rates": {"default": rate}}))
    assert err.value.field == "taxRates.default"


async def test_a_customer_with_a_live_subscription_cannot_be_deleted() -> None:
    w = World()
    customer = await w.customer()
    subscription = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe(customer.id), catalog=w.catalog, timeline=None)
    with pytest.raises(FailedPrecondition) as err:
        await use_cases.delete_customer(w.uow, MERCHANT, LATER, commands.Delete(customer.id))
    assert err.value.reason == "CUSTOMER_HAS_LIVE_SUBSCRIPTIONS"
    subscription.terminate(LATER, by=MERCHANT, reason="done", change_reason=None, now=LATER)
    await use_cases.delete_customer(w.uow, MERCHANT, LATER, commands.Delete(customer.id))


async def test_listing_filters_by_substrings_of_the_consumer_and_the_exact_external_id() -> None:
    w = World()
    ada = await w.customer("ada@lovelace.dev", external_id="acct-ada")
    await w.customer("grace@hopper.dev")
    await w.customer("ada@elsewhere.dev", merchant=OTHER)
    found, total = await w.uow.customers.list_page(MERCHANT, CustomerFilters(email="LOVE"), Page(10, 0))
    assert ([c.id for c in found], total) == ([ada.id], 1)
    found, total = await w.uow.customers.list_page(MERCHANT, CustomerFilters(external_id="acct"), Page(10, 0))
    assert (found, total) == ([], 0)
    _, total = await w.uow.customers.list_page(MERCHANT, CustomerFilters(), Page(10, 0))
    assert total == 2
