#!/usr/bin/env bash
# Load benchmark of the token server on loopback.
#
# Starts a release build of regauth-token-server with a throwaway config and
# drives it with wrk (Debian package `wrk`) for three paths, one after the
# other, in the same run:
#   1. GET /healthz                                   (the baseline)
#   2. GET /token, a refresh token as Basic password  (HMAC verify + ES256 sign)
#   3. GET /token, account password, cached check     (cache lookup + ES256 sign)
# Every /token request signs a fresh token (new jti, iat); nothing is reused.
# It prints requests/s, p50 and p99 latency for each, and each token path's
# throughput as a ratio of /healthz, because absolute figures on a shared
# machine are noise while the ratio is stable.
#
# Usage: bench/run.sh [DURATION_SECONDS=10] [CONNECTIONS=32]
set -euo pipefail

duration=${1:-10}
connections=${2:-32}
threads=${BENCH_WRK_THREADS:-2}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup

refresh=$(bench_refresh_token)
basic_refresh="Authorization: Basic $(printf 'bench:%s' "$refresh" | base64 -w0)"
basic_password="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
# Warm the password cache once; every later request hits it.
curl -fs -H "$basic_password" "$base/token?$scope" >/dev/null

run() { # name, url, [header]
    local out
    if [ $# -eq 3 ]; then
        out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -H "$3" "$2")
    else
        out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$2")
    fi
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | bench_to_ms)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | bench_to_ms)
    errors=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
    printf '%s %s %s %s %s\n' "$1" "$rps" "$p50" "$p99" "${errors:-0}"
}

results=$(
    run healthz "$base/healthz"
    run token_refresh "$base/token?$scope" "$basic_refresh"
    run token_password_cached "$base/token?$scope" "$basic_password"
)

echo "regauth token server, wrk -t$threads -c$connections -d${duration}s, $(nproc) cores, $(date -u +%Y-%m-%d)"
awk -v base="$(awk '$1=="healthz" {print $2}' <<<"$results")" '
    BEGIN { printf "%-24s %12s %9s %9s %8s %10s\n", "path", "req/s", "p50 ms", "p99 ms", "non-2xx", "vs healthz" }
    { printf "%-24s %12.0f %9s %9s %8s %9.1f%%\n", $1, $2, $3, $4, $5, 100*$2/base }' <<<"$results"
