"""Reading a customer hash back: the one-parse bucket path (and the field-by-field one it
falls back to), and the column form the classifier sums over."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.segmentation.classifier import _window_sums
from service.segmentation.profile import EMPTY_BUCKETS, ZERO, Buckets, Profile, Totals
from service.segmentation.windows import purchase_days, window_totals
from service.store.packing import _bucket_columns, decode_customer, encode_totals

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TODAY = 20_400

money = st.integers(min_value=-(10**15), max_value=10**15)
totals = st.builds(
    Totals,
    st.integers(0, 50),
    money,
    st.integers(0, 5),
    money,
    money,
    money,
    money,
    st.integers(0, 9),
    st.integers(0, 9),
)
buckets = st.dictionaries(st.integers(TODAY - 500, TODAY + 3), totals, max_size=80)


def _wide(t: Totals) -> str:
    """Totals with every field, trailing zeros included (the store leaves them off; a reader
    takes both)."""
    return ",".join(map(str, t))


def _hash(
    days: dict[int, Totals],
    *,
    wide: set[int],
    lifetime: Totals | None,
    scalars: dict[bytes, bytes],
    seed: int,
) -> list[bytes]:
    """A customer hash as HGETALL gives it (flat, in any field order)."""
    pairs = [
        (f"d:{day}".encode(), (_wide(t) if day in wide else encode_totals(t)).encode())
        for day, t in days.items()
    ]
    if lifetime is not None:
        pairs.append((b"L", encode_totals(lifetime).encode()))
    pairs += scalars.items()
    random.Random(seed).shuffle(pairs)
    return [x for pair in pairs for x in pair]


@PROPERTY
@given(
    days=buckets,
    min_day=st.integers(TODAY - 520, TODAY + 5),
    wide_share=st.sampled_from([0.0, 0.3, 1.0]),
    lifetime=st.none() | totals,
    segmented=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_decode_reads_every_bucket_from_the_window_on_and_names_the_rest_stale(
    days: dict[int, Totals],
    min_day: int,
    wide_share: float,
    lifetime: Totals | None,
    segmented: bool,
    seed: int,
) -> None:
    rng = random.Random(seed)
    wide = {day for day in days if rng.random() < wide_share}
    scalars = {b"f": b"1700000000000", b"l": b"1760000000000", b"v": b"17", b"w": b"3:991"}
    scalars[b"r"] = bytes(rng.randrange(256) for _ in range(16))  # event id hashes: any bytes
    if segmented:
        scalars |= {b"g": b"vip|hhhp555-hhh|t1", b"m": b"v1|1700000000000||champions"}
    fields = _hash(days, wide=wide, lifetime=lifetime, scalars=scalars, seed=seed)

    state = decode_customer("c-1", fields, min_day=min_day)

    kept = {day: t for day, t in days.items() if day >= min_day}
    assert state.profile.days == kept
    assert dict(state.profile.days) == kept
    assert list(state.profile.days) == sorted(kept)
    assert sorted(state.stale) == sorted(f"d:{day}".encode() for day in days if day < min_day)
    assert state.profile.lifetime == (lifetime or ZERO)
    assert (state.profile.first_purchase_ms, state.profile.last_purchase_ms) == (
        1700000000000,
        1760000000000,
    )
    assert state.profile.last_engagement_ms is None
    assert state.revision == "17"
    assert state.packed == ("vip|hhhp555-hhh|t1" if segmented else "")
    assert state.meta == ("v1|1700000000000||champions" if segmented else "")


def test_buckets_of_any_width_take_the_one_parse_path() -> None:
    buckets = {b"d:5": b"1,2,0,0,3", b"d:3": b"0,0,0,0,0,0,0,1,1", b"d:4": b"1,2"}
    columns = _bucket_columns(buckets)
    assert columns is not None
    assert columns.days == [3, 4, 5]
    assert columns == {
        3: Totals(engagements=1, support_contacts=1),
        4: Totals(1, 2),
        5: Totals(1, 2, 0, 0, 3),
    }
    assert _bucket_columns({**buckets, b"zz": b"1,2"}) is None  # not a bucket: field by field
    assert _bucket_columns({b"d:1": b"1,2,3,4,5,6,7,8,9,10"}) is None  # too wide
    huge = _bucket_columns({b"d:1": b"1," + b"9" * 30})  # beyond 64 bits: exact
    assert huge == {1: Totals(1, int("9" * 30))}
    # Days of different lengths (before 1997-05-19, or before the epoch) sort by number.
    early = _bucket_columns({b"d:10000": b"1", b"d:9999": b"2", b"d:-3": b"3", b"d:123": b"4"})
    assert early is not None and list(early) == [-3, 123, 9999, 10000]
    assert early[9999] == Totals(2)


def test_the_field_by_field_path_reads_the_same() -> None:
    buckets = {b"d:5": b"1,2,0,0,3", b"d:3": b"0,0,0,0,0,0,0,1,1"}
    fields = [b"zz", b"?", *[x for kv in buckets.items() for x in kv]]  # a field of no use
    assert decode_customer("c", fields, min_day=0).profile.days == _bucket_columns(buckets)


def test_an_unknown_customer_decodes_empty() -> None:
    for fields in ([], [b"x", b"1764000000000"]):  # nothing, or an erase tombstone
        state = decode_customer("c", fields, min_day=0)
        assert state.profile == Profile("c")
        assert not state.profile.known
        assert state.profile.days is EMPTY_BUCKETS
        assert (state.revision, state.packed, state.stale) == ("", "", ())


def test_encode_totals_leaves_trailing_zeros_off() -> None:
    assert encode_totals(Totals(1, 500)) == "1,500"
    assert encode_totals(Totals(engagements=1)) == "0,0,0,0,0,0,0,1"
    assert encode_totals(ZERO) == "0"


def test_buckets_is_a_read_only_mapping_in_day_order() -> None:
    rows = {9: Totals(1, 10), 2: Totals(2, 20), 5: Totals(engagements=1)}
    b = Buckets.of(rows)
    assert b == rows and rows == b
    assert b != {9: Totals(1, 10)}
    assert list(b) == [2, 5, 9] and len(b) == 3
    assert b[5] == Totals(engagements=1) and type(b[5]) is Totals
    assert 5 in b and 6 not in b and "5" not in b
    with pytest.raises(KeyError):
        b[6]
    assert Buckets.of(b) is b
    assert b.start(3) == 1 and b.start(10) == 3
    assert b.tail(1) == {5: Totals(engagements=1), 9: Totals(1, 10)}
    assert b.tail(0) is b
    assert Buckets.of({}) is EMPTY_BUCKETS and EMPTY_BUCKETS == {}
    columns = [(x,) for x in Totals(3, 30)]
    assert Buckets.in_day_order([7], columns) == {7: Totals(3, 30)}
    columns = [(a, b) for a, b in zip(Totals(1), Totals(2), strict=True)]
    assert Buckets.in_day_order([8, 7], columns) == {7: Totals(2), 8: Totals(1)}
    assert Buckets.in_day_order([], []) is EMPTY_BUCKETS
    assert Profile("c", days=b) == Profile("c", days=dict(rows))


@PROPERTY
@given(days=buckets, window=st.integers(1, 500))
def test_window_sums_of_columns_equal_the_sums_of_the_buckets(
    days: dict[int, Totals], window: int
) -> None:
    b = Buckets.of(days)
    since = TODAY - window + 1
    in_window = {day: t for day, t in days.items() if day >= since}
    expected = Totals(*[sum(t[k] for t in in_window.values()) for k in range(len(ZERO))])
    assert _window_sums(b, b.start(since)) == (
        expected.orders,
        expected.spend,
        expected.refunded,
        expected.margin,
        expected.discounted_spend,
        expected.premium_spend,
        expected.support_contacts,
        min(in_window, default=None),
    )
    assert window_totals(Profile("c", days=days), window, TODAY) == expected
    assert window_totals(Profile("c", days=b), window, TODAY) == expected
    bought = sorted(day for day, t in in_window.items() if t.orders)
    assert purchase_days(Profile("c", days=b), since) == bought
    assert purchase_days(Profile("c", days=days), since) == bought
