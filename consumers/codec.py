"""Kafka record bytes → a validated event and its delta, or a dead letter with a reason.

Policy: :meth:`EventCodec.decode` never raises for any key or value; a record that cannot be
used comes back as a :class:`DeadLetter` (machine-readable :class:`Reason`, human-readable detail
naming the field), which the handler sends to the dead-letter topic with the original bytes and
:func:`dead_letter_headers`. It is never dropped silently and never stops the consumer.

Checks run cheapest first, and a valid record is looked at once:

1. size, before any parsing (``record_too_large``);
2. one pydantic pass straight over the bytes: UTF-8, JSON, fields, types, ids, finite and
   non-negative money, timestamp offsets (:mod:`schemas.events`);
3. the record key must be the ``customer_id`` (``key_mismatch``);
4. everything that depends on settings, in this module only: clock skew, item count, currency,
   exact decimal places and the largest amount, while money is converted to base-currency
   integer units (``MONEY_SCALE``) for the :class:`EventDelta`: a plain amount ("59.90") from
   its digits, any other spelling in exact decimal arithmetic.

Only a record that failed step 2 is parsed a second time, to name its reason precisely.

Before steps 2-4, the fast path (:mod:`consumers.codec_fast`) tries the common spelling of a
valid event without pydantic: it accepts a subset of what steps 2-4 accept, with the same
result, and anything it does not accept, valid or not, takes steps 2-4, so every dead letter
and its reason come from one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation, Overflow
from enum import StrEnum
from hashlib import blake2b
from typing import Final, NamedTuple

from pydantic import ValidationError
from pydantic_core import ErrorDetails, from_json

from consumers.codec_fast import UNITS_PER_PLACES, FastDecoder, engagement_totals, to_base
from schemas.events import (
    EVENT_ADAPTER,
    MONEY_DECIMAL_PLACES,
    EngagementEvent,
    Event,
    PurchaseEvent,
    RefundEvent,
)
from service.segmentation.profile import MONEY_SCALE, MS_PER_DAY, EventDelta, Totals
from service.settings import ValidationSettings


class Reason(StrEnum):
    """Why a record was dead-lettered; the value is the ``dlq.reason`` header."""

    RECORD_TOO_LARGE = "record_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    """Not a JSON document (also: no value at all, ``NaN``/``Infinity`` literals)."""
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    """A field (or the record) holds the wrong JSON type, e.g. a number for a string."""
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    NEGATIVE_AMOUNT = "negative_amount"
    NON_FINITE_AMOUNT = "non_finite_amount"
    TOO_MANY_DECIMALS = "too_many_decimals"
    AMOUNT_TOO_LARGE = "amount_too_large"
    INVALID_ID = "invalid_id"
    KEY_MISMATCH = "key_mismatch"
    """The record key is not the ``customer_id`` (or is missing): it would break ordering."""
    TIMESTAMP_WITHOUT_OFFSET = "timestamp_without_offset"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    UNKNOWN_CURRENCY = "unknown_currency"
    TOO_MANY_ITEMS = "too_many_items"
    INVALID_FIELD = "invalid_field"
    """Anything else: unknown field, value not allowed, string too long, ..."""


class DecodedEvent(NamedTuple):
    """A record that passed every check.

    A named tuple, not a dataclass: one is made per record, and a tuple is about half the
    cost of a frozen dataclass to build (~0.2 us a record).
    """

    customer_id: str
    event_id: str
    delta: EventDelta
    """What it adds to the customer's aggregates, money in base-currency units."""
    event_hash: bytes
    """8 bytes, ``blake2b(event_id, digest_size=8)``: the id in the duplicate ring."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that failed a check."""

    reason: str
    """A :class:`Reason` value."""
    detail: str
    """Human-readable; names the field (``items[2].unit_price: ...``)."""


_validate_event: Final[Callable[[bytes], Event]] = EVENT_ADAPTER.validator.validate_json
"""``EVENT_ADAPTER.validate_json`` without the adapter's per-call keyword handling (~0.5 us)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_MS_PER_SECOND: Final = 1000
_US_PER_MS: Final = 1000
_MAX_EXACT_UNITS: Final = 2**53
"""Redis scripts hold numbers as doubles: integers stay exact below 2**53."""
_UNITS_CONTEXT: Final = Context(
    prec=40, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation, Overflow]
)
"""Scales money to units; raises :class:`Inexact` rather than drop a non-zero digit."""
_WIDE: Final = Context(Emax=MAX_EMAX, Emin=MIN_EMIN)
"""For messages only: never overflows, whatever exponent a record spells."""
_PLAIN_INTEGER_DIGITS: Final = 15
"""Longest integer part (with its sign) the fast money path parses: anything this short is
cheap to turn into an int, and the bound check after it refuses what is too large."""
_DETAIL_LIMIT: Final = 300
"""Characters of ``detail`` kept (it travels in a Kafka header)."""


class _Rate(NamedTuple):
    """A currency's rate to the base currency, as an exact fraction for the arithmetic."""

    numerator: int
    denominator: int
    """Positive."""
    value: Decimal
    """As configured, for messages."""


class _Rejected(Exception):
    """A post-parse check failed; carries the dead letter's reason and detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class EventCodec:
    """Decodes records of the ``customer.events`` topic against the v1 contract and the
    configured :class:`ValidationSettings`. Build one per consumer; not thread-safe (it caches
    the last ``now``)."""

    __slots__ = (
        "_base_currency",
        "_fast",
        "_horizon_ms",
        "_last_now",
        "_max_amount",
        "_max_items",
        "_max_magnitude",
        "_max_record_bytes",
        "_max_units",
        "_rates",
        "_skew_ms",
    )

    def __init__(self, validation: ValidationSettings) -> None:
        if validation.max_amount * MONEY_SCALE >= _MAX_EXACT_UNITS:
            raise ValueError(
                f"max_amount {validation.max_amount} is too large: amounts must stay below "
                f"2**53 money units ({_MAX_EXACT_UNITS // MONEY_SCALE})"
            )
        rates: dict[str, _Rate] = {}
        for code, rate in validation.currency_rates.items():
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"currency_rates[{code}] must be a positive number, not {rate}")
            rates[code.upper()] = _Rate(*rate.as_integer_ratio(), rate)
        smallest_rate = min([Decimal(1), *validation.currency_rates.values()])
        self._max_record_bytes = validation.max_record_bytes
        self._max_amount = validation.max_amount
        self._max_units = int(validation.max_amount * MONEY_SCALE)
        # Decimal exponent beyond which a value is too large in any currency: rejects
        # "1E+999999999" before any arithmetic could build a huge integer from it.
        self._max_magnitude = validation.max_amount.adjusted() - smallest_rate.adjusted() + 1
        if self._max_magnitude + MONEY_DECIMAL_PLACES >= _UNITS_CONTEXT.prec:
            raise ValueError(f"currency rate {smallest_rate} is too small to be exact")
        self._max_items = validation.max_items
        self._skew_ms = validation.max_future_skew_s * 1000
        self._base_currency = validation.base_currency.upper()
        self._rates = rates
        self._last_now: datetime | None = None
        self._horizon_ms = 0
        self._fast = FastDecoder(
            max_items=self._max_items,
            max_units=self._max_units,
            base_currency=self._base_currency,
            rates={code: (r.numerator, r.denominator) for code, r in rates.items()},
        )

    def decode(
        self, key: bytes | None, value: bytes | None, *, now: datetime
    ) -> DecodedEvent | DeadLetter:
        """One record's key and value → the event and its delta, or why not.

        ``now`` (timezone-aware) is the consumer's clock, for the future-skew bound.
        """
        if value is None:
            return DeadLetter(Reason.INVALID_JSON, "record: no value (a tombstone)")
        if len(value) > self._max_record_bytes:
            return DeadLetter(
                Reason.RECORD_TOO_LARGE,
                f"record: {len(value)} bytes, more than max_record_bytes {self._max_record_bytes}",
            )
        fast = self._decode_fast(key, value, now)
        return fast if fast is not None else self._decode_slow(key, value, now)

    def _decode_slow(
        self, key: bytes | None, value: bytes, now: datetime
    ) -> DecodedEvent | DeadLetter:
        """Steps 2-4 (module docstring): decides every record the fast path did not accept."""
        try:
            event = _validate_event(value)
        except ValidationError as invalid:
            return _explain(value, invalid)
        if key is None:
            return DeadLetter(Reason.KEY_MISMATCH, "key: missing; it must be the customer_id")
        if key != event.customer_id.encode():
            return DeadLetter(
                Reason.KEY_MISMATCH,
                _clip(f"key: {bytes(key[:140])!r} is not customer_id {event.customer_id!r}"),
            )
        try:
            delta = self._delta(event, now)
        except _Rejected as rejected:
            return DeadLetter(rejected.reason, _clip(rejected.detail))
        return DecodedEvent(
            event.customer_id,
            event.event_id,
            delta,
            blake2b(event.event_id.encode(), digest_size=8).digest(),
        )

    def _decode_fast(self, key: bytes | None, value: bytes, now: datetime) -> DecodedEvent | None:
        """The event when ``value`` is a valid event in the common spelling; ``None`` (take
        the slow path) for anything else, valid or not (:mod:`consumers.codec_fast`)."""
        horizon_ms = self._horizon_ms if now is self._last_now else self._horizon(now)
        fast = self._fast.decode(key, value, horizon_ms)
        if fast is None:
            return None
        customer_id, event_id, delta = fast
        return DecodedEvent(
            customer_id, event_id, delta, blake2b(event_id.encode(), digest_size=8).digest()
        )

    def _delta(self, event: Event, now: datetime) -> EventDelta:
        # timedelta is normalised (0 <= seconds < 86400, 0 <= microseconds < 10**6), so its
        # days are the floored UTC epoch day and the sum below is floored milliseconds
        since_epoch = event.occurred_at - _EPOCH
        occurred_ms = (
            since_epoch.days * MS_PER_DAY
            + since_epoch.seconds * _MS_PER_SECOND
            + since_epoch.microseconds // _US_PER_MS
        )
        horizon_ms = self._horizon_ms if now is self._last_now else self._horizon(now)
        if occurred_ms > horizon_ms:
            raise _Rejected(
                Reason.TIMESTAMP_IN_FUTURE,
                f"occurred_at: {event.occurred_at.isoformat()} is more than "
                f"{self._skew_ms // 1000}s after now ({now.isoformat()})",
            )
        if isinstance(event, PurchaseEvent):
            totals = self._purchase(event)
        elif isinstance(event, RefundEvent):
            totals = self._refund(event)
        else:
            totals = _engagement(event)
        return EventDelta(
            kind=event.type, day=since_epoch.days, occurred_ms=occurred_ms, totals=totals
        )

    def _horizon(self, now: datetime) -> int:
        """Latest acceptable ``occurred_at``, epoch ms; recomputed only when ``now`` changes
        (the handler decodes a whole batch with one ``now``)."""
        if now is not self._last_now:
            if now.utcoffset() is None:
                raise ValueError("now must be timezone-aware")
            self._horizon_ms = (now - _EPOCH) // _ONE_MS + self._skew_ms
            self._last_now = now
        return self._horizon_ms

    def _purchase(self, purchase: PurchaseEvent) -> Totals:
        items = purchase.items
        if len(items) > self._max_items:
            raise _Rejected(
                Reason.TOO_MANY_ITEMS,
                f"items: {len(items)} items, more than max_items {self._max_items}",
            )
        rate = self._rate(purchase.currency)
        money = self._money
        spend = money(purchase.amount, rate, "amount")
        margin = 0 if purchase.margin is None else money(purchase.margin, rate, "margin")
        discounted = purchase.discount > 0
        if discounted:
            money(purchase.discount, rate, "discount")
        premium = 0
        for index, item in enumerate(items):
            unit_price = money(item.unit_price, rate, "unit_price", index)
            if item.tier == "premium":
                premium += item.quantity * unit_price
        if rate is not None:  # premium is summed in the event's currency, converted once
            spend, margin = _to_base(spend, rate), _to_base(margin, rate)
            premium = _to_base(premium, rate)
        return Totals(
            orders=1,
            spend=spend,
            margin=margin,
            discounted_spend=spend if discounted else 0,
            premium_spend=premium if premium < spend else spend,
        )

    def _refund(self, refund: RefundEvent) -> Totals:
        rate = self._rate(refund.currency)
        refunded = _to_base(self._money(refund.amount, rate, "amount"), rate)
        margin = (
            0
            if refund.margin is None
            else _to_base(self._money(refund.margin, rate, "margin"), rate)
        )
        return Totals(refunds=1, refunded=refunded, margin=-margin)

    def _rate(self, currency: str | None) -> _Rate | None:
        """Rate to the base currency as an exact fraction; ``None`` when the amounts already
        are in it."""
        if currency is None or currency == self._base_currency:
            return None
        rate = self._rates.get(currency)
        if rate is None:
            raise _Rejected(
                Reason.UNKNOWN_CURRENCY,
                f"currency: {currency} is neither the base currency {self._base_currency} "
                "nor in currency_rates",
            )
        return rate

    def _money(self, value: Decimal, rate: _Rate | None, field: str, index: int = -1) -> int:
        """Checks one money field (exact places, size in the base currency) and returns it in
        money units of the event's currency.

        ``index`` ≥ 0 names an item (``items[index].field``) without formatting on the
        fast path. The common amount ("59.90", "-3.25", "100") is read from its text, which
        :class:`Decimal` spells without an exponent and with every digit it holds; anything
        else takes :meth:`_money_exact`, with which this agrees on every value (a property
        test holds them to it).
        """
        whole, _, places = str(value).partition(".")
        if len(whole) > _PLAIN_INTEGER_DIGITS or len(places) > MONEY_DECIMAL_PLACES:
            return self._money_exact(value, rate, field, index)
        try:
            units = int(whole + places) * UNITS_PER_PLACES[len(places)]
        except ValueError:  # spelled with an exponent ("1E+2", "1.5E+3")
            return self._money_exact(value, rate, field, index)
        if rate is None:
            base, limit = units, self._max_units
        else:
            base, limit = units * rate.numerator, self._max_units * rate.denominator
        if base > limit or base < -limit:
            raise self._too_large(value, rate, field, index)
        return units

    def _money_exact(self, value: Decimal, rate: _Rate | None, field: str, index: int = -1) -> int:
        """:meth:`_money` for any :class:`Decimal`, in exact decimal arithmetic.

        Nothing is rounded here, and a hostile number ("1E+999999999", 60,000 digits) costs
        microseconds, not a huge integer.
        """
        if not value:
            return 0  # whatever its exponent ("0E+999999999")
        if value.adjusted() > self._max_magnitude:  # the exponent of the leading digit
            raise self._too_large(value, rate, field, index)
        try:
            scaled = value.scaleb(MONEY_DECIMAL_PLACES, context=_UNITS_CONTEXT)
        except Inexact:  # more significant digits than any amount within bounds has
            raise _too_many_decimals(value, field, index) from None
        units = int(scaled)
        if units != scaled:  # trailing zeros ("59.900000") are fine, other digits are not
            raise _too_many_decimals(value, field, index)
        if rate is None:
            base, limit = units, self._max_units
        else:  # exact: compares units * rate with the limit, both times the denominator
            base, limit = units * rate.numerator, self._max_units * rate.denominator
        if base > limit or base < -limit:
            raise self._too_large(value, rate, field, index)
        return units

    def _too_large(self, value: Decimal, rate: _Rate | None, field: str, index: int) -> _Rejected:
        converted = (
            ""
            if rate is None
            else f" (= {_WIDE.multiply(value, rate.value)} {self._base_currency})"
        )
        return _Rejected(
            Reason.AMOUNT_TOO_LARGE,
            f"{_field(field, index)}: {value}{converted} exceeds max_amount "
            f"{self._max_amount} {self._base_currency}",
        )


def _to_base(units: int, rate: _Rate | None) -> int:
    """Money units of the event's currency → base-currency units, rounded half to even."""
    return units if rate is None else to_base(units, rate.numerator, rate.denominator)


def _too_many_decimals(value: Decimal, field: str, index: int) -> _Rejected:
    return _Rejected(
        Reason.TOO_MANY_DECIMALS,
        f"{_field(field, index)}: {value} has more than {MONEY_DECIMAL_PLACES} decimal places",
    )


def _field(name: str, index: int) -> str:
    return name if index < 0 else f"items[{index}].{name}"


def _engagement(engagement: EngagementEvent) -> Totals:
    return engagement_totals(engagement.action)


def dead_letter_headers(
    dl: DeadLetter,
    *,
    topic: str,
    partition: int,
    offset: int,
    failed_at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered record: why it failed and where it came from.

    ``failed_at`` defaults to the current UTC time.
    """
    when = datetime.now(UTC) if failed_at is None else failed_at
    return [
        ("dlq.reason", dl.reason.encode()),
        ("dlq.detail", dl.detail.encode("utf-8", "backslashreplace")),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.failed_at", when.isoformat(timespec="milliseconds").encode()),
    ]


# --- naming the reason of a record pydantic refused (the slow path) ---------------------------

_EVENT_TYPES: Final = frozenset({"purchase", "refund", "engagement"})
_ID_FIELDS: Final = frozenset({"event_id", "customer_id", "order_id"})
_MONEY_FIELDS: Final = frozenset({"amount", "margin", "discount", "unit_price"})
_WRONG_TYPE_ERRORS: Final = frozenset(
    {"decimal_parsing", "int_from_float", "is_instance_of", "model_attributes_type"}
)


def _explain(value: bytes, invalid: ValidationError) -> DeadLetter:
    """The reason pydantic refused ``value``: the first error, after the ones that make the
    rest meaningless (not UTF-8, not JSON, not an object, no or another schema_version)."""
    first = invalid.errors(include_url=False, include_context=False)[0]
    if first["type"] == "json_invalid":
        try:
            value.decode()
        except UnicodeDecodeError as bad:
            return DeadLetter(Reason.INVALID_UTF8, f"record: byte {bad.start}: {bad.reason}")
        return DeadLetter(Reason.INVALID_JSON, _clip(f"record: {first['msg']}"))
    try:
        # pydantic's parser reads the non-JSON literals NaN and Infinity; refuse them here
        document = from_json(value, allow_inf_nan=False)
    except ValueError as bad:
        return DeadLetter(
            Reason.INVALID_JSON, _clip(f"record: {bad} (NaN and Infinity are not JSON)")
        )
    if not isinstance(document, dict):
        return DeadLetter(
            Reason.WRONG_TYPE, f"record: expected a JSON object, got {_json_type(document)}"
        )
    if "schema_version" not in document:
        return DeadLetter(Reason.MISSING_FIELD, "schema_version: Field required")
    version = document["schema_version"]
    if type(version) is int and version != 1:
        return DeadLetter(
            Reason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version: {version} is not supported (only 1)",
        )
    return _from_error(first)


def _from_error(error: ErrorDetails) -> DeadLetter:
    kind, given = error["type"], error["input"]
    loc = error["loc"]
    if loc and loc[0] in _EVENT_TYPES:
        loc = loc[1:]  # the discriminated union prefixes the tag
    if kind.startswith("union_tag_"):
        loc = ("type",)
    field = next((part for part in reversed(loc) if isinstance(part, str)), "")
    reason = _reason(kind, field, given)
    if reason is Reason.AMOUNT_TOO_LARGE:
        return DeadLetter(reason, f"{_path(loc)}: number out of range")
    detail = f"{_path(loc)}: {error['msg']}"
    if isinstance(given, str | int | float) and kind != "missing":
        detail += f" (got {given!r:.60})"
    return DeadLetter(reason, _clip(detail))


def _reason(kind: str, field: str, given: object) -> Reason:
    if kind in ("missing", "union_tag_not_found"):
        return Reason.MISSING_FIELD
    if kind == "union_tag_invalid":
        return Reason.UNKNOWN_EVENT_TYPE
    if field == "schema_version":
        is_number = type(given) is int
        return Reason.UNSUPPORTED_SCHEMA_VERSION if is_number else Reason.WRONG_TYPE
    if kind == "finite_number":
        # A NaN/Infinity literal was refused above, so an infinite float is a number too
        # large for a double (1e400); strings "NaN"/"Infinity" are non-finite amounts.
        return Reason.AMOUNT_TOO_LARGE if isinstance(given, float) else Reason.NON_FINITE_AMOUNT
    if kind in ("greater_than_equal", "greater_than") and field in _MONEY_FIELDS:
        return Reason.NEGATIVE_AMOUNT if _is_negative(given) else Reason.INVALID_FIELD
    if kind == "decimal_max_places":
        return Reason.TOO_MANY_DECIMALS
    if field in _ID_FIELDS and kind.startswith("string_") and kind != "string_type":
        return Reason.INVALID_ID
    if kind == "timezone_aware":
        return Reason.TIMESTAMP_WITHOUT_OFFSET
    if kind.endswith("_type") or kind in _WRONG_TYPE_ERRORS:
        return Reason.WRONG_TYPE
    if kind.startswith(("datetime_", "date_", "time_")):
        return Reason.INVALID_TIMESTAMP
    return Reason.INVALID_FIELD


def _is_negative(given: object) -> bool:
    if isinstance(given, int | float):
        return given < 0
    if isinstance(given, str):
        try:
            return Decimal(given) < 0
        except ArithmeticError:
            return False
    return False


def _path(loc: tuple[int | str, ...]) -> str:
    """``('items', 2, 'unit_price')`` → ``items[2].unit_price``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "record"


def _json_type(document: object) -> str:
    if isinstance(document, list):
        return "an array"
    if isinstance(document, str):
        return "a string"
    if isinstance(document, bool):
        return "a boolean"
    if document is None:
        return "null"
    return "a number"


def _clip(detail: str) -> str:
    return detail if len(detail) <= _DETAIL_LIMIT else detail[: _DETAIL_LIMIT - 1] + "…"
