#!/usr/bin/env bash
# Runs every fuzz target for a fixed time, one after the other, and prints one line per target
# (executions, time, crashes). Usage: fuzz/run_all.sh [SECONDS_PER_TARGET] [TARGET...]
# Crashing inputs land in fuzz/artifacts/<target>/; logs in fuzz/logs/<target>.log.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
secs="${1:-180}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(image_decode feature_file pickle torch_archive hf_config open_clip_config \
        split_file manifest_csv manifest_json tokenizer head)
fi
[ -d corpus ] || ./seed.sh
mkdir -p logs
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # -s none: panics, timeouts and out-of-memory are what we look for (safe Rust); the
    # address sanitizer's build of every dependency does not fit the machine's time.
    # New inputs go to corpus/<t> (the first folder); the committed seeds/<t> is read only.
    RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -max_len=1048576 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        > "logs/$t.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*')
    echo "$t rc=$rc execs=${execs:-?} seconds=${took:-?} artifacts=$(ls "artifacts/$t" | wc -l)"
done
