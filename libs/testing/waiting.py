"""Waiting for what happens asynchronously (an event stored, a projection caught up):
read again until the value is the expected one or the time is up, and return the last
value, so the caller's assert shows what was there instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05


def eventually(read: Callable[[], T], expected: T, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(POLL_SECONDS)


async def eventually_async(read: Callable[[], Awaitable[T]], expected: T, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(POLL_SECONDS)
