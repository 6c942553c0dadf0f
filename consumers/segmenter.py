"""Steps 3–5 of every path that can change a segment (consumer, sweeper, re-classification).

For a set of customers just read from the store:

3. classify each one at ``now`` with the active rules (pure);
4. produce a change event for every customer whose segment, axes or treatment differ from the
   stored ones, and await every acknowledgement;
5. write the new segmentation and the shard indexes with a compare-and-set per customer; a
   customer that changed meanwhile is read again and goes round once more.

A change event is produced *before* its segmentation is written: a crash in between replays
the work, recomputes the same result from the same state and produces the change again with
the same deterministic ``change_id``. Nothing is lost; a repeat can be dropped downstream.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import orjson

from schemas.changes import trigger_identity
from service.errors import WriteConflict
from service.segmentation.classifier import classify
from service.segmentation.rules import Rules
from service.segmentation.types import Axes, Cause, Segmentation, Treatment
from service.store.packing import (
    CustomerState,
    StoredSegmentation,
    axes_of,
    epoch_ms,
    from_epoch_ms,
    pack_segmentation,
)
from service.store.profiles import ProfileStore, SegmentWrite

if TYPE_CHECKING:
    from consumers.metrics import ConsumerMetrics

MAX_WRITE_ROUNDS = 5
MS_PER_DAY = 86_400_000


class RecordSink(Protocol):
    """Where change events go (a Kafka producer in production)."""

    async def send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Sends every (key, value) and returns once all are acknowledged."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """What caused a re-classification; becomes the change event's ``trigger`` object.

    A plain value on the hot path (one per event); :class:`schemas.changes.Trigger` is its
    published shape, and a test holds the two together.
    """

    event_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    review_at: datetime | None = None
    rules_version: str | None = None

    def identity(self) -> str:
        """Names the trigger stably: an input of the deterministic ``change_id``."""
        return trigger_identity(
            self.event_id,
            self.topic,
            self.partition,
            self.offset,
            self.review_at,
            self.rules_version,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "review_at": None if self.review_at is None else _iso(self.review_at),
            "rules_version": self.rules_version,
        }


@dataclass(frozen=True, slots=True)
class SettleResult:
    written: int
    changes: list[dict[str, object]]
    """The change events produced, as published (JSON objects)."""


@functools.lru_cache(maxsize=4096)
def _iso(instant: datetime) -> str:
    # Few distinct instants per batch (its ``now``, day starts), thousands of uses: memoised.
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@functools.lru_cache(maxsize=4096)
def _iso_ms(ms: int) -> str:
    return _iso(from_epoch_ms(ms))


def treatment_json(t: Treatment) -> dict[str, object]:
    """A treatment as published (the shape of :class:`schemas.changes.TreatmentOut`)."""
    return {
        "id": t.id,
        "discount_pct": t.discount_pct,
        "free_shipping": t.free_shipping,
        "support_queue": t.support_queue,
        "campaign": t.campaign,
        "channel": t.channel,
        "offer": t.offer,
    }


def segmentation_json(seg: Segmentation) -> dict[str, object]:
    """A segmentation as published (the shape of :class:`schemas.changes.SegmentationOut`)."""
    return _segmentation_json(
        seg.segment,
        axes_json(seg.axes),
        treatment_json(seg.treatment),
        list(seg.reasons),
        seg.rules_version,
        _iso(seg.as_of),
        None if seg.next_review_at is None else _iso(seg.next_review_at),
    )


def axes_json(a: Axes) -> dict[str, object]:
    """Axes as published (the shape of :class:`schemas.changes.AxesOut`)."""
    return {
        "lifecycle": a.lifecycle,
        "value_tier": a.value_tier,
        "loyalty": a.loyalty,
        "needs": a.needs,
        "rfm": {"r": a.rfm.r, "f": a.rfm.f, "m": a.rfm.m},
        "rfm_segment": a.rfm_segment,
        "key_account": a.key_account,
        "frequency": a.frequency,
        "aov": a.aov,
        "profit": a.profit,
    }


def _segmentation_json(
    segment: str,
    axes: dict[str, object],
    treatment: dict[str, object],
    reasons: list[str],
    rules_version: str,
    as_of: str,
    next_review_at: str | None,
) -> dict[str, object]:
    return {
        "segment": segment,
        "axes": axes,
        "treatment": treatment,
        "reasons": reasons,
        "rules_version": rules_version,
        "as_of": as_of,
        "next_review_at": next_review_at,
    }


def min_day_for(now: datetime, rules: Rules) -> int:
    """Oldest daily bucket any window can still see."""
    return epoch_ms(now) // MS_PER_DAY - rules.max_window + 1


def change_id(customer_id: str, cause: Cause, trigger: str, before: str, after: str) -> str:
    """Deterministic: the same transition for the same reason always has the same id."""
    material = "\x1f".join((customer_id, cause, trigger, before, after)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


def _fingerprint_text(g: str, rfm_segment: str) -> str:
    """The fingerprint as a stable string (segment, axes codes, treatment, RFM segment), from
    the packed ``g`` field and the RFM segment (the axis ``m`` holds)."""
    return f"{g}|{rfm_segment}"


def _unchanged(state: CustomerState, g: str, m: str) -> bool:
    """Whether the segmentation packed as ``g``, ``m`` is what ``state`` holds in everything a write
    would change: segment, axes and treatment (``g`` and the RFM segment), rules version and
    next review (``m`` but for its as-of time). Same answer as comparing the unpacked
    segmentations, cheaper."""
    if g != state.packed:
        return False
    version, _, next_review, rfm_segment = m.split("|")
    stored = state.meta.split("|")
    return stored[0] == version and stored[2] == next_review and stored[3] == rfm_segment


def _stored_from(seg: Segmentation, as_of_ms: int) -> StoredSegmentation:
    """``as_of_ms``: ``epoch_ms(seg.as_of)``, which the caller has (one ``now`` per batch)."""
    return StoredSegmentation(
        segment=seg.segment,
        axes=seg.axes,
        treatment_id=seg.treatment.id,
        rules_version=seg.rules_version,
        as_of_ms=as_of_ms,
        next_review_ms=None if seg.next_review_at is None else epoch_ms(seg.next_review_at),
    )


def treatment_of(rules: Rules, treatment_id: str) -> Treatment:
    """A treatment by id; one the rules no longer define keeps just its id."""
    spec = rules.treatments.get(treatment_id)
    return (
        Treatment(id=treatment_id)
        if spec is None
        else Treatment(id=treatment_id, **spec.model_dump())
    )


class Segmenter:
    def __init__(
        self,
        store: ProfileStore,
        sink: RecordSink,
        *,
        changes_topic: str,
        rules: Callable[[], Rules],
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._sink = sink
        self._topic = changes_topic
        self._rules = rules
        self._published: dict[tuple[str, str, str], _Published] = {}

    def _published_of(
        self, rules: Rules, g: str, rfm_segment: str, seg: Segmentation | None = None
    ) -> _Published:
        """Segment, axes JSON and treatment JSON of the segmentation packed as ``g`` with
        ``rfm_segment``, under ``rules`` (which resolve the treatment).

        A few hundred combinations cover nearly every customer, so they are made once and
        shared by every change event that shows them: the JSON objects are read-only. ``seg``:
        the classifier's segmentation when there is one (else the packed form is unpacked)."""
        key = (rules.version, g, rfm_segment)
        published = self._published.get(key)
        if published is None:
            if seg is not None:
                published = (seg.segment, axes_json(seg.axes), treatment_json(seg.treatment))
            else:
                segment, code, treatment_id = g.split("|")
                published = (
                    segment,
                    axes_json(axes_of(code, rfm_segment)),
                    treatment_json(treatment_of(rules, treatment_id)),
                )
            if len(self._published) >= 4096:
                self._published.clear()
            self._published[key] = published
        return published

    async def settle(
        self,
        states: Mapping[str, CustomerState],
        *,
        now: datetime,
        cause: Cause,
        trigger_for: Callable[[str], Trigger | None],
    ) -> SettleResult:
        """Runs steps 3–5 for ``states`` (see the module docstring)."""
        rules = self._rules()
        pending = dict(states)
        written = 0
        emitted: list[dict[str, object]] = []
        as_of_ms = epoch_ms(now)
        for _ in range(MAX_WRITE_ROUNDS):
            writes: list[SegmentWrite] = []
            records: list[tuple[bytes, bytes]] = []
            for cid, state in pending.items():
                if not state.profile.known:
                    continue
                seg = classify(state.profile, rules, now=now)
                new = _stored_from(seg, as_of_ms)
                packed = pack_segmentation(new)
                old_g = state.packed
                if old_g and _unchanged(state, *packed):
                    continue  # nothing to write (decided on the stored strings, not unpacked)
                # The fingerprints compared as stored strings: ``g`` packs segment, axes and
                # treatment, and ``m`` ends with the RFM segment.
                old_rfm = state.meta.rpartition("|")[2] if old_g else ""
                if not old_g or old_g != packed[0] or old_rfm != seg.axes.rfm_segment:
                    change = self._change(
                        cid,
                        state,
                        old_rfm,
                        seg,
                        packed,
                        rules,
                        cause=cause,
                        now=now,
                        trigger=trigger_for(cid),
                    )
                    emitted.append(change)
                    records.append((cid.encode(), orjson.dumps(change)))
                writes.append(
                    SegmentWrite(
                        customer_id=cid,
                        expected_revision=state.revision,
                        expected_packed=old_g,
                        old_segment=old_g.partition("|")[0] if old_g else None,
                        new=new,
                        new_packed=packed,
                    )
                )
            if records:
                await self._sink.send_all(self._topic, records)  # 4. acknowledged before 5.
            if not writes:
                break
            ok = await self._store.write_segments(writes)
            written += sum(ok)
            conflicts = [w.customer_id for w, done in zip(writes, ok, strict=True) if not done]
            if not conflicts:
                break
            pending = dict(await self._store.read(conflicts, min_day=min_day_for(now, rules)))
        else:
            raise WriteConflict(
                f"{len(pending)} customers kept changing during {MAX_WRITE_ROUNDS} rounds"
            )
        if self._metrics is not None and emitted:
            self._metrics.observe_changes(emitted)
        return SettleResult(written=written, changes=emitted)

    def _change(
        self,
        customer_id: str,
        state: CustomerState,
        old_rfm: str,
        seg: Segmentation,
        packed: tuple[str, str],
        rules: Rules,
        *,
        cause: Cause,
        now: datetime,
        trigger: Trigger | None,
    ) -> dict[str, object]:
        """The change event from ``state``'s stored segmentation to ``seg`` (packed as
        ``packed``); ``old_rfm``: the stored RFM segment."""
        old_g = state.packed
        new_g = packed[0]
        rfm_segment = seg.axes.rfm_segment
        before = _fingerprint_text(old_g, old_rfm) if old_g else ""
        after = _fingerprint_text(new_g, rfm_segment)
        trigger_key = "" if trigger is None else trigger.identity()
        previous: dict[str, object] | None = None
        if old_g:
            segment, axes, treatment = self._published_of(rules, old_g, old_rfm)
            version, as_of_ms, next_review_ms, _ = state.meta.split("|")
            previous = _segmentation_json(
                segment,
                axes,
                treatment,
                [],
                version,
                _iso_ms(int(as_of_ms)),
                _iso_ms(int(next_review_ms)) if next_review_ms else None,
            )
        segment, axes, treatment = self._published_of(rules, new_g, rfm_segment, seg)
        nxt = seg.next_review_at
        return {
            "schema_version": 1,
            "change_id": change_id(customer_id, cause, trigger_key, before, after),
            "customer_id": customer_id,
            "cause": cause,
            "as_of": _iso(now),
            "rules_version": seg.rules_version,
            "previous": previous,
            "current": _segmentation_json(
                segment,
                axes,
                treatment,
                list(seg.reasons),
                seg.rules_version,
                _iso(seg.as_of),
                None if nxt is None else _iso(nxt),
            ),
            "trigger": None if trigger is None else trigger.as_json(),
        }


_Published = tuple[str, dict[str, object], dict[str, object]]
"""Segment, axes JSON and treatment JSON (:meth:`Segmenter._published_of`)."""
