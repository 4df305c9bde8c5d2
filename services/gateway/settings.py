"""Gateway settings (environment variables, prefix ACCRUE_)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator

from libs.infra.settings import ServiceSettings
from services.registry import SERVICES

_ADDR_SUFFIX = "_addr"


class GatewaySettings(ServiceSettings):
    # the gateway's own database: merchants and API keys
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/accrue_gateway"
    db_pool_size: int = 5
    # where each backend listens (host:port), for every gRPC service in services/registry.py:
    # ACCRUE_<NAME>_ADDR (or <name>_addr=... in code). Unset: 127.0.0.1:50051, 50052, ...
    # in the registry's order, the ports to give the services when starting them by hand.
    backend_addrs: dict[str, str] = Field(default_factory=dict)
    # per-call deadline to the services
    rpc_timeout_seconds: float = 30.0
    # a request still running after this long starts watching for its client to go away
    # (then it is cancelled, freeing its backend call); faster requests never pay for it
    disconnect_watch_after_seconds: float = 1.0
    # how long a resolved API key is trusted before it is looked up again. Revocations
    # reach every gateway at once (LISTEN/NOTIFY, services/gateway/auth.py); this is the
    # bound if a notification is lost, so it stays short. 0 looks every key up every time.
    api_key_cache_seconds: float = 1.0
    # coalesced batch calls in flight per merchant and method (services/gateway/coalescing.py):
    # fewer in flight makes bigger batches, so fewer calls for the same events
    coalesce_max_in_flight: int = 2

    @model_validator(mode="before")
    @classmethod
    def _collect_backend_addrs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        prefix = cls.model_config.get("env_prefix", "")
        found = {
            name[len(prefix) : -len(_ADDR_SUFFIX)].lower(): value
            for name, value in os.environ.items()
            if name.startswith(prefix) and name.lower().endswith(_ADDR_SUFFIX) and len(name) > len(prefix) + len(_ADDR_SUFFIX)
        }
        for key in [k for k in data if isinstance(k, str) and k.endswith(_ADDR_SUFFIX)]:
            found[key.removesuffix(_ADDR_SUFFIX)] = data.pop(key)
        return {**data, "backend_addrs": {**found, **data.get("backend_addrs", {})}}

    def backend_address(self, backend: str) -> str:
        if backend in self.backend_addrs:
            return self.backend_addrs[backend]
        names = [definition.name for definition in SERVICES]
        if backend not in names:
            raise KeyError(f"no backend {backend!r} in services/registry.py")
        return f"127.0.0.1:{50051 + names.index(backend)}"
