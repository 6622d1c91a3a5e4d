#!/usr/bin/env bash
# Kills `ddpm train` with SIGKILL at random moments KILLS times (default 100), resuming after
# each, and checks that every resume succeeds, no checkpoint is ever partial, no kill loses more
# than one checkpoint interval, and the final weights equal an uninterrupted run's bit for bit.
# Prints the test's JSON line. The same test runs with 5 kills in `cargo test` (tests/soak.rs).
# DDPM_SOAK_SEED=N replays the kill times of an earlier run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ddpm-target}"
DDPM_SOAK_KILLS="${1:-100}" DDPM_SOAK_STEPS="${DDPM_SOAK_STEPS:-400}" \
  cargo test --release -p ddpm-web --test soak killed_and_resumed -- --nocapture 2>&1 | grep -E '^\{|panicked|FAILED|test result'
