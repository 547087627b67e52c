#!/bin/bash
# A/B of interceptor builds on redis: per round, redis-server natively and recorded with each
# given libunderstudy_intercept.so (interleaved), pinned like the intercept bench: server CPU 0,
# redis-benchmark CPU 1, the collector (`understudy record`) on CPU $COLLECTOR_CPU (default 0:
# beside the server, as on a primary host; COLLECTOR_CPU=1 = the earlier placement, sharing the
# load generator's CPU), `redis-benchmark -c 50 -P PIPE -n N -t set,get`. Prints
# per variant the median SET/GET requests/s and the server's CPU per request (utime+stime of
# redis-server over the run / requests), plus the collector's.
#
#   scripts/redis-ab.sh ROUNDS PIPE N OLD.so NEW.so ...
# (needs: cargo build --release -p understudy -p intercept-preload; redis from scripts/setup.sh --bench;
#  REDIS_PORT=N (default 7393) when another run may be using that port)
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 ROUNDS PIPE N LIB.so [LIB.so ...]" >&2; exit 2; }
R=$1; P=$2; N=$3; shift 3
CC=${COLLECTOR_CPU:-0}
case $CC in 0|1) ;; *) echo "COLLECTOR_CPU=$CC: must be 0 or 1" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
[ -x "$U" ] || { echo "$U: not built" >&2; exit 1; }
tmp=$(mktemp -d); port=${REDIS_PORT:-7393}
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
one() { # $1 = label, $2 = lib or "native"
  rm -rf "$tmp/j"
  if [ "$2" = native ]; then
    taskset -c 0 redis-server --port $port --save "" --appendonly no >/dev/null 2>&1 &
  else
    UNDERSTUDY_INTERCEPT_LIB=$2 taskset -c "$CC" "$U" record --journal "$tmp/j" -- \
      taskset -c 0 redis-server --port $port --save "" --appendonly no >/dev/null 2>&1 &
  fi
  local top=$!
  for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.05; done
  local srv; srv=$(pgrep -f "^redis-server \*:$port" | head -1)
  local s0 c0; s0=$(ticks "$srv"); c0=$(ticks "$top")
  local out; out=$(taskset -c 1 redis-benchmark -p $port -c 50 -P "$P" -n "$N" -t set,get --csv)
  local s1 c1; s1=$(ticks "$srv"); c1=$(ticks "$top")
  redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
  wait $top 2>/dev/null || true
  echo "$1 $(echo "$out" | awk -F'"' '/"SET"/{s=$4} /"GET"/{g=$4} END{print s, g}') $((s1-s0)) $((c1-c0))" >> "$tmp/out"
}
for r in $(seq "$R"); do
  one native native
  for l in "$@"; do one "$l" "$l"; done
done
python3 - "$tmp/out" "$N" "$CC" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, s, g, sv, co = line.split()
    rows[k].append((float(s), float(g), int(sv), int(co)))
reqs = 2 * int(sys.argv[2]); hz = 100
print(f"collector on CPU {sys.argv[3]}")
print(f"{'variant':60} {'SET req/s':>10} {'GET req/s':>10} {'server us/req':>13} {'collector us/req':>16}  (medians of {len(next(iter(rows.values())))} rounds)")
for k, v in rows.items():
    m = lambda i: statistics.median(x[i] for x in v)
    co = 'n/a' if k == 'native' else f"{m(3) / hz / reqs * 1e6:.2f}"
    print(f"{k[-60:]:60} {m(0):10.0f} {m(1):10.0f} {m(2) / hz / reqs * 1e6:13.3f} {co:>16}")
PY
