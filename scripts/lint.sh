#!/usr/bin/env bash
# Static checks: ruff (lint + format check), mypy --strict, schemas current, and the
# deployment files (hadolint, `docker compose config`, kubernetes-validate; all offline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
"$python" -m ruff check service consumers schemas tests bench scripts
"$python" -m mypy
"$python" -m schemas.generate --check
bin="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
"$bin/hadolint" Dockerfile
"$bin/docker-compose" --file deploy/compose.yml config --quiet
"$bin/kubernetes-validate" --strict --quiet $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
