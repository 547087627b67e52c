#!/usr/bin/env bash
# Runs every benchmark behind docs/PERFORMANCE.md, one after the other (never two at once: they
# compete for the same 2 CPUs), and writes each one's output to OUT_DIR/<name>.txt plus the load
# average before and after. Needs root (ptrace, namespaces, nft) and `scripts/setup.sh --bench`
# (redis) for the interceptor's server benchmark.
#
#   scripts/bench-all.sh [OUT_DIR]          # default: target/bench-results/<UTC date-time>
#   ONLY="ckpt incr" scripts/bench-all.sh   # a subset, by the names below
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-results/$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$out"

benches=(
  "ckpt|cargo bench -p understudy --bench ckpt_bench -- --runs 5"
  "ckpt_reuse|cargo bench -p understudy --bench ckpt_bench -- --runs 5 --reuse"
  "dump_restore|env UNDERSTUDY_BENCH_RUNS=5 cargo bench -p checkpoint --bench dump_restore -- 64 256 1024"
  "incr|cargo bench -p understudy --bench incr_bench -- --mib 1024 --runs 5"
  "lazy|cargo bench -p understudy --bench lazy_bench -- --runs 5"
  "tcp_sys|cargo bench -p sys --bench tcp_repair_restore -- 1000 7"
  "tcp_engine|cargo bench -p understudy --bench tcp_bench -- 1000 7"
  "dirty|cargo bench -p sys --bench dirty_collect -- 1024 7"
  "intercept|env BENCH_ROUNDS=7 cargo bench -p understudy --bench intercept"
  "ring|cargo bench -p shmring --bench push"
  "replication|env BENCH_RUNS=5 cargo bench -p agent --bench replication"
  "collector|cargo bench -p agent --bench collector"
  "journal|cargo bench -p journal --bench append -- --reps 9"
  "demo|cargo run -q --release -p understudy --bin understudy -- demo"
)

for entry in "${benches[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  f="$out/$name.txt"
  {
    echo "# $cmd"
    echo "# start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$f"
  echo "== $name: $cmd"
  $cmd >>"$f" 2>&1
  rc=$?
  echo "# end $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) exit $rc" >>"$f"
  [ $rc -eq 0 ] || echo "   FAILED (exit $rc), see $f"
done
echo "results in $out"
