"""The consumer skips a customer's segment write by comparing stored strings; that must give
the same answer as comparing the unpacked segmentations (segment, axes, treatment, rules
version, next review; never the as-of time)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.segmenter import _unchanged
from service.segmentation.profile import Profile
from service.segmentation.types import Axes, Rfm
from service.store.packing import CustomerState, StoredSegmentation, pack_segmentation

axes = st.builds(
    Axes,
    lifecycle=st.sampled_from(["new", "regular", "churned"]),
    value_tier=st.sampled_from(["high", "negative"]),
    loyalty=st.sampled_from(["high", "none"]),
    needs=st.sampled_from(["price_sensitive", "unknown"]),
    rfm=st.builds(Rfm, st.integers(1, 2), st.integers(4, 5), st.integers(1, 2)),
    rfm_segment=st.sampled_from(["champions", "at_risk"]),
    key_account=st.booleans(),
    frequency=st.sampled_from(["high", "low"]),
    aov=st.sampled_from(["medium", "low"]),
    profit=st.sampled_from(["high", "low"]),
)
segmentations = st.builds(
    StoredSegmentation,
    segment=st.sampled_from(["vip", "win_back"]),
    axes=axes,
    treatment_id=st.sampled_from(["t1", "t2"]),
    rules_version=st.sampled_from(["v1", "v2"]),
    as_of_ms=st.integers(1_700_000_000_000, 1_800_000_000_000),
    next_review_ms=st.none() | st.sampled_from([1_760_000_000_000, 1_770_000_000_000]),
)


@settings(max_examples=500, deadline=None)
@given(old=segmentations, new=segmentations, same_as_of=st.booleans())
def test_unchanged_on_strings_equals_unchanged_unpacked(
    old: StoredSegmentation, new: StoredSegmentation, same_as_of: bool
) -> None:
    if same_as_of:
        new = replace(new, as_of_ms=old.as_of_ms)
    packed, meta = pack_segmentation(old)
    state = CustomerState(profile=Profile("c"), revision="3", packed=packed, meta=meta)
    expected = (
        old.fingerprint() == new.fingerprint()
        and old.rules_version == new.rules_version
        and old.next_review_ms == new.next_review_ms
    )
    assert _unchanged(state, *pack_segmentation(new)) == expected
    as_of_only = replace(old, as_of_ms=old.as_of_ms + 1)
    assert _unchanged(state, *pack_segmentation(as_of_only))  # as-of alone: no write
