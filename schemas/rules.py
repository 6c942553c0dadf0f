"""HTTP API bodies of the rules administration (``/v1/rules``): change, history, rollback,
re-classification progress. Published in ``schemas/openapi.json`` with the other bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VERSION_PATTERN = r"^[0-9a-f]{12}$"
"""A rules version: the first 12 hex digits of the SHA-256 of the canonical rules JSON."""

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    use_attribute_docstrings=True,
    json_schema_serialization_defaults_required=True,
)


class RuleChangeOut(BaseModel):
    """One difference between the active rules and the proposed ones."""

    model_config = _CONFIG

    path: str
    """The rule, e.g. ``lifecycle.at_risk_days`` or ``segments.loyal.when.lifecycle`` (tables
    are addressed by entry name, treatments by id)."""
    kind: Literal["added", "removed", "changed", "moved"]
    before: Any
    """Old value; the old position for ``moved``; null for ``added``."""
    after: Any
    """New value; the new position for ``moved``; null for ``removed``."""
    description: str
    """The change in words, e.g. ``changed lifecycle.at_risk_days: 60 -> 45``."""


class SegmentMove(BaseModel):
    model_config = _CONFIG

    from_segment: str | None
    """Segment under the active rules (null: not classified yet)."""
    to_segment: str
    """Segment under the proposed rules."""
    customers: int


class DryRunSample(BaseModel):
    """The proposed rules tried on a sample of customers, classified now with both rule sets."""

    model_config = _CONFIG

    customers: int
    """Customers in the sample (``rules.dry_run_sample`` at most)."""
    moved: int
    """Of them, customers whose segment would change."""
    moves: list[SegmentMove]
    """How many would move from which segment to which, largest first (staying ones left out)."""


class ActivationOut(BaseModel):
    """One activation of a rules version."""

    model_config = _CONFIG

    version: str
    by: str
    """Who: the API key's name (or ``cli:<user>``)."""
    at: str
    """When, RFC 3339 UTC."""
    action: Literal["activate", "rollback"]
    previous_version: str | None
    """The version active before (the rules file's when nothing was activated before)."""


class RulesChangeResponse(BaseModel):
    """Answer of ``PUT /v1/rules`` (and of a rollback)."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    "dry_run": True,
                    "version": "3f2a9c1b7d4e",
                    "active_version": "a41c09e2b7f0",
                    "changed": False,
                    "changes": [
                        {
                            "path": "lifecycle.at_risk_days",
                            "kind": "changed",
                            "before": 60,
                            "after": 45,
                            "description": "changed lifecycle.at_risk_days: 60 -> 45",
                        }
                    ],
                    "sample": {
                        "customers": 2000,
                        "moved": 41,
                        "moves": [
                            {"from_segment": "regular", "to_segment": "at_risk", "customers": 41}
                        ],
                    },
                    "activation": None,
                }
            ]
        },
    )

    dry_run: bool
    version: str
    """Version of the rules in the request (content hash)."""
    active_version: str
    """The active version after this request."""
    changed: bool
    """True when this request activated ``version`` (false on a dry run, or when it was
    active already)."""
    changes: list[RuleChangeOut]
    """Rule-level differences from the previously active rules."""
    sample: DryRunSample | None
    """Dry run only: who would move."""
    activation: ActivationOut | None
    """The history entry written (null on a dry run or when nothing changed)."""


class RollbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"version": "a41c09e2b7f0"}]}
    )

    version: str = Field(pattern=VERSION_PATTERN)
    """A version from ``GET /v1/rules/history`` (or any version ever activated)."""


class RulesHistory(BaseModel):
    model_config = _CONFIG

    active_version: str
    """The version in effect (the rules file's when nothing was ever activated)."""
    entries: list[ActivationOut]
    """Activations, newest first."""


class ReclassificationProgress(BaseModel):
    """Background re-classification after the latest activation."""

    model_config = _CONFIG

    version: str | None
    """The version customers are being moved to (null: nothing was ever activated)."""
    state: Literal["none", "pending", "running", "done"]
    """``pending`` until every instance uses the version (``rules.reclassify_grace_s``) and a
    worker (``segments sweep`` or ``segments rules reclassify``) starts."""
    shards_total: int
    shards_done: int
    customers: int
    """Customers re-classified in the shards done."""
    changes: int
    """Change events (``cause: rules``) produced so far."""
    activated_at: str | None
    started_at: str | None
    finished_at: str | None
