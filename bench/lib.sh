# Shared setup of the load benchmarks; sourced by bench/run.sh and
# bench/soak.sh, never run by itself.
#
# bench_build builds the release binaries the way they ship
# (scripts/build-release.sh), and the floor (bench/floor) with them; it sets
#   bin_dir     the directory holding them
# bench_setup calls it, writes a throwaway config
# (fresh ES256 key, refresh secret, one bcrypt account `bench` with full
# access to bench/**, and with BENCH_BURST_ACCOUNTS=N, N more accounts
# burst0..burstN-1 sharing one cost-12 password) into a temp dir, starts the
# server on a free loopback port and waits for /healthz. An EXIT trap stops
# the server (and a floor server, if started) and removes the temp dir. It
# sets:
#   bin         the server binary
#   work        the temp dir (config.yaml, server.log, keys)
#   base        http://127.0.0.1:PORT
#   server_pid  the server's pid
#   password    the `bench` account's password
#   burst_password  the burst accounts' password
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
    local pid
    for pid in "${server_pid:-}" "${floor_pid:-}"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        fi
    done
    [ -n "${work:-}" ] && rm -rf "$work"
    return 0
}

bench_build() {
    [ -n "${bin_dir:-}" ] && return 0
    # The floor helper is linked as the shipped helper is.
    bin_dir=$(REGAUTH_RELEASE_NOPIE="docker-credential-regauth:docker-credential-regauth regauth-floor:floor-helper" \
        "$bench_root/scripts/build-release.sh" -p regauth-floor 2>/dev/null | tail -n 1) || {
        echo "bench: scripts/build-release.sh failed; run it to see why" >&2
        exit 1
    }
}

bench_setup() {
    bench_require wrk curl python3
    bench_build
    bin="$bin_dir/regauth-token-server"

    work=$(mktemp -d)
    server_pid=""
    trap bench_cleanup EXIT

    local port hash burst_hash i
    port=$(bench_free_port)
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
YAML
    burst_password="burst-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
    if [ "${BENCH_BURST_ACCOUNTS:-0}" -gt 0 ]; then
        burst_hash=$(printf '%s' "$burst_password" | "$bin" hash-password --cost 12)
        for i in $(seq 0 $((BENCH_BURST_ACCOUNTS - 1))); do
            printf '  - {name: burst%s, password_hash: "%s"}\n' "$i" "$burst_hash"
        done >> "$work/config.yaml"
    fi
    cat >> "$work/config.yaml" <<YAML
policy:
  - kind: account
    resource: "\${name}/**"
    actions: ["*"]
YAML

    # Audit logging stays on at its default level: it is part of the real cost.
    REGAUTH_LOG=${REGAUTH_LOG:-info} "$bin" serve --config "$work/config.yaml" 2>"$work/server.log" &
    server_pid=$!
    base="http://127.0.0.1:$port"
    bench_wait_healthz "$base" "$work/server.log"

    scope="service=registry.bench&scope=repository:bench/app:pull,push"
}

# A free loopback port.
bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_wait_healthz URL LOG: waits up to 10 s for URL/healthz, else shows LOG.
bench_wait_healthz() {
    for _ in $(seq 100); do curl -fs "$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: server at $1 did not start" >&2
    cat "$2" >&2
    exit 1
}

# bench_rss_mib PID: the process's resident memory, MiB.
bench_rss_mib() {
    awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"
}

bench_refresh_token() {
    curl -fs -u "bench:$password" "$base/token?service=registry.bench&offline_token=true" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["refresh_token"])'
}

# wrk's latency figures (850.00us, 1.20ms, 2.00s) in milliseconds.
bench_to_ms() {
    awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.2f", v }'
}

# bench_helper_inputs writes what the helper benchmarks feed it, for the
# server bench_setup started: helper.yaml (account `bench`, password from a
# 0600 file), host (a `get` request's stdin) and kubelet.json (a kubelet
# CredentialProviderRequest); it sets host.
bench_helper_inputs() {
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
    printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"%s/bench/app:1"}' "$host" > "$work/kubelet.json"
}
