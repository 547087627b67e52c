#!/usr/bin/env bash
# The test command: installs what is missing, builds, then runs every test (as root: the
# checkpoint tests ptrace and create namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
