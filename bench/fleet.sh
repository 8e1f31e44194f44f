#!/usr/bin/env bash
# Fleet benchmark on loopback: GET /token (account password, cached check)
# through haproxy to 1 and to 3 replicas sharing one redis-server, beside a
# single replica without shared state and one with it, all in one run.
#
#   baseline   one replica, no shared_state, wrk straight at it
#   +redis     one replica with shared_state (a limiter check and a
#              revocation read: two Redis round trips per request)
#   lb-1       haproxy -> that replica
#   lb-3       haproxy -> three replicas sharing the Redis
#
# It prints requests/s, p50 and p99 per setup and each as a ratio of the
# baseline, and the Redis round trips' share of a request's time
# ((p50 +redis - p50 baseline) / p50 +redis). On a 2-core machine wrk,
# haproxy, Redis and the replicas share the same cores, so lb-3 cannot show
# scaling there: it shows what the fleet's plumbing costs, not its capacity.
#
# Usage: bench/fleet.sh [DURATION_SECONDS=8] [CONNECTIONS=32]
set -euo pipefail

duration=${1:-8}
connections=${2:-32}
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk curl python3 redis-server haproxy; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install ${tool/redis-server/redis-server}" >&2; exit 1; }
done
cargo build --release --quiet -p regauth-token-server --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/regauth-token-server"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
    for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: $1 did not answer; logs in $work" >&2; tail -n 5 "$work"/*.log >&2; exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$bin" keys generate --out "$work" >/dev/null
"$bin" keys secret --out "$work/refresh.secret" >/dev/null
password="bench-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
hash=$(printf '%s' "$password" | "$bin" hash-password --cost 10)

start_replica() { # name, shared (yes|no); sets port
    port=$(free_port)
    {
        echo "listen: 127.0.0.1:$port"
        echo "issuer: regauth-bench"
        echo "services: [registry.bench]"
        echo "signing_keys: [{key: signing.key, cert: signing.crt}]"
        echo "refresh_secret_file: refresh.secret"
        echo "password_cache_ttl: 10m"
        echo "accounts: [{name: bench, password_hash: \"$hash\"}]"
        echo "policy: [{kind: account, resource: \"\${name}/**\", actions: [\"*\"]}]"
        [ "$2" = yes ] && echo "shared_state: redis://127.0.0.1:$redis_port/0"
    } >"$work/$1.yaml"
    # Audit logging stays on: it is part of the real cost.
    REGAUTH_LOG=info "$bin" serve --config "$work/$1.yaml" >/dev/null 2>"$work/$1.log" &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/healthz"
}

start_haproxy() { # name, ports...; sets port
    local name=$1; shift
    port=$(free_port)
    {
        printf 'global\n    maxconn 4000\n'
        printf 'defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n'
        printf 'frontend fe\n    bind 127.0.0.1:%s\n    default_backend be\n' "$port"
        printf 'backend be\n    balance roundrobin\n    http-reuse always\n'
        local i=0
        for p in "$@"; do printf '    server r%s 127.0.0.1:%s\n' "$i" "$p"; i=$((i + 1)); done
    } >"$work/$name.cfg"
    haproxy -db -f "$work/$name.cfg" >"$work/$name.log" 2>&1 &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/healthz"
}

start_replica plain no; plain=$port
start_replica shared1 yes; shared1=$port
start_replica shared2 yes; shared2=$port
start_replica shared3 yes; shared3=$port
start_haproxy lb1 "$shared1"; lb1=$port
start_haproxy lb3 "$shared1" "$shared2" "$shared3"; lb3=$port

auth="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
query="service=registry.bench&scope=repository:bench/app:pull"
for p in "$plain" "$shared1" "$shared2" "$shared3"; do
    curl -fs -H "$auth" "http://127.0.0.1:$p/token?$query" >/dev/null
done

to_ms() {
    awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'
}
declare -A rps p50 p99
measure() { # name, port
    local out
    out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency -H "$auth" "http://127.0.0.1:$2/token?$query")
    if grep -q "Non-2xx" <<<"$out"; then echo "bench: $1 had failed requests" >&2; echo "$out" >&2; exit 1; fi
    rps[$1]=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50[$1]=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
    p99[$1]=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
}
measure baseline "$plain"
measure +redis "$shared1"
measure lb-1 "$lb1"
measure lb-3 "$lb3"

printf '%-9s %10s %9s %9s %8s\n' setup req/s p50_ms p99_ms ratio
for s in baseline +redis lb-1 lb-3; do
    printf '%-9s %10.0f %9s %9s %8.2f\n' "$s" "${rps[$s]}" "${p50[$s]}" "${p99[$s]}" \
        "$(python3 -c "print(${rps[$s]} / ${rps[baseline]})")"
done
python3 -c "
a, b = ${p50[baseline]}, ${p50[+redis]}
print(f'Redis round trips: {max(b - a, 0):.3f} ms of a {b:.3f} ms median request ({max(b - a, 0) / b * 100:.0f} %)')"
