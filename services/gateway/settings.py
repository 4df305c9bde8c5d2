"""Gateway settings (environment variables, prefix ACCRUE_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCRUE_", extra="ignore")

    http_host: str = "127.0.0.1"
    # 0 asks the OS for a free port (written to port_file once listening)
    http_port: int = 8000
    port_file: str | None = None
    # the gateway's own database: merchants and API keys
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/accrue_gateway"
    migrate_on_start: bool = True
    catalog_addr: str = "127.0.0.1:50051"
    subscription_addr: str = "127.0.0.1:50052"
    metering_addr: str = "127.0.0.1:50053"
    invoicing_addr: str = "127.0.0.1:50054"
    payment_addr: str = "127.0.0.1:50055"
    entitlement_addr: str = "127.0.0.1:50056"
    # per-call deadline to the services
    rpc_timeout_seconds: float = 30.0
    # a request still running after this long starts watching for its client to go away
    # (then it is cancelled, freeing its backend call); faster requests never pay for it
    disconnect_watch_after_seconds: float = 1.0
    # how long a resolved API key is trusted before it is looked up again. Revocations
    # reach every gateway at once (LISTEN/NOTIFY, services/gateway/auth.py); this is the
    # bound if a notification is lost, so it stays short. 0 looks every key up every time.
    api_key_cache_seconds: float = 1.0
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None

    def backend_address(self, backend: str) -> str:
        address: str = getattr(self, f"{backend}_addr")
        return address
