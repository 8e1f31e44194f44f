#!/usr/bin/env bash
# What one run of the credential helper costs, measured with hyperfine
# (Debian package `hyperfine`) against release builds, all in the same run:
#   1. `version`                        the baseline: start the process, exit
#   2. `get`, served from the cache     the common case
#   3. `get`, served from the cache with 1000 other keys in the cache
#      directory (entries and lock files): every run lists the directory to
#      sweep temporary files that killed writers left, so this is its cost
#   4. `get` with the credential removed before each run: an exchange (the
#      password grant, a cached check on the server) and a write
# Each is reported as a ratio of the baseline, because absolute figures on
# a shared machine are noise while the ratios are stable.
#
# Usage: bench/helper.sh [RUNS=30]
set -euo pipefail

runs=${1:-30}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_require hyperfine
bench_setup

cargo build --release --quiet -p docker-credential-regauth --manifest-path "$bench_root/Cargo.toml"
helper="${CARGO_TARGET_DIR:-$bench_root/target}/release/docker-credential-regauth"

host=registry.bench
printf '%s' "$password" > "$work/bench.password"
chmod 600 "$work/bench.password"
cat > "$work/helper.yaml" <<YAML
registries:
  - match: ["$host"]
    token_server: $base
    service: $host
    output: password
    identity: {kind: account, username: bench, password_file: bench.password}
YAML
printf '%s\n' "$host" > "$work/host"
export REGAUTH_HELPER_CONFIG="$work/helper.yaml"

# One cache with the credential alone, one with 1000 other keys beside it.
export REGAUTH_CACHE_DIR="$work/cache"
"$helper" get < "$work/host" >/dev/null
mkdir -m 700 "$work/crowded"
cp "$work"/cache/*.json "$work/crowded/"
entry=$(ls "$work"/cache/*.json)
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
    -n baseline_version --prepare true "$(times "'$helper' version < '$work/host'")" \
    -n get_cached --prepare true "$(times "'$helper' get < '$work/host'")" \
    -n get_cached_1000_keys --prepare true \
    "$(times "REGAUTH_CACHE_DIR='$work/crowded' '$helper' get < '$work/host'")" \
    -n get_exchange --prepare true \
    "$(times "rm -f '$work'/cache/*.json; '$helper' get < '$work/host'")" \
    >/dev/null

echo "docker-credential-regauth, hyperfine --runs $runs of $batch runs each, $(nproc) cores, $(date -u +%Y-%m-%d)"
python3 - "$out" "$batch" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
batch = int(sys.argv[2])
base = results[0]["median"]
print(f'{"run":<22} {"median ms/run":>14} {"mean ms/run":>12} {"vs version":>11}')
for r in results:
    print(f'{r["command"]:<22} {r["median"]*1000/batch:>14.2f} {r["mean"]*1000/batch:>12.2f} {r["median"]/base:>10.2f}x')
PY
