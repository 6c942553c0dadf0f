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

    model_config = ConfigDict(use_attribute_docstrings=True)

    max_record_bytes: int = Field(default=65_536, ge=256)
    """Records larger than this are dead-lettered unparsed."""
    max_amount: Decimal = Field(default=Decimal("1000000"), gt=0)
    """Largest single purchase/refund amount accepted, base currency."""
    max_future_skew_s: int = Field(default=300, ge=0)
    """How far ``occurred_at`` may lie ahead of the consumer's clock, seconds."""
    max_items: int = Field(default=500, ge=1)
    """Most line items one purchase may carry."""
    base_currency: str = "EUR"
    """Currency every amount is kept in."""
    currency_rates: dict[str, Decimal] = Field(default_factory=dict)
    """Rates to the base currency, e.g. ``{"USD": "0.92"}``; other currencies are refused."""


class KafkaSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    bootstrap: str = "localhost:9092"
    """Kafka bootstrap servers, comma-separated ``host:port``."""
    events_topic: str = "customer.events"
    """Incoming purchase/refund/engagement events, keyed by customer_id."""
    changes_topic: str = "customer.segment-changes"
    """Outgoing segment-change events, keyed by customer_id."""
    dlq_topic: str = "customer.events.dlq"
    """Dead letters: invalid records with their original bytes and the reason in headers."""
    group_id: str = "segments-consumer"
    """Consumer group of ``segments consume``; instances share the partitions."""
    client_id: str = "segments"
    """Client id reported to the brokers."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism with ``SASL_PLAINTEXT``/``SASL_SSL`` (user name and password below)."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (never logged)."""
    ssl_cafile: Path | None = None
    """CA bundle (PEM) that signed the brokers' certificates, with ``SSL``/``SASL_SSL``; the
    system trust store when unset."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM) for brokers that authenticate clients by TLS (mTLS)."""
    ssl_keyfile: Path | None = None
    """Private key (PEM) of ``ssl_certfile``."""
    ssl_key_password: SecretStr | None = None
    """Password of ``ssl_keyfile`` if it is encrypted (never logged)."""
    ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""
    idempotent_producer: bool = False
    """Kafka producer idempotence. Not needed for correctness (change events carry a
    deterministic ``change_id``; state is applied exactly once regardless); off by default
    because some Kafka-compatible brokers (Tansu 0.6) refuse InitProducerId."""
    max_batch: int = Field(default=40_000, ge=1)
    """Records per ``getmany`` batch (per lane). Large batches let a customer's several events
    share one classification and one segment write; under a light load batches are small
    anyway, so latency does not suffer."""
    max_partition_fetch_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Most bytes one fetch brings of one partition, which the consumer keeps buffered until
    polled. Larger than a lane's share of a batch, so a batch comes from buffered records and
    holds more of each partition's events (customers are partition-bound: fewer
    classifications per event). On the 1M benchmark: 4 MiB ~300,000 customer-batches, 16 MiB
    ~267,000, ~8-10% less consumer CPU (docs/PERFORMANCE.md)."""
    fetch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Most bytes of one fetch response over all its partitions (a broker caps it at its own
    ``fetch.max.bytes``, 55 MiB by default in Apache Kafka)."""
    lanes: int = Field(default=4, ge=1, le=64)
    """Concurrent batch loops in one consumer, each over partitions ``p % lanes``; one lane
    computes while another waits on Redis or Kafka."""
    poll_timeout_ms: int = Field(default=200, ge=1)
    """How long one poll waits for records when none are buffered, milliseconds."""
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    """A consumer slower than this between polls is taken out of the group."""
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    """A consumer silent for this long is declared dead and its partitions move."""


class RedisSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    url: str = "redis://localhost:6379/0"
    """``redis://[user:password@]host:port/db``; ``rediss://`` for TLS."""
    cluster: bool = False
    """Use the cluster-aware client (Redis Cluster)."""
    key_prefix: str = ""
    """Prefix of every key; lets a replay build state beside the live one."""
    retry_initial_s: float = Field(default=0.1, gt=0)
    """First back-off when Redis fails; doubles per attempt (with jitter)."""
    retry_max_s: float = Field(default=5.0, gt=0)
    """Longest back-off between attempts; the consumer retries forever and never commits past
    an unapplied event."""
    socket_timeout_s: float = Field(default=5.0, gt=0)
    """Connect and reply timeout of every Redis call, seconds."""


class StateSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    event_id_ring: int = Field(default=8, ge=1, le=64)
    """Recent event ids remembered per customer to drop producer duplicates."""
    customer_cache: int = Field(default=5_000, ge=0, le=10_000_000)
    """Decoded customers a consumer process keeps in memory (least recently used out, shared
    out among its lanes), so a customer it applied to before is not read back from Redis and
    decoded again; 0 turns it off. Only customers with at least
    `state.customer_cache_min_buckets` daily buckets are taken in (docs/ARCHITECTURE.md).
    Memory: ~7 KB a customer with 32 buckets, ~67 KB with a year of them (5,000: at most
    ~335 MB)."""
    customer_cache_min_buckets: int = Field(default=32, ge=0, le=100_000)
    """Daily buckets a customer needs to be taken into the customer cache: the ones costly to
    read back, which are also the ones with the most events. 0 takes every customer (10-20%
    more consumer CPU on the 1M benchmark, docs/PERFORMANCE.md)."""
    erase_tombstone_days: float = Field(default=30.0, gt=0, le=36_500)
    """An erased customer (``DELETE /v1/customers/{id}``) leaves a tombstone this long, days:
    while it lives, a late or replayed event of the customer is skipped instead of re-creating
    it. Keep it longer than the events topic's retention (a replay reads back that far)."""
    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    """Customers without any activity (purchase, refund, engagement) for this many days are
    deleted with their index entries by the sweepers (no tombstone: a new event starts a new
    profile). Unset: kept forever."""
    retention_batch: int = Field(default=500, ge=1, le=10_000)
    """Customers read and judged per round trip by the retention job."""
    retention_interval_s: float = Field(default=3_600.0, gt=0, le=86_400)
    """Pause between two retention passes over a sweeper's shards, seconds."""


class SweepSettings(BaseModel):
    """The time-driven sweeper (``segments sweep``, or inside the consumer): re-classifies the
    customers whose ``next_review_at`` has passed; sweepers share the shards through leases."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    interval_s: float = Field(default=1.0, gt=0, le=60)
    """Pause between two passes over the held shards, seconds; bounds the lag from
    ``next_review_at`` to the change event (about one interval plus one batch)."""
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Due customers re-classified per batch (one read, one produce, one write round trip);
    a backlog drains batch by batch, shared fairly between the held shards."""
    lease_ttl_s: float = Field(default=10.0, ge=0.5, le=600)
    """Lease time of a shard: a dead sweeper's shards are taken over within this (plus one
    renewal), and a sweeper that cannot renew stops acting on them before it runs out."""
    renew_every_s: float | None = Field(default=None, gt=0)
    """How often leases are renewed and shards rebalanced; a third of the lease time when
    unset."""
    in_consumer: bool = False
    """Also sweep inside every ``segments consume`` process (then no separate
    ``segments sweep`` is needed; the consumers share the shards through the same leases)."""


class StreamSettings(BaseModel):
    """The live change stream (``/v1/segment-changes/stream``) and the dashboard's figures."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    heartbeat_s: float = Field(default=15.0, gt=0)
    """A comment line is sent to every viewer this often, seconds, so proxies keep the
    connection open and a dead viewer is noticed."""
    ring_size: int = Field(default=10_000, ge=1)
    """Recent changes kept in memory per API worker; a viewer resuming (``Last-Event-ID``)
    within them is served from memory, an older one re-reads Kafka."""
    viewer_queue: int = Field(default=5_000, ge=1)
    """Changes waiting to be sent to one viewer; a viewer that falls further behind is told
    (``event: overflow``) and disconnected, and resumes by ``Last-Event-ID``."""
    start_timeout_s: float = Field(default=10.0, gt=0)
    """How long a viewer waits for the worker's change reader to join the topic before 503."""
    kpi_sample: int = Field(default=20_000, ge=100)
    """Customers read to compute the per-segment KPIs (net spend 30 days); beyond it the
    figures are extrapolated from whole shards (customers are spread evenly over shards)."""


class RulesSettings(BaseModel):
    """Rules changed at run time: the registry in Redis, its watchers, re-classification."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    """Every instance re-reads the active rules version this often, in case a change
    notification (Redis pub/sub) was missed; a change is normally seen at once."""
    dry_run_sample: int = Field(default=2_000, ge=0, le=100_000)
    """Customers a ``PUT /v1/rules?dry_run=true`` classifies with both rule sets to count
    who would move from which segment to which."""
    history_limit: int = Field(default=100, ge=1, le=10_000)
    """Activations kept in the rules history (stored rule versions are kept regardless)."""
    reclassify_grace_s: float = Field(default=5.0, ge=0, le=300)
    """Re-classification after an activation waits this long, so every instance (consumers,
    sweepers) already classifies with the new version when it starts."""
    reclassify_batch: int = Field(default=500, ge=1, le=10_000)
    """Customers read, classified and written per round trip during re-classification."""
    reclassify_lease_s: float = Field(default=30.0, ge=1, le=600)
    """Lease on one shard's re-classification; a dead worker's shard is taken over after it."""


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

    model_config = ConfigDict(use_attribute_docstrings=True)

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


class ProbesSettings(BaseModel):
    """Health and metrics port of the roles without an API (``segments consume``, the
    sweeper): ``/healthz``, ``/readyz``, ``/metrics``."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    port: int = Field(default=9400, ge=0, le=65_535)
    """Port of the probes server; 0 turns it off."""
    host: str = "0.0.0.0"  # noqa: S104 - the kubelet and Prometheus reach the pod's address
    """Interface the probes server listens on (all by default)."""
    check_timeout_s: float = Field(default=2.0, gt=0, le=30)
    """Each readiness check (Redis PING, Kafka metadata) must answer within this, seconds."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        use_attribute_docstrings=True,
        env_prefix="SEGMENTS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    probes: ProbesSettings = Field(default_factory=ProbesSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    rules_file: Path | None = None
    """Rules YAML to use; the packaged default when unset."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """JSON logs on stderr at this level."""
    gc_interval_s: float = Field(default=60.0, ge=0, le=3_600)
    """The consumer runs Python's cyclic garbage collector every this many seconds instead of
    on allocation counts, which cost ~11% of its CPU walking the batches in flight (reference
    counting frees everything else at once). 0: Python's automatic collection."""

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
