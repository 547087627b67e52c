#!/bin/bash
# Journal bytes per request of a recorded redis server, by message kind: records
# `redis-server` under `understudy record` (server and collector on CPU 0), runs
# `redis-benchmark -c 50 -P PIPE -n N -t set,get` (2 N requests) on CPU 1, stops the server and
# prints `understudy replay --sizes --per 2N` (payload bytes per kind and version, the journal's
# framing, each per request).
#
#   scripts/redis-bytes.sh PIPE N [LIB.so]
# REDIS_PORT (default 7395). Needs: cargo build --release -p understudy -p intercept-preload.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PIPE N [LIB.so]" >&2; exit 2; }
P=$1; N=$2; LIB=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
[ -x "$U" ] || { echo "$U: not built" >&2; exit 1; }
port=${REDIS_PORT:-7395}; tmp=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
env ${LIB:+UNDERSTUDY_INTERCEPT_LIB=$LIB} taskset -c 0 "$U" record --journal "$tmp/j" -- \
  taskset -c 0 redis-server --port "$port" --save "" --appendonly no >/dev/null 2>&1 &
top=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
taskset -c 1 redis-benchmark -p "$port" -c 50 -P "$P" -n "$N" -t set,get -q
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait $top 2>/dev/null || true
"$U" replay --journal "$tmp/j" --sizes --per $((2 * N))
