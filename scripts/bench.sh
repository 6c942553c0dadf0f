#!/usr/bin/env bash
# Benchmarks against real services started here: `make bench-pipeline`, `make bench-api`,
# `make bench-scale`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
what="${1:-pipeline}"; shift || true
state="$(mktemp -d /tmp/segments-bench.XXXXXX)"
cleanup() {
    trap '' INT TERM  # a second signal must not cut the clean-up short
    "$python" scripts/services.py --state-dir "$state" stop all >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 143' INT TERM  # exit runs the EXIT trap, once
"$python" scripts/services.py --state-dir "$state" start kafka redis
eval "$("$python" scripts/services.py --state-dir "$state" env)"
case "$what" in
    pipeline) "$python" bench/pipeline.py "$@" ;;
    scale) "$python" bench/scale.py --services-state "$state" "$@" ;;
    api)
        if ! command -v wrk >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
        fi
        "$python" bench/api.py "$@" ;;
    *) echo "unknown benchmark: $what" >&2; exit 2 ;;
esac
