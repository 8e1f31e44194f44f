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
root=$(cd "$(dirname "$0")/.." && pwd)

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install $tool" >&2; exit 1; }
done

cargo build --release --quiet -p regauth-token-server --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/regauth-token-server"

work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" keys generate --out "$work" >/dev/null
"$bin" keys secret --out "$work/refresh.secret" >/dev/null
password="bench-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
hash=$(printf '%s' "$password" | "$bin" hash-password --cost 10)
cat > "$work/config.yaml" <<YAML
listen: 127.0.0.1:$port
issuer: regauth-bench
services: [registry.bench]
signing_keys: [{key: signing.key, cert: signing.crt}]
refresh_secret_file: refresh.secret
password_cache_ttl: 10m
accounts:
  - {name: bench, password_hash: "$hash"}
policy:
  - kind: account
    resource: "\${name}/**"
    actions: ["*"]
YAML

# Audit logging stays on at its default level: it is part of the real cost.
REGAUTH_LOG=${REGAUTH_LOG:-info} "$bin" serve --config "$work/config.yaml" 2>"$work/server.log" &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$base/healthz" >/dev/null || { echo "bench: server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

scope="service=registry.bench&scope=repository:bench/app:pull,push"
refresh=$(curl -fs -u "bench:$password" "$base/token?service=registry.bench&offline_token=true" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["refresh_token"])')
basic_refresh="Authorization: Basic $(printf 'bench:%s' "$refresh" | base64 -w0)"
basic_password="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
# Warm the password cache once; every later request hits it.
curl -fs -H "$basic_password" "$base/token?$scope" >/dev/null

# wrk's latency table prints p50 and p99; convert to milliseconds.
to_ms() {
    awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.2f", v }'
}
run() { # name, url, [header]
    local out
    if [ $# -eq 3 ]; then
        out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -H "$3" "$2")
    else
        out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$2")
    fi
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
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
