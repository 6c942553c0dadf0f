"""Writes the published OpenAPI document of the HTTP API (``schemas/openapi.json``).

    python -m schemas.openapi           # (re)write the file
    python -m schemas.openapi --check   # exit 1 if the file is missing or stale

Built from the app itself (:func:`service.api.app.openapi_document`), rendered
deterministically (sorted keys, two-space indent, trailing newline), so a unit test can hold
the committed file to the code and schemathesis can test the live API against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

OPENAPI_FILE: Final = Path(__file__).resolve().parent / "openapi.json"


def render() -> str:
    from service.api.app import openapi_document

    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def is_stale(path: Path = OPENAPI_FILE) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=OPENAPI_FILE, help="output file")
    args = parser.parse_args(argv)
    if args.check:
        if is_stale(args.out):
            sys.stderr.write(f"stale: {args.out} (run: python -m schemas.openapi)\n")
            return 1
        return 0
    text = render()
    if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
        args.out.write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
