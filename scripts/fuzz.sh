#!/usr/bin/env bash
# Fuzzes the weights loader (fuzz/fuzz_targets/load.rs; `FUZZ=import`: `ddpm import`'s .pth
# reader, fuzz/fuzz_targets/import.rs) with cargo-fuzz on stable Rust for SECONDS (default 600)
# and prints one JSON line: executions, speed, coverage, corpus size and crashes. Crashing inputs
# are copied to fuzz/regressions/TARGET/, which `cargo test` replays (tests/fuzz_corpus.rs) with
# the corpus; commit both. `scripts/fuzz.sh 600 cmin` also minimises the corpus afterwards.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`, built from crates.io) and g++ (libfuzzer-sys
# builds libFuzzer from source). `--sanitizer none`: AddressSanitizer needs nightly Rust; this
# crate has no unsafe code of its own, and panics, overflow checks and debug assertions are on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
export CARGO_TARGET_DIR="${DDPM_FUZZ_TARGET:-$HOME/.cache/ddpm-fuzz-target}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }

target="${FUZZ:-load}"
corpus=fuzz/corpus/$target
dict=() && [ "$target" = load ] && dict=(-dict=load.dict)
if [ "$target" = load ] && [ -z "$(ls -A "$corpus" 2>/dev/null)" ]; then
  cargo test --release --test fuzz_corpus -- --ignored write_seed_corpus
fi
log=fuzz/fuzz.log
jobs="${DDPM_FUZZ_JOBS:-$(nproc)}"
set +e
(cd fuzz && cargo fuzz run "$target" --sanitizer none --release "../$corpus" -- \
  "${dict[@]}" -max_total_time="$seconds" -max_len=32768 -rss_limit_mb=4096 -timeout=10 \
  -fork="$jobs" -ignore_crashes=1 -print_final_stats=1) >"$log" 2>&1
status=$?
set -e
mkdir -p "fuzz/regressions/$target"
crashes=0
for f in "fuzz/artifacts/$target"/*; do
  [ -e "$f" ] || continue
  cp "$f" "fuzz/regressions/$target/"
  crashes=$((crashes + 1))
done
if [ "${2:-}" = cmin ]; then
  (cd fuzz && cargo fuzz cmin "$target" --sanitizer none --release "../$corpus" -- "${dict[@]}") >>"$log" 2>&1
fi
python3 - "$log" "$seconds" "$crashes" "$status" "$corpus" "$target" <<'PY'
import json, os, re, sys
log, seconds, crashes, status, corpus, target = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
text = open(log, errors="replace").read()
# -fork mode reports "#N: cov: C ft: F corp: K exec/s: E ..." lines; the last one is the total.
runs = re.findall(r"#(\d+):? .*?cov: (\d+) ft: (\d+)", text)
execs, cov, ft = (int(x) for x in runs[-1]) if runs else (0, 0, 0)
done = re.findall(r"stat::number_of_executed_units: (\d+)", text)
if done and not runs:
    execs = sum(int(d) for d in done)
print(json.dumps({
    "target": target, "seconds": seconds, "executions": execs, "exec_per_s": round(execs / seconds),
    "coverage_edges": cov, "features": ft, "corpus_files": len(os.listdir(corpus)),
    "crashes": crashes, "fuzzer_exit": status,
}))
PY
