"""The catalog's aggregates: state, the rules that change it, and the events that say so.

After cosmicpython's ``domain/model.py``: each method validates (through ``rules``),
changes the aggregate and records a ``ResourceChanged``; the unit of work turns recorded
events into outbox rows at commit. Attribute names are the stored column names, so a
repository builds an aggregate from a row and writes it back without a mapping table.

Deletion is one convention for every resource: ``delete_time`` is set, the deleted event
carries the resource as it was before, and repositories no longer find it.

Pure: no SQLAlchemy, gRPC or NATS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from libs.core.domain import Aggregate, DomainEvent
from libs.core.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument
from libs.core.ids import new_id
from services.catalog.domain import commands, rules
from services.catalog.domain.commands import FeatureAttachment, PriceTax


class Resource(StrEnum):
    """Catalog resources, as named in events and subjects."""

    PRODUCT = "product"
    BILLABLE_METRIC = "billable_metric"
    FEATURE = "feature"
    FEE = "fee"
    PRICE = "price"
    PLAN = "plan"
    PLAN_VERSION = "plan_version"


class ChangeKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class ResourceChanged(DomainEvent):
    """A catalog resource was created, updated or deleted.

    Creates and updates are rendered as the resource is at commit; a delete carries
    ``before``, the resource as it was (the deleted event shows what went away).
    """

    resource: Resource
    kind: ChangeKind
    resource_id: str
    merchant_id: str
    before: CatalogAggregate | None = field(default=None, compare=False)


@dataclass(kw_only=True)
class CatalogAggregate(Aggregate):
    merchant_id: str
    created_at: datetime
    updated_at: datetime
    delete_time: datetime | None = None

    resource: ClassVar[Resource]

    def _changed(self, kind: ChangeKind, before: CatalogAggregate | None = None) -> None:
        # one event per resource and kind per unit of work, announced after the last
        # change: it is rendered at commit, so a second "updated" would say the same twice
        event = ResourceChanged(self.resource, kind, self.id, self.merchant_id, before)
        self.withdraw(event)
        self.record(event)

    def _update(self, changes: Mapping[str, Any], now: datetime, checks: Mapping[str, Callable[[Any], Any]]) -> None:
        """Set each changed attribute to its new value as its rule returns it (rules run in
        the order of ``checks``, so the first bad field is the one reported), and announce it."""
        for name, check in checks.items():
            if name in changes:
                setattr(self, name, check(changes[name]))
        self.updated_at = now
        self._changed(ChangeKind.UPDATED)

    def _delete(self, now: datetime) -> None:
        before = dataclasses.replace(self)
        self.delete_time = now
        self._changed(ChangeKind.DELETED, before)


# the rules of fields several resources share, for the tables of their updates
def _name(value: Any) -> str:
    return rules.required_text(value, "name")


def _description(value: Any) -> str:
    return rules.optional_text(value, "description")


def _item_id(value: Any) -> str | None:
    return rules.nullable_text(value, "itemId")


def require_product_id(product_id: str, message: str = "productId is required") -> str:
    if not product_id:
        raise InvalidArgument("productId", message, reason="REQUIRED")
    return product_id


# --- products -------------------------------------------------------------------------


@dataclass(kw_only=True)
class Product(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.PRODUCT
    name: str
    description: str
    metadata: dict[str, str]

    @classmethod
    def create(cls, command: commands.CreateProduct, *, merchant_id: str, now: datetime) -> Product:
        product = cls(
            id=new_id("prod"),
            merchant_id=merchant_id,
            name=rules.required_text(command.name, "name"),
            description=rules.optional_text(command.description, "description"),
            metadata=rules.metadata(command.metadata),
            created_at=now,
            updated_at=now,
        )
        product._changed(ChangeKind.CREATED)
        return product

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        self._update(changes, now, {"name": _name, "description": _description})


# --- billable metrics -----------------------------------------------------------------


@dataclass(kw_only=True)
class BillableMetric(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.BILLABLE_METRIC
    product_id: str
    name: str
    description: str
    unit: str
    aggregation: str
    event_type: str
    value_property: str | None
    group_by: dict[str, str]
    item_id: str | None
    event_from: datetime | None

    @classmethod
    def create(cls, command: commands.CreateBillableMetric, *, merchant_id: str, now: datetime) -> BillableMetric:
        c = command
        require_product_id(c.product_id)
        aggregation = rules.one_of(c.aggregation, rules.AGGREGATIONS, "aggregation")
        metric = cls(
            id=new_id("bm"),
            merchant_id=merchant_id,
            product_id=c.product_id,
            name=rules.required_text(c.name, "name"),
            description=rules.optional_text(c.description, "description"),
            unit=rules.required_text(c.unit, "unit"),
            aggregation=aggregation,
            event_type=rules.required_text(c.event_type, "eventType"),
            value_property=rules.metric_value_property(aggregation, c.value_property),
            group_by=rules.group_by(dict(c.group_by)),
            item_id=rules.nullable_text(c.item_id, "itemId"),
            event_from=c.event_from,
            created_at=now,
            updated_at=now,
        )
        metric._changed(ChangeKind.CREATED)
        return metric

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        self._update(
            changes,
            now,
            {
                "name": _name,
                "description": _description,
                "unit": lambda value: rules.required_text(value, "unit"),
                "item_id": _item_id,
                "event_type": lambda value: rules.required_text(value, "eventType"),
                "value_property": lambda value: rules.metric_value_property(self.aggregation, value),
                "group_by": rules.group_by,
                "event_from": lambda value: value,
            },
        )


# --- features -------------------------------------------------------------------------


def duplicate_feature_key(key: str, product_id: str) -> AlreadyExists:
    return AlreadyExists("DUPLICATE_RESOURCE", f"feature key {key!r} already exists in product {product_id}", field="key")


@dataclass(kw_only=True)
class Feature(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.FEATURE
    product_id: str
    key: str
    name: str
    type: str
    metadata: dict[str, str]

    @classmethod
    def create(cls, command: commands.CreateFeature, *, merchant_id: str, now: datetime) -> Feature:
        c = command
        require_product_id(c.product_id)
        feature = cls(
            id=new_id("feat"),
            merchant_id=merchant_id,
            product_id=c.product_id,
            key=rules.feature_key(c.key),
            name=rules.required_text(c.name, "name"),
            type=rules.one_of(c.type or "boolean", rules.FEATURE_TYPES, "type"),
            metadata=rules.metadata(c.metadata),
            created_at=now,
            updated_at=now,
        )
        feature._changed(ChangeKind.CREATED)
        return feature

    def ensure_key_free(self, holder: Feature | None) -> None:
        """A key is unique among a product's live features (a deleted one frees it)."""
        if holder is not None and holder.id != self.id:
            raise duplicate_feature_key(self.key, self.product_id)

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        self._update(
            changes,
            now,
            {
                "key": rules.feature_key,
                "name": _name,
                "type": lambda value: rules.one_of(value, rules.FEATURE_TYPES, "type"),
                "metadata": rules.metadata,
            },
        )

    def delete(self, now: datetime, *, used_by_price: str | None) -> None:
        if used_by_price is not None:
            raise FailedPrecondition(
                "FEATURE_IN_USE", f"feature {self.id} is attached to price {used_by_price}; detach it first", field="id"
            )
        self._delete(now)


# --- fees -----------------------------------------------------------------------------


@dataclass(kw_only=True)
class Fee(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.FEE
    product_id: str
    name: str
    description: str
    item_id: str | None

    @classmethod
    def create(cls, command: commands.CreateFee, *, merchant_id: str, now: datetime) -> Fee:
        c = command
        require_product_id(c.product_id, "productId is required: a fee belongs to a product")
        fee = cls(
            id=new_id("fee"),
            merchant_id=merchant_id,
            product_id=c.product_id,
            name=rules.required_text(c.name, "name"),
            description=rules.optional_text(c.description, "description"),
            item_id=rules.nullable_text(c.item_id, "itemId"),
            created_at=now,
            updated_at=now,
        )
        fee._changed(ChangeKind.CREATED)
        return fee

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        self._update(changes, now, {"name": _name, "description": _description, "item_id": _item_id})

    def delete(self, now: datetime, *, live_price: str | None) -> None:
        if live_price is not None:
            raise FailedPrecondition("FEE_HAS_PRICES", f"fee {self.id} still has price {live_price}; delete its prices first", field="id")
        self._delete(now)


# --- prices ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Price(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.PRICE
    billable_metric_id: str | None
    fee_id: str | None
    invoice_display_name: str
    invoice_display_group: str | None
    payment_term: str
    model: str
    properties: dict[str, Any]
    billing_cadence: str | None
    grant_discount_enabled: bool
    is_obligation: bool
    rate_type: str | None
    supply_scope: str
    outside_scope_label: str | None
    quantity: int
    price_feature_id: str | None
    feature_id: str | None
    entitlement_template: dict[str, Any] | None

    @classmethod
    def create(cls, *, merchant_id: str, draft: rules.PriceDraft, valid: rules.ValidPrice, now: datetime) -> Price:
        price = cls(
            id=new_id("price"),
            merchant_id=merchant_id,
            price_feature_id=new_id("pf") if draft.feature_id else None,
            created_at=now,
            updated_at=now,
            **_price_fields(draft, valid),
        )
        price._changed(ChangeKind.CREATED)
        return price

    def draft(self) -> rules.PriceDraft:
        """The price's settable fields as they are, to change and validate as a whole."""
        return rules.PriceDraft(
            billable_metric_id=self.billable_metric_id,
            fee_id=self.fee_id,
            invoice_display_name=self.invoice_display_name,
            invoice_display_group=self.invoice_display_group,
            payment_term=self.payment_term,
            model=self.model,
            properties=rules.render_properties(self.model, self.properties),
            billing_cadence=self.billing_cadence,
            grant_discount_enabled=self.grant_discount_enabled,
            is_obligation=self.is_obligation,
            rate_type=self.rate_type,
            supply_scope=self.supply_scope,
            outside_scope_label=self.outside_scope_label,
            quantity=self.quantity,
            pricing_unit_id=None,
            feature_id=self.feature_id,
            entitlement_template=self.entitlement_template,
        )

    def changed_draft(self, changes: Mapping[str, Any]) -> rules.PriceDraft:
        """The draft with an update's changes applied (not yet validated)."""
        draft = self.draft()
        if "billable_metric_id" in changes:
            if self.fee_id is not None:
                raise InvalidArgument("billableMetricId", "a fee price cannot become a metric price", reason="NOT_ALLOWED")
            draft.billable_metric_id = changes["billable_metric_id"]
        for name in ("invoice_display_name", "payment_term", "model", "grant_discount_enabled", "is_obligation", "quantity"):
            if name in changes:
                setattr(draft, name, changes[name])
        for name in ("invoice_display_group", "billing_cadence", "rate_type", "pricing_unit_id"):
            if name in changes:
                setattr(draft, name, changes[name])
        if "properties" in changes:
            draft.properties = changes["properties"]
        if "tax" in changes:
            tax: PriceTax = changes["tax"]
            draft.supply_scope, draft.outside_scope_label = tax.supply_scope, tax.outside_scope_label
        if "feature" in changes:
            feature: FeatureAttachment | None = changes["feature"]
            if feature is None:
                draft.feature_id, draft.entitlement_template = None, None
            else:
                feature.checked()
                draft.feature_id, draft.entitlement_template = feature.feature_id, feature.entitlement_template
        return draft

    def apply(self, draft: rules.PriceDraft, valid: rules.ValidPrice, now: datetime) -> None:
        for name, value in _price_fields(draft, valid).items():
            setattr(self, name, value)
        if draft.feature_id is not None and self.price_feature_id is None:
            self.price_feature_id = new_id("pf")
        elif draft.feature_id is None:
            self.price_feature_id = None
        self.updated_at = now
        self._changed(ChangeKind.UPDATED)

    def delete(self, now: datetime, *, live_plan: str | None) -> None:
        if live_plan is not None:
            raise FailedPrecondition(
                "PRICE_IN_USE",
                f"price {self.id} is in a published version of plan {live_plan}; mint a version without it first",
                field="id",
            )
        self.updated_at = now
        self._delete(now)


def _price_fields(draft: rules.PriceDraft, valid: rules.ValidPrice) -> dict[str, Any]:
    return {
        "billable_metric_id": draft.billable_metric_id,
        "fee_id": draft.fee_id,
        "invoice_display_name": draft.invoice_display_name.strip(),
        "invoice_display_group": draft.invoice_display_group,
        "payment_term": draft.payment_term,
        "model": valid.model,
        "properties": valid.properties.stored,
        "billing_cadence": draft.billing_cadence,
        "grant_discount_enabled": draft.grant_discount_enabled,
        "is_obligation": draft.is_obligation,
        "rate_type": draft.rate_type,
        "supply_scope": draft.supply_scope,
        "outside_scope_label": draft.outside_scope_label,
        "quantity": valid.quantity,
        "feature_id": draft.feature_id,
        "entitlement_template": draft.entitlement_template if draft.feature_id is not None else None,
    }


# --- plans ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class PlanVersion(CatalogAggregate):
    """One published (or archived) set of a plan's prices; its lines never change."""

    resource: ClassVar[Resource] = Resource.PLAN_VERSION
    plan_id: str
    version_number: int
    status: str
    based_on_version_id: str | None
    subscription_count: int
    published_at: datetime
    lines: list[rules.PlanLine] = field(default_factory=list)

    def transition(self, plan: Plan, *, make_default: bool | None, status: str | None, now: datetime) -> None:
        """Archive or restore this version, or make it the plan's default."""
        if make_default is None and status is None:
            raise InvalidArgument("default", "nothing to change: send default: true or status", reason="REQUIRED")
        if make_default is False:
            raise InvalidArgument("default", "default: false is not a transition; make another version the default", reason="NOT_ALLOWED")
        new_status = self.status if status is None else rules.one_of(status, rules.VERSION_STATUSES, "status")
        is_default = make_default is True or plan.default_version_id == self.id
        if new_status == "archived" and is_default:
            raise FailedPrecondition(
                "DEFAULT_VERSION_ARCHIVE", "the default version cannot be archived or archived versions made default", field="status"
            )
        if new_status != self.status:
            self.status = new_status
            self.updated_at = now
        if make_default and plan.default_version_id != self.id:
            plan.make_default(self, now)
        self._changed(ChangeKind.UPDATED)


@dataclass(kw_only=True)
class Plan(CatalogAggregate):
    resource: ClassVar[Resource] = Resource.PLAN
    product_id: str
    name: str
    description: str | None
    currency: str
    billing_cadence: str
    invoice_display_name: str | None
    default_tax_code: str
    default_tax_rate: Decimal
    tax_behavior: str
    renewal_reminder_enabled: bool
    renewal_reminder_days: int
    billing_version: int
    billing_anchor: datetime | None
    credit_allocations: list[Any]
    stable_price_ids: bool
    version_effective_date: str
    default_version_id: str | None = None

    @classmethod
    def create(cls, command: commands.CreatePlan, *, merchant_id: str, now: datetime) -> Plan:
        """A new plan (its first version comes from ``first_version`` once its prices are resolved)."""
        c = command
        require_product_id(c.product_id)
        billing_version = rules.billing_version(c.billing_version)
        allocations = rules.credit_allocations(c.credit_allocation_count)
        anchor = rules.billing_anchor(c.billing_anchor, now)
        effective_date = "end_of_current_period" if c.version_transition is None else rules.version_transition(*c.version_transition)
        plan = cls(
            id=new_id("plan"),
            merchant_id=merchant_id,
            product_id=c.product_id,
            name=rules.required_text(c.name, "name"),
            description=rules.nullable_text(c.description, "description", max_length=rules.LIMITS.description),
            currency=rules.currency(c.currency),
            billing_cadence=rules.plan_cadence(c.billing_cadence, c.billing_interval),
            invoice_display_name=rules.nullable_text(c.invoice_display_name, "invoiceDisplayName"),
            default_tax_code=rules.required_text(c.default_tax_code or "eservice", "defaultTaxCode"),
            default_tax_rate=rules.tax_rate(c.default_tax_rate or 0.0),
            tax_behavior=rules.one_of(c.tax_behavior or "exclusive", rules.TAX_BEHAVIORS, "taxBehavior"),
            renewal_reminder_enabled=c.renewal_reminder_enabled is not False,
            renewal_reminder_days=rules.renewal_reminder_days(3 if c.renewal_reminder_days is None else c.renewal_reminder_days),
            billing_version=billing_version,
            billing_anchor=anchor,
            credit_allocations=allocations,
            stable_price_ids=c.stable_price_ids is not False,
            version_effective_date=effective_date,
            created_at=now,
            updated_at=now,
        )
        plan._changed(ChangeKind.CREATED)
        return plan

    def first_version(self, lines: list[rules.PlanLine], now: datetime) -> PlanVersion:
        """Version 1, part of creating the plan (announced by the plan's created event)."""
        version = self._new_version(1, lines, now)
        self.default_version_id = version.id
        return version

    def _new_version(self, number: int, lines: list[rules.PlanLine], now: datetime) -> PlanVersion:
        return PlanVersion(
            id=new_id("pv"),
            merchant_id=self.merchant_id,
            plan_id=self.id,
            version_number=number,
            status="published",
            based_on_version_id=self.default_version_id,
            subscription_count=0,
            published_at=now,
            created_at=now,
            updated_at=now,
            lines=list(lines),
        )

    def check_based_on(self, based_on_version_id: str | None) -> None:
        """Optimistic concurrency of minting: the version the caller started from must
        still be the default."""
        if based_on_version_id is not None and based_on_version_id != self.default_version_id:
            raise Aborted(
                "PLAN_VERSION_CONFLICT",
                f"basedOnVersionId {based_on_version_id} is no longer the default version ({self.default_version_id}); reload and retry",
                field="basedOnVersionId",
            )

    def mint_version(self, lines: list[rules.PlanLine], *, based_on_version_id: str | None, last_number: int, now: datetime) -> PlanVersion:
        """A new published version with these prices; it becomes the default."""
        self.check_based_on(based_on_version_id)
        if not lines:
            raise InvalidArgument("prices", "a plan version needs at least one price", reason="REQUIRED")
        version = self._new_version(last_number + 1, lines, now)
        version._changed(ChangeKind.CREATED)
        self.make_default(version, now)
        return version

    def make_default(self, version: PlanVersion, now: datetime) -> None:
        self.default_version_id = version.id
        self.updated_at = now
        self._changed(ChangeKind.UPDATED)

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        """The plan's own fields (``prices`` is minted by the use case first)."""
        if "billing_cadence" in changes or "billing_interval" in changes:
            self.billing_cadence = rules.plan_cadence(changes.get("billing_cadence"), changes.get("billing_interval"))
        if "default_tax_code" in changes:
            self.default_tax_code = rules.required_text(changes["default_tax_code"], "defaultTaxCode")
        if "default_tax_rate" in changes:
            self.default_tax_rate = rules.tax_rate(changes["default_tax_rate"])
        if "description" in changes:
            self.description = rules.nullable_text(changes["description"], "description", max_length=rules.LIMITS.description)
        if "invoice_display_name" in changes:
            self.invoice_display_name = rules.nullable_text(changes["invoice_display_name"], "invoiceDisplayName")
        if "name" in changes:
            self.name = rules.required_text(changes["name"], "name")
        if "tax_behavior" in changes:
            self.tax_behavior = rules.one_of(changes["tax_behavior"], rules.TAX_BEHAVIORS, "taxBehavior")
        if "renewal_reminder_enabled" in changes:
            self.renewal_reminder_enabled = changes["renewal_reminder_enabled"]
        if "renewal_reminder_days" in changes:
            self.renewal_reminder_days = rules.renewal_reminder_days(changes["renewal_reminder_days"])
        if "billing_anchor" in changes:
            self.billing_anchor = rules.billing_anchor(changes["billing_anchor"], now)
        if "credit_allocation_count" in changes:
            rules.credit_allocations(changes["credit_allocation_count"])
        if "stable_price_ids" in changes:
            self.stable_price_ids = changes["stable_price_ids"]
        if "version_transition" in changes:
            self.version_effective_date = rules.version_transition(*changes["version_transition"])
        self.updated_at = now
        self._changed(ChangeKind.UPDATED)
