#!/bin/bash
# Exact user-space instructions per request of the collector (`understudy record` under
# valgrind callgrind; the recorded redis-server itself runs natively, pinned with it to CPU 0):
# redis-benchmark -c 50 -P PIPE -t set,get with -n 150000 minus -n 50000, / 200 000 requests,
# so start-up and shutdown cancel. The kernel's side (the journal's page-cache writes) is not
# counted; it follows the journal bytes (scripts/redis-bytes.sh).
#
#   scripts/callgrind-collector.sh PIPE LIB.so
# REDIS_PORT (default 7397). Needs valgrind and a release build of understudy.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PIPE LIB.so" >&2; exit 2; }
P=$1; LIB=$2
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
port=${REDIS_PORT:-7397}; tmp=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
ir() {
  local out=$tmp/cg.$1
  rm -rf "$tmp/j"
  UNDERSTUDY_INTERCEPT_LIB=$LIB taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$U" record --journal "$tmp/j" -- taskset -c 0 redis-server --port "$port" --save "" \
    --appendonly no >/dev/null 2>&1 &
  local top=$!
  for _ in $(seq 400); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c 1 redis-benchmark -p "$port" -c 50 -P "$P" -n "$1" -t set,get -q >/dev/null 2>&1
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait $top 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
a=$(ir 50000); b=$(ir 150000)
python3 -c "print('$LIB', ($b - $a) / 200000, 'collector instructions per request')"
