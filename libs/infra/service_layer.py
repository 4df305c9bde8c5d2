"""The plumbing every servicer repeats, once: who is acting (the merchant from the call's
context), when (the service's clock), in which transaction (one unit of work per call),
and whether this is a replay (the Idempotency-Key through ``uow.idempotent``); plus the
request helpers: the AIP-134 update mask, the merchant check, offset pagination and
presence-tracked fields.

A servicer method then reads::

    return await self._service.mutate("CreateProduct", request, res.Product,
        lambda uow, merchant_id, now: ...)
"""

from __future__ import annotations

import asyncio
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence, Sized
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from accrue.type.v1 import pagination_pb2
from google.protobuf.message import Message

from libs.core.clock import Clock
from libs.core.errors import DomainError, InvalidArgument, NotFound, http_status
from libs.core.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, page
from libs.infra.context import current_idempotency_key, current_merchant_id
from libs.infra.db import UnitOfWork
from libs.infra.declared import check_declared
from libs.infra.grpc_errors import cut_text
from libs.infra.logging import get_logger

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "FieldMask",
    "IdempotentUnitOfWork",
    "Page",
    "ServiceLayer",
    "camel",
    "check_merchant",
    "opt",
    "page",
    "page_of",
    "pagination",
    "reject",
]

log = get_logger(__name__)
M = TypeVar("M", bound=Message)


class IdempotentUnitOfWork(Protocol):
    """What ``mutate`` needs of a service's unit of work: the libs/infra/db.UnitOfWork it
    runs in, whose ``idempotent`` answers a replayed Idempotency-Key."""

    @property
    def transaction(self) -> UnitOfWork: ...


U = TypeVar("U", bound=IdempotentUnitOfWork)
R = TypeVar("R")
Q = TypeVar("Q", bound=Message)
T = TypeVar("T", bound=Message)


class ServiceLayer(Generic[U, R]):
    """Runs a servicer's calls: ``mutate`` in a unit of work (``U``), ``read`` in a
    read-only one (``R``). Both factories are async context managers."""

    def __init__(
        self, clock: Clock, unit_of_work: Callable[[], AbstractAsyncContextManager[U]], reader: Callable[[], AbstractAsyncContextManager[R]]
    ) -> None:
        self._clock = clock
        self._unit_of_work = unit_of_work
        self._reader = reader

    async def mutate(self, method: str, request: Message, response_type: type[M], work: Callable[[U, str, datetime], Awaitable[M]]) -> M:
        """One mutation: the merchant, the time, one transaction; with an Idempotency-Key,
        a replay answers the stored response and runs nothing."""
        merchant_id = current_merchant_id()
        now = self._clock.now()
        key = current_idempotency_key()
        async with self._unit_of_work() as uow:
            if not key:
                return await work(uow, merchant_id, now)
            result = await uow.transaction.idempotent(
                merchant_id=merchant_id,
                key=key,
                method=method,
                request=request,
                response_type=response_type,
                run=lambda: work(uow, merchant_id, now),
            )
            assert isinstance(result, response_type)
            return result

    async def read(self, work: Callable[[R, str], Awaitable[M]]) -> M:
        merchant_id = current_merchant_id()
        async with self._reader() as reader:
            return await work(reader, merchant_id)


def check_merchant(requested: str, merchant_id: str, *, field: str = "merchantId") -> None:
    """A key acts for one merchant; naming another one reads as "no such merchant"."""
    if requested and requested != merchant_id:
        raise NotFound("merchant", requested, field=field)


def check_batch_size(items: Sized, maximum: int, field: str) -> None:
    """A batch method's items: 1 to ``maximum`` of them, else BATCH_SIZE naming ``field``."""
    if not 1 <= len(items) <= maximum:
        raise InvalidArgument(field, f"a batch holds 1 to {maximum} {field}; got {len(items)}", reason="BATCH_SIZE")


def reject(receipt: Any, err: DomainError) -> None:
    """A batch receipt (accrue.api.v1.Coalesce) as the single call's error: status
    "rejected", its reason, message, HTTP status and field, and its details when the
    receipt has a ``details`` map. The gateway answers it as it answers that error."""
    receipt.status, receipt.code, receipt.message = "rejected", err.reason, cut_text(err.message)
    receipt.http_status = http_status(err.code, err.reason)
    if err.field:
        receipt.field = cut_text(err.field)
    if "details" in receipt.DESCRIPTOR.fields_by_name:  # bounded as a status carries them
        receipt.details.update({cut_text(k): cut_text(v) for k, v in err.metadata.items()})


async def answer_each(
    requests: Sequence[Q],
    handle: Callable[[Q], Awaitable[Message]],
    receipt_class: type[T],
    response_field: str,
    status: str,
    *,
    method: str,
) -> list[T]:
    """A batch method of single calls (accrue.api.v1.Coalesce): each request checked as
    the interceptor checks a single call (its declared rules) and handled on its own,
    concurrently; a receipt per request, in order, with its response or, rejected, the
    error the single call would have failed with. An unexpected failure is logged and
    answers that request alone as an internal error."""

    async def one(index: int, request: Q) -> T:
        receipt = receipt_class(index=index)
        try:
            check_declared(request)
            getattr(receipt, response_field).CopyFrom(await handle(request))
            receipt.status = status  # type: ignore[attr-defined]
        except DomainError as err:
            reject(receipt, err)
        except Exception as exc:
            log.error("unhandled_error", method=method, index=index, error=repr(exc), traceback=traceback.format_exc())
            reject(receipt, DomainError("INTERNAL", "internal error"))
        return receipt

    return list(await asyncio.gather(*(one(index, request) for index, request in enumerate(requests))))


def opt(message: Message, name: str) -> Any:
    """The value of a presence-tracked field, or None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def page_of(request: Message, *, default: int = DEFAULT_PAGE_SIZE) -> Page:
    """The page a List request asks for (its optional ``limit`` and ``offset``)."""
    return page(opt(request, "limit"), opt(request, "offset"), default=default)


def pagination(of: Page, total: int) -> pagination_pb2.OffsetPagination:
    return pagination_pb2.OffsetPagination(limit=of.limit, offset=of.offset, total=total)


_CAMEL = re.compile(r"_([a-z])")


def camel(path: str) -> str:
    """A proto field name in its REST (JSON) spelling."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), path)


class FieldMask:
    """AIP-134 update mask over a request: which fields to change, and to what."""

    def __init__(self, request: Message, allowed: Iterable[str]) -> None:
        self.request = request
        allowed_set = set(allowed)
        paths = list(request.update_mask.paths)  # type: ignore[attr-defined]
        if not paths:  # no mask: every field that is set
            paths = [f.name for f, _ in request.ListFields() if f.name in allowed_set]
        for path in paths:
            if path not in allowed_set:
                raise InvalidArgument(camel(path), f"{camel(path)} cannot be updated", reason="FIELD_NOT_UPDATABLE")
        self.paths = set(paths)

    def __contains__(self, path: str) -> bool:
        return path in self.paths

    def __bool__(self) -> bool:
        return bool(self.paths)

    def value(self, path: str, *, clearable: bool = False) -> Any:
        """The new value; None when cleared (only if the field may be cleared)."""
        descriptor = self.request.DESCRIPTOR.fields_by_name[path]
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            return dict(getattr(self.request, path))
        if descriptor.is_repeated:
            return list(getattr(self.request, path))
        if self.request.HasField(path):
            return getattr(self.request, path)
        if clearable:
            return None
        raise InvalidArgument(camel(path), f"{camel(path)} cannot be cleared", reason="FIELD_NOT_CLEARABLE")

    def changes(self, *, clearable: Iterable[str] = (), convert: dict[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
        """Every masked field and its new value (``convert`` maps a field's proto value to a
        plain one; a cleared value stays None)."""
        clearable_set, converters = set(clearable), convert or {}
        out: dict[str, Any] = {}
        for path in sorted(self.paths):
            value = self.value(path, clearable=path in clearable_set)
            if value is not None and path in converters:
                value = converters[path](value)
            out[path] = value
        return out
