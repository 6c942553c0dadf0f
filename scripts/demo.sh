#!/usr/bin/env bash
# `make demo`: the whole system on this machine with synthetic traffic.
# Tansu (Kafka-compatible, starts in milliseconds) + Redis + consumer + API/dashboard + traffic.
# Ctrl-C stops everything. Set SEGMENTS_DEMO_BROKER=kafka to use Apache Kafka instead.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
broker="${SEGMENTS_DEMO_BROKER:-tansu}"
port="${SEGMENTS_DEMO_PORT:-8000}"
state="$repo/.services/demo"
mkdir -p "$state"

[[ "${SKIP_INSTALL:-0}" == 1 ]] || bash scripts/install.sh

if ! "$python" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    echo "demo: port $port is in use (another demo?); set SEGMENTS_DEMO_PORT or run 'make demo-stop'" >&2
    exit 1
fi

pids=()
cleanup() {
    trap - EXIT
    trap '' INT TERM  # a second signal (Ctrl-C twice, a group-wide TERM) must not cut cleanup short
    echo; echo "==> stopping demo"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$python" scripts/services.py --state-dir "$state" stop all || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

echo "==> services: $broker, redis"
"$python" scripts/services.py --state-dir "$state" start "$broker" redis
eval "$("$python" scripts/services.py --state-dir "$state" env)"
if [[ "$broker" == tansu ]]; then export SEGMENTS_KAFKA_BOOTSTRAP="$SEGMENTS_TANSU_BOOTSTRAP"; fi
# A fresh admin key for this demo run (only its SHA-256 is configured, as in production).
demo_key="${SEGMENTS_DEMO_KEY:-demo-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
demo_key_sha="$(printf %s "$demo_key" | sha256sum | cut -d' ' -f1)"
# And a read-only key for the dashboard (what an operator's screen should hold).
read_key="${SEGMENTS_DEMO_READ_KEY:-read-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
read_key_sha="$(printf %s "$read_key" | sha256sum | cut -d' ' -f1)"
demo_keys="$(printf '[{"name":"demo","sha256":"%s","scopes":["admin"]},{"name":"dashboard","sha256":"%s","scopes":["segments:read"]}]' "$demo_key_sha" "$read_key_sha")"
export SEGMENTS_API__KEYS="${SEGMENTS_API__KEYS:-$demo_keys}"

"$python" -m service.cli topics
# The consumer also sweeps (customers drift to at risk / churned on time) and re-classifies
# after a rules change: one process for the whole pipeline. Its probes and metrics:
probes_port="${SEGMENTS_DEMO_PROBES_PORT:-9400}"
SEGMENTS_SWEEP__IN_CONSUMER=true SEGMENTS_PROBES__PORT="$probes_port" \
    "$python" -m service.cli consume >"$state/consumer.log" 2>&1 & pids+=($!)
"$python" -m service.cli api --port "$port" >"$state/api.log" 2>&1 & pids+=($!)
"$python" -m service.cli demo --customers "${SEGMENTS_DEMO_CUSTOMERS:-5000}" --rate "${SEGMENTS_DEMO_RATE:-200}" \
    >"$state/demo.log" 2>&1 & pids+=($!)

cat <<TXT

  Customer segmentation demo is running.
    Dashboard        http://127.0.0.1:$port/   (paste the read key)
    Read key         $read_key
    API docs         http://127.0.0.1:$port/docs
    Admin key        $demo_key
    A customer       curl -H "Authorization: Bearer $demo_key" http://127.0.0.1:$port/v1/customers/c-000001/segment
    Segments         curl -H "Authorization: Bearer $demo_key" http://127.0.0.1:$port/v1/segments
    Live changes     curl -N -H "Authorization: Bearer $read_key" http://127.0.0.1:$port/v1/segment-changes/stream
    Metrics          http://127.0.0.1:$port/metrics (API)   http://127.0.0.1:$probes_port/metrics (pipeline)
    Kafka            $SEGMENTS_KAFKA_BOOTSTRAP ($broker)     Redis  $SEGMENTS_REDIS_URL
    Logs             $state/{consumer,api,demo}.log
  Ctrl-C stops everything.

TXT
wait -n "${pids[@]}" || true
echo "a demo process exited; see the logs in $state" >&2
