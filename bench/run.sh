#!/usr/bin/env bash
# The token server against its physical floor, side by side in one run.
#
# The floor (bench/floor, `floor-server`) does only what any token server
# must do for a request: accept, parse Basic and the scope, and sign one
# ES256 access token of regauth's shape with the key parsed once; its
# /healthz answers "ok". Both servers use the same signing key, the same
# HTTP library and runtime, and run one after the other under the same wrk
# load (Debian package `wrk`). Rounds interleave the paths, so load from
# elsewhere on the machine falls on both alike.
#
# For every path it prints the server's CPU time per request (user + system
# of the whole process, from /proc, over the wrk run), requests/s and p99,
# then the medians over the rounds and each regauth path's ratio to its
# floor:
#   healthz          regauth /healthz            vs floor /healthz
#   get_password     GET /token, cached password vs floor GET /token
#   get_refresh      GET /token, refresh token   vs floor GET /token
#   post_refresh     POST /token refresh grant   vs floor GET /token
# Audit logging stays on, at its default level: it is part of the real cost.
# Then memory: regauth's RSS after the load (steady state), and after a
# burst of 100 concurrent password checks for 100 accounts (bcrypt cost 12).
#
# Usage: bench/run.sh [ROUNDS=3] [SECONDS=8] [CONNECTIONS=32]
set -euo pipefail

rounds=${1:-3}
duration=${2:-8}
connections=${3:-32}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
BENCH_BURST_ACCOUNTS=100 bench_setup

floor_bin="$bin_dir/floor-server"
floor_port=$(bench_free_port)
"$floor_bin" "127.0.0.1:$floor_port" "$work/signing.key" 2>"$work/floor.log" &
floor_pid=$!
floor="http://127.0.0.1:$floor_port"
bench_wait_healthz "$floor" "$work/floor.log"

refresh=$(bench_refresh_token)
basic_refresh="Authorization: Basic $(printf 'bench:%s' "$refresh" | base64 -w0)"
basic_password="Authorization: Basic $(printf 'bench:%s' "$password" | base64 -w0)"
# Warm the password cache once; every later request hits it.
curl -fs -H "$basic_password" "$base/token?$scope" >/dev/null
cat > "$work/post_refresh.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=refresh_token&refresh_token=$refresh&$scope&client_id=bench"
LUA

ticks_per_s=$(getconf CLK_TCK)
cpu_ticks() { # pid: user + system clock ticks of the whole process
    awk '{print $14 + $15}' "/proc/$1/stat"
}

measure() { # name pid url [header] [lua]: one wrk run; prints name cpu_us/req req/s p99_ms non2xx
    local name=$1 pid=$2 url=$3 header=${4:-} lua=${5:-} before after out args=()
    [ -n "$header" ] && args+=(-H "$header")
    [ -n "$lua" ] && args+=(-s "$lua")
    before=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "${args[@]}" "$url")
    after=$(cpu_ticks "$pid")
    local requests rps p99 errors
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | bench_to_ms)
    errors=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
    awk -v n="$name" -v t=$((after - before)) -v hz="$ticks_per_s" -v r="$requests" \
        -v rps="$rps" -v p99="$p99" -v e="${errors:-0}" \
        'BEGIN { printf "%s %.2f %.0f %s %s\n", n, t * 1e6 / hz / r, rps, p99, e }'
}

results="$work/results"
: > "$results"
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    {
        measure floor_healthz "$floor_pid" "$floor/healthz"
        measure healthz "$server_pid" "$base/healthz"
        measure floor_token "$floor_pid" "$floor/token?$scope" "$basic_password"
        measure get_password "$server_pid" "$base/token?$scope" "$basic_password"
        measure get_refresh "$server_pid" "$base/token?$scope" "$basic_refresh"
        measure post_refresh "$server_pid" "$base/token" "" "$work/post_refresh.lua"
    } >> "$results"
done
steady_rss=$(bench_rss_mib "$server_pid")

# A burst of 100 password checks at once, one per account, cache cold.
burst_pids=()
for i in $(seq 0 99); do
    curl -s -o /dev/null -w '%{http_code}\n' -u "burst$i:$burst_password" "$base/token?$scope" \
        >> "$work/burst.codes" &
    burst_pids+=($!)
done
wait "${burst_pids[@]}"
burst_rss=$(bench_rss_mib "$server_pid")

echo "regauth against its floor: wrk -t1 -c$connections -d${duration}s, $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%d)"
awk '
    { cpu[$1] = cpu[$1] " " $2; rps[$1] = rps[$1] " " $3; p99[$1] = p99[$1] " " $4; err[$1] += $5 }
    function median(list,   n, a, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return a[int((n + 1) / 2)]
    }
    END {
        split("floor_healthz healthz floor_token get_password get_refresh post_refresh", order, " ")
        base["healthz"] = "floor_healthz"; base["get_password"] = "floor_token"
        base["get_refresh"] = "floor_token"; base["post_refresh"] = "floor_token"
        printf "%-16s %14s %10s %9s %8s %10s\n", "path", "CPU us/req", "req/s", "p99 ms", "non-2xx", "vs floor"
        for (k = 1; k <= 6; k++) {
            p = order[k]; c = median(cpu[p])
            ratio = (p in base) ? sprintf("%.2fx", c / median(cpu[base[p]])) : "-"
            printf "%-16s %14.1f %10.0f %9.2f %8d %10s\n", p, c, median(rps[p]), median(p99[p]), err[p], ratio
        }
    }' "$results"
printf 'RSS: %s MiB in steady load, %s MiB after 100 concurrent password checks (%s)\n' \
    "$steady_rss" "$burst_rss" "$(sort "$work/burst.codes" | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')"
