"""The published JSON Schema files (schemas/json/) are the ones the models generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from schemas import generate

EXPECTED_FILES = {
    "purchase.json",
    "refund.json",
    "engagement.json",
    "event.json",
    "segment-change.json",
}


def test_committed_files_are_current() -> None:
    assert generate.stale() == [], "run: python -m schemas.generate"
    assert {p.name for p in generate.JSON_DIR.glob("*.json")} == EXPECTED_FILES


def test_rendering_is_deterministic() -> None:
    first, second = generate.render(), generate.render()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n")
        document = json.loads(text)
        assert json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text
        assert document["$schema"] == generate.DIALECT


def test_check_fails_on_a_stale_missing_or_extra_file(tmp_path: Path) -> None:
    directory = tmp_path / "json"
    shutil.copytree(generate.JSON_DIR, directory)
    assert generate.main(["--check", "--dir", str(directory)]) == 0

    (directory / "refund.json").write_text("{}\n", encoding="utf-8")
    (directory / "purchase.json").unlink()
    (directory / "old.json").write_text("{}\n", encoding="utf-8")
    assert generate.stale(directory) == ["purchase.json", "refund.json", "old.json"]
    assert generate.main(["--check", "--dir", str(directory)]) == 1

    assert generate.main(["--dir", str(directory)]) == 0
    assert generate.main(["--check", "--dir", str(directory)]) == 0
    assert {p.name for p in directory.glob("*.json")} == EXPECTED_FILES


def test_event_union_is_discriminated_on_type() -> None:
    event = json.loads((generate.JSON_DIR / "event.json").read_text(encoding="utf-8"))
    assert event["discriminator"]["propertyName"] == "type"
    assert set(event["discriminator"]["mapping"]) == {"purchase", "refund", "engagement"}


def test_contract_rules_are_published() -> None:
    purchase = json.loads((generate.JSON_DIR / "purchase.json").read_text(encoding="utf-8"))
    props = purchase["properties"]
    assert purchase["additionalProperties"] is False
    assert set(purchase["required"]) == {
        "schema_version",
        "type",
        "event_id",
        "customer_id",
        "occurred_at",
        "order_id",
        "amount",
    }
    assert props["schema_version"]["const"] == 1
    assert props["customer_id"]["pattern"] == "^[A-Za-z0-9._:@-]{1,128}$"
    assert props["occurred_at"]["format"] == "date-time"
    number, string = props["amount"]["anyOf"]
    assert number["minimum"] == 0
    assert string["pattern"] == r"^(0|[1-9][0-9]*)(\.[0-9]{1,4})?$"

    change = json.loads((generate.JSON_DIR / "segment-change.json").read_text(encoding="utf-8"))
    assert set(change["required"]) == set(change["properties"])  # every field always written
