"""The gateway's readiness: every backend answers grpc.health.v1 Check with SERVING.

`/healthz` is liveness (the process answers); `/readyz` is readiness: 503 while any backend
is down, so a load balancer or the kubelet stops sending REST calls that could only fail.
Checks go over the gateway's own channels (same address, same credentials), each bounded
by a short timeout, all at once; one result is shared for `ttl` seconds so a burst of
probes costs one round of checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

CHECK_PATH = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class Verdict:
    ready: bool
    backends: dict[str, str]  # backend -> SERVING | NOT_SERVING | UNAVAILABLE | ...

    def body(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "unavailable", "backends": self.backends}


class Readiness:
    def __init__(
        self,
        channels: Callable[[], Mapping[str, grpc.aio.Channel]],
        *,
        timeout: float = 0.5,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channels = channels
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._cached: tuple[float, Verdict] | None = None
        self._lock = asyncio.Lock()

    async def verdict(self) -> Verdict:
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self._ttl:
            return cached[1]
        async with self._lock:  # one round of checks for every request waiting on it
            cached = self._cached
            if cached is not None and self._clock() - cached[0] < self._ttl:
                return cached[1]
            verdict = await self._check_all()
            self._cached = (self._clock(), verdict)
            return verdict

    async def _check_all(self) -> Verdict:
        channels = dict(self._channels())
        states = await asyncio.gather(*(self._check(channel) for channel in channels.values()))
        backends = dict(zip(channels, states, strict=True))
        return Verdict(ready=bool(backends) and all(state == "SERVING" for state in backends.values()), backends=backends)

    async def _check(self, channel: grpc.aio.Channel) -> str:
        call = channel.unary_unary(
            CHECK_PATH,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await call(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        except Exception as exc:  # a decoded error from an interceptor, a closed channel ...
            return type(exc).__name__.upper()
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
