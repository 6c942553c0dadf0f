#!/usr/bin/env bash
# Static checks: ruff (lint + format check), mypy --strict, schemas current.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
"$python" -m ruff check service consumers schemas tests bench scripts
"$python" -m mypy
"$python" -m schemas.generate --check
