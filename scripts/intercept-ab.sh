#!/bin/bash
# A/B of interceptor builds on the per-call benchmark: runs tests/intercept/bench_calls natively
# and under `understudy record` with each given libunderstudy_intercept.so, interleaved, ROUNDS
# times, and prints per call the median of the native runs and, per library, the median of its
# runs and the added time (median - native median). Interleaving keeps the machine's load
# drift out of the comparison between libraries; their order rotates from round to round.
#
#   scripts/intercept-ab.sh ROUNDS OLD.so NEW.so ...
# (needs a release build: cargo build --release -p understudy -p intercept-preload; copy each
#  library version you want to compare to its own file first)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ROUNDS LIB.so [LIB.so ...]" >&2; exit 2; }
N=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
tgt=${CARGO_TARGET_DIR:-$here/target}
U=$tgt/release/understudy
[ -x "$U" ] || { echo "$U: not built (cargo build --release -p understudy)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/bench_calls" "$here/tests/intercept/bench_calls.c"
libs=("$@")
for r in $(seq "$N"); do
  "$tmp/bench_calls" | sed 's/^/native /' >> "$tmp/out"
  # The libraries' order rotates per round: the recorded run in the second position measured
  # 35-65 ns more per socket read than the same library first (session 3, 22:49-22:50).
  k=$(( r % ${#libs[@]} ))
  for l in "${libs[@]:k}" "${libs[@]:0:k}"; do
    rm -rf "$tmp/j"
    UNDERSTUDY_INTERCEPT_LIB=$l "$U" record --journal "$tmp/j" -- "$tmp/bench_calls" \
      | sed "s|^|$l |" >> "$tmp/out"
  done
done
python3 - "$tmp/out" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for l in open(sys.argv[1]):
    m, c, v = l.split()
    d[(m, c)].append(float(v))
libs = [m for m in dict.fromkeys(m for m, _ in d) if m != 'native']
for c in ['clock_gettime', 'write_devnull', 'socket_read']:
    nat = statistics.median(d[('native', c)])
    row = ' | '.join(f"{m} {statistics.median(d[(m, c)]):.1f} (+{statistics.median(d[(m, c)]) - nat:.1f})" for m in libs)
    print(f"{c:14s} native {nat:.1f} | {row}")
PY
uptime
