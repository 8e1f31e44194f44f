# Shared setup of the load benchmarks; sourced by bench/run.sh and
# bench/soak.sh, never run by itself.
#
# bench_setup builds a release regauth-token-server, writes a throwaway config
# (fresh ES256 key, refresh secret, one bcrypt account `bench` with full
# access to bench/**) into a temp dir, starts the server on a free loopback
# port and waits for /healthz. An EXIT trap stops the server and removes the
# temp dir. It sets:
#   bin         the server binary
#   work        the temp dir (config.yaml, server.log, keys)
#   base        http://127.0.0.1:PORT
#   server_pid  the server's pid
#   password    the `bench` account's password
#   scope       query string for a /token request (service and one scope)
# bench_refresh_token prints a refresh token for `bench`.

bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "bench: $tool is missing: apt-get install $tool" >&2; exit 1; }
    done
}

bench_cleanup() {
    if [ -n "${server_pid:-}" ]; then
        kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    fi
    [ -n "${work:-}" ] && rm -rf "$work"
    return 0
}

bench_setup() {
    bench_require wrk curl python3
    cargo build --release --quiet -p regauth-token-server --manifest-path "$bench_root/Cargo.toml"
    bin="${CARGO_TARGET_DIR:-$bench_root/target}/release/regauth-token-server"

    work=$(mktemp -d)
    server_pid=""
    trap bench_cleanup EXIT

    local port hash
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
}

bench_refresh_token() {
    curl -fs -u "bench:$password" "$base/token?service=registry.bench&offline_token=true" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["refresh_token"])'
}

# wrk's latency figures (850.00us, 1.20ms, 2.00s) in milliseconds.
bench_to_ms() {
    awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.2f", v }'
}
