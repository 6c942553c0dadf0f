"""Comparing two states (the live one and one rebuilt by ``segments replay``), as pure functions.

What must be equal for every customer: the profile (as :func:`decode_customer` reads it at the
same ``min_day``), the exactly-once marks (watermark ``w``, event-id ring ``r``), the stored
segmentation (fingerprint, rules version, next review), its member-set entry and due-index
entry, and an erase tombstone. What is not compared: the revision ``v`` (it counts segment
writes too, which depend on when the customer was classified) and ``as_of``.

Some differences are expected on a running system and are *excused* (counted, not reported):

- ``newer_in_live``: the live customer applied an event at or past the offset the rebuild read
  up to (the live consumer moved on meanwhile);
- ``in_flight``: the rebuilt customer holds an event the live consumer group has not committed
  yet (the live consumer is behind, not wrong);
- ``due``: either side's segmentation is past its ``next_review_at`` (a sweeper will re-classify
  it; the API answers such a customer with a fresh classification anyway), so only the profile
  and marks are compared;
- ``expired``: the customer exists only in the rebuilt state and has had no activity for
  ``state.retention_days`` (the live retention job deleted it; sweepers on the rebuilt state
  will too).

Per shard, each side must be consistent with its customers (segment counts = member-set sizes =
customers stored with that segment; due-index size = customers with a next review), and the
counts of both sides must be equal once the excused customers are taken out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from service.segmentation.profile import MS_PER_DAY, Profile
from service.store.packing import StoredSegmentation, decode_customer

Excuse = str
"""One of ``newer_in_live``, ``in_flight``, ``due``, ``expired``."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that is not the same in both states."""

    kind: str
    """``missing_in_rebuilt``, ``missing_in_live``, ``profile``, ``watermark``, ``ring``,
    ``tombstone``, ``segmentation``, ``member_set``, ``due_index`` (per customer) or
    ``counts``, ``set_size``, ``due_size`` (per shard)."""
    shard: int
    customer_id: str | None
    detail: str

    def __str__(self) -> str:
        who = f"customer {self.customer_id!r}" if self.customer_id is not None else "shard"
        return f"{self.kind}: {who} (shard {self.shard}): {self.detail}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One customer as one side stores it."""

    profile: Profile
    watermark: tuple[int, int] | None
    """(partition, offset) of the last applied event."""
    ring: bytes
    tombstone: bool
    stored: StoredSegmentation | None
    in_member_set: bool
    """Whether the customer is a member of its stored segment's set."""
    due_ms: int | None
    """Its score in the shard's due index (None: not in it)."""

    @property
    def last_activity_ms(self) -> int | None:
        p = self.profile
        candidates = [t for t in (p.last_purchase_ms, p.last_engagement_ms) if t is not None]
        if p.days:
            candidates.append(max(p.days) * MS_PER_DAY)
        return max(candidates) if candidates else None


def snapshot(
    customer_id: str,
    fields: Mapping[bytes, bytes],
    *,
    min_day: int,
    in_member_set: bool,
    due_ms: int | None,
) -> Snapshot:
    """A customer hash (HGETALL) with its index entries, decoded."""
    flat = [x for pair in fields.items() for x in pair]
    state = decode_customer(customer_id, flat, min_day=min_day)
    raw_w = fields.get(b"w")
    watermark = None
    if raw_w:
        partition, _, offset = raw_w.partition(b":")
        watermark = (int(partition), int(offset))
    return Snapshot(
        profile=state.profile,
        watermark=watermark,
        ring=fields.get(b"r", b""),
        tombstone=b"x" in fields,
        stored=state.stored,
        in_member_set=in_member_set,
        due_ms=due_ms,
    )


@dataclass(frozen=True, slots=True)
class Positions:
    """Where the rebuild stopped and what the live group had committed, per partition."""

    read_to: Mapping[int, int]
    """Exclusive end offset the rebuild read up to."""
    live_committed: Mapping[int, int]
    """The live consumer group's committed offsets when the verification started."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a comparison needs besides the two customers."""

    now_ms: int
    positions: Positions | None = None
    """None: nothing is excused for being newer or in flight (two quiet states)."""
    retention_ms: int | None = None


def excuse(live: Snapshot | None, rebuilt: Snapshot | None, ctx: Context) -> Excuse | None:
    """Why the two may legitimately differ (see the module docstring), or None."""
    pos = ctx.positions
    if pos is not None:
        lw = None if live is None else live.watermark
        rw = None if rebuilt is None else rebuilt.watermark
        live_ahead = lw is not None and (rw is None or lw[0] != rw[0] or lw[1] > rw[1])
        if live_ahead and lw is not None and lw[1] >= pos.read_to.get(lw[0], 0):
            return "newer_in_live"
        rebuilt_ahead = rw is not None and (lw is None or lw[0] != rw[0] or rw[1] > lw[1])
        if rebuilt_ahead and rw is not None and rw[1] >= pos.live_committed.get(rw[0], 0):
            return "in_flight"
    if live is None and rebuilt is not None and ctx.retention_ms is not None:
        last = rebuilt.last_activity_ms
        if last is None or ctx.now_ms - last >= ctx.retention_ms:
            return "expired"
    if live is not None and rebuilt is not None and (_due(live, ctx) or _due(rebuilt, ctx)):
        return "due"
    return None


def _due(s: Snapshot, ctx: Context) -> bool:
    return (
        s.stored is not None
        and s.stored.next_review_ms is not None
        and s.stored.next_review_ms <= ctx.now_ms
    )


def compare_customer(
    customer_id: str,
    shard: int,
    live: Snapshot | None,
    rebuilt: Snapshot | None,
    ctx: Context,
) -> tuple[list[Difference], Excuse | None]:
    """Differences between the two sides of one customer, and the excuse that waived some."""
    why = excuse(live, rebuilt, ctx)
    if why in ("newer_in_live", "in_flight", "expired"):
        return [], why

    def diff(kind: str, detail: str) -> Difference:
        return Difference(kind, shard, customer_id, detail)

    if live is None or rebuilt is None:
        if live is None and rebuilt is None:
            return [], None
        return [diff("missing_in_live" if live is None else "missing_in_rebuilt", "")], None

    out: list[Difference] = []
    if live.tombstone != rebuilt.tombstone:
        out.append(diff("tombstone", f"live {live.tombstone}, rebuilt {rebuilt.tombstone}"))
    if live.profile != rebuilt.profile:
        out.append(diff("profile", _profile_delta(live.profile, rebuilt.profile)))
    if live.watermark != rebuilt.watermark:
        out.append(diff("watermark", f"live {live.watermark}, rebuilt {rebuilt.watermark}"))
    if live.ring != rebuilt.ring:
        out.append(diff("ring", f"live {live.ring.hex()}, rebuilt {rebuilt.ring.hex()}"))
    if why == "due":
        return out, why  # segmentation legitimately differs until a sweeper catches up

    ls, rs = live.stored, rebuilt.stored
    if _segmentation_key(ls) != _segmentation_key(rs):
        out.append(diff("segmentation", f"live {_describe(ls)}, rebuilt {_describe(rs)}"))
    for side, s in (("live", live), ("rebuilt", rebuilt)):
        if s.stored is not None and not s.in_member_set:
            out.append(diff("member_set", f"{side}: not in the set of {s.stored.segment!r}"))
        want_due = None if s.stored is None else s.stored.next_review_ms
        if s.due_ms != want_due:
            out.append(diff("due_index", f"{side}: scored {s.due_ms}, next review {want_due}"))
    return out, why


def _segmentation_key(s: StoredSegmentation | None) -> tuple[object, ...] | None:
    if s is None:
        return None
    return (*s.fingerprint(), s.axes.rfm_segment, s.rules_version, s.next_review_ms)


def _describe(s: StoredSegmentation | None) -> str:
    if s is None:
        return "none"
    return f"{s.segment}/{s.treatment_id} rules {s.rules_version[:12]} next {s.next_review_ms}"


def _profile_delta(a: Profile, b: Profile) -> str:
    parts = []
    for name in ("first_purchase_ms", "last_purchase_ms", "last_engagement_ms", "lifetime"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            parts.append(f"{name} live {x} rebuilt {y}")
    days = sorted(set(a.days) | set(b.days))
    changed = [d for d in days if a.days.get(d) != b.days.get(d)]
    if changed:
        parts.append(f"daily buckets differ on {len(changed)} day(s), first {changed[0]}")
    return "; ".join(parts)


@dataclass(slots=True)
class ShardSide:
    """One side of one shard: its indexes as stored and its customers as scanned."""

    counts: dict[str, int] = field(default_factory=dict)
    """The ``counts`` hash."""
    set_sizes: dict[str, int] = field(default_factory=dict)
    """SCARD of each segment's member set."""
    due_size: int = 0
    """ZCARD of the due index."""
    segments: Counter[str] = field(default_factory=Counter)
    """Customers scanned, by stored segment."""
    with_review: int = 0
    """Customers scanned that have a next review."""

    def tally(self, s: Snapshot) -> None:
        if s.stored is not None:
            self.segments[s.stored.segment] += 1
            if s.stored.next_review_ms is not None:
                self.with_review += 1


def compare_shard(
    shard: int, live: ShardSide, rebuilt: ShardSide, excused: Mapping[str, int]
) -> list[Difference]:
    """Per-shard indexes: each side consistent with its own customers, and the two sides'
    counts equal once ``excused`` (live minus rebuilt per segment, for customers excused) is
    taken out."""
    out: list[Difference] = []
    for side_name, side in (("live", live), ("rebuilt", rebuilt)):
        for seg in sorted(set(side.counts) | set(side.set_sizes) | set(side.segments)):
            counted = side.counts.get(seg, 0)
            size = side.set_sizes.get(seg, 0)
            scanned = side.segments.get(seg, 0)
            if not counted == size == scanned:
                out.append(
                    Difference(
                        "set_size",
                        shard,
                        None,
                        f"{side_name} {seg!r}: counts {counted}, set {size}, customers {scanned}",
                    )
                )
        if side.due_size != side.with_review:
            out.append(
                Difference(
                    "due_size",
                    shard,
                    None,
                    f"{side_name}: due index {side.due_size}, customers with a next review "
                    f"{side.with_review}",
                )
            )
    for seg in sorted(set(live.counts) | set(rebuilt.counts) | set(excused)):
        lc, rc = live.counts.get(seg, 0), rebuilt.counts.get(seg, 0)
        if lc - excused.get(seg, 0) != rc:
            out.append(Difference("counts", shard, None, f"{seg!r}: live {lc}, rebuilt {rc}"))
    return out


def excused_delta(live: Snapshot | None, rebuilt: Snapshot | None) -> Iterable[tuple[str, int]]:
    """How an excused customer moves the live-minus-rebuilt segment counts."""
    if live is not None and live.stored is not None:
        yield live.stored.segment, 1
    if rebuilt is not None and rebuilt.stored is not None:
        yield rebuilt.stored.segment, -1


@dataclass(slots=True)
class DiffReport:
    """The outcome of a verification."""

    examples_wanted: int = 20
    live_customers: int = 0
    rebuilt_customers: int = 0
    differences: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    examples: list[Difference] = field(default_factory=list)
    excused: Counter[str] = field(default_factory=Counter)

    @property
    def equal(self) -> bool:
        return self.differences == 0

    def add(self, diffs: Iterable[Difference]) -> None:
        for d in diffs:
            self.differences += 1
            self.by_kind[d.kind] += 1
            if len(self.examples) < self.examples_wanted:
                self.examples.append(d)

    def lines(self) -> list[str]:
        out = [
            f"customers: live {self.live_customers}, rebuilt {self.rebuilt_customers}",
            f"differences: {self.differences}"
            + (
                " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items())) + ")"
                if self.by_kind
                else ""
            ),
        ]
        if self.excused:
            out.append("excused: " + ", ".join(f"{k} {n}" for k, n in sorted(self.excused.items())))
        if self.examples:
            out.append(f"first {len(self.examples)}:")
            out.extend(f"  {d}" for d in self.examples)
        return out
