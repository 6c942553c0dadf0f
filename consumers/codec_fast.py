"""The codec's fast path: the common spelling of a valid event, decoded without pydantic.

Most records are valid and spelled the way producers write them. For those, steps 2-4 of
:mod:`consumers.codec` (pydantic models, ``Decimal`` money, then the settings checks) cost
~10 us a record; here they cost a few:

- msgspec decodes and type-checks the JSON in C into plain structs; money, ids and the
  timestamp stay text;
- compiled checks accept only the canonical forms: ids of the safe alphabet, printable labels,
  money as plain digits with at most 4 places and no leading zero (the text ``str(Decimal(x))``
  gives back), an RFC 3339 timestamp with at most 6 fractional digits;
- the settings checks of step 4 (clock skew, item count, currency, largest amount) and the
  conversion to money units, on integers. Money texts and labels repeat across events (prices,
  categories, channels), so the parsed or checked ones are remembered.

:meth:`FastDecoder.decode` returns ``None`` for anything it does not accept, valid or not, and
the codec then takes its pydantic path, which decides every dead letter and its reason. The
fast path accepts a subset of what the pydantic path accepts, with the same result: the codec's
differential tests (fuzzed records, edge spellings) hold the two together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import ClassVar, Final, Literal

import msgspec

from schemas.events import MONEY_DECIMAL_PLACES, EngagementAction, Tier
from service.segmentation.profile import MS_PER_DAY, EventDelta, Totals


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    category: str
    quantity: int
    unit_price: str
    tier: Tier = "standard"


class _Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    """The fields every event has (:class:`schemas.events._EventBase`)."""

    schema_version: Literal[1]
    event_id: str
    customer_id: str
    occurred_at: str


class _Order(_Event):
    """The fields of purchases and refunds (no tag: not an event of its own)."""

    order_id: str
    amount: str
    currency: str | None = None
    margin: str | None = None


class _Purchase(_Order, tag="purchase"):
    type: ClassVar[Literal["purchase"]] = "purchase"
    discount: str = "0"
    channel: str | None = None
    region: str | None = None
    items: tuple[_Item, ...] = ()


class _Refund(_Order, tag="refund"):
    type: ClassVar[Literal["refund"]] = "refund"


class _Engagement(_Event, tag="engagement"):
    type: ClassVar[Literal["engagement"]] = "engagement"
    action: EngagementAction
    region: str | None = None


_decode_json: Final[Callable[[bytes], _Purchase | _Refund | _Engagement]] = msgspec.json.Decoder(
    _Purchase | _Refund | _Engagement
).decode

_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
""":data:`schemas.events.ID_PATTERN`, used with ``fullmatch`` (a ``$`` also matches before a
final newline)."""
_MONEY: Final = re.compile(r"(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,4})?")
"""A non-negative amount as ``str(Decimal(text))`` spells it back."""
_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
"""RFC 3339 as producers write it; ``datetime.fromisoformat`` then checks the ranges."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
UNITS_PER_PLACES: Final[tuple[int, ...]] = tuple(
    10 ** (MONEY_DECIMAL_PLACES - places) for places in range(MONEY_DECIMAL_PLACES + 1)
)
"""``UNITS_PER_PLACES[n]``: money units in one step of the n-th decimal place (both paths)."""
_MAX_LABEL: Final = 64
_MAX_SKU: Final = 128
_MAX_QUANTITY: Final = 10_000
_MEMO_SIZE: Final = 50_000
"""Money texts and labels remembered (each set is cleared when full)."""
_ENGAGED: Final = Totals(engagements=1)
_SUPPORT_CONTACT: Final = Totals(engagements=1, support_contacts=1)


def engagement_totals(action: str) -> Totals:
    """What an engagement event adds (both paths)."""
    return _SUPPORT_CONTACT if action == "support_contact" else _ENGAGED


class FastDecoder:
    """Decodes the common spelling of a valid event; see the module docstring. Not
    thread-safe (it remembers money texts and labels)."""

    __slots__ = (
        "_base_currency",
        "_labels",
        "_max_items",
        "_max_units",
        "_rates",
        "_skus",
        "_units",
    )

    def __init__(
        self,
        *,
        max_items: int,
        max_units: int,
        base_currency: str,
        rates: Mapping[str, tuple[int, int]],
    ) -> None:
        """``max_units``: the largest amount in base-currency money units; ``rates``: each
        accepted currency's rate to the base currency as (numerator, denominator > 0)."""
        self._max_items = max_items
        self._max_units = max_units
        self._base_currency = base_currency
        self._rates = dict(rates)
        self._units: dict[str, int] = {}
        self._labels: set[str] = set()
        self._skus: set[str] = set()

    def decode(
        self, key: bytes | None, value: bytes, horizon_ms: int
    ) -> tuple[str, str, EventDelta] | None:
        """``(customer_id, event_id, delta)`` of a valid event in the common spelling whose
        ``occurred_at`` is at most ``horizon_ms`` (epoch ms); ``None`` for anything else."""
        try:
            event = _decode_json(value)
        except msgspec.DecodeError:  # also msgspec.ValidationError
            return None
        customer_id, event_id = event.customer_id, event.event_id
        if (
            key != customer_id.encode()
            or _ID.fullmatch(customer_id) is None
            or _ID.fullmatch(event_id) is None
            or _TIMESTAMP.fullmatch(event.occurred_at) is None
        ):
            return None
        try:
            occurred_at = datetime.fromisoformat(event.occurred_at)
        except ValueError:  # out of range: a day 31 in a 30-day month, hour 24, ...
            return None
        # timedelta is normalised (0 <= seconds < 86400, 0 <= microseconds < 10**6): its days
        # are the floored UTC epoch day and the sum is floored milliseconds
        since = occurred_at - _EPOCH
        day = since.days
        occurred_ms = day * MS_PER_DAY + since.seconds * 1000 + since.microseconds // 1000
        if occurred_ms > horizon_ms:
            return None
        if isinstance(event, _Purchase):
            totals = self._purchase(event)
        elif isinstance(event, _Refund):
            totals = self._refund(event)
        elif self._label(event.region):
            totals = engagement_totals(event.action)
        else:
            return None
        if totals is None:
            return None
        return customer_id, event_id, EventDelta(event.type, day, occurred_ms, totals)

    def _purchase(self, p: _Purchase) -> Totals | None:
        items = p.items
        rate = self._rate(p.currency)
        if (
            rate is None
            or len(items) > self._max_items
            or _ID.fullmatch(p.order_id) is None
            or not (self._label(p.channel) and self._label(p.region))
        ):
            return None
        numerator, denominator = rate
        limit = self._max_units * denominator
        units = self._money
        spend = units(p.amount)
        discount = units(p.discount)
        margin = 0 if p.margin is None else self._signed(p.margin)
        if spend is None or discount is None or margin is None:
            return None
        if max(spend, discount, abs(margin)) * numerator > limit:
            return None
        premium = 0
        for item in items:
            quantity = item.quantity
            unit_price = units(item.unit_price)
            if (
                unit_price is None
                or unit_price * numerator > limit
                or not 1 <= quantity <= _MAX_QUANTITY
                or not self._label(item.category)
                or not self._sku(item.sku)
            ):
                return None
            if item.tier == "premium":
                premium += quantity * unit_price
        if denominator != 1 or numerator != 1:
            spend = to_base(spend, numerator, denominator)
            margin = to_base(margin, numerator, denominator)
            premium = to_base(premium, numerator, denominator)
        return Totals(
            1,
            spend,
            0,
            0,
            margin,
            spend if discount > 0 else 0,
            premium if premium < spend else spend,
        )

    def _refund(self, r: _Refund) -> Totals | None:
        rate = self._rate(r.currency)
        if rate is None or _ID.fullmatch(r.order_id) is None:
            return None
        refunded = self._money(r.amount)
        margin = 0 if r.margin is None else self._money(r.margin)
        if not refunded or margin is None:  # the amount must be > 0: "0.00" is for pydantic
            return None
        numerator, denominator = rate
        if max(refunded, margin) * numerator > self._max_units * denominator:
            return None
        refunded = to_base(refunded, numerator, denominator)
        return Totals(0, 0, 1, refunded, -to_base(margin, numerator, denominator))

    def _rate(self, currency: str | None) -> tuple[int, int] | None:
        """(numerator, denominator) to the base currency; ``None``: not for the fast path."""
        if currency is None:
            return (1, 1)
        if not (
            len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
        ):
            return None
        return (1, 1) if currency == self._base_currency else self._rates.get(currency)

    def _money(self, text: str) -> int | None:
        """Money units of a canonical non-negative amount, else ``None``."""
        units = self._units.get(text)
        if units is None:
            if _MONEY.fullmatch(text) is None:
                return None
            whole, _, places = text.partition(".")
            units = int(whole + places) * UNITS_PER_PLACES[len(places)]
            if len(self._units) >= _MEMO_SIZE:
                self._units.clear()
            self._units[text] = units
        return units

    def _signed(self, text: str) -> int | None:
        if text[:1] == "-":
            units = self._money(text[1:])
            return None if units is None else -units
        return self._money(text)

    def _label(self, text: str | None) -> bool:
        """Absent, or 1-64 printable characters (:data:`schemas.events.Label`)."""
        return text is None or _printable(text, self._labels, _MAX_LABEL)

    def _sku(self, text: str) -> bool:
        """1-128 printable characters (:data:`schemas.events.Sku`)."""
        return _printable(text, self._skus, _MAX_SKU)


def _printable(text: str, known: set[str], longest: int) -> bool:
    """``text`` is 1-``longest`` printable characters (so no control character); the texts
    that passed are remembered in ``known`` (cleared when full)."""
    if text in known:
        return True
    if not (0 < len(text) <= longest and text.isprintable()):
        return False
    if len(known) >= _MEMO_SIZE:
        known.clear()
    known.add(text)
    return True


def to_base(units: int, numerator: int, denominator: int) -> int:
    """Money units of the event's currency → base-currency units at the rate
    ``numerator / denominator`` (> 0), rounded half to even (both paths)."""
    if denominator == 1:
        return units * numerator
    quotient, remainder = divmod(units * numerator, denominator)  # floor division
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient & 1):
        quotient += 1
    return quotient
