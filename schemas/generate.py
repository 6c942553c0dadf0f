"""Writes the published JSON Schema files (``schemas/json/``) from the pydantic models.

    python -m schemas.generate           # (re)write the files
    python -m schemas.generate --check   # exit 1 if any file is missing, stale or extra

Output is deterministic (sorted keys, two-space indent, trailing newline) so the files can be
committed and a unit test can hold them to the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from schemas.changes import SegmentChange
from schemas.events import EVENT_ADAPTER, EngagementEvent, PurchaseEvent, RefundEvent

JSON_DIR: Final = Path(__file__).resolve().parent / "json"
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def _model(model: type[BaseModel], *, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    return model.model_json_schema(mode=mode)


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema. Incoming events describe what the consumer accepts
    (validation mode); the change event describes what the service produces (serialization)."""
    event = EVENT_ADAPTER.json_schema()
    event["title"] = "Event"
    event["description"] = "Any incoming event of topic customer.events, told apart by `type`."
    found = {
        "purchase.json": _model(PurchaseEvent),
        "refund.json": _model(RefundEvent),
        "engagement.json": _model(EngagementEvent),
        "event.json": event,
        "segment-change.json": _model(SegmentChange, mode="serialization"),
    }
    return {name: {"$schema": DIALECT, **schema} for name, schema in found.items()}


def render() -> dict[str, str]:
    """File name → exact file contents."""
    return {
        name: json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, schema in schemas().items()
    }


def stale(directory: Path = JSON_DIR) -> list[str]:
    """Names of files in ``directory`` that differ from :func:`render`, are missing or extra."""
    expected = render()
    problems = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]
    if directory.is_dir():
        problems += sorted(p.name for p in directory.glob("*.json") if p.name not in expected)
    return problems


def write(directory: Path = JSON_DIR) -> list[str]:
    """Writes every file whose contents changed and removes extra ones; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = stale(directory)
    expected = render()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.dir)
        for name in problems:
            sys.stderr.write(f"stale: {args.dir / name} (run: python -m schemas.generate)\n")
        return 1 if problems else 0
    for name in write(args.dir):
        sys.stdout.write(f"wrote {args.dir / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
