#!/bin/bash
# Exact user-space instructions per request of redis-server itself (valgrind callgrind),
# natively or under `understudy record` (UNDERSTUDY_SECCOMP=0: valgrind does not run the
# filter): redis-benchmark -c 50 -P PIPE -t set,get with -n 30000 minus -n 10000, / 40 000
# requests, so start-up and shutdown cancel (the method of docs/PERFORMANCE.md, icept5).
#
#   scripts/callgrind-redis.sh PIPE LIB.so|native
# REDIS_PORT (default 7398). Needs valgrind, redis and a release build of understudy.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PIPE LIB.so|native" >&2; exit 2; }
P=$1; LIB=$2
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
port=${REDIS_PORT:-7398}; tmp=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
ir() {
  local out=$tmp/cg.$1
  rm -rf "$tmp/j"
  local srv=(valgrind --tool=callgrind --callgrind-out-file="$out" redis-server --port "$port"
    --save "" --appendonly no)
  if [ "$LIB" = native ]; then
    taskset -c 0 "${srv[@]}" >/dev/null 2>&1 &
  else
    UNDERSTUDY_SECCOMP=0 UNDERSTUDY_INTERCEPT_LIB=$LIB taskset -c 0 "$U" record \
      --journal "$tmp/j" -- "${srv[@]}" >/dev/null 2>&1 &
  fi
  local top=$!
  for _ in $(seq 600); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c 1 redis-benchmark -p "$port" -c 50 -P "$P" -n "$1" -t set,get -q >/dev/null 2>&1
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait $top 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
a=$(ir 10000); b=$(ir 30000)
python3 -c "print('$LIB', ($b - $a) / 40000, 'redis-server instructions per request')"
