#!/usr/bin/env bash
# Runs every fuzz target with AFL++ (cargo-afl), bounded in time, and
# reports executions, corpus, crashes and hangs per target.
#
#   fuzz/run.sh MINUTES [TARGET...]
#
# MINUTES is the wall-clock budget for the whole run (after the build): it
# is split evenly across the targets, two running at a time. Exits 1 when
# any target found a crash. Needs `cargo install cargo-afl` and
# `cargo afl config --build` once (see fuzz/README.md).
set -euo pipefail

usage() {
    echo "usage: $0 MINUTES [TARGET...]" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
minutes=$1
shift

cd "$(dirname "$0")"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for f in src/bin/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
for t in "${targets[@]}"; do
    [[ -f src/bin/$t.rs ]] || { echo "no such target: $t" >&2; exit 2; }
done

# Two fuzzers at a time, one per core.
parallel=${FUZZ_JOBS:-2}
rounds=$(((${#targets[@]} + parallel - 1) / parallel))
seconds=$((minutes * 60 / rounds))
if [[ $seconds -lt 10 ]]; then
    echo "$minutes minute(s) is too little for ${#targets[@]} targets" >&2
    exit 2
fi

# AFL++ on a machine it does not own: no control over core_pattern or the
# CPU governor, and other processes share the cores, so no CPU pinning.
export AFL_NO_UI=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_SKIP_CPUFREQ=1
export AFL_NO_AFFINITY=1

echo "building the targets (cargo afl build --release)..."
cargo afl build --release --quiet

run_dir=out/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run_dir"
echo "fuzzing ${#targets[@]} targets for ${seconds}s each, $parallel at a time; output in fuzz/$run_dir"

fuzz_one() {
    local t=$1
    local dict=()
    [[ -f dicts/$t.dict ]] && dict=(-x "dicts/$t.dict")
    # -t: an input that takes more than a second is a hang worth reporting.
    cargo afl fuzz -V "$seconds" -t 1000 -i "seeds/$t" -o "$run_dir/$t" "${dict[@]}" \
        -- "target/release/$t" >"$run_dir/$t.log" 2>&1 ||
        echo "afl-fuzz failed for $t; see fuzz/$run_dir/$t.log" >&2
}

running=0
for t in "${targets[@]}"; do
    if [[ $running -ge $parallel ]]; then
        wait -n || true
        running=$((running - 1))
    fi
    echo "  $t"
    fuzz_one "$t" &
    running=$((running + 1))
done
wait

stat_of() {
    local file=$1 key=$2
    awk -F' *: *' -v k="$key" '$1 == k { print $2 }' "$file" 2>/dev/null
}

total_crashes=0
total_execs=0
{
    printf '%-20s %14s %10s %8s %8s %6s\n' target executions execs/s corpus crashes hangs
    for t in "${targets[@]}"; do
        s=$run_dir/$t/default/fuzzer_stats
        if [[ ! -f $s ]]; then
            printf '%-20s %14s %10s %8s %8s %6s\n' "$t" "did not run" - - - -
            total_crashes=$((total_crashes + 1))
            continue
        fi
        execs=$(stat_of "$s" execs_done)
        crashes=$(stat_of "$s" saved_crashes)
        hangs=$(stat_of "$s" saved_hangs)
        # The average rate over the run; fuzzer_stats' execs_per_sec is
        # only the last minute's.
        run_time=$(stat_of "$s" run_time)
        rate=$((execs / (run_time > 0 ? run_time : 1)))
        printf '%-20s %14s %10s %8s %8s %6s\n' "$t" "$execs" "$rate" \
            "$(stat_of "$s" corpus_count)" "$crashes" "$hangs"
        total_crashes=$((total_crashes + crashes))
        total_execs=$((total_execs + execs))
    done
    printf '%-20s %14s %10s %8s %8s\n' total "$total_execs" "" "" "$total_crashes"
} | tee "$run_dir/summary.txt"

if [[ $total_crashes -gt 0 ]]; then
    echo "crashes (or targets that did not run): inputs in fuzz/$run_dir/TARGET/default/crashes/" >&2
    exit 1
fi
