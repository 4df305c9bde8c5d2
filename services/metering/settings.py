"""Metering's own settings (prefix ACCRUE_)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCRUE_", extra="ignore")

    # subject partitions of the meter stream (accrue.meter.v1.events.<n>)
    meter_partitions: int = 8
    # run the aggregator inside this process (off when aggregators run as their own processes)
    aggregator_enabled: bool = True
    # stream messages per fetch (each packs up to 1,000 events)
    aggregator_batch_size: int = 16
