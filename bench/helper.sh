#!/usr/bin/env bash
# What one run of the credential helper costs, measured with hyperfine
# (Debian package `hyperfine`) against the release binaries as they ship
# (scripts/build-release.sh), all in the same run:
#   go_pass_version     `docker-credential-pass version` (Debian package
#                       golang-docker-credential-helpers): a Go helper that
#                       starts and exits, the baseline docker users live with
#   version             `docker-credential-regauth version`: start and exit
#   floor_helper        bench/floor's `floor-helper`: read one cache file,
#                       print the JSON (the least a warm `get` can do)
#   get_cached          `get`, served from the cache: the common case
#   kubelet_cached      the kubelet plugin, served from the same cache
#   get_cached_1000_keys  `get` with 1000 other keys in the cache directory
#                       (entries and lock files): every run lists the
#                       directory to sweep temporary files killed writers left
#   get_exchange        `get` with the credential removed before each run: an
#                       exchange (password grant, a cached check on the
#                       server) and a write
# Each is reported as wall time (median) and CPU time (user + system) per
# run, and as ratios: to the Go helper, to the floor helper, and (for the
# kubelet plugin) to `get`, because absolute figures on a shared machine are
# noise while ratios measured in one run are steadier.
#
# Usage: bench/helper.sh [RUNS=30]
set -euo pipefail

runs=${1:-30}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_require hyperfine docker-credential-pass
bench_setup

helper="$bin_dir/docker-credential-regauth"
floor_helper="$bin_dir/floor-helper"

bench_helper_inputs
export REGAUTH_HELPER_CONFIG="$work/helper.yaml"

# One cache with the credential alone, one with 1000 other keys beside it.
export REGAUTH_CACHE_DIR="$work/cache"
"$helper" get < "$work/host" >/dev/null
mkdir -m 700 "$work/crowded"
cp "$work"/cache/*.json "$work/crowded/"
entry=$(ls "$work"/cache/*.json)
"$helper" kubelet < "$work/kubelet.json" >/dev/null
for i in $(seq 1000); do
    key=$(printf 'ffffffffffffffff-%032x' "$i")
    cp "$entry" "$work/crowded/$key.json"
    : > "$work/crowded/$key.lock"
done

# Each measured command runs the helper $batch times: one run takes a few
# milliseconds, below what hyperfine can tell from shell start-up.
batch=20
times() { # command...: the command $batch times in a row
    printf 'for i in $(seq %s); do %s >/dev/null; done' "$batch" "$*"
}
out="$work/hyperfine.json"
# --prepare and -n pair with the commands in order.
hyperfine --style basic --warmup 3 --runs "$runs" --export-json "$out" \
    -n go_pass_version --prepare true "$(times "docker-credential-pass version < '$work/host'")" \
    -n version --prepare true "$(times "'$helper' version < '$work/host'")" \
    -n floor_helper --prepare true "$(times "'$floor_helper' '$entry' < '$work/host'")" \
    -n get_cached --prepare true "$(times "'$helper' get < '$work/host'")" \
    -n kubelet_cached --prepare true "$(times "'$helper' kubelet < '$work/kubelet.json'")" \
    -n get_cached_1000_keys --prepare true \
    "$(times "REGAUTH_CACHE_DIR='$work/crowded' '$helper' get < '$work/host'")" \
    -n get_exchange --prepare true \
    "$(times "rm -f '$entry'; '$helper' get < '$work/host'")" \
    >/dev/null

echo "docker-credential-regauth, hyperfine --runs $runs of $batch runs each, $(nproc) cores, $(date -u +%Y-%m-%d)"
python3 - "$out" "$batch" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
batch = int(sys.argv[2])
# Wall time (median) and CPU time (user + system, mean): the CPU time is
# what a busy machine disturbs least.
def wall(name):
    return results[name]["median"] * 1000 / batch
def cpu(name):
    return (results[name]["user"] + results[name]["system"]) * 1000 / batch
print(f'{"run":<22} {"wall ms":>8} {"vs Go":>6} {"vs floor":>8} {"vs get":>6}'
      f' {"CPU ms":>7} {"vs Go":>6} {"vs floor":>8} {"vs get":>6}')
for name in results:
    row = f'{name:<22}'
    for f, w in ((wall, 8), (cpu, 7)):
        m = f(name)
        row += f' {m:>{w}.3f} {m / f("go_pass_version"):>5.2f}x {m / f("floor_helper"):>7.2f}x {m / f("get_cached"):>5.2f}x'
    print(row)
PY
