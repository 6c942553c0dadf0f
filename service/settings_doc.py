"""The README's configuration table, generated from :class:`service.settings.Settings`.

    python -m service.settings_doc            # print the table
    python -m service.settings_doc --write    # replace it in README.md

A unit test fails when README.md and the settings disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.settings import Settings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "*(required)*"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "—"
    if isinstance(value, SecretStr):
        return "*(secret)*"
    if isinstance(value, dict | list | tuple):
        return f"`{json.dumps(value, default=str)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _describe(field: FieldInfo) -> str:
    return " ".join((field.description or "").split()).replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{env}__"))
        else:
            rows.append(f"| `{env}` | {_default(field)} | {_describe(field)} |")
    return rows


def settings_table() -> str:
    lines = [
        "| variable | default | meaning |",
        "| --- | --- | --- |",
        *_rows(Settings, "SEGMENTS_"),
    ]
    return "\n".join(lines)


def _replace(text: str, table: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    table = settings_table()
    if args.write:
        README.write_text(_replace(README.read_text(), table))
    else:
        sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
