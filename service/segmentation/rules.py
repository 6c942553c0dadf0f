"""The classification rules: a validated, versioned document, and its compiled form.

Rules are data (shared/DESIGN.md "Classification"): a YAML or JSON document checked by the
pydantic models below, identified by :attr:`Rules.version`, a hash of its canonical JSON, so
reformatting or comments never change it while any value change does. A good default ships
as ``default_rules.yaml`` beside this module.

On validation every threshold is also compiled once into :class:`CompiledRules` (money in
integer units, sorted cut points, segment matchers, a full RFM score table), so that
:func:`service.segmentation.classifier.classify` does no parsing or searching per call.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Mapping
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from service.segmentation.profile import MONEY_SCALE
from service.segmentation.types import (
    Axes,
    Level,
    Lifecycle,
    Loyalty,
    Needs,
    Rfm,
    Treatment,
    ValueTier,
)

DEFAULT_RULES_FILE = "default_rules.yaml"
MAX_DAYS = 3_660
"""Longest window or threshold accepted, days (ten years)."""

AXIS_NAMES = (
    "lifecycle",
    "value_tier",
    "loyalty",
    "needs",
    "rfm_segment",
    "key_account",
    "frequency",
    "aov",
    "profit",
)
"""Axes a segment rule may test, in the order of the classifier's axis tuple."""

_RESOLVED_MAX = 1 << 16
"""Most axis combinations :class:`CompiledRules` remembers."""

NO_RFM_SEGMENT = "none"
"""``rfm_segment`` of a customer who never bought."""

AxesKey = tuple[Lifecycle, ValueTier, Loyalty, Needs, int, bool, Level, Level, Level]
"""lifecycle, value_tier, loyalty, needs, RFM index (r*36 + f*6 + m), key_account, frequency,
aov, profit: everything that decides the axes and the segment."""

NeedsKind = Literal["service_sensitive", "price_sensitive", "quality_seeking", "function_seeking"]


class RuleIssue(TypedDict):
    """One validation problem: where in the document, and what is wrong."""

    path: str
    message: str


class RulesError(Exception):
    """A rules document that cannot be used; ``errors`` name every offending path."""

    def __init__(self, errors: list[RuleIssue]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '<document>'}: {e['message']}" for e in errors))

    @property
    def problems(self) -> list[RuleIssue]:
        """Alias of :attr:`errors` (the name the CLI reads)."""
        return self.errors


# --- value types -----------------------------------------------------------------------------


def _check_money(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite amount")
    if value.as_tuple().exponent < -4:  # type: ignore[operator]  # finite: exponent is an int
        raise ValueError("at most 4 decimals")
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _decimal_text(value: Decimal) -> str:
    # "1000", "1000.0" and 1e3 are one value, so they serialise (and hash) identically.
    return format(value.normalize(), "f")


Money = Annotated[
    Decimal,
    AfterValidator(_check_money),
    PlainSerializer(_decimal_text, return_type=str),
]
"""Amount in the base currency, written as a decimal string (``"1000"``, ``"49.90"``)."""


def _check_share(value: Decimal) -> Decimal:
    if not value.is_finite() or not 0 <= value <= 1:
        raise ValueError("must be a share between 0 and 1")
    return value


Share = Annotated[
    Decimal,
    AfterValidator(_check_share),
    PlainSerializer(_decimal_text, return_type=str),
]
"""A fraction of spend, 0..1, as a decimal string (``"0.5"``)."""

Days = Annotated[int, Field(strict=True, ge=1, le=MAX_DAYS)]
Count = Annotated[int, Field(strict=True, ge=0, le=1_000_000)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _units(amount: Decimal) -> int:
    """Money in the profile's integer units (exact: amounts carry at most 4 decimals)."""
    return int(amount * MONEY_SCALE)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- the document ----------------------------------------------------------------------------


class LifecycleRules(_Model):
    """Purchase behaviour; the first matching class in the order below wins."""

    new_days: Days
    """Tenure below this is ``new``."""
    at_risk_days: Days
    """Recency at or above this is ``at_risk``."""
    churned_days: Days
    """Recency at or above this is ``churned``."""
    reactivated_days: Days
    """A comeback purchase within this many days makes the customer ``reactivated``."""
    regular_window: Days
    """Window in which ``regular_min_orders`` makes the customer ``regular``."""
    regular_min_orders: Count


class ValueRules(_Model):
    """Value tier from net spend (and margin) over ``window``."""

    window: Days
    high_min_net_spend: Money
    medium_min_net_spend: Money


class LoyaltyRules(_Model):
    """Loyalty from the regularity of purchases: active periods in ``window``."""

    window: Days
    period_days: Days
    """Length of an activity period; periods are counted from the epoch."""
    high_min_periods: Count
    high_min_tenure_days: Count
    medium_min_periods: Count
    low_min_lifetime_orders: Count


class NeedsRules(_Model):
    """Needs / preference over ``window``; the first kind in ``order`` that applies wins."""

    window: Days
    order: tuple[NeedsKind, ...]
    service_sensitive_min_contacts: Count
    price_sensitive_min_discounted_share: Share
    quality_seeking_min_premium_share: Share

    @field_validator("order")
    @classmethod
    def _distinct(cls, order: tuple[NeedsKind, ...]) -> tuple[NeedsKind, ...]:
        if len(set(order)) != len(order):
            raise ValueError("each needs kind may appear once")
        return order


class RfmSegmentRule(_Model):
    """A named RFM segment: inclusive score ranges; an omitted score matches 1..5."""

    name: Name
    r: tuple[int, int] = (1, 5)
    f: tuple[int, int] = (1, 5)
    m: tuple[int, int] = (1, 5)

    @field_validator("r", "f", "m")
    @classmethod
    def _score_range(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        low, high = bounds
        if not 1 <= low <= high <= 5:
            raise ValueError("must be [low, high] with 1 <= low <= high <= 5")
        return bounds

    @property
    def catch_all(self) -> bool:
        return self.r == self.f == self.m == (1, 5)


class RfmRules(_Model):
    """R, F and M scores 1..5 from four cut points each, and the named segments."""

    window: Days
    """Window of the F (orders) and M (net spend) inputs."""
    r_max_recency_days: tuple[Count, Count, Count, Count]
    """Recency at most these many days scores 5, 4, 3, 2; anything longer scores 1."""
    f_min_orders: tuple[Count, Count, Count, Count]
    """At least these many orders score 5, 4, 3, 2; fewer score 1."""
    m_min_net_spend: tuple[Money, Money, Money, Money]
    """At least this net spend scores 5, 4, 3, 2; less scores 1."""
    segments: tuple[RfmSegmentRule, ...] = Field(min_length=1)
    """Ordered, first match wins; the last must be a catch-all."""


class CountLevels(_Model):
    high: Count
    medium: Count


class MoneyLevels(_Model):
    high: Money
    medium: Money


class LevelRules(_Model):
    """High / medium / low for frequency (orders), aov (spend / orders), profit (margin)."""

    window: Days
    frequency: CountLevels
    aov: MoneyLevels
    profit: MoneyLevels


class KeyAccountRules(_Model):
    """Key account: a top value tier and many orders in ``window``."""

    window: Days
    value_tiers: tuple[ValueTier, ...] = Field(min_length=1)
    min_orders: Count

    @field_validator("value_tiers")
    @classmethod
    def _as_set(cls, tiers: tuple[ValueTier, ...]) -> tuple[ValueTier, ...]:
        return tuple(sorted(set(tiers)))


class TreatmentRule(_Model):
    """What checkout and marketing do for a segment (see :class:`types.Treatment`)."""

    discount_pct: Annotated[int, Field(strict=True, ge=0, le=100)] = 0
    free_shipping: bool = False
    support_queue: Label = "standard"
    campaign: Label | None = None
    channel: Label = "email"
    offer: Label | None = None


class When(_Model):
    """Conditions on axes; all given must hold (a list means "any of"). Empty: always."""

    lifecycle: tuple[Lifecycle, ...] | None = Field(default=None, min_length=1)
    value_tier: tuple[ValueTier, ...] | None = Field(default=None, min_length=1)
    loyalty: tuple[Loyalty, ...] | None = Field(default=None, min_length=1)
    needs: tuple[Needs, ...] | None = Field(default=None, min_length=1)
    rfm_segment: tuple[Name, ...] | None = Field(default=None, min_length=1)
    key_account: bool | None = None
    frequency: tuple[Level, ...] | None = Field(default=None, min_length=1)
    aov: tuple[Level, ...] | None = Field(default=None, min_length=1)
    profit: tuple[Level, ...] | None = Field(default=None, min_length=1)

    @field_validator(
        "lifecycle", "value_tier", "loyalty", "needs", "rfm_segment", "frequency", "aov", "profit"
    )
    @classmethod
    def _as_set(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # A condition is a set: one canonical order keeps the version independent of spelling.
        return None if values is None else tuple(sorted(set(values)))

    def conditions(self) -> list[tuple[str, Any]]:
        """``(axis, allowed)`` for every axis this rule tests, in :data:`AXIS_NAMES` order."""
        out: list[tuple[str, Any]] = []
        for axis in AXIS_NAMES:
            value = getattr(self, axis)
            if value is not None:
                out.append((axis, value))
        return out


class SegmentRule(_Model):
    """One row of the segment table: conditions on axes and the treatment they earn."""

    name: Name
    description: str = Field(default="", max_length=500)
    when: When = When()
    treatment: Name
    """Id of an entry of ``treatments``."""


class Rules(_Model):
    """The whole rules document. Construct with :func:`parse_rules` or :func:`load_rules`."""

    windows: tuple[Days, ...] = Field(default=(30, 90, 365), min_length=1)
    """Window lengths the profile keeps totals for, ascending; must include every window below."""
    lifecycle: LifecycleRules
    value: ValueRules
    loyalty: LoyaltyRules
    needs: NeedsRules
    rfm: RfmRules
    levels: LevelRules
    key_account: KeyAccountRules
    treatments: dict[Name, TreatmentRule] = Field(min_length=1)
    segments: tuple[SegmentRule, ...] = Field(min_length=1)
    """Ordered, first match wins; the last must be a catch-all (no conditions)."""

    _version: str = PrivateAttr(default="")
    _compiled: CompiledRules | None = PrivateAttr(default=None)

    @field_validator("windows")
    @classmethod
    def _ascending(cls, windows: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(windows)) != len(windows):
            raise ValueError("window lengths must be distinct")
        return tuple(sorted(windows))

    def model_post_init(self, context: Any, /) -> None:
        # Cross-field checks run here, after every field validated, so their paths are exact;
        # RulesError is not a ValueError, so pydantic lets it through unchanged.
        issues = _cross_field_issues(self)
        if issues:
            raise RulesError(issues)
        self._version = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]
        self._compiled = CompiledRules(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Rules:
        """A validated copy: pydantic's copy would skip the checks and keep a stale version."""
        return Rules.model_validate({**self.model_dump(), **(update or {})})

    def __eq__(self, other: object) -> bool:
        # Equal documents; the compiled form (a private attribute) is derived, so not compared.
        return isinstance(other, Rules) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.version)

    # The two properties below read pydantic's private storage directly: the generic
    # private-attribute lookup costs microseconds, and classify reads both on every call.
    @property
    def version(self) -> str:
        """First 12 hex digits of the SHA-256 of :meth:`canonical_json`."""
        version: str = self.__pydantic_private__["_version"]  # type: ignore[index]
        return version

    @property
    def max_window(self) -> int:
        """The longest window, days; daily buckets must be kept back this far."""
        return self.windows[-1]

    @property
    def compiled(self) -> CompiledRules:
        """The thresholds in the classifier's shape, built once at validation."""
        compiled: CompiledRules = self.__pydantic_private__["_compiled"]  # type: ignore[index]
        return compiled

    def document(self) -> dict[str, Any]:
        """The validated document as JSON-ready data (money as decimal strings)."""
        return self.model_dump(mode="json", exclude_none=True)

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace: equal for equal rules however they were written."""
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":"))


def _cross_field_issues(rules: Rules) -> list[RuleIssue]:
    issues: list[RuleIssue] = []

    def issue(path: str, message: str) -> None:
        issues.append({"path": path, "message": message})

    windows = set(rules.windows)
    for path, window in (
        ("lifecycle.regular_window", rules.lifecycle.regular_window),
        ("value.window", rules.value.window),
        ("loyalty.window", rules.loyalty.window),
        ("needs.window", rules.needs.window),
        ("rfm.window", rules.rfm.window),
        ("levels.window", rules.levels.window),
        ("key_account.window", rules.key_account.window),
    ):
        if window not in windows:
            issue(path, f"window {window} is not one of windows {list(rules.windows)}")

    life = rules.lifecycle
    if not life.at_risk_days < life.churned_days:
        issue(
            "lifecycle.at_risk_days",
            f"at_risk_days {life.at_risk_days} must be < churned_days {life.churned_days}",
        )
    if life.reactivated_days + life.churned_days > rules.max_window:
        issue(
            "lifecycle.reactivated_days",
            f"reactivated_days + churned_days = {life.reactivated_days + life.churned_days} "
            f"exceeds the longest window {rules.max_window}: daily buckets could not show the gap",
        )

    if rules.value.high_min_net_spend <= rules.value.medium_min_net_spend:
        issue("value.high_min_net_spend", "must be > medium_min_net_spend")

    loyalty = rules.loyalty
    if loyalty.period_days > loyalty.window:
        issue("loyalty.period_days", f"must be <= loyalty.window {loyalty.window}")
    if loyalty.high_min_periods < loyalty.medium_min_periods:
        issue("loyalty.high_min_periods", "must be >= medium_min_periods")

    rfm = rules.rfm
    if not _strictly_ascending(rfm.r_max_recency_days):
        issue("rfm.r_max_recency_days", "must increase strictly (scores 5, 4, 3, 2)")
    if not _strictly_ascending(rfm.f_min_orders[::-1]):
        issue("rfm.f_min_orders", "must decrease strictly (scores 5, 4, 3, 2)")
    if not _strictly_ascending(rfm.m_min_net_spend[::-1]):
        issue("rfm.m_min_net_spend", "must decrease strictly (scores 5, 4, 3, 2)")
    rfm_names = _table_issues("rfm.segments", rfm.segments, lambda s: s.catch_all, issue)
    if NO_RFM_SEGMENT in rfm_names:
        issue("rfm.segments", f"'{NO_RFM_SEGMENT}' is reserved for customers who never bought")

    for name, levels in (
        ("frequency", rules.levels.frequency),
        ("aov", rules.levels.aov),
        ("profit", rules.levels.profit),
    ):
        if levels.high <= levels.medium:
            issue(f"levels.{name}.high", "must be > medium")

    _table_issues("segments", rules.segments, lambda s: not s.when.conditions(), issue)
    known_rfm = {*rfm_names, NO_RFM_SEGMENT}
    for i, segment in enumerate(rules.segments):
        if segment.treatment not in rules.treatments:
            issue(f"segments[{i}].treatment", f"unknown treatment '{segment.treatment}'")
        for j, rfm_name in enumerate(segment.when.rfm_segment or ()):
            if rfm_name not in known_rfm:
                issue(f"segments[{i}].when.rfm_segment[{j}]", f"unknown rfm segment '{rfm_name}'")
    return issues


def _strictly_ascending(values: tuple[Any, ...]) -> bool:
    return all(a < b for a, b in pairwise(values))


def _table_issues(
    path: str,
    table: tuple[Any, ...],
    is_catch_all: Any,
    issue: Any,
) -> set[str]:
    """Unique names, a catch-all last and nowhere before it (it would hide what follows)."""
    names: set[str] = set()
    for i, entry in enumerate(table):
        if entry.name in names:
            issue(f"{path}[{i}].name", f"duplicate name '{entry.name}'")
        names.add(entry.name)
        if is_catch_all(entry) and i != len(table) - 1:
            issue(f"{path}[{i}]", "catch-all before the end: the entries after it never match")
    if not is_catch_all(table[-1]):
        issue(f"{path}[{len(table) - 1}]", "the last entry must be a catch-all (match everything)")
    return names


# --- compiled form ---------------------------------------------------------------------------


class CompiledSegment:
    """A segment rule as the classifier tests it: ``(axis index, allowed values)`` pairs."""

    __slots__ = ("conditions", "index", "name", "treatment")

    def __init__(self, index: int, rule: SegmentRule, treatment: Treatment) -> None:
        self.index = index
        self.name = rule.name
        self.treatment = treatment
        self.conditions: tuple[tuple[int, frozenset[Hashable]], ...] = tuple(
            (
                AXIS_NAMES.index(axis),
                frozenset([allowed] if isinstance(allowed, bool) else allowed),
            )
            for axis, allowed in rule.when.conditions()
        )


class CompiledRules:
    """Every threshold of a :class:`Rules` in the shape the classifier reads fastest.

    Money is in profile units (``MONEY_SCALE``), shares are exact fractions, cut points sorted
    for :mod:`bisect`. Built once per rules version.
    """

    def __init__(self, rules: Rules) -> None:
        life, value, loyalty = rules.lifecycle, rules.value, rules.loyalty
        needs, rfm, levels, key = rules.needs, rules.rfm, rules.levels, rules.key_account

        # Windows the classification reads, ascending; each axis keeps the index of its own.
        self.class_windows: tuple[int, ...] = tuple(
            sorted(
                {
                    life.regular_window,
                    value.window,
                    loyalty.window,
                    needs.window,
                    rfm.window,
                    levels.window,
                    key.window,
                }
            )
        )
        index = self.class_windows.index
        self.regular_window_i = index(life.regular_window)
        self.value_window_i = index(value.window)
        self.needs_window_i = index(needs.window)
        self.rfm_window_i = index(rfm.window)
        self.levels_window_i = index(levels.window)
        self.key_window_i = index(key.window)
        # Buckets older than this many days cannot matter (reactivation looks back R + C).
        self.lookback = max(self.class_windows[-1], life.reactivated_days + life.churned_days)

        self.new_days = life.new_days
        self.at_risk_days = life.at_risk_days
        self.churned_days = life.churned_days
        self.reactivated_days = life.reactivated_days
        self.regular_window = life.regular_window
        self.regular_min_orders = life.regular_min_orders

        self.value_window = value.window
        self.value_high = _units(value.high_min_net_spend)
        self.value_medium = _units(value.medium_min_net_spend)

        self.loyalty_window = loyalty.window
        self.period_days = loyalty.period_days
        self.loyalty_high_periods = loyalty.high_min_periods
        self.loyalty_high_tenure = loyalty.high_min_tenure_days
        self.loyalty_medium_periods = loyalty.medium_min_periods
        self.loyalty_low_orders = loyalty.low_min_lifetime_orders

        self.needs_window = needs.window
        self.needs_order = needs.order
        self.service_min_contacts = needs.service_sensitive_min_contacts
        price = Fraction(needs.price_sensitive_min_discounted_share)
        quality = Fraction(needs.quality_seeking_min_premium_share)
        self.price_share_num, self.price_share_den = price.numerator, price.denominator
        self.quality_share_num, self.quality_share_den = quality.numerator, quality.denominator
        self.price_share_text = _decimal_text(needs.price_sensitive_min_discounted_share)
        self.quality_share_text = _decimal_text(needs.quality_seeking_min_premium_share)

        self.rfm_window = rfm.window
        self.r_cuts = rfm.r_max_recency_days
        self.f_cuts = tuple(reversed(rfm.f_min_orders))
        self.m_cuts = tuple(_units(m) for m in reversed(rfm.m_min_net_spend))
        # Every (r, f, m) resolved once, at index r * 36 + f * 6 + m; index 0 is (0, 0, 0), the
        # customer who never bought.
        self.rfm_scores: list[Rfm] = [Rfm(0, 0, 0)] * 216
        self.rfm_table: list[str] = [NO_RFM_SEGMENT] * 216
        for r in range(1, 6):
            for f in range(1, 6):
                for m in range(1, 6):
                    self.rfm_scores[r * 36 + f * 6 + m] = Rfm(r, f, m)
                    self.rfm_table[r * 36 + f * 6 + m] = next(
                        s.name
                        for s in rfm.segments
                        if s.r[0] <= r <= s.r[1] and s.f[0] <= f <= s.f[1] and s.m[0] <= m <= s.m[1]
                    )

        self.levels_window = levels.window
        self.frequency_high, self.frequency_medium = levels.frequency.high, levels.frequency.medium
        self.aov_high, self.aov_medium = _units(levels.aov.high), _units(levels.aov.medium)
        self.profit_high = _units(levels.profit.high)
        self.profit_medium = _units(levels.profit.medium)

        self.key_window = key.window
        self.key_tiers = frozenset(key.value_tiers)
        self.key_min_orders = key.min_orders

        # Day offsets after the last / first purchase at which a recency / tenure threshold is
        # crossed (recency >= t from day last + t; "recency <= c" stops at last + c + 1).
        self.recency_offsets: tuple[int, ...] = tuple(
            sorted({life.at_risk_days, life.churned_days, *(c + 1 for c in self.r_cuts)})
        )
        self.tenure_offsets: tuple[int, ...] = tuple(
            sorted({life.new_days, loyalty.high_min_tenure_days})
        )

        treatments = {
            tid: Treatment(id=tid, **t.model_dump()) for tid, t in rules.treatments.items()
        }
        self.segments: tuple[CompiledSegment, ...] = tuple(
            CompiledSegment(i, s, treatments[s.treatment]) for i, s in enumerate(rules.segments)
        )
        self.segment_count = len(self.segments)
        # Axes and segment per combination of axis values seen so far. The domain is finite
        # (a few hundred thousand combinations at most, a few hundred in practice), values are
        # immutable and equal whoever computes them, so sharing them is safe; the bound only
        # guards memory against pathological rules.
        self.resolved: dict[AxesKey, tuple[Axes, CompiledSegment]] = {}

    def resolve(self, key: AxesKey) -> tuple[Axes, CompiledSegment]:
        """Axes and first matching segment for one combination of axis values; cached."""
        lifecycle, value_tier, loyalty, needs, rfm_index, key_account, frequency, aov, profit = key
        rfm_segment = self.rfm_table[rfm_index]
        values = (
            lifecycle,
            value_tier,
            loyalty,
            needs,
            rfm_segment,
            key_account,
            frequency,
            aov,
            profit,
        )
        segment = next(
            s for s in self.segments if all(values[i] in allowed for i, allowed in s.conditions)
        )
        axes = Axes(
            lifecycle=lifecycle,
            value_tier=value_tier,
            loyalty=loyalty,
            needs=needs,
            rfm=self.rfm_scores[rfm_index],
            rfm_segment=rfm_segment,
            key_account=key_account,
            frequency=frequency,
            aov=aov,
            profit=profit,
        )
        if len(self.resolved) < _RESOLVED_MAX:
            self.resolved[key] = axes, segment
        return axes, segment

    def r_score(self, recency: int) -> int:
        """5 for recency within the first cut point ... 1 beyond the last."""
        return 5 - bisect_left(self.r_cuts, recency)

    def next_after(self, offsets: tuple[int, ...], origin: int, today: int) -> int | None:
        """The first ``origin + offset`` day strictly after ``today``."""
        i = bisect_right(offsets, today - origin)
        return origin + offsets[i] if i < len(offsets) else None


# --- loading ---------------------------------------------------------------------------------


# libyaml's parser when PyYAML was built with it (about 10x faster); safe either way.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """Safe loader that refuses a key given twice (PyYAML would silently keep the last)."""


def _mapping_without_duplicates(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_rules(text: str) -> Rules:
    """Validate a rules document (YAML, or JSON, which is YAML) into :class:`Rules`.

    Raises :class:`RulesError` listing every problem with its path, e.g.
    ``segments[3].treatment``.
    """
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesError([{"path": "", "message": f"not valid YAML/JSON: {exc}"}]) from None
    return rules_from_data(data)


def rules_from_data(data: object) -> Rules:
    """Validate an already parsed document (e.g. a JSON request body) into :class:`Rules`.

    Raises :class:`RulesError` like :func:`parse_rules`.
    """
    if not isinstance(data, dict):
        raise RulesError([{"path": "", "message": "the document must be a mapping"}])
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        raise RulesError(
            [{"path": _path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        ) from None


def load_rules(path: Path | None = None) -> Rules:
    """Rules from a file, or the packaged ``default_rules.yaml`` when ``path`` is None."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_RULES_FILE).read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    return parse_rules(text)
