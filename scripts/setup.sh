#!/usr/bin/env bash
# Everything a fresh machine of this kind needs before understudy builds and its tests run.
# Idempotent; needs root (apt-get). Add a package here when a test or the demo needs one.
set -euo pipefail
PKGS=(gcc make iproute2 procps nftables)
# Only for the interceptor's server benchmark (docs/PERFORMANCE.md): `scripts/setup.sh --bench`.
if [ "${1:-}" = "--bench" ]; then PKGS+=(redis-server redis-tools); fi
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
