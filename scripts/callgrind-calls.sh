#!/bin/bash
# Exact user-space instructions per recorded call (valgrind callgrind, UNDERSTUDY_SECCOMP=0:
# valgrind does not run the filter): a loop of 20 000 and of 10 000 calls under `understudy
# record`, (I(20000) - I(10000)) / 10000, so start-up cancels. MODE: gtod (gettimeofday), mono
# (clock_gettime(CLOCK_MONOTONIC)), rw (per iteration: write 1 B to /dev/null and to a
# socketpair, read 1 B back). LIB "native" runs the loop without understudy.
#
#   scripts/callgrind-calls.sh MODE LIB.so|native
# Needs valgrind, cc and a release build of understudy.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 gtod|mono|rw LIB.so|native" >&2; exit 2; }
M=$1; LIB=$2
here=$(cd "$(dirname "$0")/.." && pwd)
U=${CARGO_TARGET_DIR:-$here/target}/release/understudy
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/loop.c" <<'C'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]); struct timespec ts; struct timeval tv; long s = 0;
    if (!strcmp(argv[1], "mono")) for (int i = 0; i < n; i++) { clock_gettime(CLOCK_MONOTONIC, &ts); s += ts.tv_nsec; }
    else if (!strcmp(argv[1], "gtod")) for (int i = 0; i < n; i++) { gettimeofday(&tv, 0); s += tv.tv_usec; }
    else {
        int sv[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, sv); int dn = open("/dev/null", O_WRONLY); char c = 'x';
        for (int i = 0; i < n; i++) { write(dn, &c, 1); write(sv[0], &c, 1); read(sv[1], &c, 1); }
    }
    printf("%ld\n", s & 1);
    return 0;
}
C
cc -O2 -o "$tmp/loop" "$tmp/loop.c"
ir() {
  local out=$tmp/cg.$1
  if [ "$LIB" = native ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" "$tmp/loop" "$M" "$1" >/dev/null 2>&1
  else
    rm -rf "$tmp/j"
    UNDERSTUDY_SECCOMP=0 UNDERSTUDY_INTERCEPT_LIB=$LIB "$U" record --journal "$tmp/j" -- \
      valgrind --tool=callgrind --callgrind-out-file="$out" "$tmp/loop" "$M" "$1" >/dev/null 2>&1
  fi
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
a=$(ir 10000); b=$(ir 20000)
python3 -c "print('$M $LIB', ($b - $a) / 10000, 'instructions per call')"
