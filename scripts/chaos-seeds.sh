#!/usr/bin/env bash
# Runs the chaos test (tests/chaos.rs) once per seed, FIRST to LAST (default 1 to 10), and prints
# each run's figures line; stops at the first failure, printing its output.
#
#   scripts/chaos-seeds.sh 1 20
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
last=${2:-10}
cargo test --quiet --test chaos --no-run
for seed in $(seq "$first" "$last"); do
  if ! out=$(RUNNER_CHAOS_SEED=$seed cargo test --quiet --test chaos -- --nocapture 2>&1); then
    echo "$out"
    echo "seed $seed FAILED"
    exit 1
  fi
  grep -E '^chaos seed [0-9]+:' <<<"$out"
done
