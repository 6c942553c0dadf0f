"""All configuration, from ``SEGMENTS_*`` environment variables or ``.env``.

Built once by :func:`get_settings` at a process edge and passed in; nothing reads the
environment anywhere else. Nested groups use ``__`` in variable names, e.g.
``SEGMENTS_VALIDATION__MAX_AMOUNT``.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ValidationSettings(BaseModel):
    """Bounds every incoming event must respect (else it is dead-lettered)."""

    max_record_bytes: int = Field(default=65_536, ge=256)
    """Records larger than this are dead-lettered unparsed."""
    max_amount: Decimal = Field(default=Decimal("1000000"), gt=0)
    """Largest single purchase/refund amount accepted, base currency."""
    max_future_skew_s: int = Field(default=300, ge=0)
    """How far ``occurred_at`` may lie ahead of the consumer's clock, seconds."""
    max_items: int = Field(default=500, ge=1)
    base_currency: str = "EUR"
    currency_rates: dict[str, Decimal] = Field(default_factory=dict)
    """Rates to the base currency, e.g. ``{"USD": "0.92"}``; other currencies are refused."""


class KafkaSettings(BaseModel):
    bootstrap: str = "localhost:9092"
    events_topic: str = "customer.events"
    changes_topic: str = "customer.segment-changes"
    dlq_topic: str = "customer.events.dlq"
    group_id: str = "segments-consumer"
    client_id: str = "segments"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    idempotent_producer: bool = False
    """Kafka producer idempotence. Not needed for correctness (change events carry a
    deterministic ``change_id``; state is applied exactly once regardless); off by default
    because some Kafka-compatible brokers (Tansu 0.6) refuse InitProducerId."""
    max_batch: int = Field(default=10_000, ge=1)
    """Records per ``getmany`` batch (per lane)."""
    lanes: int = Field(default=2, ge=1, le=64)
    """Concurrent batch loops in one consumer, each over partitions ``p % lanes``; one lane
    computes while another waits on Redis or Kafka."""
    poll_timeout_ms: int = Field(default=200, ge=1)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)


class RedisSettings(BaseModel):
    url: str = "redis://localhost:6379/0"
    cluster: bool = False
    """Use the cluster-aware client (Redis Cluster)."""
    key_prefix: str = ""
    """Prefix of every key; lets a replay build state beside the live one."""
    retry_initial_s: float = Field(default=0.1, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    socket_timeout_s: float = Field(default=5.0, gt=0)


class StateSettings(BaseModel):
    event_id_ring: int = Field(default=8, ge=1, le=64)
    """Recent event ids remembered per customer to drop producer duplicates."""


ApiScope = Literal["segments:read", "admin"]


class ApiKey(BaseModel):
    """One API key, stored as the SHA-256 of the key (the key itself is never configured)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")
    """Who holds the key (logged and shown in metrics; the key never is)."""
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    """Hex SHA-256 of the key, e.g. ``printf %s "$KEY" | sha256sum``."""
    scopes: tuple[ApiScope, ...] = Field(min_length=1)
    """``segments:read`` for reads; ``admin`` implies every scope."""

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class ApiSettings(BaseModel):
    """The HTTP API (``segments api``). Keys as JSON, e.g.
    ``SEGMENTS_API__KEYS='[{"name":"checkout","sha256":"<hex>","scopes":["segments:read"]}]'``."""

    keys: tuple[ApiKey, ...] = ()
    """Accepted API keys. With none configured every protected call is refused (401) unless
    ``auth_disabled`` is set."""
    auth_disabled: bool = False
    """Serve protected endpoints without a key (local development only)."""
    docs: bool = True
    """Serve ``/docs`` and ``/openapi.json``."""
    metrics: bool = True
    """Serve Prometheus ``/metrics`` (open, like the health checks)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; none (the default) adds no CORS headers at all."""
    max_body_bytes: int = Field(default=262_144, ge=1_024)
    """Request bodies larger than this are refused (413); 256 KiB by default."""
    retry_after_s: int = Field(default=1, ge=1)
    """``Retry-After`` sent with 503 when Redis is unavailable, seconds."""

    @field_validator("keys")
    @classmethod
    def _distinct_names(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("key names must be distinct")
        return keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEGMENTS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    rules_file: Path | None = None
    """Rules YAML to use; the packaged default when unset."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Flat aliases for the two settings everyone sets.
    kafka_bootstrap: str | None = None
    """Shorthand for ``SEGMENTS_KAFKA__BOOTSTRAP``."""
    redis_url: str | None = None
    """Shorthand for ``SEGMENTS_REDIS__URL``."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def model_post_init(self, _context: object) -> None:
        if self.kafka_bootstrap:
            self.kafka.bootstrap = self.kafka_bootstrap
        if self.redis_url:
            self.redis.url = self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
