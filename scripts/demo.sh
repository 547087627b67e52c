#!/usr/bin/env bash
# The main job: set up, build, and run `understudy demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace
exec "${CARGO_TARGET_DIR:-target}/release/understudy" demo "$@"
