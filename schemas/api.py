"""HTTP API bodies (``/v1``): what checkout, marketing and operators read.

These models are the contract published in ``schemas/openapi.json`` (written by
``python -m schemas.openapi``). The hot endpoints build their JSON directly for speed
(:mod:`service.api.bodies`); tests hold every body they build to these models, and schemathesis
holds the live API to the exported spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.changes import AxesOut, TreatmentOut
from schemas.events import ID_PATTERN, Id

MAX_BATCH_IDS: Final = 1_000
"""Most customer ids one ``POST /v1/segments:batch-get`` may ask for."""
MAX_PAGE: Final = 1_000
"""Largest ``limit`` of ``GET /v1/segments/{name}/customers``."""
DEFAULT_PAGE: Final = 100
SEGMENT_NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"
"""Segment names as the rules define them."""
MONEY_PATTERN: Final = r"^-?[0-9]+\.[0-9]{2}$"
CURSOR_PATTERN: Final = r"^(0[0-9]{3}|10[01][0-9]|102[0-3])(:[A-Za-z0-9._:@-]{1,128})?$"
"""``<shard>`` or ``<shard>:<last member>``: a shard 0000-1023 (SHARDS is fixed at install) and
the last member returned from it. Every string of this shape is a valid position, so a cursor
needs no other check."""

__all__ = ["ID_PATTERN", "Id"]

Money = Annotated[str, StringConstraints(pattern=MONEY_PATTERN)]
"""An amount of the base currency as a string with exactly two decimals (``"1234.50"``)."""
SegmentName = Annotated[str, StringConstraints(pattern=SEGMENT_NAME_PATTERN)]

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    use_attribute_docstrings=True,
    json_schema_serialization_defaults_required=True,
)


# --- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = _CONFIG

    field: str | None = None
    """Where the problem is, e.g. ``customer_ids[3]`` or ``limit``; null when not about a field."""
    message: str


class ErrorBody(BaseModel):
    model_config = _CONFIG

    code: str
    """Stable, machine-readable: ``unauthorized``, ``forbidden``, ``validation_failed``,
    ``customer_not_found``, ``segment_not_found``, ``batch_too_large``,
    ``body_too_large``, ``not_found``, ``method_not_allowed``, ``store_unavailable``,
    ``internal``."""
    message: str
    """For humans; may change between versions."""
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "customer_not_found",
                        "message": "no customer 'c-123'",
                        "details": [],
                    }
                }
            ]
        },
    )

    error: ErrorBody


# --- segment -----------------------------------------------------------------------------------

_SEGMENT_EXAMPLE: Final[dict[str, Any]] = {
    "customer_id": "c-42",
    "known": True,
    "segment": "loyal",
    "axes": {
        "lifecycle": "regular",
        "value_tier": "medium",
        "loyalty": "high",
        "needs": "function_seeking",
        "rfm": {"r": 5, "f": 4, "m": 3},
        "rfm_segment": "champions",
        "key_account": False,
        "frequency": "medium",
        "aov": "medium",
        "profit": "low",
    },
    "treatment": {
        "id": "loyalty_programme",
        "discount_pct": 5,
        "free_shipping": True,
        "support_queue": "standard",
        "campaign": "loyalty_programme",
        "channel": "email",
        "offer": "member_upsell",
    },
    "reasons": ["lifecycle regular: 4 orders in 90d >= 3", "segment loyal: first match"],
    "rules_version": "3f2a9c1b7d4e",
    "as_of": "2026-11-25T12:00:00Z",
    "next_review_at": "2026-12-09T00:00:00Z",
}


class SegmentResponse(BaseModel):
    """A customer's segmentation, classified at ``as_of`` (the moment of the request).

    ``known: false`` (an id nothing is known about): ``segment``, ``axes`` are null; with
    ``default=true`` ``treatment`` is the default treatment (that of the rules' catch-all
    segment, the last one), otherwise null.
    """

    model_config = ConfigDict(**_CONFIG, json_schema_extra={"examples": [_SEGMENT_EXAMPLE]})

    customer_id: str
    known: bool
    """False when no event of this customer was ever applied."""
    segment: str | None
    axes: AxesOut | None
    treatment: TreatmentOut | None
    """What checkout and marketing act on."""
    reasons: list[str]
    """Human-readable: which rule decided each axis and the segment, with the numbers."""
    rules_version: str
    as_of: AwareDatetime
    next_review_at: AwareDatetime | None
    """Earliest instant the answer may change with no new event; null if never."""


class BatchGetRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"customer_ids": ["c-42", "c-7", "c-42"]}]},
    )

    customer_ids: list[Id] = Field(min_length=1, max_length=MAX_BATCH_IDS)
    """1 to 1,000 ids (1-128 characters of ``A-Za-z0-9._:@-``); duplicates are allowed."""


class BatchGetResponse(BaseModel):
    model_config = _CONFIG

    results: list[SegmentResponse]
    """One per requested id, in request order (duplicates repeated); unknown ids have
    ``known: false``."""


# --- profile -----------------------------------------------------------------------------------


class Totals(BaseModel):
    """Aggregates over a period: lifetime or one window."""

    model_config = _CONFIG

    orders: int
    spend: Money
    """Sum of purchase amounts."""
    refunds: int
    refunded: Money
    """Sum of refund amounts."""
    net_spend: Money
    """spend - refunded."""
    margin: Money
    """Purchase margins minus refunded margins, where known."""
    aov: Money | None
    """spend / orders; null without orders."""


class ProfileResponse(BaseModel):
    """The aggregates behind the segment. ``windows`` are keyed ``"<N>d"`` for the windows of
    the active rules (N whole UTC days ending today)."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-42",
                    "as_of": "2026-11-25T12:00:00Z",
                    "first_purchase_at": "2025-03-02T10:15:00Z",
                    "last_purchase_at": "2026-11-20T18:03:11Z",
                    "last_engagement_at": None,
                    "recency_days": 5,
                    "tenure_days": 633,
                    "lifetime": {
                        "orders": 14,
                        "spend": "980.40",
                        "refunds": 1,
                        "refunded": "40.00",
                        "net_spend": "940.40",
                        "margin": "120.00",
                        "aov": "70.03",
                    },
                    "windows": {
                        "30d": {
                            "orders": 2,
                            "spend": "120.00",
                            "refunds": 0,
                            "refunded": "0.00",
                            "net_spend": "120.00",
                            "margin": "0.00",
                            "aov": "60.00",
                        },
                    },
                }
            ]
        },
    )

    customer_id: str
    as_of: AwareDatetime
    """The instant windows, recency and tenure are computed for."""
    first_purchase_at: AwareDatetime | None
    last_purchase_at: AwareDatetime | None
    last_engagement_at: AwareDatetime | None
    recency_days: int | None
    """Whole UTC days since the last purchase's day; null if never bought."""
    tenure_days: int | None
    """Whole UTC days since the first purchase's day; null if never bought."""
    lifetime: Totals
    windows: dict[str, Totals]


# --- segments ----------------------------------------------------------------------------------


class SegmentDefinition(BaseModel):
    model_config = _CONFIG

    name: str
    description: str
    treatment: TreatmentOut
    members: int
    """Customers whose stored segmentation is this segment (kept by the consumer and the
    sweeper; a single read classifies afresh and may already answer another segment)."""


class SegmentList(BaseModel):
    """The segments of the active rules, in rule order (first match wins)."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    "rules_version": "3f2a9c1b7d4e",
                    "segments": [
                        {
                            "name": "occasional",
                            "description": "Everyone else.",
                            "treatment": {
                                "id": "standard",
                                "discount_pct": 0,
                                "free_shipping": False,
                                "support_queue": "standard",
                                "campaign": None,
                                "channel": "email",
                                "offer": None,
                            },
                            "members": 1234,
                        }
                    ],
                    "other_members": 0,
                }
            ]
        },
    )

    rules_version: str
    segments: list[SegmentDefinition]
    other_members: int
    """Customers still indexed under a segment the active rules no longer define."""


class SegmentMembers(BaseModel):
    """One page of a segment's members. Pass ``next_cursor`` back as ``cursor`` for the next
    page; null means the listing is complete. Every customer that stays in the segment during
    the listing is returned exactly once."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [{"segment": "loyal", "customers": ["c-1", "c-9"], "next_cursor": None}]
        },
    )

    segment: str
    customers: list[str]
    next_cursor: str | None


class EraseResponse(BaseModel):
    """What ``DELETE /v1/customers/{id}`` did. Everything about the customer is gone (profile,
    segment, index and due entries); a tombstone stops a late or replayed event from
    re-creating it until ``tombstone_expires_at``."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "c-42",
                    "erased": True,
                    "erased_at": "2025-01-31T12:00:00Z",
                    "tombstone_expires_at": "2025-03-02T12:00:00Z",
                }
            ]
        },
    )

    customer_id: Id
    erased: bool
    """Whether there was a customer to erase (false: none stored; the tombstone is written
    anyway, so an event still in flight cannot create it)."""
    erased_at: AwareDatetime
    tombstone_expires_at: AwareDatetime


# --- rules and health --------------------------------------------------------------------------


class RulesResponse(BaseModel):
    model_config = _CONFIG

    version: str
    """First 12 hex digits of the SHA-256 of the canonical rules JSON."""
    rules: dict[str, Any]
    """The validated rules document (money as decimal strings); see ``default_rules.yaml``."""


class Health(BaseModel):
    model_config = _CONFIG

    status: Literal["ok", "ready"]
