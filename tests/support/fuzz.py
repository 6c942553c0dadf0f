"""Structure-aware mutations of valid event records, for fuzzing the decoder.

Deterministic given a ``random.Random``: hypothesis drives the seed in the unit fuzz tests, a
fixed seed builds the hostile stream of the consumer test. Each mutator takes a valid event
(dict) and returns a record ``(key, value)`` that a producer could really send.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import orjson

Record = tuple[bytes | None, bytes]

HOSTILE_STRINGS = [
    "",
    " ",
    "*",
    "c-[0-9]?",
    "{s0001}",
    "c:seg:champions",
    "..",
    "../../etc/passwd",
    "a" * 129,
    "x" * 5_000,
    "ç-ünïcödé-😀",
    "\u0000",
    "\ud800",  # lone surrogate: not encodable as UTF-8 by orjson, by json with escapes
    "<script>",
    "1e309",
    "NaN",
    "-0",
    "0x10",
    "1_000",
    "١٢٣",  # Arabic-Indic digits: Decimal accepts them, the codec must not
    "2026-02-30T10:00:00Z",
    "2026-11-20T10:00:00+25:00",
    "9999-12-31T23:59:59Z",
]
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    10**30,
    -(10**30),
    1.5e308,
    float("nan"),
    [],
    {},
    [[[[[]]]]],
    {"$gt": ""},
    *HOSTILE_STRINGS,
]


def _json(document: Any) -> bytes:
    # stdlib json: writes NaN/Infinity and lone surrogates as escapes, as a careless producer would
    return json.dumps(document).encode()


def mutate_field(rng: random.Random, event: dict[str, Any]) -> Record:
    """One to three fields replaced by hostile values, deleted, or added."""
    changed = dict(event)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice([*event, "items", "currency", "extra", "schema_version"])
        if rng.random() < 0.2:
            changed.pop(field, None)
        else:
            changed[field] = rng.choice(HOSTILE_VALUES)
    return event["customer_id"].encode(), _json(changed)


def mutate_item(rng: random.Random, event: dict[str, Any]) -> Record:
    """Purchase lines: hostile quantities, prices, tiers; many of them; nested wrongly."""
    line: dict[str, Any] = {
        "sku": "s",
        "category": "c",
        "quantity": 1,
        "unit_price": "1.00",
        "tier": "premium",
    }
    line[rng.choice(list(line))] = rng.choice(HOSTILE_VALUES)
    items: Any = [line] * rng.choice([1, 2, 600])
    if rng.random() < 0.2:
        items = {"0": line}
    return event["customer_id"].encode(), _json({**event, "type": "purchase", "items": items})


def mutate_bytes(rng: random.Random, event: dict[str, Any]) -> Record:
    """Byte-level damage to the encoded event: flips, inserts, deletes, truncation, splices."""
    data = bytearray(orjson.dumps(event))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del data[at : at + rng.randint(1, 16)]
        elif op == 3:
            del data[at:]
        elif data:
            data[at:at] = data[: rng.randint(1, len(data))]  # a splice of its own head
    return event["customer_id"].encode(), bytes(data)


def mutate_text(rng: random.Random, event: dict[str, Any]) -> Record:
    """Valid-looking JSON text with traps: duplicate keys, BOMs, other encodings, wrappers,
    comments, nesting bombs, trailing data."""
    text = orjson.dumps(event).decode()
    choice = rng.randrange(8)
    if choice == 0:
        raw = (text[:-1] + ',"amount":"-1","customer_id":"other"}').encode()
    elif choice == 1:
        raw = b"\xef\xbb\xbf" + text.encode()
    elif choice == 2:
        raw = text.encode("utf-16")
    elif choice == 3:
        raw = f"[{text}]".encode()
    elif choice == 4:
        raw = (text + " // comment").encode()
    elif choice == 5:
        raw = b"[" * rng.choice([100, 5_000, 100_000]) + b"]" * 3
    elif choice == 6:
        raw = (text + text).encode()
    else:
        raw = text.replace('"', "'").encode()
    return event["customer_id"].encode(), raw


def mutate_key(rng: random.Random, event: dict[str, Any]) -> Record:
    """The Kafka key: missing, another customer's, hostile, or not UTF-8."""
    key = rng.choice(
        [None, b"", b"other", b"*", b"\xff\xfe", event["customer_id"].encode() + b"\x00"]
    )
    return key, orjson.dumps(event)


MUTATORS: list[Callable[[random.Random, dict[str, Any]], Record]] = [
    mutate_field,
    mutate_item,
    mutate_bytes,
    mutate_text,
    mutate_key,
]


def mutate(rng: random.Random, event: dict[str, Any]) -> Record:
    return rng.choice(MUTATORS)(rng, event)
