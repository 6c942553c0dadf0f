#!/usr/bin/env bash
# `make soak`: start a private Redis and Apache Kafka, run bench/soak.py (2,000,000 events by
# default; extra arguments are passed on), stop the services whatever happened.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
state="$(mktemp -d /tmp/segments-soak.XXXXXX)"
cleanup() {
    trap '' INT TERM
    "$python" scripts/services.py --state-dir "$state" stop all >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 143' INT TERM
"$python" scripts/services.py --state-dir "$state" start redis kafka
eval "$("$python" scripts/services.py --state-dir "$state" env)"
export SEGMENTS_KAFKA_BOOTSTRAP="$SEGMENTS_APACHE_KAFKA_BOOTSTRAP"
"$python" bench/soak.py "$@"
