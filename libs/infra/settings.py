"""Process settings: environment variables only (prefix ACCRUE_), laptop-friendly defaults."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every process reads from its environment; a definition's own settings class
    (ServiceDefinition.settings) subclasses this one."""

    model_config = SettingsConfigDict(env_prefix="ACCRUE_", extra="ignore")

    # postgresql+psycopg://user@host:port/db; each service has its own database.
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/accrue"
    nats_url: str = "nats://127.0.0.1:4222"
    grpc_host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the bound port is logged and written to port_file.
    grpc_port: int = 50051
    # a process with an HTTP part (the gateway) listens here instead; 0: any free port
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # SO_REUSEPORT on the HTTP socket: several processes of one kind (the gateway) share
    # the port and the kernel spreads connections over them; off by default, so that a
    # second copy started by mistake fails to bind instead of silently sharing
    http_reuse_port: bool = False
    # When set, the bound port (HTTP's for an HTTP process) is written here once serving
    # (used by the local runner).
    port_file: str | None = None
    log_level: str = "INFO"
    migrate_on_start: bool = True
    # The relay publishes committed outbox rows; off only in fault-injection tests.
    outbox_relay_enabled: bool = True
    # connections a service keeps open (libs/infra/db.create_engine; up to half as many
    # again in a burst): a service at a few dozen concurrent requests keeps its own
    db_pool_size: int = 24
    # OTLP/HTTP traces endpoint; traces are only exported when set.
    otel_exporter_otlp_endpoint: str | None = None
    shutdown_grace_seconds: float = 5.0
    # Merchant tokens (libs/infra/tokens.py): a service verifies the token every call
    # carries with these Ed25519 public keys (raw base64 or PEM, comma separated: more than
    # one while rotating) and refuses to start without one; the gateway signs with its
    # private key (raw base64 or PEM), tokens living token_ttl_seconds.
    token_verify_keys: str | None = None
    token_signing_key: str | None = None
    token_ttl_seconds: float = 300.0
    # Optional mutual TLS (libs/infra/tls.py): PEM files of this process's certificate and
    # key, and of the CA whose certificates it trusts (and requires of its clients).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
