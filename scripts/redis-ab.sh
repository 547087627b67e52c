#!/bin/bash
# A/B of interceptor builds on redis: per round, redis-server natively and recorded with each
# given libunderstudy_intercept.so (interleaved), pinned like the intercept bench: server CPU 0,
# redis-benchmark CPU 1, the collector (`understudy record`) on CPU $COLLECTOR_CPU (default 0:
# beside the server, as on a primary host; COLLECTOR_CPU=1 = the earlier placement, sharing the
# load generator's CPU; COLLECTOR_CPU=any = not pinned, the scheduler places it), `redis-benchmark -c 50 -P PIPE -n N -t set,get`. Prints
# per variant the median SET/GET requests/s and the server's CPU per request (CPU time of
# redis-server's threads over the run, from /proc/PID/task/*/schedstat, / requests), plus the
# collector's.
#
#   scripts/redis-ab.sh ROUNDS PIPE N OLD.so NEW.so ...
# A variant may also name the understudy binary it runs as `UNDERSTUDY@LIB.so` (A/B of the
# collector: e.g. /tmp/old-understudy@lib.so target/release/understudy@lib.so); a plain `LIB.so`
# runs $CARGO_TARGET_DIR/release/understudy.
# REDIS_PORT (default 7393) when another run may use that port; the server is found by it.
# (needs: cargo build --release -p understudy -p intercept-preload; redis from scripts/setup.sh --bench)
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 ROUNDS PIPE N LIB.so [LIB.so ...]" >&2; exit 2; }
R=$1; P=$2; N=$3; shift 3
CC=${COLLECTOR_CPU:-0}
case $CC in 0|1) CPUS=$CC;; any) CPUS=0-$(( $(nproc) - 1 ));; *) echo "COLLECTOR_CPU=$CC: must be 0, 1 or any" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
[ -x "$U" ] || { echo "$U: not built" >&2; exit 1; }
tmp=$(mktemp -d); port=${REDIS_PORT:-7393}
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
# CPU time of every thread of process $1 so far, in ns (schedstat: exact, where utime+stime
# count 10 ms ticks).
ticks() { cat /proc/$1/task/*/schedstat 2>/dev/null | awk '{s+=$1} END{printf "%.0f\n", s}'; }
one() { # $1 = label, $2 = lib or "native"
  rm -rf "$tmp/j"
  if [ "$2" = native ]; then
    taskset -c 0 redis-server --port $port --save "" --appendonly no >/dev/null 2>&1 &
  else
    local u=$U lib=$2
    case $2 in *@*) u=${2%%@*}; lib=${2#*@};; esac
    UNDERSTUDY_INTERCEPT_LIB=$lib taskset -c "$CPUS" "$u" record --journal "$tmp/j" -- \
      taskset -c 0 redis-server --port $port --save "" --appendonly no >/dev/null 2>&1 &
  fi
  local top=$!
  for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.05; done
  local srv; srv=$(pgrep -f "redis-server .*:$port" | head -1)
  local s0 c0; s0=$(ticks "$srv"); c0=$(ticks "$top")
  local out; out=$(taskset -c 1 redis-benchmark -p $port -c 50 -P "$P" -n "$N" -t set,get --csv)
  local s1 c1; s1=$(ticks "$srv"); c1=$(ticks "$top")
  redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
  wait $top 2>/dev/null || true
  echo "$1 $(echo "$out" | awk -F'"' '/"SET"/{s=$4} /"GET"/{g=$4} END{print s, g}') $((s1-s0)) $((c1-c0))" >> "$tmp/out"
}
# Each round runs every variant once, in an order rotated by one per round, so no variant
# always runs first (the first run of a round was seen to be systematically slower or faster).
vars=(native "$@")
for r in $(seq "$R"); do
  for i in $(seq 0 $((${#vars[@]} - 1))); do
    v=${vars[$(( (i + r - 1) % ${#vars[@]} ))]}
    one "$v" "$v"
  done
done
python3 - "$tmp/out" "$N" "$CC" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, s, g, sv, co = line.split()
    rows[k].append((float(s), float(g), int(sv), int(co)))
reqs = 2 * int(sys.argv[2]); hz = 1e9  # ticks() counts ns
print(f"collector on CPU {sys.argv[3]}")
print(f"{'variant':60} {'SET req/s':>10} {'GET req/s':>10} {'server us/req':>13} {'collector us/req':>16}  (medians of {len(next(iter(rows.values())))} rounds)")
for k, v in rows.items():
    m = lambda i: statistics.median(x[i] for x in v)
    co = 'n/a' if k == 'native' else f"{m(3) / hz / reqs * 1e6:.3f}"
    print(f"{k[-60:]:60} {m(0):10.0f} {m(1):10.0f} {m(2) / hz / reqs * 1e6:13.3f} {co:>16}")
# Changes within each round (the variants of a round ran back to back, so a change of the
# machine's load between rounds cancels): against native for throughput and server CPU, and
# against the first recorded variant for the collector's CPU.
libs = [k for k in rows if k != 'native']
def pr(k, base, i):
    return statistics.median(a[i] / b[i] - 1 for a, b in zip(rows[k], rows[base]) if b[i] > 0) * 100
print(f"{'per-round median change':60} {'SET':>10} {'GET':>10} {'server CPU':>13} {'collector CPU':>16}")
for k in libs:
    co = 'base' if k == libs[0] else f"{pr(k, libs[0], 3):+.1f}%"
    print(f"{k[-60:]:60} {pr(k, 'native', 0):+9.1f}% {pr(k, 'native', 1):+9.1f}% {pr(k, 'native', 2):+12.1f}% {co:>16}")
PY
