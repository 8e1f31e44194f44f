#!/usr/bin/env bash
# Fleet benchmark on loopback, all in one run:
#
# 1. Throughput of GET /token (account password, cached check), wrk
#    straight at one replica, in interleaved rounds (load from elsewhere on
#    the machine falls on every setup alike):
#      single     one replica, no shared_state
#      shared     one replica, shared_state redis://
#      sentinel   one replica, shared_state redis+sentinel:// (a primary, a
#                 replica and three sentinels)
#      lb-3       haproxy -> three replicas sharing the Redis
#      compare    with BENCH_COMPARE_BIN set: "shared" with that binary (an
#                 older build), so a before/after ratio comes from one run
#    It prints the median requests/s, p50 and p99 over the rounds, and each
#    as a ratio of "single".
# 2. Revocation propagation: PROPAGATION (default 100) times, a fresh
#    refresh token is revoked by jti with `revoke`, and three pollers (one
#    per replica of lb-3, each on a kept-alive connection) time from
#    `revoke` returning to that replica's first refusal. It prints p50, p99
#    and the largest of those latencies (3 x PROPAGATION samples), and of
#    the time until all three refused.
#
# The release binaries are built as they ship (bench/lib.sh's bench_build).
# On a 2-core machine wrk, haproxy, Redis and the replicas share the cores,
# so lb-3 shows what the fleet's plumbing costs, not its capacity.
#
# Usage: bench/fleet.sh [SECONDS=8] [CONNECTIONS=32] [ROUNDS=3]
#   BENCH_COMPARE_BIN=PATH   also measure "shared" with another binary
#   PROPAGATION=N            revocations timed (default 100)
set -euo pipefail

duration=${1:-8}
connections=${2:-32}
rounds=${3:-3}
propagation=${PROPAGATION:-100}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_require wrk curl python3 redis-server redis-sentinel redis-cli haproxy
bench_build
bin="$bin_dir/regauth-token-server"
compare_bin=${BENCH_COMPARE_BIN:-}

work=$(mktemp -d)
pids=()
fleet_cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap fleet_cleanup EXIT

redis_ping() { redis-cli -p "$1" ping >/dev/null 2>&1; }
wait_redis() { # port
    for _ in $(seq 100); do redis_ping "$1" && return 0; sleep 0.1; done
    echo "bench: nothing answers on $1; logs in $work" >&2
    exit 1
}
start_redis() { # name [replicaof-port]; sets port
    port=$(bench_free_port)
    local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work"
        --maxmemory 64mb --maxmemory-policy volatile-ttl)
    [ -n "${2:-}" ] && args+=(--replicaof 127.0.0.1 "$2")
    redis-server "${args[@]}" >"$work/$1.log" 2>&1 &
    pids+=($!)
    wait_redis "$port"
}

start_redis redis; redis_port=$port
start_redis primary; primary_port=$port
start_redis replica "$primary_port"
sentinel_hosts=""
for i in 1 2 3; do
    sport=$(bench_free_port)
    cat > "$work/sentinel-$i.conf" <<CONF
port $sport
bind 127.0.0.1
dir $work
sentinel monitor regauth 127.0.0.1 $primary_port 2
sentinel down-after-milliseconds regauth 5000
CONF
    redis-sentinel "$work/sentinel-$i.conf" >"$work/sentinel-$i.log" 2>&1 &
    pids+=($!)
    wait_redis "$sport"
    sentinel_hosts="$sentinel_hosts${sentinel_hosts:+,}127.0.0.1:$sport"
done

"$bin" keys generate --out "$work" >/dev/null
"$bin" keys secret --out "$work/refresh.secret" >/dev/null
password="bench-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
hash=$(printf '%s' "$password" | "$bin" hash-password --cost 10)

start_replica() { # name shared_state-url-or-empty [binary]; sets port
    port=$(bench_free_port)
    {
        echo "listen: 127.0.0.1:$port"
        echo "issuer: regauth-bench"
        echo "services: [registry.bench]"
        echo "signing_keys: [{key: signing.key, cert: signing.crt}]"
        echo "refresh_secret_file: refresh.secret"
        echo "password_cache_ttl: 10m"
        echo "accounts: [{name: bench, password_hash: \"$hash\"}]"
        echo "policy: [{kind: account, resource: \"\${name}/**\", actions: [\"*\"]}]"
        [ -n "$2" ] && echo "shared_state: $2"
    } >"$work/$1.yaml"
    # Audit logging stays on: it is part of the real cost.
    REGAUTH_LOG=info "${3:-$bin}" serve --config "$work/$1.yaml" >/dev/null 2>"$work/$1.log" &
    pids+=($!)
    bench_wait_healthz "http://127.0.0.1:$port" "$work/$1.log"
}

start_haproxy() { # name ports...; sets port
    local name=$1 i=0 p
    shift
    port=$(bench_free_port)
    {
        printf 'global\n    maxconn 4000\n'
        printf 'defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n'
        printf 'frontend fe\n    bind 127.0.0.1:%s\n    default_backend be\n' "$port"
        printf 'backend be\n    balance roundrobin\n    http-reuse always\n'
        for p in "$@"; do printf '    server r%s 127.0.0.1:%s\n' "$i" "$p"; i=$((i + 1)); done
    } >"$work/$name.cfg"
    haproxy -db -f "$work/$name.cfg" >"$work/$name.log" 2>&1 &
    pids+=($!)
    bench_wait_healthz "http://127.0.0.1:$port" "$work/$name.log"
}

declare -A target
start_replica single ""; target[single]=$port
start_replica shared "redis://127.0.0.1:$redis_port/0"; target[shared]=$port
start_replica sentinel "redis+sentinel://$sentinel_hosts/regauth"; target[sentinel]=$port
start_replica r1 "redis://127.0.0.1:$redis_port/0"; r1=$port
start_replica r2 "redis://127.0.0.1:$redis_port/0"; r2=$port
start_replica r3 "redis://127.0.0.1:$redis_port/0"; r3=$port
start_haproxy lb3 "$r1" "$r2" "$r3"; target[lb-3]=$port
setups=(single shared sentinel lb-3)
if [ -n "$compare_bin" ]; then
    start_replica compare "redis://127.0.0.1:$redis_port/0" "$compare_bin"; target[compare]=$port
    setups+=(compare)
fi

auth="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
query="service=registry.bench&scope=repository:bench/app:pull"
for p in "${target[@]}" "$r1" "$r2" "$r3"; do
    curl -fs -H "$auth" "http://127.0.0.1:$p/token?$query" >/dev/null
done

results="$work/results"
: > "$results"
for round in $(seq "$rounds"); do
    # Each round starts with another setup, so none always runs first.
    shift_by=$(( (round - 1) % ${#setups[@]} ))
    order=("${setups[@]:shift_by}" "${setups[@]:0:shift_by}")
    for s in "${order[@]}"; do
        out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency -H "$auth" "http://127.0.0.1:${target[$s]}/token?$query")
        if grep -q "Non-2xx" <<<"$out"; then echo "bench: $s had failed requests" >&2; echo "$out" >&2; exit 1; fi
        printf '%s %s %s %s %s\n' "$s" "$round" \
            "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
            "$(awk '$1=="50%" {print $2}' <<<"$out" | bench_to_ms)" \
            "$(awk '$1=="99%" {print $2}' <<<"$out" | bench_to_ms)" >> "$results"
    done
done

echo "GET /token, cached password: $rounds rounds of ${duration}s, wrk -t1 -c$connections (medians)"
python3 - "$results" "${setups[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
setups = sys.argv[2:]
for s in setups:
    print(f"  {s:<9} req/s by round: " + ", ".join(r[2] for r in rows if r[0] == s))
med = {s: [statistics.median(float(r[i]) for r in rows if r[0] == s) for i in (2, 3, 4)] for s in setups}
print(f"{'setup':<10} {'req/s':>9} {'p50_ms':>8} {'p99_ms':>8} {'vs single':>10}")
for s in setups:
    rps, p50, p99 = med[s]
    print(f"{s:<10} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {rps / med['single'][0]:>10.2f}")
PY

echo
echo "Revocation propagation: $propagation revocations, three replicas, from \`revoke\` returning to each one's first refusal"
python3 - "$bin" "$work/r1.yaml" "$password" "$propagation" "$r1" "$r2" "$r3" <<'PY'
import base64, http.client, json, statistics, subprocess, sys, threading, time, urllib.parse
bin_, config, password, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ports = [int(p) for p in sys.argv[5:]]

def refresh_token():
    c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
    auth = base64.b64encode(f"bench:{password}".encode()).decode()
    c.request("GET", "/token?service=registry.bench&offline_token=true",
              headers={"Authorization": f"Basic {auth}"})
    body = json.loads(c.getresponse().read())
    c.close()
    return body["refresh_token"]

def jti(token):
    claims = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"]

conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in ports]
def refused(conn, token):
    body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": token,
                                   "service": "registry.bench"})
    conn.request("POST", "/token", body=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    text = r.read()
    return r.status in (400, 401) and b"revoked" in text

each, all_three = [], []
for _ in range(n):
    token = refresh_token()
    for c in conns:
        assert not refused(c, token), "a fresh token is refused"
    subprocess.run([bin_, "revoke", "--config", config, f"--jti={jti(token)}"],
                   check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    latencies = [None] * len(conns)
    def poll(i):
        while not refused(conns[i], token):
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"replica {i} did not refuse within 10 s")
        latencies[i] = time.monotonic() - t0
    threads = [threading.Thread(target=poll, args=(i,)) for i in range(len(conns))]
    for t in threads: t.start()
    for t in threads: t.join()
    if None in latencies:
        raise SystemExit("a poller failed")
    each.extend(latencies)
    all_three.append(max(latencies))

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000
for name, xs in (("each replica", each), ("all three", all_three)):
    print(f"{name:<13} p50 {pct(xs, .5):7.2f} ms   p99 {pct(xs, .99):7.2f} ms   max {max(xs) * 1000:7.2f} ms   ({len(xs)} samples)")
PY
