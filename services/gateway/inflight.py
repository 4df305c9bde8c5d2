"""Requests in flight: each ends by its deadline, and one whose client went away stops.

One sweeper task per gateway process looks at every request in flight a few times a
second, instead of a timer and a disconnect-watching task per request: on the hot path
(requests of 10-50 ms) a request costs a dictionary insert and delete. A request still
running after ``watch_after`` seconds, with its body read, gets a task that waits for
its client's disconnect (ASGI ``http.disconnect``) and cancels it; one past its deadline
is cancelled and answered 504. So an abandoned request frees what it holds within about
``watch_after`` plus one sweep, and none outlives its deadline by more than one sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Request:
    task: asyncio.Task[Any]
    receive: Receive
    deadline_at: float
    watch_at: float
    body_read: bool = False
    expired: bool = False
    client_gone: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (only called once the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class InFlight:
    def __init__(self, *, deadline: float, watch_after: float, sweep_every: float = 0.25) -> None:
        self.deadline = deadline
        self._watch_after = watch_after
        self._sweep_every = min(sweep_every, watch_after, deadline)
        self._requests: dict[asyncio.Task[Any], Request] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep_forever(), name="gateway-inflight-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def begin(self, receive: Receive) -> Request:
        task = asyncio.current_task()
        assert task is not None
        if self._sweeper is None or self._sweeper.get_loop() is not task.get_loop():
            self.start()  # (re)started on the loop that serves: a test may start on another
        now = time.monotonic()
        request = Request(task, receive, now + self.deadline, now + self._watch_after)
        self._requests[task] = request
        return request

    def end(self, request: Request) -> None:
        self._requests.pop(request.task, None)
        if request.watcher is not None:
            request.watcher.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        for request in list(self._requests.values()):
            if request.task.done():
                continue
            if now >= request.deadline_at and not request.expired:
                request.expired = True
                request.task.cancel()
            elif request.body_read and request.watcher is None and now >= request.watch_at:
                request.watcher = asyncio.get_running_loop().create_task(_client_gone(request.receive))
                request.watcher.add_done_callback(functools.partial(self._on_client_gone, request))

    @staticmethod
    def _on_client_gone(request: Request, watcher: asyncio.Task[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None or request.task.done():
            return
        request.client_gone = True
        request.task.cancel()
