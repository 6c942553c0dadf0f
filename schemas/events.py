"""Incoming events (topic ``customer.events``): the wire contract, version 1.

One JSON object per Kafka record, keyed by ``customer_id``, discriminated on ``type``.
These models hold the rules that need no configuration and cost little per event: field
names and types, id alphabet, finite and non-negative money, timestamps with an offset. The
exact decimal places of money and every bound that depends on settings (largest amount,
clock skew, item count, accepted currencies) are checked in one place,
:class:`consumers.codec.EventCodec`, which also turns every failure into a dead-letter reason.

Money fields accept a JSON string (``"59.90"``, exact, recommended) or a JSON number. Numbers
are read as IEEE doubles by the JSON parser, which is exact for every amount with at most 15
significant digits (all amounts within the default bounds).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)

ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]{1,128}$"
"""Ids are 1-128 characters of a safe alphabet: no braces (Redis hash tags), no ``*``,
spaces, slashes or control characters."""

MONEY_DECIMAL_PLACES: Final = 4
"""Money fields carry at most this many decimal places (``MONEY_SCALE`` is 10**4)."""

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""A short free-text label (channel, region, category): printable, 1-64 characters."""
Sku = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
"""ISO 4217 style code; the codec accepts only the base currency and configured rates."""

_NUMBER_NOTE: Final = (
    "At most 4 decimal places. A JSON number is read as a double: exact up to 15 significant"
    " digits; the string form is always exact."
)
_UNSIGNED_STRING: Final = r"^(0|[1-9][0-9]*)(\.[0-9]{1,4})?$"
_SIGNED_STRING: Final = r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?$"
_POSITIVE_STRING: Final = r"^(?!0+(\.0+)?$)(0|[1-9][0-9]*)(\.[0-9]{1,4})?$"

# Only the cheap checks run inside pydantic (type, finite, sign). Its ``decimal_places`` check
# costs ~1 us per field and normalises in a 28-digit context (so "1E-999999999" passes); the
# codec checks the places exactly while converting to money units, where it matters.
Money = Annotated[
    Decimal,
    Field(ge=0, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": _NUMBER_NOTE},
                {"type": "string", "pattern": _UNSIGNED_STRING},
            ],
        }
    ),
]
"""A non-negative amount in the event's currency."""
PositiveMoney = Annotated[
    Decimal,
    Field(gt=0, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "description": _NUMBER_NOTE},
                {"type": "string", "pattern": _POSITIVE_STRING},
            ],
        }
    ),
]
SignedMoney = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "description": _NUMBER_NOTE},
                {"type": "string", "pattern": _SIGNED_STRING},
            ],
        }
    ),
]

Tier = Literal["budget", "standard", "premium"]
EngagementAction = Literal[
    "viewed",
    "added_to_cart",
    "wishlisted",
    "signed_up",
    "email_opened",
    "email_clicked",
    "support_contact",
]

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    strict=True,
    use_attribute_docstrings=True,
)


class _EventBase(BaseModel):
    model_config = _CONFIG

    schema_version: Literal[1]
    """Version of this contract; only 1 exists."""
    event_id: Id
    """Unique per event; producers reuse it on retries so duplicates can be dropped."""
    customer_id: Id
    """Also the Kafka record key."""
    occurred_at: AwareDatetime
    """RFC 3339 timestamp with an offset (``Z`` or ``+01:00``); naive times are refused."""


class LineItem(BaseModel):
    """One line of a purchase."""

    model_config = _CONFIG

    sku: Sku
    category: Label
    quantity: Annotated[int, Field(ge=1, le=10_000)]
    unit_price: Money
    """Price of one unit, in the purchase's currency."""
    tier: Tier = "standard"


class PurchaseEvent(_EventBase):
    """A completed order."""

    type: Literal["purchase"]
    order_id: Id
    amount: Money
    """Order total, in ``currency``."""
    currency: CurrencyCode | None = None
    """Currency of every money field; the base currency when absent."""
    margin: SignedMoney | None = None
    """Profit on the order (negative for a loss leader); unknown when absent."""
    discount: Money = Decimal(0)
    """Discount granted on the order; the order counts as discounted when > 0."""
    channel: Label | None = None
    region: Label | None = None
    items: tuple[LineItem, ...] = ()


class RefundEvent(_EventBase):
    """Money returned on an earlier order."""

    type: Literal["refund"]
    order_id: Id
    amount: PositiveMoney
    """Refunded amount, in ``currency``."""
    currency: CurrencyCode | None = None
    margin: Money | None = None
    """Margin given back with the refund (subtracted from the customer's margin)."""


class EngagementEvent(_EventBase):
    """A non-purchase interaction; lets a never-buying customer be a prospect."""

    type: Literal["engagement"]
    action: EngagementAction
    region: Label | None = None


Event = Annotated[PurchaseEvent | RefundEvent | EngagementEvent, Field(discriminator="type")]
"""Any incoming event, told apart by ``type``."""

EVENT_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(Event)
"""Validates raw JSON bytes straight into an :data:`Event` (``EVENT_ADAPTER.validate_json``)."""
